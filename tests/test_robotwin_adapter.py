"""RoboTwin 2.0 adapter and deploy_policy against the exact `get_obs()` / TASK_ENV structures of BENCHMARKS.md section 2."""
from __future__ import annotations

import numpy as np
import pytest

from vla_agents.adapters import ObservationError
from vla_agents.adapters.robotwin import RoboTwinAdapter, chunk_steps, step_limit
from vla_agents.adapters.robotwin_policy import deploy_policy

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


@pytest.fixture(scope="module")
def saved_agents(tmp_path_factory) -> dict[str, str]:
    """Real tiny agents saved with each RoboTwin adapter (and one LIBERO agent), as `train bc` would leave them."""
    from vla_agents.adapters import make_adapter
    from vla_agents.agent import make_agent
    from vla_agents.data.normalization import compute_norm_stats

    root, rng, paths = tmp_path_factory.mktemp("agents"), np.random.default_rng(0), {}
    for name in ("robotwin", "robotwin_ee", "libero"):
        adapter = make_adapter(name)
        stats = compute_norm_stats(rng.normal(size=(50, adapter.action_dim)), rng.normal(size=(50, adapter.proprio_dim)))
        paths[name] = str(make_agent("oft", adapter=name, stats=stats, image_size=32, vit_depth=1, llm_layers=2, backbone_path=None)
                          .save_pretrained(root / name))
    return paths


def run_episode(env: FakeTaskEnv, model) -> int:
    """`script/eval_policy.py`'s loop: reset, then eval until the step limit or success; returns eval calls."""
    deploy_policy.reset_model(model)
    calls = 0
    while env.take_action_cnt < env.step_lim:
        deploy_policy.eval(env, model, env.get_obs())
        calls += 1
        if env.eval_success:
            break
    return calls


def test_eval_with_a_saved_agent_executes_chunks_up_to_step_limit(saved_agents):
    model = deploy_policy.get_model({"ckpt_dir": saved_agents["robotwin"], "left_arm_dim": 6, "right_arm_dim": 6})
    env = FakeTaskEnv(step_lim=20)
    assert run_episode(env, model) == 3  # chunks of 8: 8 + 8, then the last one cut to 4
    assert env.take_action_cnt == 20 and len(env.actions) == 20
    assert all(kind == "qpos" and a.shape == (14,) and np.all(np.isfinite(a)) for a, kind in env.actions)
    np.testing.assert_array_equal(env.actions[16][0], model.act_chunk(robotwin_obs(), env.get_instruction())[0])


def test_eval_with_an_ee_agent_sends_16d_poses_and_stops_on_success(saved_agents):
    model = deploy_policy.get_model({"ckpt_dir": saved_agents["robotwin_ee"], "action_mode": "ee"})
    env = FakeTaskEnv(step_lim=400, success_at=11)
    assert run_episode(env, model) == 2
    assert env.take_action_cnt == 11 and all(kind == "ee" and a.shape == (16,) for a, kind in env.actions)


def test_get_model_rejects_agents_for_another_benchmark_or_action_mode(saved_agents):
    with pytest.raises(ValueError, match="saved with adapter 'libero'; RoboTwin with action_mode 'qpos' needs .*'robotwin'"):
        deploy_policy.get_model({"ckpt_dir": saved_agents["libero"]})
    with pytest.raises(ValueError, match="saved with adapter 'robotwin'; .*action_mode 'ee' needs .*'robotwin_ee'"):
        deploy_policy.get_model({"ckpt_dir": saved_agents["robotwin"], "action_mode": "ee"})
    with pytest.raises(ValueError, match="ckpt_dir"):
        deploy_policy.get_model({"task_name": "x"})
    with pytest.raises(ValueError, match="arm dims"):
        deploy_policy.get_model({"ckpt_dir": "c", "left_arm_dim": 7, "right_arm_dim": 7})


def test_encode_obs_reads_language():
    obs = deploy_policy.encode_obs({**robotwin_obs(), "language": "stack"})
    assert obs.instruction == "stack" and obs.proprio.shape == (14,)


def test_package_exposes_runner_functions():
    import vla_agents.adapters.robotwin_policy as policy

    assert {"get_model", "eval", "reset_model", "encode_obs"} <= set(dir(policy))
