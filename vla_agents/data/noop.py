"""No-op steps of a demonstration, found as OpenVLA-OFT's LIBERO regeneration finds them.

The LIBERO data OpenVLA-OFT, VLA-Adapter and their successors train on ("*_no_noops") drops every step
whose action moves nothing: `is_noop` in openvla-oft's `experiments/robot/libero/regenerate_libero_dataset.py`
calls an action a no-op when the norm of its first six dims (translation, rotation) is below 1e-4 and
its gripper dim equals the previous *kept* action's (the first step: the norm alone). A policy that
learns from the raw demonstrations learns to stand still at the start of an episode, which at test time
can stall it for good. The regeneration also replays each demonstration in the simulator to re-render
it at 256 px and keeps only successful replays; dropping a step here instead keeps the recorded
observation of each remaining step, which is the state the replay reaches, as a no-op leaves the robot
where it was.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from vla_agents.data.frames import Steps
from vla_agents.data.hdf5 import Episode

NOOP_THRESHOLD = 1e-4  # regenerate_libero_dataset.py's is_noop(threshold=1e-4)


def keep_steps(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """Indices of the steps of one episode's (T, A) actions that are not no-ops, in order."""
    kept: list[int] = []
    for t, action in enumerate(np.asarray(actions)):
        still = np.linalg.norm(action[:-1]) < threshold
        if still and (not kept or action[-1] == actions[kept[-1]][-1]):
            continue
        kept.append(t)
    return np.asarray(kept, dtype=np.int64)


def drop_noops(episode: Episode) -> Episode:
    """`episode` without its no-op steps (frames still read on demand)."""
    keep = keep_steps(episode.actions)
    obs = {k: v[keep] if isinstance(v, np.ndarray) else Steps(v, keep) for k, v in episode.obs.items()}
    return replace(episode, actions=episode.actions[keep], obs=obs)
