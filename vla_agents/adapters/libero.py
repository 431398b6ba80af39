"""LIBERO's observation and action conventions, as OpenVLA-OFT and VLA-Adapter apply them.

Raw observations are robosuite dicts: images upside down (OpenGL), quaternions x,y,z,w.
Policies trained on LIBERO's data see images rotated 180 degrees and an 8-D proprio
(eef pos, axis-angle, gripper qpos); getting either wrong silently ruins a checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

from vla_agents.adapters import ObservationError
from vla_agents.types import Observation

IMAGE_KEYS = {"agentview": "agentview_image", "eye_in_hand": "robot0_eye_in_hand_image"}
VECTOR_KEYS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
EXPECTED_KEYS = (*IMAGE_KEYS.values(), *VECTOR_KEYS)
MIN_IMAGE_PX = 2  # a 1x1 "image" is one colour: a camera or cropping error
MAX_INSTRUCTION_CHARS = 512  # LIBERO's longest is about 100; a longer one is a paste error, not a task
QUAT_NORM_TOLERANCE = 1e-3
# LIBERO's demonstration files (`scripts/create_dataset.py`): the same renders, the orientation already as
# axis-angle. `joint_states` is part of the layout though no policy input reads it.
RECORDED_IMAGES = {"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}
RECORDED_PROPRIO = ("ee_pos", "ee_ori", "gripper_states")


def quat2axisangle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's `transform_utils.quat2axisangle`, without mutating the input.

    The proprio of every LIBERO checkpoint was built with this exact function, including its
    clip of w to [-1, 1] and its zero vector for (near) identity rotations.
    """
    quat = np.array(quat_xyzw, dtype=np.float64)
    if quat.shape != (4,):
        raise ObservationError(f"quaternion must have shape (4,) as x,y,z,w, got {quat.shape}")
    quat[3] = min(max(quat[3], -1.0), 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(quat[3])) / den


class LiberoAdapter:
    """Raw LIBERO observation -> `Observation`; canonical 7-D action -> LIBERO env action.

    gripper_convention: "libero" if the policy outputs the env's gripper (-1 open, +1 close);
    "openvla" if it outputs [0, 1] with 0 = close, 1 = open (RLDS data), which is binarized
    and inverted as OpenVLA-OFT's `process_action` does.
    """

    views = ("agentview", "eye_in_hand")
    proprio_dim = 8
    action_dim = 7
    recorded_keys = (*RECORDED_IMAGES.values(), *RECORDED_PROPRIO, "joint_states")

    def __init__(self, gripper_convention: Literal["libero", "openvla"] = "libero") -> None:
        if gripper_convention not in ("libero", "openvla"):
            raise ValueError(f"gripper_convention must be 'libero' or 'openvla', got {gripper_convention!r}")
        self.gripper_convention = gripper_convention

    def observation(self, raw: Mapping, instruction: str | None = None, task_id: int | None = None) -> Observation:
        """The instruction comes from `raw["language_instruction"]` when present, else `instruction`."""
        if not isinstance(raw, Mapping):
            raise ObservationError(f"the raw observation must be a mapping with keys {list(EXPECTED_KEYS)}, "
                                   f"got {type(raw).__name__}")
        missing = [k for k in EXPECTED_KEYS if k not in raw]
        if missing:
            raise ObservationError(f"raw LIBERO observation is missing key(s) {missing}; expected keys {list(EXPECTED_KEYS)}")
        images = {view: _image(raw, key) for view, key in IMAGE_KEYS.items()}
        pos, quat, gripper = (_vector(raw, key, n) for key, n in VECTOR_KEYS.items())
        if abs(np.linalg.norm(quat) - 1.0) > QUAT_NORM_TOLERANCE:
            raise ObservationError(f"'robot0_eef_quat' must be a unit quaternion (x, y, z, w), got {quat.tolist()} "
                                   f"of length {np.linalg.norm(quat):.4g}")
        proprio = np.concatenate([pos, quat2axisangle(quat), gripper]).astype(np.float32)
        text = raw.get("language_instruction", instruction)
        if isinstance(text, bytes):
            text = text.decode()
        if not isinstance(text, str) or not text:
            raise ObservationError("no instruction: the raw observation has no 'language_instruction' str "
                                   "and no instruction= argument was given")
        if not text.strip():
            raise ObservationError(f"the instruction {text!r} is only white space; expected a task in words")
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise ObservationError(f"the instruction is {len(text)} characters ({text[:40]!r}...); expected at most "
                                   f"{MAX_INSTRUCTION_CHARS}, a task in a sentence")
        return Observation(images=images, proprio=proprio, instruction=text, task_id=task_id)

    def recorded(self, frame: Mapping[str, np.ndarray], instruction: str) -> Observation:
        """One step of a LIBERO-layout demonstration: renders stored upside down like the env's, so rotated
        here the same way (views into the file's arrays, not copies)."""
        missing = [k for k in (*RECORDED_IMAGES.values(), *RECORDED_PROPRIO) if k not in frame]
        if missing:
            raise ObservationError(f"LIBERO demonstration step is missing key(s) {missing}; expected {list(self.recorded_keys)}")
        images = {view: frame[key][::-1, ::-1] for view, key in RECORDED_IMAGES.items()}
        proprio = np.concatenate([frame[key] for key in RECORDED_PROPRIO]).astype(np.float32)
        return Observation(images=images, proprio=proprio, instruction=instruction)

    def reset(self) -> None:
        """Stateless: nothing carries over between episodes."""

    def action(self, action: np.ndarray) -> np.ndarray:
        """One canonical action -> env action: arm clipped to [-1, 1], gripper exactly -1 or +1."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ObservationError(f"action must have shape (7,) [dx, dy, dz, drx, dry, drz, gripper], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ObservationError(f"action contains NaN or inf: {a.tolist()}")
        out = np.empty(self.action_dim, dtype=np.float32)
        out[:6] = np.clip(a[:6], -1.0, 1.0)
        g = a[6]
        if self.gripper_convention == "openvla":
            g = -np.sign(2.0 * g - 1.0)  # [0,1] with 1 = open -> -1 open / +1 close
        out[6] = 1.0 if g > 0 else -1.0  # 0 (undecided) -> open, the safe default
        return out


def _image(raw: Mapping, key: str) -> np.ndarray:
    img = np.asarray(raw[key])
    if img.ndim != 3 or img.shape[2] != 3:
        raise ObservationError(f"{key!r} must be an image of shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ObservationError(f"{key!r} must have dtype uint8, got {img.dtype}")
    if min(img.shape[:2]) < MIN_IMAGE_PX:
        raise ObservationError(f"{key!r} is {img.shape[0]}x{img.shape[1]} px; expected an image of at least "
                               f"{MIN_IMAGE_PX}x{MIN_IMAGE_PX}")
    return np.ascontiguousarray(img[::-1, ::-1])


def _vector(raw: Mapping, key: str, length: int) -> np.ndarray:
    try:
        vec = np.asarray(raw[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ObservationError(f"{key!r} must be a vector of {length} numbers, got {raw[key]!r:.60}") from e
    if vec.shape != (length,):
        raise ObservationError(f"{key!r} must be a vector of length {length}, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise ObservationError(f"{key!r} contains NaN or inf: {vec.tolist()}")
    return vec
