"""SIMPLER's Bridge (WidowX) tasks on ManiSkill3 as Gymnasium environments, run by SimplerEnv's protocol.

`make_env("simpler/widowx_carrot_on_plate")` builds ManiSkill3's port of the task (one env, CPU physics,
Vulkan rendering): 5 Hz control, the 60-step limit, the policy camera `3rd_view_camera` at 640x480 with
the real photo green-screened behind robot and objects. Observations are ManiSkill3's observation of its
one env as NumPy arrays (batch dimension 1 kept; empty groups dropped), which the `simpler_widowx` adapter
reads, plus `language_instruction`, re-read from the env every step as SimplerEnv's loop does; they lie in
`observation_space`, so `gym.make`'s checks and Gymnasium's `check_env` accept the env. Episodes never end
early: SIMPLER scores the success flag at the *last* step (`success_at_last_step`, which `evaluate`
honours), and `info["episode_stats"]` carries the grasp statistics papers report.
`reset(options={"episode_id": k})` sets up SimplerEnv's k-th evaluation episode (object positions and
orientations; `episode_index`, what `evaluate` passes, is taken as the same); without either, the seed
draws one. Every reset rebuilds the scene (ManiSkill's `reconfigure`, 0.24 s against 0.05 s): PhysX keeps
contact caches across a plain reset, so the same seed and actions used to give a different step after a
different history (in 10 of 150 tries: 8 by a few pixels, 1 by 7e-4 rad in the arm, 1 by an object), and Gymnasium's
`check_env` failed on it now and then.
"""
from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np

from vla_agents.adapters.simpler import SIMPLER_TASKS, grasp_stats, instruction_of
from vla_agents.sim import simpler_assets
from vla_agents.sim.embedded import INSTRUCTION_CHARSET, INSTRUCTION_MAX_CHARS
from vla_agents.sim.instruction import InstructionSpace

# ManiSkill warns at every build (no CUDA, the gripper's mimic joint, actors built at the origin); keep its
# errors only, so progress bars and tables stay readable. Its logger's name ends in a space.
logging.getLogger("mani_skill ").addFilter(lambda record: record.levelno >= logging.ERROR)

TASKS = ("widowx_carrot_on_plate", "widowx_spoon_on_towel", "widowx_stack_cube")
"""The Bridge tasks ManiSkill3 3.0.1 ports whose assets are public (the eggplant's textured mesh is not)."""
CAMERA = "3rd_view_camera"
EE_LINK = "ee_gripper_link"


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _without_empty_groups(space: gym.spaces.Dict) -> gym.spaces.Dict:
    """ManiSkill's observation space less its empty groups (`extra` here), which Gymnasium's checker refuses."""
    return gym.spaces.Dict({key: _without_empty_groups(sub) if isinstance(sub, gym.spaces.Dict) else sub
                            for key, sub in space.items() if not isinstance(sub, gym.spaces.Dict) or len(sub.spaces)})


def _as_numpy(raw: Any) -> Any:
    """A ManiSkill observation (nested dicts of torch tensors) as NumPy copies, empty groups dropped: the
    tensors are ManiSkill's buffers, which the next step overwrites."""
    if isinstance(raw, dict):
        return {key: _as_numpy(value) for key, value in raw.items() if not (isinstance(value, dict) and not value)}
    return np.array(_numpy(raw))


class SimplerEnv(gym.Env):
    """One SIMPLER Bridge task. `asset_dir` is the ManiSkill asset folder (default `$MS_ASSET_DIR`, else
    `~/.maniskill`); a missing file is a FileNotFoundError naming the download command."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}
    adapters = ("simpler_widowx",)
    success_at_last_step = True

    def __init__(self, task: str, asset_dir: str | None = None, render_mode: str | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown SIMPLER task {task!r} on ManiSkill3; expected one of {list(TASKS)}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        spec = SIMPLER_TASKS[task]
        root = simpler_assets.asset_dir(asset_dir)
        simpler_assets.check_assets(spec.ms3_env_id, root)
        simpler_assets.use_asset_dir(root)
        import mani_skill.envs  # noqa: F401 - registers the tasks with gymnasium

        self.task_name, self.render_mode, self.asset_root = task, render_mode, root
        self.max_episode_steps = spec.max_episode_steps
        # enhanced_determinism: a reset without a seed draws from the last seed, as Gymnasium's resets do
        # (ManiSkill's default draws it from torch's global generator)
        self.env = gym.make(spec.ms3_env_id, obs_mode="rgb+segmentation", num_envs=1, sim_backend="cpu",
                            render_backend="cpu", max_episode_steps=spec.max_episode_steps, enhanced_determinism=True)
        base = self.env.unwrapped
        self.control_freq = base.control_freq
        self.action_space = gym.spaces.Box(base.single_action_space.low, base.single_action_space.high, dtype=np.float32)
        self.observation_space = gym.spaces.Dict({
            **_without_empty_groups(base.observation_space).spaces,
            "language_instruction": InstructionSpace(INSTRUCTION_MAX_CHARS, charset=INSTRUCTION_CHARSET)})
        self.instruction = instruction_of(self.env)
        self._infos: list[dict[str, Any]] = []
        self._obs: dict[str, Any] = {}

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        episode = options.pop("episode_id", options.pop("episode_index", None))
        if episode is not None:
            options["episode_id"] = int(episode)
        raw, info = self.env.reset(seed=seed, options={**options, "reconfigure": True})
        self._infos = []
        return self._observation(raw), self._info(info)

    def step(self, action):
        raw, reward, _, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        # ManiSkill terminates on success; SIMPLER's loop ignores that and runs to the step limit
        return self._observation(raw), float(_numpy(reward).reshape(-1)[0]), False, bool(_numpy(truncated).any()), self._info(info)

    def render(self) -> np.ndarray:
        """The policy camera's frame (`collect` records it whatever `render_mode` says)."""
        return _numpy(self._obs["sensor_data"][CAMERA]["rgb"][0]).astype(np.uint8)

    def close(self) -> None:
        self.env.close()

    # -- privileged state (scripted experts, demonstrations) --------------------------------------
    @property
    def objects(self) -> tuple[str, str]:
        """The object to move (named first in the instruction) and where it goes."""
        base = self.env.unwrapped
        return base.source_obj_name, base.target_obj_name

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and quaternion (4, wxyz) of a task object."""
        pose = self.env.unwrapped.objs[name].pose
        return _numpy(pose.p)[0].astype(np.float64), _numpy(pose.q)[0].astype(np.float64)

    def object_size(self, name: str) -> np.ndarray:
        """The object's bounding-box size (3,) in the world at the episode start (m)."""
        base = self.env.unwrapped
        return _numpy(base.episode_source_obj_bbox_world if name == base.source_obj_name
                      else base.episode_target_obj_bbox_world).astype(np.float64)

    def ee_position(self) -> np.ndarray:
        """World position (3,) of the gripper's tool point."""
        return _numpy(self.env.unwrapped.agent.robot.links_map[EE_LINK].pose.p)[0].astype(np.float64)

    def root_rotation(self) -> np.ndarray:
        """The robot base's rotation matrix (3, 3): arm translations are commanded in its frame."""
        return _numpy(self.env.unwrapped.agent.robot.pose.to_transformation_matrix())[0, :3, :3].astype(np.float64)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) uv fractions (u right, v down) of the policy camera's frame."""
        params = self._obs["sensor_param"][CAMERA]
        extrinsic, intrinsic = _numpy(params["extrinsic_cv"])[0], _numpy(params["intrinsic_cv"])[0]
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cam = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ extrinsic.T
        pixels = cam @ intrinsic.T
        height, width = self._obs["sensor_data"][CAMERA]["rgb"].shape[1:3]
        return np.stack([(pixels[:, 0] / pixels[:, 2] + 0.5) / width, (pixels[:, 1] / pixels[:, 2] + 0.5) / height], axis=1)

    # -- helpers ---------------------------------------------------------------------------------
    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.instruction = instruction_of(self.env)
        self._obs = {**_as_numpy(raw), "language_instruction": self.instruction}
        return self._obs

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        flags = {k: bool(_numpy(v).reshape(-1)[0]) for k, v in info.items() if k not in ("elapsed_steps", "reconfigure")}
        self._infos.append(flags)
        return {**flags, "instruction": self.instruction, "task": self.task_name,
                "episode_stats": grasp_stats(self._infos[1:] or self._infos)}
