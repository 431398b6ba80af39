"""RoboTwin 2.0 adapter and deploy_policy against the exact `get_obs()` / TASK_ENV structures of BENCHMARKS.md section 2."""
from __future__ import annotations

import numpy as np
import pytest

import vla_agents
from vla_agents.adapters import ObservationError
from vla_agents.adapters.robotwin import RoboTwinAdapter, chunk_steps, step_limit
from vla_agents.adapters.robotwin_policy import deploy_policy
from vla_agents.types import Observation

LEFT_ARM = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
RIGHT_ARM = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]


def camera(value: int) -> dict:
    return {"intrinsic_cv": np.eye(3), "extrinsic_cv": np.eye(4)[:3], "cam2world_gl": np.eye(4),
            "rgb": np.full((240, 320, 3), value, dtype=np.uint8)}


def robotwin_obs() -> dict:
    """`envs/_base_task.py::get_obs` for aloha-agilex with D435 cameras."""
    return {
        "observation": {"head_camera": camera(1), "left_camera": camera(2), "right_camera": camera(3)},
        "joint_action": {"left_arm": LEFT_ARM, "left_gripper": 1.0, "right_arm": RIGHT_ARM, "right_gripper": 0.0,
                         "vector": np.array(LEFT_ARM + [1.0] + RIGHT_ARM + [0.0])},
        "endpose": {"left_endpose": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], "left_gripper": 1.0,
                    "right_endpose": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], "right_gripper": 0.0},
        "pointcloud": [],
    }


def test_observation_images_and_14d_state():
    obs = RoboTwinAdapter().observation(robotwin_obs(), "Grab the hammer and beat the block.")
    assert list(obs.images) == ["head_camera", "left_camera", "right_camera"]
    for value, name in enumerate(obs.images, start=1):
        assert obs.images[name].shape == (240, 320, 3) and obs.images[name].dtype == np.uint8
        assert (obs.images[name] == value).all()
    assert obs.proprio.dtype == np.float32
    np.testing.assert_array_equal(obs.proprio, np.array(LEFT_ARM + [1.0] + RIGHT_ARM + [0.0], dtype=np.float32))
    assert obs.proprio[6] == 1.0 and obs.proprio[13] == 0.0  # grippers: left open, right closed
    assert obs.instruction == "Grab the hammer and beat the block."


def test_camera_subset():
    obs = RoboTwinAdapter(cameras=("head_camera",)).observation(robotwin_obs(), "x")
    assert list(obs.images) == ["head_camera"]


def test_bad_observation_names_the_key():
    raw = robotwin_obs()
    del raw["observation"]["left_camera"]
    with pytest.raises(ObservationError, match="observation/left_camera/rgb"):
        RoboTwinAdapter().observation(raw, "x")
    raw = robotwin_obs()
    raw["observation"]["head_camera"]["rgb"] = raw["observation"]["head_camera"]["rgb"].astype(np.float32)
    with pytest.raises(ObservationError, match="observation/head_camera/rgb.*uint8"):
        RoboTwinAdapter().observation(raw, "x")
    raw = robotwin_obs()
    raw["joint_action"]["vector"] = np.zeros(16)
    with pytest.raises(ObservationError, match=r"joint_action/vector.*\(14,\)"):
        RoboTwinAdapter().observation(raw, "x")
    raw = robotwin_obs()
    del raw["joint_action"]
    with pytest.raises(ObservationError, match="joint_action/vector"):
        RoboTwinAdapter().observation(raw, "x")


def test_action_shapes_per_mode():
    qpos = np.arange(14, dtype=np.float32)
    out = RoboTwinAdapter().action(qpos)
    assert out.dtype == np.float64 and out.shape == (14,)
    np.testing.assert_array_equal(out, qpos)
    assert RoboTwinAdapter("ee").action(np.zeros(16)).shape == (16,)
    with pytest.raises(ValueError, match=r"'qpos' action must have shape \(14,\)"):
        RoboTwinAdapter().action(np.zeros(16))
    with pytest.raises(ValueError, match=r"'ee' action must have shape \(16,\)"):
        RoboTwinAdapter("ee").action(np.zeros(14))
    with pytest.raises(ValueError, match="non-finite"):
        RoboTwinAdapter().action(np.full(14, np.nan))
    with pytest.raises(ValueError, match="action_mode"):
        RoboTwinAdapter("delta_ee")  # type: ignore[arg-type]


@pytest.mark.parametrize(("length", "limit", "taken", "expected"),
                         [(25, 400, 0, 25), (25, 400, 390, 10), (25, 400, 400, 0), (25, 400, 410, 0), (0, 400, 0, 0)])
def test_chunk_steps_respects_step_limit(length, limit, taken, expected):
    assert chunk_steps(np.zeros((length, 14)), limit, taken) == expected


def test_step_limits_from_config():
    assert step_limit("beat_block_hammer") == 400
    assert step_limit("blocks_ranking_rgb") == 1200
    assert step_limit("some_unlisted_task") == 1000


class FakeTaskEnv:
    """Stand-in for RoboTwin's TASK_ENV: counts `take_action` calls against `step_lim` like `_base_task.py`."""

    def __init__(self, step_lim: int, success_at: int | None = None):
        self.step_lim, self.success_at = step_lim, success_at
        self.take_action_cnt = 0
        self.eval_success = False
        self.actions: list[tuple[np.ndarray, str]] = []

    def get_obs(self) -> dict:
        return robotwin_obs()

    def get_instruction(self) -> str:
        return "Grab the hammer and beat the block."

    def take_action(self, action: np.ndarray, action_type: str = "qpos") -> None:
        if self.take_action_cnt == self.step_lim:
            return
        self.actions.append((action, action_type))
        self.take_action_cnt += 1
        if self.take_action_cnt == self.success_at:
            self.eval_success = True


class FixedChunkAgent:
    def __init__(self, horizon: int = 25):
        self.chunk = np.tile(np.arange(14, dtype=np.float32), (horizon, 1))
        self.resets = 0
        self.seen: list[Observation] = []

    def reset(self) -> None:
        self.resets += 1

    def act_chunk(self, observation: Observation) -> np.ndarray:
        self.seen.append(observation)
        return self.chunk


def run_episode(env: FakeTaskEnv, model: deploy_policy.RoboTwinModel) -> int:
    """`script/eval_policy.py`'s loop: reset, then eval until the step limit or success; returns eval calls."""
    deploy_policy.reset_model(model)
    calls = 0
    while env.take_action_cnt < env.step_lim:
        deploy_policy.eval(env, model, env.get_obs())
        calls += 1
        if env.eval_success:
            break
    return calls


def test_eval_executes_chunks_up_to_step_limit():
    agent = FixedChunkAgent(horizon=25)
    model = deploy_policy.RoboTwinModel(agent=agent, adapter=RoboTwinAdapter())
    env = FakeTaskEnv(step_lim=60)
    assert run_episode(env, model) == 3  # 25 + 25 + 10
    assert env.take_action_cnt == 60 and len(env.actions) == 60
    assert agent.resets == 1 and len(agent.seen) == 3
    assert all(kind == "qpos" for _, kind in env.actions)
    np.testing.assert_array_equal(env.actions[-1][0], np.arange(14))
    seen = agent.seen[0]
    assert seen.instruction == "Grab the hammer and beat the block."
    assert seen.proprio.shape == (14,) and set(seen.images) == {"head_camera", "left_camera", "right_camera"}


def test_eval_stops_chunk_on_success():
    agent = FixedChunkAgent(horizon=25)
    env = FakeTaskEnv(step_lim=400, success_at=30)
    assert run_episode(env, deploy_policy.RoboTwinModel(agent, RoboTwinAdapter())) == 2
    assert env.take_action_cnt == 30


def test_eval_rejects_wrong_action_dim():
    agent = FixedChunkAgent()
    agent.chunk = np.zeros((5, 7))
    with pytest.raises(ValueError, match=r"shape \(14,\)"):
        deploy_policy.eval(FakeTaskEnv(100), deploy_policy.RoboTwinModel(agent, RoboTwinAdapter()), robotwin_obs())


def test_encode_obs_reads_language():
    obs = deploy_policy.encode_obs({**robotwin_obs(), "language": "stack"})
    assert obs.instruction == "stack" and obs.proprio.shape == (14,)


def test_get_model_loads_checkpoint_lazily(monkeypatch):
    loaded: list[str] = []

    def fake_load_agent(path: str) -> FixedChunkAgent:
        loaded.append(path)
        return FixedChunkAgent()

    monkeypatch.setitem(vars(vla_agents), "load_agent", fake_load_agent)  # no getattr: vla_agents.agent may not exist yet
    usr_args = {"ckpt_dir": "ckpts/robotwin", "task_name": "beat_block_hammer", "left_arm_dim": 6, "right_arm_dim": 6,
                "action_mode": "ee", "cameras": ["head_camera"]}
    model = deploy_policy.get_model(usr_args)
    assert loaded == ["ckpts/robotwin"]
    assert model.adapter.action_mode == "ee" and model.adapter.cameras == ("head_camera",)
    with pytest.raises(ValueError, match="ckpt_dir"):
        deploy_policy.get_model({"task_name": "x"})
    with pytest.raises(ValueError, match="arm dims"):
        deploy_policy.get_model({"ckpt_dir": "c", "left_arm_dim": 7, "right_arm_dim": 7})


def test_package_exposes_runner_functions():
    import vla_agents.adapters.robotwin_policy as policy

    assert {"get_model", "eval", "reset_model", "encode_obs"} <= set(dir(policy))
