"""SIMPLER (SimplerEnv: ManiSkill2_real2sim and the ManiSkill3 port) <-> canonical Observation / 7-D env action.

Everything here mirrors SimplerEnv's own policy wrappers (Octo / OpenVLA `*_model.py`) and
`observation_utils.py`, as summarised in BENCHMARKS.md section 1, because SIMPLER numbers are only
comparable when the gripper and rotation post-processing match those wrappers exactly.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from vla_agents.adapters import ObservationError
from vla_agents.types import Observation

Robot = Literal["google_robot", "widowx"]
RotationFormat = Literal["axis_angle", "rpy"]

CAMERAS: dict[str, str] = {"google_robot": "overhead_camera", "widowx": "3rd_view_camera"}
"""Policy camera per robot (`get_image_from_maniskill{2,3}_obs_dict`)."""
PROPRIO_DIMS: dict[str, int] = {"google_robot": 0, "widowx": 8}
"""Proprio per robot: the WidowX's `agent/qpos` (six arm joints, two fingers; checked on ManiSkill3); none
for the Google Robot, whose state layout cannot be checked here."""

STICKY_GRIPPER_NUM_REPEAT = 15
STICKY_GRIPPER_THRESHOLD = 0.5
ACTION_DIM = 7


class SimplerTask(NamedTuple):
    """One `simpler_env.make` task: ManiSkill2 env id + kwargs, episode limit, and the ManiSkill3 id if ported."""

    env_id: str
    max_episode_steps: int
    robot: Robot
    ms3_env_id: str | None = None
    kwargs: Mapping[str, Any] = {}


SIMPLER_TASKS: dict[str, SimplerTask] = {
    "google_robot_pick_coke_can": SimplerTask("GraspSingleOpenedCokeCanInScene-v0", 80, "google_robot"),
    "google_robot_pick_horizontal_coke_can": SimplerTask(
        "GraspSingleOpenedCokeCanInScene-v0", 80, "google_robot", kwargs={"lr_switch": True}),
    "google_robot_pick_vertical_coke_can": SimplerTask(
        "GraspSingleOpenedCokeCanInScene-v0", 80, "google_robot", kwargs={"laid_vertically": True}),
    "google_robot_pick_standing_coke_can": SimplerTask(
        "GraspSingleOpenedCokeCanInScene-v0", 80, "google_robot", kwargs={"upright": True}),
    "google_robot_pick_object": SimplerTask("GraspSingleRandomObjectInScene-v0", 80, "google_robot"),
    "google_robot_move_near": SimplerTask("MoveNearGoogleBakedTexInScene-v1", 80, "google_robot"),
    "google_robot_move_near_v0": SimplerTask("MoveNearGoogleBakedTexInScene-v0", 80, "google_robot"),
    "google_robot_move_near_v1": SimplerTask("MoveNearGoogleBakedTexInScene-v1", 80, "google_robot"),
    "google_robot_open_drawer": SimplerTask("OpenDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_open_top_drawer": SimplerTask("OpenTopDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_open_middle_drawer": SimplerTask("OpenMiddleDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_open_bottom_drawer": SimplerTask("OpenBottomDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_close_drawer": SimplerTask("CloseDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_close_top_drawer": SimplerTask("CloseTopDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_close_middle_drawer": SimplerTask("CloseMiddleDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_close_bottom_drawer": SimplerTask("CloseBottomDrawerCustomInScene-v0", 113, "google_robot"),
    "google_robot_place_apple_in_closed_top_drawer": SimplerTask(
        "PlaceIntoClosedTopDrawerCustomInScene-v0", 200, "google_robot", kwargs={"model_ids": "baked_apple_v2"}),
    "widowx_spoon_on_towel": SimplerTask(
        "PutSpoonOnTableClothInScene-v0", 60, "widowx", "PutSpoonOnTableClothInScene-v1"),
    "widowx_carrot_on_plate": SimplerTask("PutCarrotOnPlateInScene-v0", 60, "widowx", "PutCarrotOnPlateInScene-v1"),
    "widowx_stack_cube": SimplerTask(
        "StackGreenCubeOnYellowCubeBakedTexInScene-v0", 60, "widowx", "StackGreenCubeOnYellowCubeBakedTexInScene-v1"),
    "widowx_put_eggplant_in_basket": SimplerTask(
        "PutEggplantInBasketScene-v0", 120, "widowx", "PutEggplantInBasketScene-v1"),
}
"""`make_env("simpler/<task>")` table: task name -> env id (BENCHMARKS.md 1.1, `simpler_env.ENVIRONMENT_MAP`)."""


def rpy_to_axis_angle(rpy: Sequence[float] | np.ndarray) -> np.ndarray:
    """Roll-pitch-yaw -> axis-angle vector, exactly as `transforms3d.euler.euler2axangle(r, p, y)` * angle.

    Convention: transforms3d's default axes "sxyz" (static/extrinsic x, then y, then z), i.e. the same
    rotation as `scipy.spatial.transform.Rotation.from_euler("xyz", rpy)`. Like transforms3d the angle
    is `2*acos(w)` in [0, 2*pi) (scipy's `as_rotvec` would instead fold angles > pi), so the vector is
    bit-for-bit what SimplerEnv's Octo/OpenVLA wrappers send.
    """
    roll, pitch, yaw = (float(v) / 2.0 for v in np.asarray(rpy, dtype=np.float64).reshape(3))
    ci, si, cj, sj, ck, sk = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    cc, cs, sc, ss = ci * ck, ci * sk, si * ck, si * sk
    w, x, y, z = cj * cc + sj * ss, cj * sc - sj * cs, cj * ss + sj * cc, cj * cs - sj * sc
    norm2 = x * x + y * y + z * z
    if norm2 < (3 * np.finfo(np.float64).eps) ** 2:
        return np.zeros(3)
    angle = 2.0 * math.acos(max(min(w, 1.0), -1.0))
    return np.array([x, y, z]) / math.sqrt(norm2) * angle


def instruction_of(env: Any, index: int = 0) -> str:
    """The current instruction; re-read it every step (it changes mid-episode on the drawer long-horizon task).

    ManiSkill2 returns a str, the ManiSkill3 port a list with one str per parallel env.
    """
    getter = getattr(env, "get_language_instruction", None)
    if getter is None:
        getter = getattr(getattr(env, "unwrapped", None), "get_language_instruction", None)
    if getter is None:
        raise AttributeError(f"{type(env).__name__} has no get_language_instruction() (nor on .unwrapped)")
    text = getter()
    if isinstance(text, str):
        return text
    return str(text[index])


def _flag(value: Any, index: int) -> bool:
    """One env's boolean from a python bool, numpy scalar/array or batched torch tensor."""
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    return bool(arr.reshape(-1)[index] if arr.ndim else arr)


def episode_success(infos: Sequence[Mapping[str, Any]], index: int = 0) -> bool:
    """SIMPLER's episode success is the `success` flag at the *last* step, not "ever succeeded"."""
    if not infos:
        raise ValueError("episode_success needs at least one step info")
    if "success" not in infos[-1]:
        raise KeyError("last info has no 'success' key")
    return _flag(infos[-1]["success"], index)


GRASP_KEYS = ("is_grasped", "consecutive_grasp", "is_src_obj_grasped")


def grasp_stats(infos: Sequence[Mapping[str, Any]], index: int = 0) -> dict[str, float]:
    """Per-episode grasp statistics over step infos: for each grasp key present (MS2 pick tasks use
    `is_grasped`/`consecutive_grasp`, Bridge tasks `is_src_obj_grasped`/`consecutive_grasp`),
    `<key>` = fraction of steps where it was true and `<key>_ever` = 1.0 if it was ever true
    (the "grasp rate" papers report averages `<key>_ever` over episodes)."""
    stats: dict[str, float] = {}
    for key in GRASP_KEYS:
        flags = [_flag(info[key], index) for info in infos if key in info]
        if flags:
            stats[key] = sum(flags) / len(flags)
            stats[f"{key}_ever"] = float(any(flags))
    return stats


class StickyGripper:
    """Google Robot's relative gripper command, as in SimplerEnv's Octo/OpenVLA wrappers.

    Input: the policy's absolute "open" value (1 = open, 0 = closed). Output: `previous - current`
    (+1 = close, -1 = open; 0 on the first step). Once |relative| > 0.5 that value is repeated for
    15 calls in total (the triggering call included), then the filter re-arms.
    """

    def __init__(self, num_repeat: int = STICKY_GRIPPER_NUM_REPEAT, threshold: float = STICKY_GRIPPER_THRESHOLD):
        self.num_repeat = num_repeat
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.previous: float | None = None
        self.sticky_on = False
        self.sticky_value = 0.0
        self.repeat = 0

    def __call__(self, open_value: float) -> float:
        relative = 0.0 if self.previous is None else self.previous - open_value
        self.previous = open_value
        if abs(relative) > self.threshold and not self.sticky_on:
            self.sticky_on, self.sticky_value = True, relative
        if self.sticky_on:
            self.repeat += 1
            relative = self.sticky_value
        if self.repeat == self.num_repeat:
            self.sticky_on, self.sticky_value, self.repeat = False, 0.0, 0
        return relative


def unnormalize(action: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Undo policy-side action normalization: Octo style `a*std+mean` (keys mean/std) or OpenVLA style
    `0.5*(a+1)*(q99-q01)+q01` (keys q01/q99); an optional boolean `mask` leaves False dims raw."""
    if {"mean", "std"} <= stats.keys():
        out = action * np.asarray(stats["std"]) + np.asarray(stats["mean"])
    elif {"q01", "q99"} <= stats.keys():
        low, high = np.asarray(stats["q01"]), np.asarray(stats["q99"])
        out = 0.5 * (action + 1.0) * (high - low) + low
    else:
        raise ValueError(f"stats needs keys mean/std or q01/q99, got {sorted(stats)}")
    mask = np.asarray(stats.get("mask", np.ones_like(action, dtype=bool)), dtype=bool)
    return np.where(mask, out, action)


class SimplerAdapter:
    """SIMPLER raw observation -> `Observation`, and policy action -> 7-D env action.

    Policy action layout (what `action()` takes): `[dx, dy, dz, rot(3), open_gripper]`, where `rot`
    is axis-angle or roll-pitch-yaw (`rotation_format`) and `open_gripper` is 1 = open / 0 = closed
    (the RLDS fractal/bridge convention Octo and OpenVLA emit). Env action: `[dxyz, axis-angle, gripper]`.
    Registered as `simpler_widowx` and `simpler_google_robot`.
    """

    action_dim = ACTION_DIM

    def __init__(self, robot: Robot, rotation_format: RotationFormat = "axis_angle",
                 stats: Mapping[str, Any] | None = None, action_scale: float = 1.0):
        if robot not in CAMERAS:
            raise ValueError(f"robot must be one of {sorted(CAMERAS)}, got {robot!r}")
        if rotation_format not in ("axis_angle", "rpy"):
            raise ValueError(f"rotation_format must be 'axis_angle' or 'rpy', got {rotation_format!r}")
        self.robot = robot
        self.rotation_format = rotation_format
        self.stats = stats
        self.action_scale = action_scale
        self.camera = CAMERAS[robot]
        self.views = (self.camera,)
        # SIMPLER's reference policies (RT-1, Octo, OpenVLA) read no robot state; policies trained here may
        self.proprio_dim = PROPRIO_DIMS[robot]
        # the frame as rendered, at the size `collect` stores, and the joint positions
        self.recorded_keys = (f"{self.camera}_rgb", *(("qpos",) if self.proprio_dim else ()))
        self.gripper = StickyGripper()

    def reset(self) -> None:
        """Call at every episode start: the Google Robot gripper filter is stateful."""
        self.gripper.reset()

    def observation(self, raw: Mapping[str, Any], instruction: str | None = None, index: int = 0) -> Observation:
        """Build an Observation from a ManiSkill2 (numpy) or ManiSkill3 (batched torch) obs dict.

        The image is the raw camera frame, no flip and no resize: SimplerEnv's wrappers feed it as-is
        and each policy resizes it itself (RT-1 pad to 256x320, Octo 256x256, OpenVLA 224x224).
        `proprio` is the WidowX's `agent/qpos` (8,), float32 (empty for the Google Robot). `index` picks the
        env of a ManiSkill3 batch. The instruction is
        `raw["language_instruction"]` when present (`make_env("simpler/...")` re-reads it into every
        observation), else `instruction` (the caller's `instruction_of(env)`).
        """
        if "sensor_data" in raw:
            rgb, qpos = self._ms3_rgb(raw, index), lambda q: _numpy(q)[index]
        elif "image" in raw:
            rgb, qpos = self._ms2_rgb(raw), _numpy
        else:
            raise ObservationError(
                f"SIMPLER obs needs 'image' (ManiSkill2) or 'sensor_data' (ManiSkill3); got keys {sorted(raw)}")
        proprio = np.zeros(0, dtype=np.float32)
        if self.proprio_dim:
            try:
                proprio = self._proprio(qpos(raw["agent"]["qpos"]), "agent/qpos")
            except (KeyError, TypeError, IndexError) as exc:
                raise ObservationError(f"SIMPLER {self.robot} obs needs 'agent/qpos' (batched on ManiSkill3)") from exc
        return Observation(images={self.camera: rgb}, proprio=proprio,
                           instruction=_instruction(raw.get("language_instruction", instruction)))

    def _proprio(self, qpos: Any, name: str) -> np.ndarray:
        state = np.asarray(qpos, dtype=np.float32)
        if state.shape != (self.proprio_dim,) or not np.all(np.isfinite(state)):
            raise ObservationError(f"{name!r} must be {self.proprio_dim} finite numbers for the {self.robot}, got {_describe(state)}")
        return state

    def recorded(self, frame: Mapping[str, np.ndarray], instruction: str) -> Observation:
        """One step of a demonstration `collect simpler/...` wrote: the camera frame as rendered."""
        missing = [k for k in self.recorded_keys if k not in frame]
        if missing:
            raise ObservationError(f"SIMPLER {self.robot} demonstration step is missing {missing}; got keys {sorted(frame)}")
        key = self.recorded_keys[0]
        rgb = frame[key]
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ObservationError(f"{key!r} must be uint8 (H, W, 3), got {_describe(rgb)}")
        proprio = self._proprio(frame["qpos"], "qpos") if self.proprio_dim else np.zeros(0, dtype=np.float32)
        return Observation(images={self.camera: rgb}, proprio=proprio, instruction=instruction)

    def _rgb_node(self, raw: Mapping[str, Any], root: str) -> Any:
        path = f"{root}/{self.camera}/rgb"
        try:
            return raw[root][self.camera]["rgb"]
        except (KeyError, TypeError) as exc:
            cameras = sorted(raw[root]) if isinstance(raw[root], Mapping) else []
            raise ObservationError(f"missing {path!r} for robot {self.robot!r} (its camera is {self.camera!r}); "
                                   f"this observation has cameras {cameras}") from exc

    def _ms2_rgb(self, raw: Mapping[str, Any]) -> np.ndarray:
        rgb = self._rgb_node(raw, "image")
        path = f"image/{self.camera}/rgb"
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ObservationError(f"{path!r} must be a uint8 numpy array (H, W, 3), got {_describe(rgb)}")
        return rgb

    def _ms3_rgb(self, raw: Mapping[str, Any], index: int) -> np.ndarray:
        rgb = self._rgb_node(raw, "sensor_data")
        path = f"sensor_data/{self.camera}/rgb"
        if hasattr(rgb, "detach"):
            rgb = rgb.detach().cpu().numpy()
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ObservationError(f"{path!r} must be batched (num_envs, H, W, 3), got {_describe(rgb)}")
        if not 0 <= index < rgb.shape[0]:
            raise ObservationError(f"{path!r} has {rgb.shape[0]} envs, index {index} out of range")
        return rgb[index].astype(np.uint8)  # the reference getter does `.to(torch.uint8)`

    def action(self, a: np.ndarray | Sequence[float]) -> np.ndarray:
        """Policy action (7,) -> env action (7,) float64 `[dxyz, axis-angle, gripper]`.

        Google Robot gripper: relative + sticky (+1 close, -1 open); WidowX: absolute `2*(open>0.5)-1`
        (+1 open, -1 close).
        """
        a = np.asarray(a, dtype=np.float64)
        if a.shape != (ACTION_DIM,):
            raise ObservationError(f"SIMPLER policy action must have shape ({ACTION_DIM},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ObservationError(f"SIMPLER policy action has non-finite values: {a}")
        if self.stats is not None:
            a = unnormalize(a, self.stats)
        rotation = rpy_to_axis_angle(a[3:6]) if self.rotation_format == "rpy" else a[3:6]
        if self.robot == "google_robot":
            gripper = self.gripper(float(a[6]))
        else:
            gripper = 2.0 * float(a[6] > 0.5) - 1.0
        return np.concatenate([a[:3] * self.action_scale, rotation * self.action_scale, [gripper]])


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _instruction(text: Any) -> str:
    if isinstance(text, (list, tuple)) and len(text) == 1:  # ManiSkill3's one-per-env list
        text = text[0]
    if not isinstance(text, str) or not text:
        raise ObservationError("no instruction: the observation has no 'language_instruction' and no instruction= was "
                               "given (SIMPLER's loop reads instruction_of(env) every step)")
    return text


def _describe(x: Any) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    return f"{type(x).__name__} shape={shape} dtype={dtype}"
