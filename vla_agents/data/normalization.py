"""BOUNDS_Q99 normalization, as OpenVLA computes and applies it.

Policies regress actions in [-1, 1]; the 1st/99th percentiles (not min/max) set the range so
that a few outlier demos do not squash everything else. The gripper is left unnormalized
(mask False) because it is binarized afterwards anyway.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

STAT_KEYS = ("q01", "q99", "mean", "std", "min", "max", "mask")
EPS = 1e-8
ORDER_TOLERANCE = 1e-6  # float rounding in min <= q01 <= q99 <= max
# How far outside the training data's [min, max], in widths of that range, a value is "far": a
# quaternion given as w,x,y,z moves the axis-angle of a downward gripper by about 30 widths.
FAR_WIDTHS = 3.0


@dataclass
class FieldStats:
    """Per-dimension statistics of one field (action or proprio); `mask` selects normalized dims."""

    q01: np.ndarray
    q99: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mask: np.ndarray

    @classmethod
    def compute(cls, x: np.ndarray, mask: np.ndarray) -> FieldStats:
        x = np.asarray(x, dtype=np.float64)
        return cls(q01=np.quantile(x, 0.01, axis=0), q99=np.quantile(x, 0.99, axis=0), mean=x.mean(axis=0),
                   std=x.std(axis=0), min=x.min(axis=0), max=x.max(axis=0), mask=np.asarray(mask, dtype=bool))

    @property
    def dim(self) -> int:
        return len(self.q01)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        y = np.clip(2.0 * (x - self.q01) / (self.q99 - self.q01 + EPS) - 1.0, -1.0, 1.0)
        return np.where(self.mask, y, x).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        y = self._check(y)
        x = 0.5 * (y + 1.0) * (self.q99 - self.q01 + EPS) + self.q01
        return np.where(self.mask, x, y).astype(np.float32)

    def to_dict(self) -> dict[str, list]:
        return {k: getattr(self, k).tolist() for k in STAT_KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str) -> FieldStats:
        """`mask` may be absent (OpenVLA's proprio stats omit it): then every dim is normalized."""
        if not isinstance(d, dict):
            raise ValueError(f"norm stats {name!r} must be a dict with keys {list(STAT_KEYS)}, got {type(d).__name__}")
        missing = [k for k in STAT_KEYS if k not in d and k != "mask"]
        if missing:
            raise ValueError(f"norm stats {name!r} is missing key(s) {missing}; expected {list(STAT_KEYS)}")
        values = {k: np.asarray(d[k], dtype=np.float64) for k in STAT_KEYS if k != "mask"}
        if values["q01"].ndim != 1 or (len(values["q01"]) == 0 and name != "proprio"):  # SIMPLER agents read no proprio
            raise ValueError(f"norm stats {name!r}.q01 must be a non-empty list, got shape {values['q01'].shape}")
        dim = len(values["q01"])
        values["mask"] = np.asarray(d.get("mask", [True] * dim), dtype=bool)
        for k, v in values.items():
            if v.shape != (dim,):
                raise ValueError(f"norm stats {name!r}.{k} must have length {dim} like {name}.q01, got shape {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"norm stats {name!r}.{k} contains NaN or inf")
        _check_order(values, name)
        return cls(**values)

    def far_outside(self, x: np.ndarray) -> np.ndarray:
        """Indices of the dims of `x` beyond the data's [min, max] by more than FAR_WIDTHS times its
        width (1e-3 for a constant dim)."""
        x = self._check(x)
        margin = FAR_WIDTHS * np.maximum(self.max - self.min, 1e-3)
        return np.flatnonzero((x < self.min - margin) | (x > self.max + margin))

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"expected an array whose last dimension is {self.dim}, got shape {x.shape}")
        return x


@dataclass
class NormStats:
    """Statistics of a dataset's actions and proprio, stored next to every checkpoint."""

    action: FieldStats
    proprio: FieldStats

    def normalize_action(self, a: np.ndarray) -> np.ndarray:
        return self.action.normalize(a)

    def unnormalize_action(self, y: np.ndarray) -> np.ndarray:
        return self.action.unnormalize(y)

    def normalize_proprio(self, p: np.ndarray) -> np.ndarray:
        return self.proprio.normalize(p)

    def unnormalize_proprio(self, y: np.ndarray) -> np.ndarray:
        return self.proprio.unnormalize(y)

    def to_dict(self) -> dict[str, dict[str, list]]:
        """JSON-safe, in OpenVLA's `dataset_statistics.json` per-dataset layout."""
        return {"action": self.action.to_dict(), "proprio": self.proprio.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        if not isinstance(d, dict):
            raise ValueError(f"norm stats must be an object with 'action' and 'proprio', got {type(d).__name__}")
        missing = [k for k in ("action", "proprio") if k not in d]
        if missing:
            raise ValueError(f"norm stats missing key(s) {missing}; expected 'action' and 'proprio'")
        return cls(action=FieldStats.from_dict(d["action"], "action"), proprio=FieldStats.from_dict(d["proprio"], "proprio"))


def _check_order(values: dict[str, np.ndarray], name: str) -> None:
    """Statistics of real data satisfy min <= q01 <= q99 <= max and std >= 0; q01 == q99 on a dim whose
    data varied leaves the agent a constant action there, which a file edited by hand can cause."""
    chain = ("min", "q01", "q99", "max")
    for low, high in zip(chain, chain[1:]):
        bad = np.flatnonzero(values[low] > values[high] + ORDER_TOLERANCE)
        if bad.size:
            raise ValueError(f"norm stats {name!r}: {low} > {high} at dim(s) {bad.tolist()} ({low} "
                             f"{values[low][bad].tolist()}, {high} {values[high][bad].tolist()}); "
                             f"expected min <= q01 <= q99 <= max")
    if np.any(values["std"] < 0):
        raise ValueError(f"norm stats {name!r}.std is negative at dim(s) {np.flatnonzero(values['std'] < 0).tolist()}")
    flat = np.flatnonzero(values["mask"] & (values["q01"] == values["q99"]) & (values["min"] < values["max"]))
    if flat.size:
        warnings.warn(f"norm stats {name!r}: q01 == q99 at dim(s) {flat.tolist()} although the data ranged over "
                      f"[{values['min'][flat].tolist()}, {values['max'][flat].tolist()}]: normalization maps that "
                      "dim to a constant", stacklevel=3)


def compute_norm_stats(actions: np.ndarray, proprio: np.ndarray) -> NormStats:
    """Stats over all timesteps: actions (N, A) with the last (gripper) dim unmasked; proprio (N, P)."""
    actions, proprio = np.asarray(actions), np.asarray(proprio)
    for name, x in (("actions", actions), ("proprio", proprio)):
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or inf")
    action_mask = np.ones(actions.shape[1], dtype=bool)
    action_mask[-1] = False
    return NormStats(action=FieldStats.compute(actions, action_mask),
                     proprio=FieldStats.compute(proprio, np.ones(proprio.shape[1], dtype=bool)))
