"""SIMPLER's Bridge tasks on ManiSkill3 (`make_env("simpler/...")`), its asset handling and its scripted expert.

The environments run on a copy of `../shared/simpler_assets/` (or `$VLA_SIMPLER_ASSETS`) with a stand-in
table mesh this module writes (the real ones are on the Hugging Face hub only), hence "stand_in" in
the names of the tests that build one. An env build takes 11-25 s, so they share three builds.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from copy import deepcopy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vla_agents.adapters import make_adapter
from vla_agents.data import DemoDataset
from vla_agents.eval.rollout import evaluate, run_episode
from vla_agents.sim import list_envs, make_env
from vla_agents.sim.simpler_assets import write_stand_in_stage

SOURCE = Path(os.environ.get("VLA_SIMPLER_ASSETS", Path(__file__).resolve().parents[1].parent / "shared" / "simpler_assets"))


def _require_simulator() -> None:
    if importlib.util.find_spec("mani_skill") is None:
        message = "mani-skill is not installed: run `bash scripts/setup_simpler.sh` (scripts/setup.sh runs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A writable copy of the shared asset folder plus the stand-in table."""
    _require_simulator()
    if not SOURCE.is_dir():
        pytest.skip(f"no SIMPLER asset folder at {SOURCE} (set VLA_SIMPLER_ASSETS)")
    root = tmp_path_factory.mktemp("simpler") / "assets"
    shutil.copytree(SOURCE, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    write_stand_in_stage(root)
    return root


@pytest.fixture(scope="module")
def carrot(assets):
    """Built through its Gymnasium id, as a user of `gym.make` builds it."""
    env = gym.make("vla_agents/simpler_widowx_carrot_on_plate-v0", asset_dir=str(assets))
    yield env
    env.close()


def test_stand_in_registered_id_passes_check_env(carrot):
    """ManiSkill's observation (torch, with an empty group) used to fail `gym.make`'s own checker."""
    assert carrot.spec.id == "vla_agents/simpler_widowx_carrot_on_plate-v0" and carrot.spec.max_episode_steps == 60
    assert carrot.render_mode is None  # Gymnasium's default
    obs, info = carrot.reset(seed=0)
    assert carrot.observation_space.contains(obs) and obs["language_instruction"] == info["instruction"]
    check_env(carrot.unwrapped, skip_render_check=True, skip_close_check=True)  # each check builds the env again


def test_stand_in_same_seed_and_action_give_the_same_step_whatever_came_before(carrot):
    """A plain ManiSkill reset keeps PhysX's contact caches: seeds 3 and 4 below gave other pixels after another history."""
    def leaves(tree, prefix=""):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}/{key}") if isinstance(value, dict) else [(f"{prefix}/{key}", value)]

    action = np.array([0.02, -0.02, -0.02, 0, 0, 0, 1], dtype=np.float32)
    for seed in range(6):
        carrot.reset(seed=seed)
        first = dict(leaves(deepcopy(carrot.step(action)[0])))
        for _ in range(3):
            carrot.step(action)
        carrot.reset(seed=seed)
        again = dict(leaves(carrot.step(action)[0]))
        differing = [key for key in first if not np.array_equal(first[key], again[key])]
        assert not differing, f"seed {seed}: {differing} differ after the same seed and action"


def test_stand_in_carrot_follows_simplers_protocol(carrot):
    from vla_agents.sim.simpler_expert import SimplerExpert

    obs, _ = carrot.reset(seed=0, options={"episode_id": 1})
    rgb = obs["sensor_data"]["3rd_view_camera"]["rgb"]
    assert rgb.shape == (1, 480, 640, 3) and rgb.dtype == np.uint8
    assert obs["language_instruction"] == "put carrot on plate"
    assert carrot.unwrapped.control_freq == 5 and carrot.unwrapped.max_episode_steps == 60
    seen = make_adapter("simpler_widowx").observation(obs)
    np.testing.assert_array_equal(seen.images["3rd_view_camera"], rgb[0])

    expert, flags = SimplerExpert(carrot), []
    while True:
        obs, _, terminated, truncated, info = carrot.step(expert.act(obs))
        assert terminated is False  # SIMPLER never ends an episode on success
        flags.append(info["success"])
        if truncated:
            break
    assert len(flags) == 60 and flags[-1] and flags.index(True) < 59
    assert info["episode_stats"]["is_src_obj_grasped_ever"] == 1.0 and info["episode_stats"]["consecutive_grasp_ever"] == 1.0


class KnockOffAfterPlacing:
    """The expert, but once it has placed the carrot and let go the carrot is moved back off the plate."""

    def __init__(self, env):
        from vla_agents.sim.simpler_expert import SimplerExpert

        self.env, self.expert, self.was_on_plate = env, SimplerExpert(env), False

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs):
        base = self.env.unwrapped.env.unwrapped
        if self.expert.plan and self.expert.index == len(self.expert.plan) - 1 and not self.was_on_plate:
            self.was_on_plate = bool(base.evaluate()["success"][0])
            if self.was_on_plate:
                import sapien

                base.objs[base.source_obj_name].set_pose(sapien.Pose([-0.1, -0.1, 0.9]))
        return self.expert.act(obs)


def test_stand_in_success_is_the_flag_at_the_last_step(carrot):
    agent = KnockOffAfterPlacing(carrot)
    result = run_episode(carrot, agent, seed=0, options={"episode_id": 0})
    assert agent.was_on_plate and result.error is None and result.length == 60
    assert result.success is False
    assert result.episode_stats["is_src_obj_grasped_ever"] == 1.0


def test_stand_in_collect_writes_simpler_demonstrations(carrot, tmp_path, monkeypatch):
    from vla_agents.sim import collect

    monkeypatch.setattr(collect, "make_env", lambda spec, **kwargs: carrot)
    monkeypatch.setattr(carrot, "close", lambda: None)  # the module's env stays open for the other tests
    report = collect.collect_demos("simpler/widowx_carrot_on_plate", episodes=1, out=tmp_path / "carrot.hdf5", seed=3,
                                   image_size=96)
    assert report.episodes == 1 and report.mean_length == 60
    dataset = DemoDataset([tmp_path / "carrot.hdf5"], chunk_size=4)
    assert dataset.adapter_name == "simpler_widowx" and dataset.has_target and len(dataset) == 60
    item = dataset[0]
    assert item["images"]["3rd_view_camera"].shape == (96, 128, 3) and item["proprio"].shape == (8,)
    np.testing.assert_allclose(dataset.episodes[0].obs["qpos"][0, :6], [-0.0184, 0.0399, 0.2224, -0.0046, 1.3652, 0.0015],
                               atol=2e-3)  # SIMPLER's initial WidowX joints
    assert item["instruction"] == "put carrot on plate"
    assert set(np.unique(dataset.episodes[0].actions[:, 6])) == {0.0, 1.0}  # the policy's gripper: 1 open, 0 closed
    uv = item["target_uv"]["3rd_view_camera"]
    assert 0.2 < uv[0] < 0.8 and 0.2 < uv[1] < 0.8  # the carrot is in view, where the projection says
    carrot_name, plate_name = carrot.unwrapped.objects
    plate = carrot.unwrapped.object_pose(plate_name)[0]
    target = dataset.episodes[0].obs["target_pos"]
    gripper_closed = np.flatnonzero(dataset.episodes[0].actions[:, 6] == 0.0)
    assert np.linalg.norm(target[0, :2] - plate[:2]) > 0.05  # first the carrot, away from the plate
    np.testing.assert_allclose(target[gripper_closed[-1]], plate, atol=0.01)  # once it is carried: the plate


@pytest.mark.parametrize("task", ["widowx_spoon_on_towel", "widowx_stack_cube"])
def test_stand_in_expert_succeeds(task, assets):
    from vla_agents.sim.simpler_expert import SimplerExpert

    expert = SimplerExpert()
    report = evaluate(expert, lambda: expert.bind(make_env(f"simpler/{task}", asset_dir=str(assets))), episodes=1,
                      seed=5, progress=False, env_name=f"simpler/{task}")
    assert report.episodes[0].success and report.metrics()["episode_stats"]["consecutive_grasp_ever"] == 1.0


def test_missing_assets_name_the_file_and_the_download_command(tmp_path, monkeypatch):
    _require_simulator()
    with pytest.raises(FileNotFoundError, match=r"missing bridge_v2_real2sim \(tasks/bridge_v2_real2sim_dataset\), widowx250s "
                                                r"\(robots/widowx\).*download_asset bridge_v2_real2sim -y"):
        make_env("simpler/widowx_stack_cube", asset_dir=str(tmp_path))
    for folder in ("tasks/bridge_v2_real2sim_dataset", "robots/widowx"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing robots/widowx/wx250s.urdf, tasks/bridge_v2_real2sim_dataset/stages/"
                                                r"bridge_table_1_v1.glb, .*baked_green_cube_3cm/textured.\{obj,dae,glb\}"):
        make_env("simpler/widowx_stack_cube", asset_dir=str(tmp_path))
    monkeypatch.setenv("MS_ASSET_DIR", str(tmp_path / "from-env"))
    with pytest.raises(FileNotFoundError, match=f"not in {tmp_path / 'from-env' / 'data'}"):
        make_env("simpler/widowx_stack_cube")


def test_a_second_asset_folder_in_one_process_is_refused(carrot, tmp_path):
    shutil.copytree(carrot.unwrapped.asset_root, tmp_path / "other")
    with pytest.raises(RuntimeError, match="already imported with its assets in"):
        make_env("simpler/widowx_carrot_on_plate", asset_dir=str(tmp_path / "other"))


def test_simpler_specs_are_listed_and_the_others_explained():
    _require_simulator()
    assert {"simpler/widowx_carrot_on_plate", "simpler/widowx_spoon_on_towel", "simpler/widowx_stack_cube"} <= set(list_envs())
    with pytest.raises(ValueError, match="only in the original SIMPLER"):
        make_env("simpler/google_robot_pick_coke_can")
    with pytest.raises(ValueError, match="unknown SIMPLER task 'widowx_fold_cloth'"):
        make_env("simpler/widowx_fold_cloth")
