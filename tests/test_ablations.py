"""demos/ablations.py: each study end to end on a micro budget (2 training steps, 1 seed, 1 short
episode, 32 px), the JSON/markdown it writes, and that every variant builds the model it declares."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from vla_agents.agent import load_agent, make_agent
from vla_agents.models.focusvla import FocusVLAPolicy
from vla_agents.models.vla_adapter import VLAAdapterPolicy

SCRIPT = Path(__file__).resolve().parents[1] / "demos" / "ablations.py"
_spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
ablations = sys.modules["ablations"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(ablations)

MICRO = dict(steps=2, episodes=1, eval_every=1, eval_episodes=1, demos=1, batch_size=2, image_size=32, max_episode_steps=4, save_every=1)
TINY = {"image_size": 32, "vit_depth": 2, "llm_layers": 1, "backbone_path": None}
TINY_DEEPVISION = {"image_size": 64, "vla_image_size": 32, "vit_depth": 1, "llm_layers": 3, "expert_depth": 3, "agvp_layers": [0, 0], "backbone_path": None}


def check_declared(agent, variant) -> None:
    """The built model has the switches the variant declares."""
    model, declared = agent.model, variant.overrides
    if variant.policy == "focusvla" and declared["attention_mode"] == "mixed":  # Tab. 2's first row: VLA-Adapter-Pro itself
        assert isinstance(model, VLAAdapterPolicy)
        gate_mode = "none" if declared["gate"] == "none" else "logit_scale"
        assert {(b.variant, b.gate_mode) for b in model.blocks} == {("pro", gate_mode)}
    elif variant.policy == "focusvla":
        assert isinstance(model, FocusVLAPolicy) and model.visual_source == declared["visual_source"]
        for block in model.blocks:
            assert (block.layout, block.focus_scores, block.topk, block.gate_kind) == (
                declared["layout"], declared["focus_scores"], declared["topk"], declared["gate"])
    elif variant.policy == "vla_adapter":
        assert isinstance(model, VLAAdapterPolicy) and {b.variant for b in model.blocks} == {declared["variant"]}
    elif variant.policy == "vat":
        assert len(model.action_blocks) == model.backbone.depth  # the last-layer arm keeps the depth
        assert (model.action_layers, model.kv_norm) == (declared["action_layers"], declared["kv_norm"])
    elif variant.policy == "deepvision":
        backbone = model.backbone
        assert (backbone.expert is None) == (declared["coupled_layers"] == 0)
        assert (backbone.pruning, backbone.guidance, backbone.shared_attention) == (
            declared["pruning"], declared["guidance"], declared["shared_attention"])
        if backbone.expert is not None:  # 2 of the expert's 3 layers, as in deepvision-tiny.yaml
            assert backbone.expert_layers == {"last": [1, 2], "first": [0, 1], "uniform": [0, 2]}[declared["coupling"]]
    else:
        raise AssertionError(f"no check for {variant.policy}")


@pytest.mark.parametrize("study", ["focusvla", "vat", "deepvision"])
def test_every_declared_variant_builds_what_it_declares(study: str) -> None:
    shared = TINY_DEEPVISION if study == "deepvision" else TINY
    variants = ablations.STUDIES[study].variants
    assert len({v.name for v in variants}) == len(variants)
    for variant in variants:
        check_declared(make_agent(variant.policy, **ablations.variant_overrides(variant, shared)), variant)
    with pytest.raises(ValueError, match="would change what variant"):
        ablations.variant_overrides(variants[0], {next(iter(variants[0].overrides)): None})


def test_focusvla_study_micro_run_writes_results_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    budget = ablations.Budget(**MICRO, overrides=TINY)
    chosen = ["vla_adapter", "focusvla-mixed"]  # runs and rows follow the declared order
    tasks = ["embedded/pick_color", "embedded/lift"]
    result = ablations.run_training_study(ablations.STUDIES["focusvla"], budget, [0], tmp_path / "out", variants=chosen,
                                          tasks=tasks, data_dir=tmp_path / "data")
    saved = json.loads((tmp_path / "out" / "focusvla.json").read_text())
    assert saved["runs"] == result["runs"] and saved["budget"]["steps"] == 2
    logged = capsys.readouterr().out  # not a terminal: each finished run left its progress line (a live bar alone would not)
    assert all(f"{name} seed 0" in logged for name in chosen)
    # one training per variant, trained on both tasks' files and evaluated on each task
    assert [(r["variant"], r["task"], r["seed"]) for r in saved["runs"]] == [(n, t, 0) for n in chosen for t in tasks]
    assert saved["data"] == [str(tmp_path / "data" / f"embedded_{t.split('/')[1]}-1demos-32px.hdf5") for t in tasks]
    declared = {v.name: v for v in ablations.STUDIES["focusvla"].variants}
    for run in saved["runs"]:
        assert run["agent_dir"] == str(tmp_path / "out" / "agents" / run["variant"] / "seed0")
        assert run["data"] == [Path(p).name for p in saved["data"]] and not run["resumed"]
        assert [step for step, _ in run["curve"]] == [1, 2] and run["episodes"] == 1
        assert sum(run["outcomes"].values()) == 1 and run["outcomes"]["success"] == run["successes"]
        assert run["steps_to_80pc"] is None or run["steps_to_80pc"] in (1, 2)
        assert run["overrides"] == {k: v for k, v in TINY.items() if k in run["overrides"]} | declared[run["variant"]].overrides
        check_declared(load_agent(run["agent_dir"]), declared[run["variant"]])
        log = [json.loads(line) for line in (Path(run["agent_dir"]) / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and set(log[0]) >= {ablations.periodic_key(t) for t in tasks}
        assert run["curve"][0] == [1, log[0][ablations.periodic_key(run["task"])]]

    given = [tmp_path / "given.hdf5"]  # --data files are what every run trains on: nothing is collected
    assert ablations.training_files(tasks, given, 1, 32, tmp_path / "unused") == given
    assert not (tmp_path / "unused").exists()

    readout = tmp_path / "README.md"
    readout.write_text("# Benchmarks\n")
    argv = ["focusvla", "--out", str(tmp_path / "out"), "--seeds", "0", "--data-dir", str(tmp_path / "data"),
            "--tasks", *tasks, "--variants", *chosen, "--overrides", json.dumps(TINY),
            "--append-readout", str(readout), *(f"--{k.replace('_', '-')}={v}" for k, v in MICRO.items())]
    ablations.main(argv)  # every run is in the JSON already: nothing is trained again
    assert json.loads((tmp_path / "out" / "focusvla.json").read_text())["runs"] == saved["runs"]
    markdown = (tmp_path / "out" / "focusvla.md").read_text()
    assert readout.read_text() == "# Benchmarks\n\n" + markdown
    assert "trained on embedded_pick_color-1demos-32px.hdf5, embedded_lift-1demos-32px.hdf5." in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | policy | overrides | parameters | baseline | pick_color success % | pick_color successes "
                               "| pick_color vs baseline | pick_color steps to 80% | pick_color train min | lift success % |")
    assert [row.split(" | ")[0].strip("| ") for row in table[1:]] == chosen
    assert all(" ± " not in row for row in table[1:])  # one seed: no spread to show

    ablations.main(["focusvla", "--report", "--out", str(tmp_path / "out"), "--seeds", "0", "--variants", "focusvla-mixed",
                    "--tasks", "embedded/pick_color"])
    assert json.loads((tmp_path / "out" / "focusvla.json").read_text())["runs"] == saved["runs"]  # nothing trained
    mixed = next(r for r in saved["runs"] if r["variant"] == "focusvla-mixed")
    report = [line for line in (tmp_path / "out" / "focusvla.md").read_text().splitlines() if line.startswith("| ")]
    overrides = ", ".join(f"{k}={v}" for k, v in declared["focusvla-mixed"].overrides.items())
    assert report[1:] == [f"| focusvla-mixed | focusvla | {overrides} "
                          f"| {mixed['num_parameters'] / 1e6:.2f} M | focusvla-cascade-only "
                          f"| {mixed['success']:.1f} ({mixed['success']:.1f}) | {mixed['successes']}/1 | - | "
                          f"{ablations.format_cell([mixed['steps_to_80pc']], 0)} | 0 |"]  # its baseline was not run: no test
    with pytest.raises(SystemExit, match="does not exist"):
        ablations.main(["focusvla", "--report", "--out", str(tmp_path / "out" / "elsewhere")])

    # a run whose record was lost after its checkpoint was written resumes from that checkpoint: nothing is
    # trained again and its periodic evaluations come back from the checkpoint's history
    results = tmp_path / "out" / "focusvla.json"
    stored = json.loads(results.read_text())
    results.write_text(json.dumps(stored | {"runs": [r for r in stored["runs"] if r["variant"] != "vla_adapter"]}))
    log = Path(stored["runs"][0]["agent_dir"]) / "train_log.jsonl"
    logged_before = log.read_text()
    again = ablations.run_training_study(ablations.STUDIES["focusvla"], budget, [0], tmp_path / "out", variants=chosen,
                                         tasks=tasks, data_dir=tmp_path / "data")
    assert log.read_text() == logged_before  # no step was trained again
    resumed = [r for r in again["runs"] if r["variant"] == "vla_adapter"]
    assert [r["task"] for r in resumed] == tasks and all(r["resumed"] for r in resumed)
    assert [r["curve"][0] for r in resumed] == [r["curve"][0] for r in stored["runs"][:2]]
    assert "runs resumed from a checkpoint left out" in ablations.training_markdown(again, [0])

    # a run of an earlier definition of its arm (here: VLA-Adapter's original block) is left out and not reused
    stored = json.loads(results.read_text())
    for run in stored["runs"]:
        if run["variant"] == "vla_adapter":
            run["overrides"] = {k: v for k, v in run["overrides"].items() if k != "variant"}
    results.write_text(json.dumps(stored))
    ablations.main(["focusvla", "--report", "--out", str(tmp_path / "out"), "--seeds", "0", "--variants", "vla_adapter"])
    report = (tmp_path / "out" / "focusvla.md").read_text()
    assert "| vla_adapter |" not in report and "earlier definition of their arm: vla_adapter (2 runs)" in report
    assert ablations.as_declared(next(r for r in stored["runs"] if r["variant"] == "focusvla-mixed"), declared["focusvla-mixed"])
    assert not ablations.as_declared(next(r for r in stored["runs"] if r["variant"] == "vla_adapter"), declared["vla_adapter"])


def test_deepvision_study_micro_run(tmp_path: Path) -> None:
    budget = ablations.Budget(**MICRO | {"eval_every": 0}, overrides=TINY_DEEPVISION)  # the final evaluation only
    study = ablations.STUDIES["deepvision"]
    result = ablations.run_training_study(study, budget, [0], tmp_path / "out", tasks=["embedded/lift_lookalikes"],
                                          data_dir=tmp_path / "data")
    assert [r["variant"] for r in result["runs"]] == [v.name for v in study.variants]
    assert [r["variant"] for r in result["runs"]][:2] == ["deepvision", "deepvision-first-layers"]  # the headline first
    assert {r["task"] for r in result["runs"]} == {"embedded/lift_lookalikes"}
    assert all(r["curve"] == [[2, r["success"]]] for r in result["runs"])
    declared = {v.name: v for v in study.variants}
    for run in result["runs"]:
        check_declared(load_agent(run["agent_dir"]), declared[run["variant"]])
    params = {r["variant"]: r["num_parameters"] for r in result["runs"]}
    assert params["deepvision-base"] < params["deepvision"] == params["deepvision-no-agvp"] == params["deepvision-cls-guidance"]
    assert "lift_lookalikes success %" in ablations.training_markdown(result, [0])


def test_dtp_study_micro_run(tmp_path: Path) -> None:
    make_agent("vla_adapter", **TINY).save_pretrained(tmp_path / "vla_adapter")
    make_agent("vat", image_size=32, vit_depth=1, backbone_path=None).save_pretrained(tmp_path / "vat")
    agents = [str(tmp_path / "vla_adapter"), str(tmp_path / "vat")]
    budget = ablations.Budget(episodes=2, image_size=32, max_episode_steps=4, overrides={"k": 1})
    result = ablations.run_dtp_study(agents, "embedded/pick_color_clutter", budget, [0], tmp_path / "out", taus=[0.0, 0.5], random_taus=[])
    saved = json.loads((tmp_path / "out" / "dtp.json").read_text())
    assert set(saved["budget"]) == {*ablations.DTP_BUDGET, "env"}
    assert list(saved["skipped"]) == [agents[1]]  # VAT has no language model for DTP to read
    runs = {r["variant"]: r for r in saved["runs"]}
    assert list(runs) == ["unwrapped", "dtp-tau-0", "dtp-tau-0.5"]
    # 2 views x 2x2 patches, k = 1 per view: tau 0 prunes every token outside the important region, 3 per view
    assert runs["unwrapped"]["pruned_per_call"] == 0.0 and runs["dtp-tau-0"]["pruned_per_call"] == 6.0
    assert runs["unwrapped"]["settings"]["tau"] == ablations.NEVER_PRUNE and runs["dtp-tau-0.5"]["settings"]["random_mask"] is None
    for run in runs.values():
        assert len(run["episode_success"]) == len(run["unimportant_share"]) == 2
        assert all(0.0 <= s <= 1.0 for s in run["unimportant_share"])
    analysis = saved["analysis"][agents[0]]
    assert analysis["n_success"] + analysis["n_failed"] == 2
    markdown = ablations.dtp_markdown(result, [0])
    assert "| agent | policy | unwrapped | dtp-tau-0 | dtp-tau-0.5 |" in markdown and "pruned per act" in markdown and "Mann-Whitney" in markdown and "Skipped" in markdown


def test_dtp_variants_sweep_tau_and_match_the_random_masks_to_dtp() -> None:
    variants = {v.name: v.overrides for v in ablations.dtp_variants([0.25, 0.5], [0.5])}
    assert list(variants) == ["unwrapped", "dtp-tau-0.25", "dtp-tau-0.5", "random-unimportant-tau-0.5", "random-all-tau-0.5"]
    assert variants["unwrapped"] == {"tau": ablations.NEVER_PRUNE}
    for where in ("unimportant", "all"):
        assert variants[f"random-{where}-tau-0.5"] == variants["dtp-tau-0.5"] | {"random_mask": where}


def test_dtp_arms_pooled_against_the_unwrapped_policy_with_bonferroni() -> None:
    def run(variant: str, seed: int, successes: int) -> dict:
        return {"agent": "a", "variant": variant, "seed": seed, "successes": successes, "episodes": 10}

    runs = [run("unwrapped", 0, 5), run("unwrapped", 1, 5), run("dtp-tau-0.5", 0, 0), run("dtp-tau-0.5", 1, 0),
            run("dtp-tau-1", 1, 5)]
    lines = ablations.pooled_against_unwrapped(runs, ["a"], ["unwrapped", "dtp-tau-0.5", "dtp-tau-1"])
    assert "Bonferroni's 0.05 / 2 = 0.025" in lines[0]
    # 0/20 vs 10/20: hypergeometric, 10 successes in 40, 20 per arm; two-sided p = 2 C(20,10) / C(40,10) = 0.00044.
    # tau 1 ran seed 1 alone: 5/10 vs the unwrapped policy's seed 1, 5/10, p = 1
    assert lines[-1] == "| a | 10/20 | **0/20 vs 10/20, p = 0.00044** | 5/10 vs 5/10, p = 1 |"


def test_share_comparison_is_scipys_mann_whitney_u() -> None:
    successful, failed = [0.10, 0.20, 0.15, 0.12, 0.30], [0.50, 0.60, 0.25, 0.70]
    summary = ablations.compare_shares(successful, failed)
    reference = mannwhitneyu(failed, successful, alternative="two-sided")
    assert summary["U"] == reference.statistic == 19 and summary["p"] == pytest.approx(reference.pvalue)
    assert summary["p"] < 0.05 and summary["share_failed"] == pytest.approx(np.mean(failed))
    assert ablations.compare_shares(successful, [])["p"] is None


def test_steps_to_80pc_of_final_success() -> None:
    assert ablations.steps_to_fraction([[500, 10.0], [1000, 40.0], [1500, 30.0], [2000, 45.0]]) == 1000
    assert ablations.steps_to_fraction([[500, 0.0], [1000, 0.0]]) is None
    assert ablations.format_cell([40.0, None, 60.0]) == "50.0 ± 14.1 (40.0, -, 60.0)"


def test_training_table_keeps_each_seed_in_its_place_and_tests_each_arm_against_its_baseline() -> None:
    def run(variant: str, seed: int, successes: int, steps: int | None) -> dict:
        return {"variant": variant, "task": "embedded/pick_color", "seed": seed, "success": 10.0 * successes,
                "successes": successes, "episodes": 10, "steps_to_80pc": steps, "num_parameters": 2_370_000 + ord(variant),
                "train_s": 60.0 * (seed + 10)}

    result = {"title": "t", "budget": {"steps": 4000}, "command": "c",
              "variants": [{"name": "a", "policy": "vat", "overrides": {"action_layers": "all"}, "baseline": "b"},
                           {"name": "b", "policy": "vat", "overrides": {}}],
              "runs": [run("a", 0, 3, 4000), run("a", 2, 1, 2000), run("b", 0, 0, None), run("b", 1, 2, 3000)]}
    rows = [line for line in ablations.training_markdown(result, [0, 1, 2]).splitlines() if line.startswith(("| a", "| b"))]
    # a against b on seed 0, the only seed both ran: 3/10 vs 0/10. Hypergeometric (3 successes in 20, 10 per
    # arm): P(3 in a) = P(0 in a) = C(10,3)/C(20,3) = 120/1140, P(1) = P(2) = 450/1140; two-sided p = 240/1140.
    assert rows == ["| a | vat | action_layers=all | 2.37 M | b | 20.0 ± 14.1 (30.0, -, 10.0) | 4/20 | 3/10 vs 0/10, p = 0.21 "
                    "| 3000 ± 1414 (4000, -, 2000) | 10-12 |",
                    "| b | vat | - | 2.37 M | - | 10.0 ± 14.1 (0.0, 20.0, -) | 2/20 | - | 3000 (-, 3000, -) | 10-11 |"]
    only_seed_1 = ablations.training_markdown(result, [1])
    assert "| a |" not in only_seed_1 and "| b | vat | - | 2.37 M | - | 20.0 (20.0) | 2/10 | - | 3000 (3000) | 11 |" in only_seed_1


def test_budget_line_names_the_given_demonstration_files_instead_of_the_collect_count() -> None:
    budget = {"steps": 4000, "demos": 50}
    given = ablations.budget_line(budget, [0, 1, 2], ["runs/data/a.hdf5", "b.hdf5"])
    assert given.startswith("Seeds [0, 1, 2]; steps=4000; trained on a.hdf5, b.hdf5. Command:")  # no demos=50
    assert ablations.budget_line(budget, [0]).startswith("Seeds [0]; steps=4000, demos=50. Command:")  # collected here
