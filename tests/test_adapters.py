"""Benchmark adapters as plug-ins: every registered adapter through a real tiny agent, its demonstrations
through the dataset, its state through `VLAAgent.reset`, and the errors for another benchmark's input."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from test_robotwin_adapter import robotwin_obs
from test_simpler_adapter import ms2_obs, ms3_obs

from conftest import SMALL
from vla_agents.adapters import Adapter, ObservationError, list_adapters, make_adapter, register_adapter
from vla_agents.agent import load_agent, make_agent
from vla_agents.data import DemoDataset, DemoWriter
from vla_agents.data.normalization import compute_norm_stats
from vla_agents.eval.rollout import evaluate

INSTRUCTION = "put carrot on plate"


def libero_obs() -> dict:
    rng = np.random.default_rng(0)
    return {"agentview_image": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.1, 0.0, 1.0]), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.02, -0.02]), "robot0_joint_pos": np.zeros(7),
            "language_instruction": INSTRUCTION}


# Each registered adapter's raw observation, exactly as its benchmark returns it, and its env action size.
RAW = {
    "libero": (libero_obs, 7),
    "embedded": (libero_obs, 7),
    "simpler_widowx": (lambda: ms3_obs(), 7),
    "simpler_google_robot": (lambda: ms2_obs("overhead_camera", 512, 640), 7),
    "robotwin": (robotwin_obs, 14),
    "robotwin_ee": (robotwin_obs, 16),
}


def stats_for(adapter: Adapter):
    rng = np.random.default_rng(0)
    return compute_norm_stats(rng.normal(size=(50, adapter.action_dim)), rng.normal(size=(50, adapter.proprio_dim)))


def test_every_registered_adapter_is_tested_here():
    import vla_agents

    assert set(list_adapters()) == set(RAW) == set(vla_agents.list_adapters())
    with pytest.raises(ValueError, match="unknown adapter 'mujoco'; available: embedded, libero, robotwin"):
        make_adapter("mujoco")


@pytest.mark.parametrize("name", sorted(RAW))
def test_recorded_observation_through_a_real_agent_and_back_from_disk(name: str, tmp_path: Path):
    make_raw, env_action_dim = RAW[name]
    adapter = make_adapter(name)
    assert isinstance(adapter, Adapter)
    agent = make_agent("oft", adapter=name, stats=stats_for(adapter), **SMALL)
    assert agent.views == list(adapter.views) and agent.recipe.agent.proprio_dim == adapter.proprio_dim
    action = agent.act(make_raw(), INSTRUCTION)
    assert action.shape == (env_action_dim,) and np.all(np.isfinite(action))
    assert set(agent.last_attention.heatmaps) == set(adapter.views)

    agent.save_pretrained(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    assert loaded.adapter_name == name
    agent.reset()
    np.testing.assert_array_equal(loaded.act_chunk(make_raw(), INSTRUCTION), agent.act_chunk(make_raw(), INSTRUCTION))


def test_agent_reset_resets_the_sticky_gripper():
    agent = make_agent("oft", adapter="simpler_google_robot", stats=stats_for(make_adapter("simpler_google_robot")), **SMALL)
    agent.adapter.gripper(1.0)
    assert agent.adapter.gripper(0.0) == 1.0  # a close is now held for 15 steps
    agent.reset()
    assert agent.act(ms2_obs("overhead_camera", 512, 640), INSTRUCTION)[6] == 0.0  # first step of an episode: relative 0


def recorded_frames(name: str, T: int) -> dict[str, np.ndarray]:
    """A demonstration episode in the recorded layout of adapter `name`."""
    rng = np.random.default_rng(1)
    frames = {key: rng.integers(0, 256, (T, 6, 8, 3), dtype=np.uint8) for key in make_adapter(name).recorded_keys
              if key.endswith("_rgb")}
    vectors = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2, "joint_states": 7, "joint_action_vector": 14, "qpos": 8}
    frames |= {key: rng.normal(size=(T, vectors[key])) for key in make_adapter(name).recorded_keys if key in vectors}
    return frames


@pytest.mark.parametrize(("name", "view", "key", "flipped"), [
    ("libero", "agentview", "agentview_rgb", True),  # stored upside down like LIBERO's renders
    ("simpler_widowx", "3rd_view_camera", "3rd_view_camera_rgb", False),  # stored as rendered
    ("robotwin", "left_camera", "left_camera_rgb", False),
])
def test_demonstrations_reach_the_policy_as_the_adapter_reads_them(name, view, key, flipped, tmp_path: Path):
    adapter = make_adapter(name)
    frames = recorded_frames(name, T=3)
    actions = np.random.default_rng(2).normal(size=(3, adapter.action_dim)).astype(np.float32)
    with DemoWriter(tmp_path / "demos.hdf5", INSTRUCTION, adapter=name) as writer:
        writer.add_episode(actions, frames)
    dataset = DemoDataset([tmp_path / "demos.hdf5"], chunk_size=2)
    assert dataset.adapter_name == name and dataset.stats.proprio.dim == adapter.proprio_dim
    item = dataset[1]
    expected = frames[key][1][::-1, ::-1] if flipped else frames[key][1]
    np.testing.assert_array_equal(item["images"][view], expected)
    assert set(item["images"]) == set(adapter.views) and item["actions"].shape == (2, adapter.action_dim)
    agent = make_agent("oft", adapter=name, stats=dataset.stats, **SMALL)
    assert agent.collate([item], train=True)["images"].shape == (1, len(adapter.views), 3, 32, 32)


def test_behaviour_cloning_makes_an_agent_for_the_demonstrations_adapter(tmp_path: Path):
    from vla_agents.train.bc import train_bc

    with DemoWriter(tmp_path / "demos.hdf5", INSTRUCTION, adapter="simpler_widowx") as writer:
        writer.add_episode(np.zeros((4, 7), np.float32), recorded_frames("simpler_widowx", T=4))
    result = train_bc("oft", [tmp_path / "demos.hdf5"], steps=1, out_dir=tmp_path / "agent", batch_size=2,
                      overrides={**SMALL, "aux_target_weight": 0.0, "aux_attention_weight": 0.0}, progress=False)
    assert result.agent.adapter_name == "simpler_widowx" and load_agent(tmp_path / "agent").views == ["3rd_view_camera"]
    with pytest.raises(ValueError, match="different adapters"):
        with DemoWriter(tmp_path / "libero.hdf5", INSTRUCTION) as writer:
            writer.add_episode(np.zeros((2, 7), np.float32), recorded_frames("libero", T=2))
        DemoDataset([tmp_path / "demos.hdf5", tmp_path / "libero.hdf5"])


def test_another_benchmarks_observation_is_a_clear_error():
    libero_agent = make_agent("oft", stats=stats_for(make_adapter("libero")), **SMALL)
    with pytest.raises(ObservationError, match=r"made with adapter 'libero'.*missing key\(s\).*agentview_image"):
        libero_agent.act(ms3_obs(), INSTRUCTION)
    widowx = make_agent("oft", adapter="simpler_widowx", stats=stats_for(make_adapter("simpler_widowx")), **SMALL)
    with pytest.raises(ObservationError, match=r"'image' \(ManiSkill2\) or 'sensor_data' \(ManiSkill3\)"):
        widowx.act(libero_obs())
    google = ms3_obs()
    google["sensor_data"] = {"overhead_camera": google["sensor_data"].pop("3rd_view_camera")}
    with pytest.raises(ObservationError, match=r"sensor_data/3rd_view_camera/rgb.*cameras \['overhead_camera'\]"):
        widowx.act(google, INSTRUCTION)
    with pytest.raises(ValueError, match=r"views \['agentview'\] are not all views of adapter 'simpler_widowx'"):
        make_agent("oft", adapter="simpler_widowx", views=["agentview"], **SMALL)
    with pytest.raises(ValueError, match="proprio_dim=8 does not fit adapter 'robotwin', whose proprio_dim is 14"):
        make_agent("oft", adapter="robotwin", proprio_dim=8, **SMALL)


class SimplerLikeEnv(gym.Env):
    """Names the adapter its observations are for, as `make_env("simpler/...")` does."""

    adapters = ("simpler_widowx",)
    observation_space = gym.spaces.Dict({})
    action_space = gym.spaces.Box(-1, 1, (7,))

    def reset(self, *, seed=None, options=None):
        return ms3_obs(), {}


def test_evaluating_an_agent_on_another_benchmark_fails_before_the_first_episode():
    agent = make_agent("oft", stats=stats_for(make_adapter("libero")), **SMALL)
    with pytest.raises(ValueError, match=r"made with adapter 'libero', but simpler-like gives observations for adapter "
                                         r"'simpler_widowx'"):
        evaluate(agent, SimplerLikeEnv, episodes=1, env_name="simpler-like", progress=False)


def test_a_plug_in_adapter_registers_by_name():
    register_adapter("libero_openvla", "vla_agents.adapters.libero:LiberoAdapter", gripper_convention="openvla")
    try:
        assert make_adapter("libero_openvla").gripper_convention == "openvla"
        with pytest.raises(ValueError, match="already registered"):
            register_adapter("libero", "x:y")
    finally:
        from vla_agents.adapters import ADAPTERS

        del ADAPTERS["libero_openvla"]
