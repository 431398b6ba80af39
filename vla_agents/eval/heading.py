"""Which cube an agent goes for on an embedded task: the cube under the gripper when it first comes down.

The direction of a first action does not answer this. Actions are per-axis velocities clipped to [-1, 1],
so far from the cubes the scripted expert's own first action is a 45-degree diagonal, and the cube whose
direction it is closest to is the named one in only 24 of 30 pick_color scenes (seeds 1000-1029). Where the
gripper comes down to grasp is what the instruction decides, for the expert and for a policy alike."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

COMING_DOWN = 0.06  # m above the table: below every approach height of the expert, above every cube top


def cube_gone_for(act: Callable[[Mapping[str, Any]], np.ndarray], env: gym.Env, obs: Mapping[str, Any],
                  max_steps: int = 80) -> str | None:
    """Step `act` in `env` from `obs` (the caller resets both) until the gripper closes or comes within
    COMING_DOWN of the table; the cube (look-alikes included) nearest the gripper then, in the table plane. None if neither
    happened within `max_steps`."""
    scene = env.unwrapped.sim
    for _ in range(max_steps):
        action = act(obs)
        eef = scene.eef_pos()
        if action[6] > 0 or eef[2] - scene.table_height < COMING_DOWN:
            return min(scene.half_sizes, key=lambda c: np.linalg.norm((scene.cube_pos(c) - eef)[:2]))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return None
    return None


def cube_headed_for(action_xy: np.ndarray, to_cube: dict[str, np.ndarray]) -> str:
    """The first-action rule: the cube whose xy direction from the gripper is closest (largest cosine) to
    `action_xy`. Capped by the clipping above; kept beside `cube_gone_for` to show that cap."""
    return max(to_cube, key=lambda c: action_xy @ to_cube[c] / (np.linalg.norm(action_xy) * np.linalg.norm(to_cube[c]) + 1e-9))
