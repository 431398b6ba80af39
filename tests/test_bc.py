"""Behaviour cloning: the loss goes down on real (HDF5) demonstrations, and resuming is exact."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL
from vla_agents.agent import load_agent
from vla_agents.data import DemoDataset
from vla_agents.data.hdf5 import DemoWriter
from vla_agents.models.blocks import action_loss
from vla_agents.policies import load_recipe
from vla_agents.recipe import TrainingConfig
from vla_agents.train.bc import batch_indices, make_scheduler, train_bc



@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two episodes whose actions follow the robot state: learnable from the inputs."""
    path = tmp_path_factory.mktemp("demos") / "lift.hdf5"
    rng = np.random.default_rng(0)
    with DemoWriter(path, instruction="pick up the red cube") as writer:
        for _ in range(2):
            T = 24
            pos = np.cumsum(rng.normal(scale=0.01, size=(T, 3)), axis=0)
            actions = np.concatenate([-pos * 10, np.zeros((T, 3)), np.sign(np.arange(T) - T / 2)[:, None]], axis=1)
            obs = {
                "agentview_rgb": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
                "eye_in_hand_rgb": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
                "ee_pos": pos, "ee_ori": np.zeros((T, 3)), "gripper_states": np.zeros((T, 2)), "joint_states": np.zeros((T, 7)),
                "target_pos": pos + 0.05, "target_uv": rng.uniform(size=(T, 2, 2)),  # privileged: the auxiliary loss's targets
            }
            writer.add_episode(actions, obs)
    return path


def test_batch_order_is_a_function_of_seed_and_step() -> None:
    assert batch_indices(5, 40, 8, seed=1) == batch_indices(5, 40, 8, seed=1)
    epoch = [i for s in range(5) for i in batch_indices(s, 40, 8, seed=1)]
    assert sorted(epoch) == list(range(40))
    ranks = [batch_indices(0, 40, 4, seed=1, rank=r, world=2) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])


@pytest.mark.parametrize("policy", ["oft", "vla_adapter"])
def test_bc_loss_decreases(policy: str, demos: Path, tmp_path: Path) -> None:
    result = train_bc(policy, [demos], steps=30, out_dir=tmp_path, batch_size=8, lr=1e-3, warmup_steps=3,
                      overrides=SMALL, progress=False)
    losses = [r["action_loss"] for r in result.history]  # "loss" also holds the auxiliary grounding loss
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    agent = load_agent(tmp_path)
    assert agent.stats is not None
    raw = {"agentview_image": np.zeros((32, 32, 3), np.uint8), "robot0_eye_in_hand_image": np.zeros((32, 32, 3), np.uint8),
           "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0, 0, 0, 1.0]), "robot0_gripper_qpos": np.zeros(2),
           "robot0_joint_pos": np.zeros(7), "language_instruction": "pick up the red cube"}
    assert agent.act(raw).shape == (7,)


def test_bc_trains_on_the_recipe_loss(demos: Path, tmp_path: Path) -> None:
    overrides = {**SMALL, "crop_area": 1.0, "loss": "mse"}  # no random crop: the batch can be rebuilt exactly
    result = train_bc("oft", [demos], steps=1, out_dir=tmp_path, batch_size=8, lr=0.0, warmup_steps=0,
                      overrides=overrides, seed=2, progress=False, mixed_precision="no")
    agent = load_agent(tmp_path)  # lr 0: the weights the step-1 loss was computed with
    dataset = DemoDataset([demos], chunk_size=agent.chunk, stats=agent.stats)
    batch = agent.collate([dataset[i] for i in batch_indices(0, len(dataset), 8, seed=2)], train=True)
    with torch.no_grad():
        pred = agent.model(batch).actions
    mse = action_loss(pred, batch["actions"], batch["action_is_pad"], "mse").item()
    assert result.history[0]["action_loss"] == pytest.approx(mse, rel=1e-5)
    assert mse != pytest.approx(action_loss(pred, batch["actions"], batch["action_is_pad"]).item(), rel=1e-3)


def test_lr_schedule_is_the_recipes(demos: Path, tmp_path: Path) -> None:
    """Paper recipes of VLA-Adapter and FocusVLA: the released MultiStepLR (x0.1 once, no warmup);
    tiny recipes, and saved recipes without the key, keep cosine with warmup."""
    assert [load_recipe(p, "paper").training.lr_schedule for p in ("vla_adapter", "focusvla")] == ["multistep"] * 2
    paper, tiny = load_recipe("vla_adapter", "paper").training, load_recipe("vla_adapter").training
    assert paper.lr_decay_step == 150000 and tiny.lr_schedule == "cosine"
    overrides = {**SMALL, "lr_schedule": "multistep", "lr_decay_step": 2}
    result = train_bc("vla_adapter", [demos], steps=4, out_dir=tmp_path, batch_size=2, lr=1e-3, overrides=overrides, progress=False)
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cosine = make_scheduler(optimizer, TrainingConfig(lr=1.0, batch_size=1), warmup_steps=2, steps=4)
    assert cosine.get_last_lr() == [0.0]
    with pytest.raises(ValueError, match="'multistep' needs the step to decay at"):
        load_recipe("vla_adapter", "paper", {"lr_decay_step": None})


def test_resume_reproduces_uninterrupted_run(demos: Path, tmp_path: Path) -> None:
    kwargs = dict(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, save_every=3, overrides=SMALL, seed=3, progress=False)
    train_bc("vla_adapter", [demos], out_dir=tmp_path / "straight", **kwargs)

    def crash(agent, step):
        if step == 4:
            raise KeyboardInterrupt  # after the step-3 checkpoint was written
        return {}

    with pytest.raises(KeyboardInterrupt):
        train_bc("vla_adapter", [demos], out_dir=tmp_path / "resumed", eval_fn=crash, eval_every=1, **kwargs)
    assert torch.load(tmp_path / "resumed" / "checkpoint" / "trainer_state.pt", weights_only=False)["step"] == 3
    result = train_bc("vla_adapter", [demos], out_dir=tmp_path / "resumed", resume=True, **kwargs)
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]  # the history before the crash is kept

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_init_from_starts_from_the_trained_agents_weights_and_records_the_lineage(demos: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    train_bc("oft", [demos], steps=3, out_dir=trained, batch_size=4, lr=1e-3, warmup_steps=0, overrides=SMALL, progress=False)
    # lr 0: the fine-tuned weights are exactly the ones it started from
    train_bc("oft", [demos], steps=1, out_dir=tmp_path / "tuned", batch_size=4, lr=0.0, init_from=trained, progress=False)
    train_bc("oft", [demos], steps=1, out_dir=tmp_path / "scratch", batch_size=4, lr=0.0, overrides=SMALL, progress=False)
    start, tuned, scratch = (load_file(tmp_path / name / "model.safetensors") for name in ("trained", "tuned", "scratch"))
    assert tuned.keys() == start.keys()
    assert all(torch.equal(tuned[key], start[key]) for key in start)
    assert not all(torch.equal(scratch[key], start[key]) for key in start)  # the seed alone does not give those weights
    training = load_agent(tmp_path / "tuned").training
    assert training["steps"] == 1 and training["init_from"]["path"] == str(trained)
    assert training["init_from"]["training"]["steps"] == 3


def test_init_from_refuses_another_policy_and_recipe_overrides(demos: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    train_bc("oft", [demos], steps=1, out_dir=trained, batch_size=4, overrides=SMALL, progress=False)
    kwargs = dict(data=[demos], steps=1, out_dir=tmp_path / "tuned", init_from=trained, progress=False)
    with pytest.raises(ValueError, match=rf"--init-from {trained} holds a oft \(tiny\) agent; asked to train vat \(tiny\)"):
        train_bc("vat", **kwargs)
    with pytest.raises(ValueError, match=rf"--init-from {trained} keeps that agent's recipe; drop the recipe overrides \(loss\)"):
        train_bc("oft", overrides={"loss": "l1"}, **kwargs)
    with pytest.raises(FileNotFoundError):
        train_bc("oft", **{**kwargs, "init_from": tmp_path / "missing"})


RESUMABLE = dict(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, save_every=3, overrides=SMALL, seed=3, progress=False)


@pytest.fixture(scope="module")
def straight(demos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted run with the RESUMABLE settings."""
    out = tmp_path_factory.mktemp("straight")
    train_bc("vla_adapter", [demos], out_dir=out, **RESUMABLE)
    return load_file(out / "model.safetensors")


def test_a_kill_at_any_step_of_the_checkpoint_swap_resumes_from_a_checkpoint(demos, straight, tmp_path, monkeypatch) -> None:
    """The step-6 checkpoint replaces the step-3 one; a kill at each of its renames, then --resume."""
    from test_atomic import Killed, KillAt

    from vla_agents.train import bc

    for k in range(1, 5):  # staging -> .new, checkpoint -> .old, .new -> checkpoint, .old removed
        out = tmp_path / f"kill{k}"
        real_save = bc.save_checkpoint

        def save_checkpoint(agent, out_dir, state, *probe):
            if state["step"] < 6:
                return real_save(agent, out_dir, state, *probe)
            with monkeypatch.context() as patch:
                KillAt(patch, k)
                return real_save(agent, out_dir, state, *probe)

        monkeypatch.setattr(bc, "save_checkpoint", save_checkpoint)
        with pytest.raises(Killed):
            train_bc("vla_adapter", [demos], out_dir=out, **RESUMABLE)
        monkeypatch.setattr(bc, "save_checkpoint", real_save)
        trained = []  # the steps the resumed run trains: from the old checkpoint (3) or the new one (6), not from 0
        train_bc("vla_adapter", [demos], out_dir=out, resume=True, eval_every=1,
                 eval_fn=lambda agent, step: trained.append(step) or {}, **RESUMABLE)
        assert trained in ([4, 5, 6], []), f"kill at step {k}: trained {trained}"
        resumed = load_file(out / "model.safetensors")
        assert all(torch.equal(straight[key], resumed[key]) for key in straight), f"kill at step {k}"
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "loss_curve.png", "model.safetensors",
                                                         "norm_stats.json", "tokenizer", "train_log.jsonl"]


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_the_log_grows_as_training_runs_and_a_resume_keeps_it(demos, tmp_path) -> None:
    out, seen = tmp_path / "run", {}

    def crash(agent, step):
        seen[step] = [r["step"] for r in logged(out)]
        if step == 5:
            raise KeyboardInterrupt  # steps 1-4 are logged; the checkpoint is step 3's
        return {}

    with pytest.raises(KeyboardInterrupt):
        train_bc("vla_adapter", [demos], out_dir=out, eval_fn=crash, eval_every=1, **RESUMABLE)
    assert seen == {1: [], 2: [1], 3: [1, 2], 4: [1, 2, 3], 5: [1, 2, 3, 4]}
    assert [r["step"] for r in logged(out)] == [1, 2, 3, 4]
    result = train_bc("vla_adapter", [demos], out_dir=out, resume=True, **RESUMABLE)
    assert logged(out) == result.history and [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_receives_every_step_and_bc_draws_its_loss_curve(demos, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = train_bc("oft", [demos], steps=3, out_dir=out, batch_size=2, warmup_steps=2, overrides=SMALL,
                      progress=False, log_with="tensorboard")
    events = EventAccumulator(str(out / "vla-agents")).Reload()
    for tag in ("loss", "lr", "action_loss"):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [
            (r["step"], pytest.approx(r[tag], rel=1e-6)) for r in result.history], tag
    assert [r["lr"] for r in result.history] == pytest.approx([2.5e-4, 5e-4, 5e-4 * 0.5 * (1 + np.cos(np.pi))], abs=1e-12)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_or_missing_tracker_is_refused_before_training(demos, tmp_path) -> None:
    from accelerate.utils import is_wandb_available

    with pytest.raises(ValueError, match="log_with must be one of tensorboard, wandb or None, got 'mlflow'"):
        train_bc("oft", [demos], steps=1, out_dir=tmp_path / "a", overrides=SMALL, progress=False, log_with="mlflow")
    if not is_wandb_available():
        with pytest.raises(ImportError, match=r"--log-with wandb needs the wandb package, which is not installed: "
                                              r"pip install 'vla-agents\[wandb\]'"):
            train_bc("oft", [demos], steps=1, out_dir=tmp_path / "b", overrides=SMALL, progress=False, log_with="wandb")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_refuses_other_settings_and_says_when_it_starts_over(demos, tmp_path, caplog) -> None:
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="vla_agents.train.bc"):
        train_bc("oft", [demos], out_dir=out, resume=True, steps=3, batch_size=4, save_every=3, overrides=SMALL,
                 progress=False)
    assert f"--resume: no checkpoint in {out / 'checkpoint'}; training starts at step 0" in caplog.text
    for change, error in ((dict(policy="vat"), r"policy='oft' \(asked: 'vat'\)"),
                          (dict(seed=1), r"seed=0 \(asked: 1\)"),
                          (dict(batch_size=8), r"batch_size=4 \(asked: 8\)"),
                          (dict(without_noops=True), r"without_noops=False \(asked: True\)"),
                          (dict(overrides={**SMALL, "loss": "l1"}), r"loss='mse' \(asked: 'l1'\)")):
        kwargs = dict(policy="oft", data=[demos], out_dir=out, resume=True, steps=6, overrides=SMALL, progress=False)
        with pytest.raises(ValueError, match=rf"--resume: the checkpoint in {out / 'checkpoint'} was trained with {error}"):
            train_bc(**{**kwargs, **change})


@pytest.mark.parametrize("flags, error", [
    (["--steps", "0"], "steps must be at least 1, got 0"),
    (["--steps", "-5"], "steps must be at least 1, got -5"),
    (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--save-every", "-1"], "save_every must be at least 0, got -1"),
    (["--eval-every", "5"], r"evaluation during training needs --eval-env, .* together; got None, 5 and 5"),
    (["--out", "."], r"refusing to write into '.' \(.*\): it is the current directory or one of its parents"),
    (["--out", ".."], r"refusing to write into '..' \(.*\): it is the current directory or one of its parents"),
])
def test_bad_train_bc_arguments_are_refused_before_anything_is_written(flags, error, demos, tmp_path, monkeypatch, capsys) -> None:
    from vla_agents.cli import main

    work = tmp_path / "t"
    (work / "d").mkdir(parents=True)
    (work / "a").write_text("mine")
    monkeypatch.chdir(work)
    options = {"--policy": "oft", "--data": str(demos), "--steps": "2", "--out": "out", "--overrides": json.dumps(SMALL)}
    options.update(zip(flags[::2], flags[1::2]))
    assert main(["train", "bc", *[word for option in options.items() for word in option]]) == 2
    assert re.search(error, capsys.readouterr().err)
    assert sorted(p.name for p in work.iterdir()) == ["a", "d"] and (work / "a").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_trainer_state_is_read_without_running_code(demos, tmp_path) -> None:
    out = tmp_path / "run"
    train_bc("oft", [demos], out_dir=out, steps=2, batch_size=4, save_every=2, overrides=SMALL, progress=False)
    state_file = out / "checkpoint" / "trainer_state.pt"
    written = state_file.read_bytes()
    marker = tmp_path / "pwned"
    torch.save({**torch.load(state_file, weights_only=False), "payload": Payload(str(marker))}, state_file)
    with pytest.raises(ValueError, match=r"trainer_state.pt holds objects other than tensors, plain values and numpy "
                                         r"arrays, which would run code when loaded; refusing to open it"):
        train_bc("oft", [demos], out_dir=out, resume=True, steps=4, batch_size=4, overrides=SMALL, progress=False)
    assert not marker.exists()
    state_file.write_bytes(written)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(state_file) == []  # tensors and plain values only
    state = torch.load(state_file, weights_only=True)
    name, key, *rest = state["rng"]["numpy"]  # vla-agents 0.1 kept numpy's key as an array: such a checkpoint resumes
    torch.save({**state, "rng": {**state["rng"], "numpy": (name, np.asarray(key, np.uint32), *rest)}}, state_file)
    result = train_bc("oft", [demos], out_dir=out, resume=True, steps=3, batch_size=4, overrides=SMALL, progress=False)
    assert [r["step"] for r in result.history] == [1, 2, 3]


class Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
