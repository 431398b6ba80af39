"""LiberoAdapter: exact image rotation, proprio layout, action post-processing, input errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_agents.adapters import LiberoAdapter, ObservationError, quat2axisangle

S = math.sqrt(0.5)


def raw_obs(**overrides):
    agent = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    raw = {
        "agentview_image": agent,
        "robot0_eye_in_hand_image": (agent + 100).astype(np.uint8),
        "robot0_eef_pos": np.array([0.1, -0.2, 0.3]),
        "robot0_eef_quat": np.array([S, 0.0, 0.0, S]),  # 90 degrees about x
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
        "robot0_joint_pos": np.zeros(7),
        "language_instruction": "pick up the red cube",
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("quat, expected", [
    ([0, 0, S, S], [0, 0, math.pi / 2]),
    ([S, 0, 0, S], [math.pi / 2, 0, 0]),
    ([0, 1, 0, 0], [0, math.pi, 0]),
    ([0, 0, 0, 1], [0, 0, 0]),
    ([0, 0, 0, 1.0000001], [0, 0, 0]),  # w clipped to 1 -> identity
    ([0, 0, -S, S], [0, 0, -math.pi / 2]),
])
def test_quat2axisangle_hand_computed(quat, expected):
    np.testing.assert_allclose(quat2axisangle(np.array(quat, dtype=np.float64)), expected, atol=1e-6)


def test_quat2axisangle_matches_robosuite_and_does_not_mutate():
    from robosuite.utils.transform_utils import quat2axisangle as robosuite_q2aa

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(200, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.concatenate([quats, [[0, 0, 0, 1.0], [0, 0, 0, -1.0], [1e-9, 0, 0, 1.0], [0.0, 0.0, 0.1, 1.2]]])
    for q in quats:
        before = q.copy()
        np.testing.assert_allclose(quat2axisangle(q), robosuite_q2aa(q.copy()), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(q, before)


def test_observation_exact_values():
    raw = raw_obs()
    obs = LiberoAdapter().observation(raw)
    assert set(obs.images) == set(LiberoAdapter.views) == {"agentview", "eye_in_hand"}
    agent = obs.images["agentview"]
    assert agent.dtype == np.uint8 and agent.shape == (4, 4, 3) and agent.flags["C_CONTIGUOUS"]
    # 180 degree rotation: pixel (r, c) comes from (3 - r, 3 - c)
    np.testing.assert_array_equal(agent[0, 0], raw["agentview_image"][3, 3])
    np.testing.assert_array_equal(agent[0, 3], raw["agentview_image"][3, 0])
    np.testing.assert_array_equal(agent[2, 1], raw["agentview_image"][1, 2])
    np.testing.assert_array_equal(agent[3, 3], [0, 1, 2])
    np.testing.assert_array_equal(obs.images["eye_in_hand"][3, 3], [100, 101, 102])
    assert obs.proprio.dtype == np.float32 and obs.proprio.shape == (LiberoAdapter.proprio_dim,)
    np.testing.assert_allclose(obs.proprio, [0.1, -0.2, 0.3, math.pi / 2, 0, 0, 0.04, -0.04], atol=1e-6)
    assert obs.instruction == "pick up the red cube"


def test_instruction_fallback_and_missing():
    raw = raw_obs()
    del raw["language_instruction"]
    assert LiberoAdapter().observation(raw, instruction="open the drawer").instruction == "open the drawer"
    with pytest.raises(ObservationError, match="instruction"):
        LiberoAdapter().observation(raw)


@pytest.mark.parametrize("key, value, expected", [
    ("agentview_image", np.zeros((4, 4), np.uint8), r"'agentview_image'.*\(H, W, 3\)"),
    ("robot0_eye_in_hand_image", np.zeros((4, 4, 4), np.uint8), r"'robot0_eye_in_hand_image'.*\(H, W, 3\)"),
    ("agentview_image", np.zeros((4, 4, 3), np.float32), r"'agentview_image'.*uint8"),
    ("robot0_eef_pos", np.array([0.0, np.nan, 0.0]), r"'robot0_eef_pos'.*NaN"),
    ("robot0_eef_quat", np.array([0.0, 0.0, 0.0, np.inf]), r"'robot0_eef_quat'.*NaN or inf"),
    ("robot0_gripper_qpos", np.array([0.0, np.inf]), r"'robot0_gripper_qpos'.*NaN or inf"),
    ("robot0_eef_pos", np.zeros(4), r"'robot0_eef_pos'.*length 3"),
    ("robot0_eef_quat", np.zeros(3), r"'robot0_eef_quat'.*length 4"),
    ("robot0_gripper_qpos", np.zeros(1), r"'robot0_gripper_qpos'.*length 2"),
])
def test_bad_observation_names_key(key, value, expected):
    with pytest.raises(ObservationError, match=expected):
        LiberoAdapter().observation(raw_obs(**{key: value}))


def test_missing_key_lists_expected():
    raw = raw_obs()
    del raw["robot0_eef_quat"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['robot0_eef_quat'\].*agentview_image"):
        LiberoAdapter().observation(raw)


def test_action_libero_convention():
    out = LiberoAdapter().action(np.array([0.5, -2.0, 3.0, -0.25, 1.0, -1.0, 0.3]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0.5, -1.0, 1.0, -0.25, 1.0, -1.0, 1.0], np.float32))
    assert LiberoAdapter().action(np.array([0, 0, 0, 0, 0, 0, -0.2]))[6] == -1.0
    assert LiberoAdapter().action(np.zeros(7))[6] == -1.0  # 0 -> open


@pytest.mark.parametrize("g, env_g", [(1.0, -1.0), (0.9, -1.0), (0.1, 1.0), (0.0, 1.0), (0.5, -1.0)])
def test_action_openvla_gripper_is_binarized_and_inverted(g, env_g):
    out = LiberoAdapter(gripper_convention="openvla").action(np.array([0.1, 0, 0, 0, 0, 0, g]))
    assert out[6] == env_g
    assert out[0] == np.float32(0.1)


@pytest.mark.parametrize("action, expected", [
    (np.zeros(6), r"shape \(7,\)"),
    (np.zeros((1, 7)), r"shape \(7,\)"),
    (np.array([0, 0, np.nan, 0, 0, 0, 1]), "NaN"),
])
def test_bad_action(action, expected):
    with pytest.raises(ValueError, match=expected):
        LiberoAdapter().action(action)


def test_bad_gripper_convention():
    with pytest.raises(ValueError, match="gripper_convention"):
        LiberoAdapter(gripper_convention="rlds")
