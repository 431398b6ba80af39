"""`vla-agents demo`, the README's main command, on the shipped checkpoints (one episode each)."""
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

from vla_agents.demo import CHECKPOINTS, SHIPPED, SIMPLER_AGENT, SIMPLER_HEADING
from vla_agents.policies import load_recipe, parse_recipe


def test_shipped_checkpoints_are_small_and_documented():
    for agent in SHIPPED:
        folder = CHECKPOINTS / agent.name
        assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
        shipped = [f for f in folder.rglob("*") if f.is_file() and "checkpoint" not in f.relative_to(folder).parts]
        assert sum(f.stat().st_size for f in shipped) < 20 * 2**20  # the resumable trainer state is not shipped
    recorded = (CHECKPOINTS / "README.md").read_text()
    for agent in SHIPPED:
        assert f"--policy {agent.policy}" in recorded and f"--out policies/checkpoints/{agent.name}" in recorded


def test_the_shipped_simpler_agent_exists_is_documented_and_acts_on_a_maniskill3_observation():
    """The demo's SIMPLER rows load SIMPLER_AGENT: it must be shipped, made with the `simpler_widowx` adapter,
    recorded in the README's SIMPLER section, and act on a ManiSkill3 (batched) observation."""
    import numpy as np
    from test_simpler_adapter import ms3_obs

    from vla_agents.agent import load_agent

    folder = CHECKPOINTS / SIMPLER_AGENT
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), folder
    shipped = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in shipped) < 20 * 2**20 and not (folder / "checkpoint").exists()
    agent = load_agent(folder)
    assert agent.adapter_name == "simpler_widowx"
    recorded = (CHECKPOINTS / "README.md").read_text()
    section = recorded[recorded.index(SIMPLER_HEADING):]
    assert f"--out policies/checkpoints/{SIMPLER_AGENT}" in section and "collect simpler/widowx_carrot_on_plate" in section
    agent.reset()
    action = agent.act(ms3_obs(), "put carrot on plate")  # the adapter reads env 0 of the batch
    assert action.shape == (7,) and np.all(np.isfinite(action)) and action[6] in (-1.0, 1.0)


def test_a_wheel_installs_every_shipped_checkpoint_file_where_the_demo_looks():
    """pyproject's data-files must map each tracked checkpoint and backbone file to the same relative place
    under share/vla-agents/, or an installed (non-editable) `vla-agents demo` finds no agents (and tiny
    recipes no backbone)."""
    import glob
    import tomllib

    root = CHECKPOINTS.parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {}
    for destination, patterns in data_files.items():
        for pattern in patterns:
            for name in glob.glob(pattern, root_dir=root):
                if (root / name).is_file():
                    installed[name] = destination
    tracked = subprocess.run(["git", "ls-files", "policies/checkpoints", "policies/backbones"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
    assert any(n.startswith("policies/backbones/") for n in tracked), "no tracked backbone files"
    for name in tracked:
        assert installed.get(name) == f"share/vla-agents/{Path(name).parent.as_posix()}", name


def test_retrain_commands_reproduce_the_shipped_recipes():
    """`demo --retrain` must train each checkpoint with the recipe it was shipped with (e.g. its loss)."""
    for agent in SHIPPED:
        shipped = parse_recipe(json.loads((CHECKPOINTS / agent.name / "config.json").read_text())["recipe"]).to_dict()
        retrained = load_recipe(agent.policy, "tiny").to_dict()
        for key in ("loss", "llm_init_std", "vit_pos_std", "crop_area", "chunk", "backbone_path", "aux_target_weight",
                    "aux_attention_weight"):
            assert shipped[key] == retrained[key], (agent.name, key)


def test_each_shipped_checkpoint_was_trained_in_the_stages_shipped_records():
    """`config.json`'s `training.init_from` chain is how the weights were made; `SHIPPED` is what `--retrain` runs
    and the README documents. A checkpoint swapped without its record (or the reverse) breaks the equality."""
    for agent in SHIPPED:
        training = json.loads((CHECKPOINTS / agent.name / "config.json").read_text())["training"]
        lineage = []  # (steps, batch size, lr, number of demonstration files), last stage first
        while training is not None:
            lineage.append((training["steps"], training["batch_size"], training["lr"], len(training["data"])))
            training = training.get("init_from", {}).get("training")
        first, *fine_tuned = reversed(lineage)
        assert first[:2] == (agent.steps, agent.batch_size) and first[3] == len(agent.data), agent.name
        assert fine_tuned == [(s.steps, agent.batch_size, s.lr, len(s.data)) for s in agent.fine_tuned], agent.name


def test_demo_writes_videos_and_a_comparison_table(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vla_agents.cli", "demo", "--episodes", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded suite" in result.stdout and "videos:" in result.stdout
    assert "SIMPLER (ManiSkill3)" in result.stdout or "SIMPLER rows skipped" in result.stdout
    table = json.loads((tmp_path / "comparison.json").read_text())
    rows = [row["policy"] for row in table["rows"]]
    assert rows == ["scripted-expert", "oft-tiny-embedded", "oft-tiny-embedded+dtp", "vla_adapter-tiny-embedded",
                    "vla_adapter-tiny-embedded+dtp", "focusvla-tiny-embedded", "focusvla-tiny-embedded+dtp",
                    "vat-tiny-embedded",  # DTP cannot wrap VAT (no prompt tokens): no vat+dtp row
                    "deepvision-tiny-embedded", "deepvision-tiny-embedded+dtp"]
    assert table["tasks"] == ["lift", "pick_color"]
    videos = sorted((tmp_path / "videos").rglob("*.mp4"))
    assert len(videos) == 2 * len(rows)
    frames = iio.imread(videos[-1])
    assert frames.ndim == 4 and frames.shape[0] >= 2
    page = (tmp_path / "videos" / "index.html").read_text()  # every video, each under its agent and task
    assert all(f"{row} on {task}:" in page for row in rows for task in table["tasks"])
    assert all(video.name in page for video in videos)


def test_retrain_trains_each_agent_on_demonstrations_of_its_noise_level(tmp_path, monkeypatch):
    """`--retrain` calls the library (collect_demos, train_bc), not the CLI, and records the equivalent commands."""
    from rich.console import Console

    from vla_agents import demo

    calls = []
    monkeypatch.setattr("vla_agents.sim.collect.collect_demos",
                        lambda spec, episodes, out, **kw: calls.append(("collect", spec, episodes, kw["noise"],
                                                                        kw["let_go_on_arrival"], str(out))))
    monkeypatch.setattr("vla_agents.train.bc.train_bc", lambda **kw: calls.append(("train", kw)))
    monkeypatch.setattr(demo, "CHECKPOINTS", tmp_path / "policies" / "checkpoints")
    demo.CHECKPOINTS.mkdir(parents=True)
    (demo.CHECKPOINTS / "README.md").write_text(f"old embedded commands\n\n{demo.SIMPLER_HEADING}: made elsewhere\n")
    demo.retrain(tmp_path / "data", Console(quiet=True))

    collects = [c for c in calls if c[0] == "collect"]
    wanted = {(d.task, d.episodes, a.data_noise, d.let_go_on_arrival) for a in SHIPPED for d in a.all_data()}
    assert sorted(c[1:5] for c in collects) == sorted(wanted)  # each set once
    assert ("embedded/stack", 200, 0.4, True) in wanted and ("embedded/stack", 200, 0.4, False) in wanted
    for agent in SHIPPED:
        trains = [c[1] for c in calls if c[0] == "train" and Path(c[1]["out_dir"]).name.startswith(agent.name)]

        def files(data):
            return [c[5] for d in data for c in collects if c[1:5] == (d.task, d.episodes, agent.data_noise, d.let_go_on_arrival)]

        stage_data = [agent.data, *(stage.data for stage in agent.fine_tuned)]
        assert [list(map(str, t["data"])) for t in trains] == [files(data) for data in stage_data]
        assert all(len(files(data)) == len(data) for data in stage_data)
        assert all(t["policy"] == agent.policy and t["batch_size"] == agent.batch_size for t in trains)
        # the first stage, then each fine-tuning stage from the previous one's weights, right after it
        assert trains[0]["steps"] == agent.steps and "init_from" not in trains[0] and not trains[0].get("resume")
        assert [(t["steps"], t["lr"]) for t in trains[1:]] == [(stage.steps, stage.lr) for stage in agent.fine_tuned]
        assert [t["init_from"] for t in trains[1:]] == [t["out_dir"] for t in trains[:-1]]
        assert trains[-1]["out_dir"] == demo.CHECKPOINTS / agent.name and len({t["out_dir"] for t in trains}) == len(trains)
        assert [calls.index(("train", t)) for t in trains] == list(range(calls.index(("train", trains[0])), calls.index(("train", trains[0])) + len(trains)))
    recorded = (demo.CHECKPOINTS / "README.md").read_text()
    assert all(f"--noise {a.data_noise}" in recorded for a in SHIPPED if a.data_noise)
    assert "embedded/stack --episodes 200 --seed 100000 --noise 0.4 --let-go-on-arrival --out" in recorded
    assert "old embedded commands" not in recorded and recorded.endswith(f"{demo.SIMPLER_HEADING}: made elsewhere\n")
