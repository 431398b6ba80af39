"""Demonstration data: LIBERO-layout HDF5 files, normalization statistics, training samples."""
from __future__ import annotations

from typing import Any

from vla_agents.data.hdf5 import DemoWriter, Episode, read_demos
from vla_agents.data.normalization import FieldStats, NormStats, compute_norm_stats

__all__ = ["DemoDataset", "DemoWriter", "Episode", "FieldStats", "NormStats", "compute_norm_stats", "read_demos"]


def __getattr__(name: str) -> Any:
    # DemoDataset pulls in torch; recording demos (vla_agents.sim.collect) should not.
    if name == "DemoDataset":
        from vla_agents.data.dataset import DemoDataset

        return DemoDataset
    raise AttributeError(f"module 'vla_agents.data' has no attribute {name!r}")
