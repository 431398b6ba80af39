"""Which reader a demonstration path needs, and `vla-agents convert` between the two formats.

A file is LIBERO/robomimic HDF5 (`data.hdf5`), a folder a LeRobotDataset v3.0 (`data.lerobot`); both
give the same `Episode`s, so everything downstream (normalization, behaviour cloning) is format-blind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_agents.data.hdf5 import DemoWriter, Episode, read_demos
from vla_agents.data.lerobot import DEFAULT_FPS, read_lerobot, write_lerobot
from vla_agents.data.noop import drop_noops


def read_episodes(path: str | Path, without_noops: bool = False) -> list[Episode]:
    """The episodes of one HDF5 file or LeRobotDataset folder; `without_noops` drops no-op steps (`noop`)."""
    episodes = read_lerobot(path) if Path(path).is_dir() else read_demos(path)
    return [drop_noops(ep) for ep in episodes] if without_noops else episodes


def convert(sources: list[str | Path], target: str | Path, without_noops: bool = False, fps: int = DEFAULT_FPS) -> Path:
    """HDF5 file(s) -> a LeRobotDataset folder `target`; or a LeRobotDataset folder -> one HDF5 file `target`
    (each episode keeps its instruction). The target is new and appears whole or not at all."""
    if not sources:
        raise ValueError("convert needs at least one source")
    folders = [Path(s) for s in sources if Path(s).is_dir()]
    if folders and len(sources) > 1:
        raise ValueError(f"{folders[0]} is a LeRobotDataset folder: convert one at a time into an HDF5 file")
    episodes = [ep for s in sources for ep in read_episodes(s, without_noops)]
    if not episodes:
        raise ValueError(f"no episodes in {[str(s) for s in sources]}")
    if not folders:
        return write_lerobot(episodes, target, fps=fps)
    target = Path(target)
    if target.suffix not in (".hdf5", ".h5") or target.exists():
        raise ValueError(f"{target}: a LeRobotDataset converts into a new .hdf5 file")
    with DemoWriter(target, instruction=episodes[0].instruction, adapter=episodes[0].adapter) as writer:
        for ep in episodes:
            writer.add_episode(ep.actions, {k: np.asarray(v) for k, v in ep.obs.items()}, instruction=ep.instruction)
    return target
