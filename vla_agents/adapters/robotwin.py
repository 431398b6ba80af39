"""RoboTwin 2.0 (aloha-agilex) <-> canonical Observation / `TASK_ENV.take_action` action.

Mirrors `envs/_base_task.py::get_obs` / `take_action` and the OpenVLA-OFT / pi0 `deploy_policy.py`
files (BENCHMARKS.md section 2): three 240x320 D435 views, the 14-D `joint_action.vector` as state,
absolute 14-D joint targets as actions, and a step limit counted in `take_action` calls.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from vla_agents.adapters import ObservationError
from vla_agents.types import Observation

ActionMode = Literal["qpos", "ee"]

CAMERAS = ("head_camera", "left_camera", "right_camera")
STATE_DIM = 14
"""`[left_arm(6), left_gripper, right_arm(6), right_gripper]`; arm values are joint drive targets,
grippers are the normalized command in [0, 1] (1 = open)."""
ACTION_DIMS: dict[str, int] = {"qpos": 14, "ee": 16}
"""qpos: same layout as the state. ee: `[left xyz, quat wxyz, left_gripper, right xyz, quat wxyz, right_gripper]`."""
GRIPPER_INDICES: dict[str, tuple[int, int]] = {"qpos": (6, 13), "ee": (7, 15)}

DEFAULT_STEP_LIMIT = 1000
STEP_LIMITS: dict[str, int] = {
    "beat_block_hammer": 400,
    "blocks_ranking_rgb": 1200,
    "click_alarmclock": 400,
    "hanging_mug": 900,
    "move_pillbottle_pad": 400,
    "place_object_basket": 700,
    "stack_blocks_two": 800,
}
"""Excerpt of `task_config/_eval_step_limit.yml` (limits count `take_action` calls); others default to 1000."""


def step_limit(task_name: str) -> int:
    """The eval step limit (in actions) for a task, with RoboTwin's default for unlisted tasks."""
    return STEP_LIMITS.get(task_name, DEFAULT_STEP_LIMIT)


def chunk_steps(chunk: np.ndarray | Sequence[Any], step_limit: int, steps_taken: int) -> int:
    """How many `take_action` calls a chunk may make: every action counts one step, and the episode
    stops at `step_limit`, so a chunk is cut to the steps left (never negative)."""
    return max(0, min(len(chunk), step_limit - steps_taken))


class RoboTwinAdapter:
    """RoboTwin `get_obs()` dict -> `Observation`; policy action -> `take_action` argument.
    Registered as `robotwin` (qpos actions) and `robotwin_ee` (end-effector actions)."""

    proprio_dim = STATE_DIM

    def __init__(self, action_mode: ActionMode = "qpos", cameras: Sequence[str] = CAMERAS):
        if action_mode not in ACTION_DIMS:
            raise ValueError(f"action_mode must be one of {sorted(ACTION_DIMS)}, got {action_mode!r}")
        if not cameras:
            raise ValueError("cameras must name at least one view")
        self.action_mode: ActionMode = action_mode
        self.cameras = tuple(cameras)
        self.views = self.cameras
        # a demonstration step: each view's frame and the state vector, flattened out of get_obs()'s nesting
        self.recorded_keys = (*(f"{cam}_rgb" for cam in self.cameras), "joint_action_vector")

    @property
    def action_dim(self) -> int:
        return ACTION_DIMS[self.action_mode]

    def reset(self) -> None:
        """Stateless: nothing carries over between episodes."""

    def observation(self, raw: Mapping[str, Any], instruction: str | None = None) -> Observation:
        """Images keyed by camera name, unflipped and unresized (OFT and pi0 feed them as rendered);
        proprio is `joint_action.vector` as float32 (14,). The instruction is `raw["language"]` (what
        `deploy_policy` adds) when present, else `instruction`."""
        images = {cam: self._rgb(raw, cam) for cam in self.cameras}
        try:
            vector = raw["joint_action"]["vector"]
        except (KeyError, TypeError) as exc:
            raise ObservationError("missing 'joint_action/vector' in RoboTwin obs") from exc
        text = raw.get("language", instruction)
        if not isinstance(text, str) or not text:
            raise ObservationError("no instruction: the RoboTwin obs has no 'language' and no instruction= was given")
        return Observation(images=images, proprio=_state(vector, "joint_action/vector"), instruction=text)

    def recorded(self, frame: Mapping[str, np.ndarray], instruction: str) -> Observation:
        missing = [k for k in self.recorded_keys if k not in frame]
        if missing:
            raise ObservationError(f"RoboTwin demonstration step is missing key(s) {missing}; expected {list(self.recorded_keys)}")
        return Observation(images={cam: frame[f"{cam}_rgb"] for cam in self.cameras},
                           proprio=_state(frame["joint_action_vector"], "joint_action_vector"), instruction=instruction)

    @staticmethod
    def _rgb(raw: Mapping[str, Any], camera: str) -> np.ndarray:
        path = f"observation/{camera}/rgb"
        try:
            rgb = raw["observation"][camera]["rgb"]
        except (KeyError, TypeError) as exc:
            raise ObservationError(f"missing {path!r} in RoboTwin obs") from exc
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            shape, dtype = getattr(rgb, "shape", None), getattr(rgb, "dtype", None)
            raise ObservationError(f"{path!r} must be uint8 (H, W, 3), got {type(rgb).__name__} {shape} {dtype}")
        return rgb

    def action(self, a: np.ndarray | Sequence[float]) -> np.ndarray:
        """Validate one policy action and return it as the float64 vector for
        `TASK_ENV.take_action(action, action_type=self.action_mode)` (absolute targets, no rescaling;
        the env itself clips grippers to [0, 1])."""
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ObservationError(f"RoboTwin {self.action_mode!r} action must have shape ({self.action_dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ObservationError(f"RoboTwin action has non-finite values: {a}")
        return a


def _state(vector: Any, name: str) -> np.ndarray:
    state = np.asarray(vector, dtype=np.float32)
    if state.shape != (STATE_DIM,):
        raise ObservationError(f"{name!r} must have shape ({STATE_DIM},), got {state.shape}")
    return state
