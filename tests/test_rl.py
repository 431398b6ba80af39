"""Residual RL: the wrapper's action arithmetic, one VLA call per chunk, SB3 compatibility,
a tiny training run, and the saved RL agent reloading to act identically. Full mode: test_full_rl.py."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch
from conftest import ActionRecorder
from stable_baselines3.common.env_checker import check_env

from conftest import SMALL
from vla_agents.agent import load_agent, make_agent
from vla_agents.data.normalization import compute_norm_stats
from vla_agents.sim import make_env
from vla_agents.residual import ResidualAgent
from vla_agents.train.residual import ResidualEnv
from vla_agents.train.rl import RLConfig, train_rl

ENV = "embedded/lift"
ENV_KWARGS = {"image_size": 32}


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    stats = compute_norm_stats(rng.normal(scale=0.3, size=(100, 7)), rng.normal(size=(100, 8)))
    return make_agent("vla_adapter", stats=stats, **SMALL).save_pretrained(tmp_path_factory.mktemp("rl") / "bc")


def test_wrapper_adds_scaled_clipped_residual_and_calls_vla_once_per_chunk(agent_dir) -> None:
    base, reference = load_agent(agent_dir), load_agent(agent_dir)  # same weights, independent queues
    recorder = ActionRecorder(make_env(ENV, **ENV_KWARGS))
    env = ResidualEnv(recorder, base, scale=0.1)
    rng = np.random.default_rng(0)
    calls = base.model_calls
    obs, _ = env.reset(seed=0)
    reference.reset()
    expected_base = reference.act(recorder.last_obs)
    for _ in range(16):
        np.testing.assert_allclose(obs[8:15], expected_base, atol=1e-5)
        residual = rng.uniform(-2.0, 2.0, 7).astype(np.float32)  # outside [-1, 1] on purpose
        obs, _, terminated, truncated, info = env.step(residual)
        np.testing.assert_allclose(recorder.actions[-1], np.clip(expected_base + 0.1 * np.clip(residual, -1, 1), -1, 1),
                                   atol=1e-5)
        assert not (terminated or truncated)
        expected_base = reference.act(recorder.last_obs)
    assert base.model_calls - calls == 3  # reset, then steps 8 and 16 (chunk 8, open-loop)
    assert obs.shape == env.observation_space.shape == (8 + 7 + 32 + 1,)
    env.close()


def test_sb3_check_env_passes(agent_dir) -> None:
    env = ResidualEnv(make_env(ENV, **ENV_KWARGS), load_agent(agent_dir), reward="shaped", progressive_explore=100)
    check_env(env, warn=True)
    env.close()


def test_train_rl_writes_curve_and_a_reloadable_agent(agent_dir, tmp_path) -> None:
    out = tmp_path / "rl"
    trained = train_rl(RLConfig(agent_dir, ENV, algo="sac", steps=64, out_dir=out, n_envs=1, eval_episodes=1,
                       env_kwargs=ENV_KWARGS, save_every=40), progress=False)
    assert (out / "curve.png").stat().st_size > 0
    log = json.loads((out / "rl_log.json").read_text())
    assert [e["step"] for e in log["eval"]] == [0, 64]
    # the periodic checkpoint: written once (at 40 env steps; the next would be at 80), loadable, no temp left
    assert json.loads((out / "checkpoint" / "rl_log.json").read_text())["env_steps"] == 40
    assert isinstance(load_agent(out / "checkpoint"), ResidualAgent)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    reloaded = load_agent(out)
    assert isinstance(reloaded, ResidualAgent) and json.loads((out / "residual.json").read_text())["scale"] == 0.5
    assert reloaded.policy_name == f"{reloaded.base.policy_name}+residual-sac"

    env = make_env(ENV, **ENV_KWARGS)
    raw, _ = env.reset(seed=3)
    trained.reset()
    reloaded.reset()
    for _ in range(10):
        a, b = trained.act(raw), reloaded.act(raw)
        np.testing.assert_allclose(a, b, atol=1e-5)
        raw, *_ = env.step(a)
    env.close()


def test_cli_train_rl_ppo_with_subprocess_envs(agent_dir, tmp_path) -> None:
    from vla_agents.cli import main

    out = tmp_path / "ppo"
    assert main(["train", "rl", "--agent", str(agent_dir), "--env", ENV, "--steps", "32",
                 "--n-envs", "2", "--eval-episodes", "0", "--reward", "shaped", "--log-std-init", "-2.5",
                 "--out", str(out)]) == 0
    agent = load_agent(out)
    assert (out / "curve.png").exists() and agent.algo == "ppo"  # the default algorithm
    # ResiP's start: a narrow Gaussian (one 32-step update moves the log-std by far less than 0.1)
    np.testing.assert_allclose(agent.policy.policy.log_std.detach().numpy(), -2.5, atol=0.1)
    assert json.loads((out / "rl_log.json").read_text())["config"]["log_std_init"] == -2.5
    assert main(["train", "rl", "--agent", str(agent_dir), "--env", ENV, "--mode", "full", "--algo", "sac",
                 "--steps", "8", "--out", str(tmp_path / "full")]) == 2  # full mode is PPO only
    with pytest.raises(ValueError, match="save_every is a period in env steps, 0 for never; got -5"):
        train_rl(RLConfig(agent_dir, ENV, steps=8, out_dir=tmp_path / "bad", save_every=-5), progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was built or written


def test_training_continues_a_saved_residual_with_its_own_weights_algo_and_scale(agent_dir, tmp_path, monkeypatch) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where SB3's default logger would make SB3-<time>
    first = train_rl(RLConfig(agent_dir, ENV, algo="ppo", steps=32, out_dir=tmp_path / "first", n_envs=1, eval_episodes=0,
                     env_kwargs=ENV_KWARGS, scale=0.3), progress=False)
    with torch.no_grad():
        first.policy.policy.action_net.bias.fill_(0.5)  # a mark a fresh policy could not have
    first.save_pretrained(tmp_path / "first")
    # lr 0: the continued run's update leaves the loaded weights as they were
    continued = train_rl(RLConfig(tmp_path / "first", ENV, steps=16, out_dir=tmp_path / "second", n_envs=1, eval_episodes=0,
                         env_kwargs=ENV_KWARGS, lr=0.0), progress=False)
    assert continued.algo == "ppo" and continued.scale == 0.3  # from the saved residual, not the defaults
    np.testing.assert_array_equal(continued.policy.policy.action_net.bias.detach().numpy(), np.full(7, 0.5, np.float32))
    config = json.loads((tmp_path / "second" / "rl_log.json").read_text())["config"]
    assert config["continued_from"] == str(tmp_path / "first") and config["algo"] == "ppo"
    assert isinstance(load_agent(tmp_path / "second"), ResidualAgent)
    assert list(temp.iterdir()) == []  # PPO's statistics stay in memory (rl_log.json); no log folder is left
    with pytest.raises(ValueError, match="trained with 'ppo'; it cannot continue with 'sac'"):
        train_rl(RLConfig(tmp_path / "first", ENV, algo="sac", steps=8, out_dir=tmp_path / "bad", n_envs=1,
                 env_kwargs=ENV_KWARGS), progress=False)
    with pytest.raises(ValueError, match="is a residual agent; full mode fine-tunes a VLA agent folder"):
        train_rl(RLConfig(tmp_path / "first", ENV, mode="full", steps=8, out_dir=tmp_path / "bad", n_envs=1), progress=False)


def test_a_residual_observing_privileged_state_sees_it_saves_it_and_needs_it(agent_dir, tmp_path) -> None:
    recorder = ActionRecorder(make_env(ENV, **ENV_KWARGS))
    env = ResidualEnv(recorder, load_agent(agent_dir), state_keys=["object-state"])
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (8 + 7 + 32 + 1 + 10,)
    np.testing.assert_allclose(obs[-10:], recorder.last_obs["object-state"], rtol=1e-6)  # the raw entry, appended
    obs, *_ = env.step(np.zeros(7, np.float32))
    np.testing.assert_allclose(obs[-10:], recorder.last_obs["object-state"], rtol=1e-6)
    env.close()
    with pytest.raises(ValueError, match=r"state keys \['cube_pos'\] are not vector entries .*\['object-state'"):
        ResidualEnv(make_env(ENV, **ENV_KWARGS), load_agent(agent_dir), state_keys=["cube_pos"])

    trained = train_rl(RLConfig(agent_dir, ENV, steps=16, out_dir=tmp_path / "state", n_envs=1, eval_episodes=0,
                       env_kwargs=ENV_KWARGS, state_keys=["object-state"]), progress=False)
    assert trained.state_sizes == {"object-state": 10}
    reloaded = load_agent(tmp_path / "state")
    assert reloaded.state_sizes == {"object-state": 10} and reloaded.obs_dim == 58
    env = make_env(ENV, **ENV_KWARGS)
    raw, _ = env.reset(seed=4)
    trained.reset()
    reloaded.reset()
    np.testing.assert_array_equal(trained.act(raw), reloaded.act(raw))
    blind = {k: v for k, v in raw.items() if k != "object-state"}
    with pytest.raises(KeyError, match="observes privileged state 'object-state', which the observation lacks"):
        reloaded.act(blind)
    with pytest.raises(ValueError, match="state 'object-state' has 3 numbers; this residual was trained on 10"):
        reloaded.act({**raw, "object-state": np.zeros(3)})
    env.close()
    with pytest.raises(ValueError, match="full mode's actor is the VLA"):
        train_rl(RLConfig(agent_dir, ENV, mode="full", steps=8, out_dir=tmp_path / "bad", state_keys=["object-state"]), progress=False)


@pytest.mark.parametrize("change, error", [
    (dict(steps=0), "steps must be at least 1, got 0"),
    (dict(steps=-100), "steps must be at least 1, got -100"),
    (dict(eval_episodes=-3), "eval_episodes must be at least 0, got -3"),
    (dict(scale=-1.0), r"scale \(of the residual's correction\) must be > 0, got -1.0"),
    (dict(device="cuda"), "device 'cuda': torch sees no CUDA GPU here"),
    (dict(n_envs=0), "n_envs must be at least 1, got 0"),
    (dict(n_envs=-2), "n_envs must be at least 1, got -2"),
])
def test_bad_train_rl_arguments_are_refused_before_anything_starts(agent_dir, tmp_path, change, error) -> None:
    if change.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    kwargs = dict(steps=8, out_dir=tmp_path / "out", n_envs=1, eval_episodes=0, env_kwargs=ENV_KWARGS)
    with pytest.raises(ValueError, match=error):
        train_rl(RLConfig(agent_dir, ENV, **{**kwargs, **change}), progress=False)
    assert list(tmp_path.iterdir()) == []


class Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_residual_folder_opens_without_unpickling_in_both_formats(agent_dir, tmp_path, monkeypatch) -> None:
    import base64
    import pickle
    import zipfile

    import stable_baselines3

    trained = train_rl(RLConfig(agent_dir, ENV, algo="ppo", steps=16, out_dir=tmp_path / "new", n_envs=1, eval_episodes=0,
                       env_kwargs=ENV_KWARGS), progress=False)
    folder = tmp_path / "new"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("residual")) == [
        "residual.json", "residual_policy.safetensors", "residual_trainer_state.pt"]
    settings = json.loads((folder / "residual.json").read_text())
    assert settings["format_version"] == 2 and settings["sb3_kwargs"]["policy_kwargs"] == {"log_std_init": -1.5}
    assert torch.serialization.get_unsafe_globals_in_checkpoint(folder / "residual_trainer_state.pt") == []

    # a folder of vla-agents 0.1: SB3's zip, here with code in its pickled observation space
    legacy = tmp_path / "legacy"
    (legacy / "base").mkdir(parents=True)
    trained.base.save_pretrained(legacy / "base")
    trained.policy.save(str(legacy / "residual_policy.zip"))
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(legacy / "residual_policy.zip") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(members["data"])
    data["observation_space"][":serialized:"] = base64.b64encode(pickle.dumps(Payload(str(marker)))).decode()
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(legacy / "residual_policy.zip", "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    old_settings = {k: v for k, v in settings.items() if k not in ("format_version", "sb3_kwargs", "sha256")}
    (legacy / "residual.json").write_text(json.dumps({**old_settings, "policy": "residual_policy.zip"}))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("SB3's load unpickles the archive")

    monkeypatch.setattr(stable_baselines3.PPO, "load", no_unpickling)
    env = make_env(ENV, **ENV_KWARGS)
    raw, _ = env.reset(seed=5)
    env.close()
    for path in (folder, legacy):
        agent = load_agent(path)
        agent.reset()
        trained.reset()
        np.testing.assert_array_equal(agent.act(raw), trained.act(raw))
    assert not marker.exists()
    again = train_rl(RLConfig(legacy, ENV, steps=8, out_dir=tmp_path / "continued", n_envs=1, eval_episodes=0,
                     env_kwargs=ENV_KWARGS, lr=0.0), progress=False)  # a legacy residual continues training too
    np.testing.assert_array_equal(again.policy.policy.log_std.detach().numpy(), trained.policy.policy.log_std.detach().numpy())
    assert not marker.exists()


def test_sb3_tensorboard_log_is_passed_through(agent_dir, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_rl(RLConfig(agent_dir, ENV, algo="ppo", steps=32, out_dir=tmp_path / "rl", n_envs=1, eval_episodes=0,
                      env_kwargs=ENV_KWARGS, tensorboard_log=tmp_path / "tb"), progress=False)
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["PPO_1"]  # SB3's own layout: <ALGO>_<run>
    tags = EventAccumulator(str(tmp_path / "tb" / "PPO_1")).Reload().Tags()["scalars"]
    assert {"train/value_loss", "train/learning_rate"} <= set(tags), tags
