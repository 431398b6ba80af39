"""SIMPLER adapter against the exact ManiSkill2 / ManiSkill3 observation structures of BENCHMARKS.md section 1."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from vla_agents.adapters import ObservationError
from vla_agents.adapters.simpler import (
    SIMPLER_TASKS,
    SimplerAdapter,
    StickyGripper,
    episode_success,
    grasp_stats,
    instruction_of,
    rpy_to_axis_angle,
)


def ms2_obs(camera: str, h: int, w: int) -> dict:
    """ManiSkill2_real2sim rgbd obs: agent / extra / camera_param / image[cam]{rgb uint8, depth f32, Segmentation}."""
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    dof = 8 if camera == "3rd_view_camera" else 11  # WidowX: six arm joints, two fingers
    return {
        "agent": {"qpos": np.zeros(dof, np.float32), "qvel": np.zeros(dof, np.float32), "base_pose": np.zeros(7)},
        "extra": {"tcp_pose": np.zeros(7, np.float32)},
        "camera_param": {camera: {"extrinsic_cv": np.eye(4)[:3], "cam2world_gl": np.eye(4), "intrinsic_cv": np.eye(3)}},
        "image": {camera: {"rgb": rgb, "depth": np.zeros((h, w, 1), np.float32),
                           "Segmentation": np.zeros((h, w, 4), np.uint32)}},
    }


def ms3_obs(num_envs: int = 2) -> dict:
    """ManiSkill3 port obs (rgb+segmentation): batched torch tensors with a leading num_envs dim."""
    rgb = torch.stack([torch.full((480, 640, 3), 10 * (i + 1), dtype=torch.uint8) for i in range(num_envs)])
    rgb[1, 0, 0] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    cam = "3rd_view_camera"
    return {
        "agent": {"qpos": torch.zeros(num_envs, 8), "qvel": torch.zeros(num_envs, 8),
                  "controller": {"arm": {"target_pose": torch.zeros(num_envs, 7)}}},
        "sensor_param": {cam: {"extrinsic_cv": torch.zeros(num_envs, 3, 4), "cam2world_gl": torch.zeros(num_envs, 4, 4),
                               "intrinsic_cv": torch.zeros(num_envs, 3, 3)}},
        "sensor_data": {cam: {"rgb": rgb, "segmentation": torch.zeros(num_envs, 480, 640, 1, dtype=torch.int16)}},
    }


def test_ms2_google_robot_overhead_camera_pixels_unchanged():
    raw = ms2_obs("overhead_camera", 512, 640)
    obs = SimplerAdapter("google_robot").observation(raw, "pick coke can")
    assert list(obs.images) == ["overhead_camera"]
    np.testing.assert_array_equal(obs.images["overhead_camera"], raw["image"]["overhead_camera"]["rgb"])
    assert obs.images["overhead_camera"].dtype == np.uint8 and obs.images["overhead_camera"].shape == (512, 640, 3)
    assert obs.proprio.shape == (0,) and obs.proprio.dtype == np.float32  # no Google Robot state is read
    assert obs.instruction == "pick coke can"


def test_ms2_widowx_uses_3rd_view_camera_and_joint_positions():
    raw = ms2_obs("3rd_view_camera", 480, 640)
    raw["agent"]["qpos"] = np.arange(8, dtype=np.float64)
    obs = SimplerAdapter("widowx").observation(raw, "put carrot on plate")
    np.testing.assert_array_equal(obs.images["3rd_view_camera"], raw["image"]["3rd_view_camera"]["rgb"])
    assert obs.proprio.dtype == np.float32 and obs.proprio.tolist() == list(range(8))


def test_ms3_batched_torch_selects_env_index():
    raw = ms3_obs()
    adapter = SimplerAdapter("widowx")
    first = adapter.observation(raw, "put carrot on plate")
    second = adapter.observation(raw, "put carrot on plate", index=1)
    assert isinstance(second.images["3rd_view_camera"], np.ndarray)
    assert second.images["3rd_view_camera"].shape == (480, 640, 3) and second.images["3rd_view_camera"].dtype == np.uint8
    assert (first.images["3rd_view_camera"] == 10).all()
    assert second.images["3rd_view_camera"][0, 0].tolist() == [1, 2, 3]
    assert second.images["3rd_view_camera"][1, 1].tolist() == [20, 20, 20]
    with pytest.raises(ObservationError, match="index 2"):
        adapter.observation(raw, "x", index=2)
    raw["agent"]["qpos"][1] = torch.arange(8)
    assert adapter.observation(raw, "x", index=1).proprio.tolist() == list(range(8))
    assert not adapter.observation(raw, "x").proprio.any()
    del raw["agent"]["qpos"]
    with pytest.raises(ObservationError, match="'agent/qpos'"):
        adapter.observation(raw, "x")


def test_bad_inputs_name_the_key():
    with pytest.raises(ObservationError, match="image/overhead_camera/rgb"):
        SimplerAdapter("google_robot").observation(ms2_obs("3rd_view_camera", 480, 640), "x")
    with pytest.raises(ObservationError, match="'image' .*'sensor_data'"):
        SimplerAdapter("widowx").observation({"agent": {}}, "x")
    bad = ms2_obs("3rd_view_camera", 480, 640)
    bad["image"]["3rd_view_camera"]["rgb"] = bad["image"]["3rd_view_camera"]["rgb"].astype(np.float32)
    with pytest.raises(ObservationError, match="uint8"):
        SimplerAdapter("widowx").observation(bad, "x")
    unbatched = ms3_obs()
    unbatched["sensor_data"]["3rd_view_camera"]["rgb"] = unbatched["sensor_data"]["3rd_view_camera"]["rgb"][0]
    with pytest.raises(ObservationError, match="sensor_data/3rd_view_camera/rgb"):
        SimplerAdapter("widowx").observation(unbatched, "x")
    with pytest.raises(ValueError, match="robot"):
        SimplerAdapter("franka")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        SimplerAdapter("widowx").action(np.zeros(6))


def test_rpy_yaw_quarter_turn_is_z_axis_angle():
    np.testing.assert_allclose(rpy_to_axis_angle([0, 0, math.pi / 2]), [0, 0, math.pi / 2], atol=1e-12)
    np.testing.assert_array_equal(rpy_to_axis_angle([0, 0, 0]), [0, 0, 0])


def test_rpy_compound_matches_scipy_extrinsic_xyz():
    rpy = [0.3, -0.2, 0.5]
    np.testing.assert_allclose(rpy_to_axis_angle(rpy), Rotation.from_euler("xyz", rpy).as_rotvec(), atol=1e-12)


def test_rpy_large_rotation_same_rotation_as_scipy():
    """transforms3d keeps angles in [0, 2pi), so the vector may differ from scipy's but not the rotation."""
    rpy = [3.0, 2.5, -3.0]
    ours = Rotation.from_rotvec(rpy_to_axis_angle(rpy))
    assert (ours.inv() * Rotation.from_euler("xyz", rpy)).magnitude() < 1e-9


def test_sticky_gripper_hand_computed_sequence():
    sticky = StickyGripper()
    opens = [1, 1] + [0] * 16 + [1] * 16
    expected = [0, 0] + [1] * 15 + [0] + [-1] * 15 + [0]
    assert [sticky(float(o)) for o in opens] == expected


def test_sticky_gripper_ignores_changes_while_held_and_reset_clears():
    sticky = StickyGripper()
    out = [sticky(o) for o in (1.0, 0.0, 1.0, 1.0)]
    assert out == [0, 1, 1, 1]  # the reopen at step 2 is swallowed by the held close
    sticky.reset()
    assert sticky(0.0) == 0  # first step after reset is relative 0 again
    assert sticky(0.4) == pytest.approx(-0.4)  # below threshold: passed through, not held


def test_google_robot_action_axis_angle_and_sticky():
    adapter = SimplerAdapter("google_robot")
    first = adapter.action([0.01, 0.02, 0.03, 0.1, 0.2, 0.3, 1.0])
    np.testing.assert_allclose(first, [0.01, 0.02, 0.03, 0.1, 0.2, 0.3, 0.0])
    assert adapter.action([0, 0, 0, 0, 0, 0, 0.0])[6] == 1.0  # close, relative
    assert adapter.action([0, 0, 0, 0, 0, 0, 1.0])[6] == 1.0  # still held
    adapter.reset()
    assert adapter.action([0, 0, 0, 0, 0, 0, 0.0])[6] == 0.0


def test_widowx_action_rpy_and_absolute_gripper():
    adapter = SimplerAdapter("widowx", rotation_format="rpy")
    env_action = adapter.action([0.01, 0, 0, 0, 0, math.pi / 2, 0.7])
    np.testing.assert_allclose(env_action, [0.01, 0, 0, 0, 0, math.pi / 2, 1.0], atol=1e-12)
    assert adapter.action([0, 0, 0, 0, 0, 0, 0.5])[6] == -1.0  # strictly > 0.5 opens
    assert adapter.action([0, 0, 0, 0, 0, 0, 0.2])[6] == -1.0


def test_unnormalization_gaussian_and_bounds():
    gauss = SimplerAdapter("widowx", stats={"mean": np.full(7, 0.5), "std": np.full(7, 2.0)})
    np.testing.assert_allclose(gauss.action(np.full(7, 0.25))[:6], np.full(6, 1.0))
    bounds = {"q01": -np.ones(7) * 0.05, "q99": np.ones(7) * 0.05, "mask": [True] * 6 + [False]}
    out = SimplerAdapter("widowx", stats=bounds).action([1, -1, 0, 0, 0, 0, 0.9])
    np.testing.assert_allclose(out, [0.05, -0.05, 0, 0, 0, 0, 1.0], atol=1e-12)  # gripper dim left raw (0.9 -> open)
    with pytest.raises(ValueError, match="mean/std or q01/q99"):
        SimplerAdapter("widowx", stats={"min": 0}).action(np.zeros(7))


class _MS2Env:
    def get_language_instruction(self) -> str:
        return "open top drawer"


class _MS3Env:
    class unwrapped:  # noqa: N801 - mimics gym's attribute
        @staticmethod
        def get_language_instruction() -> list[str]:
            return ["put carrot on plate", "put the spoon on the towel"]


def test_instruction_of_str_and_per_env_list():
    assert instruction_of(_MS2Env()) == "open top drawer"
    assert instruction_of(_MS3Env(), index=1) == "put the spoon on the towel"
    with pytest.raises(AttributeError, match="get_language_instruction"):
        instruction_of(object())


def test_success_is_last_step_and_grasp_stats():
    infos = [{"success": False, "is_src_obj_grasped": False, "consecutive_grasp": False},
             {"success": True, "is_src_obj_grasped": True, "consecutive_grasp": False},
             {"success": False, "is_src_obj_grasped": True, "consecutive_grasp": True},
             {"success": False, "is_src_obj_grasped": True, "consecutive_grasp": True}]
    assert episode_success(infos) is False  # succeeded mid-episode, not at the end
    assert episode_success(infos[:2]) is True
    assert grasp_stats(infos) == {"is_src_obj_grasped": 0.75, "is_src_obj_grasped_ever": 1.0,
                                  "consecutive_grasp": 0.5, "consecutive_grasp_ever": 1.0}
    batched = [{"success": torch.tensor([False, True]), "is_grasped": torch.tensor([True, False])}]
    assert episode_success(batched, index=1) is True
    assert grasp_stats(batched, index=1) == {"is_grasped": 0.0, "is_grasped_ever": 0.0}


def test_task_table_matches_reference():
    assert len(SIMPLER_TASKS) == 21
    assert SIMPLER_TASKS["google_robot_pick_coke_can"].env_id == "GraspSingleOpenedCokeCanInScene-v0"
    assert SIMPLER_TASKS["google_robot_pick_vertical_coke_can"].kwargs == {"laid_vertically": True}
    assert SIMPLER_TASKS["google_robot_place_apple_in_closed_top_drawer"].max_episode_steps == 200
    assert SIMPLER_TASKS["widowx_put_eggplant_in_basket"] == (
        "PutEggplantInBasketScene-v0", 120, "widowx", "PutEggplantInBasketScene-v1", {})
    assert all(t.ms3_env_id is None for name, t in SIMPLER_TASKS.items() if name.startswith("google_robot"))
    assert {t.max_episode_steps for n, t in SIMPLER_TASKS.items() if "drawer" in n and "apple" not in n} == {113}
