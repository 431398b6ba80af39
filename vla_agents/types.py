"""The currency between layers: benchmark adapters produce `Observation`s, agents act on them and
record where the policy looked as `AttentionMaps`. Nothing here knows about a simulator or a model."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One canonical observation: what every policy sees, whatever the benchmark.

    images: view name -> uint8 array (H, W, 3), already in the orientation policies train on.
    proprio: float32 vector (LIBERO: eef pos 3 + axis-angle 3 + gripper qpos 2 = 8).
    instruction: the task in natural language.
    task_id: optional integer task index (VAT-style task conditioning).
    """

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    instruction: str
    task_id: int | None = None


@dataclass
class AttentionMaps:
    """Where the policy looked: view name -> (h, w) float heatmap over that view's patch grid,
    plus optional named patch masks (e.g. FocusVLA's kept top-K set, DTP's pruned tokens)."""

    heatmaps: dict[str, np.ndarray]
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
