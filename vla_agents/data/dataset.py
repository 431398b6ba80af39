"""Behaviour-cloning samples from demonstration files, in exactly the form policies see at test time.

Each sample is one timestep t of one episode: the observation at t as the files' adapter reads it
(`Adapter.recorded`: LIBERO's images rotated to policy orientation, SIMPLER's as rendered; normalized
proprio) and the next `chunk_size` normalized actions. Chunks that run past the episode end repeat the
last action and are flagged in `action_is_pad`, so a loss can ignore them. Files that record the named
object's privileged position (our collectors') also give its offset from the gripper (m) and its uv in
each view, the targets of behaviour cloning's auxiliary grounding loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from vla_agents.adapters import make_adapter
from vla_agents.data.formats import read_episodes
from vla_agents.data.hdf5 import PRIVILEGED_OBS, Episode
from vla_agents.data.normalization import NormStats, compute_norm_stats
from vla_agents.types import Observation

PLACEHOLDER_FRAME = np.zeros((1, 1, 3), np.uint8)


class DemoDataset(torch.utils.data.Dataset):
    """All (episode, t) pairs of one or more demonstration files or LeRobotDataset folders: actions and
    proprio in memory, frames read when a sample needs them (`data.frames`). `without_noops` drops the
    no-op steps as OpenVLA-OFT's LIBERO data does (`data.noop`)."""

    def __init__(self, paths: list[str | Path], chunk_size: int = 8, stats: NormStats | None = None,
                 without_noops: bool = False) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if not paths:
            raise ValueError("DemoDataset needs at least one demonstration file")
        self.chunk_size = chunk_size
        self.episodes = [ep for p in paths for ep in read_episodes(p, without_noops)]
        if not self.episodes:
            raise ValueError(f"no episodes in {[str(p) for p in paths]}")
        adapters = sorted({ep.adapter for ep in self.episodes})
        if len(adapters) > 1:
            raise ValueError(f"{[str(p) for p in paths]} were recorded for different adapters {adapters}: "
                             "one agent trains on one benchmark's demonstrations")
        self.adapter_name = adapters[0]
        self.adapter = make_adapter(self.adapter_name)
        raw_actions = [ep.actions for ep in self.episodes]
        raw_proprio = [np.stack([self._proprio(ep, t) for t in range(len(ep))]) for ep in self.episodes]
        self.stats = stats or compute_norm_stats(np.concatenate(raw_actions), np.concatenate(raw_proprio))
        self.actions = [self.stats.normalize_action(a) for a in raw_actions]
        self.proprio = [self.stats.normalize_proprio(p) for p in raw_proprio]
        self.instructions = sorted({ep.instruction for ep in self.episodes})
        self._task_index = [self.instructions.index(ep.instruction) for ep in self.episodes]
        self._index = np.array([(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep))], dtype=np.int64)
        self.has_target = all(all(k in ep.obs for k in (*PRIVILEGED_OBS, "ee_pos")) for ep in self.episodes)

    def observation(self, e: int, t: int) -> Observation:
        """Step t of episode e through the adapter (images are views into the file's arrays)."""
        episode = self.episodes[e]
        return self.adapter.recorded({k: v[t] for k, v in episode.obs.items()}, episode.instruction)

    def _proprio(self, episode: Episode, t: int) -> np.ndarray:
        """The adapter's proprio of step t, without reading its frames (1x1 stand-ins: proprio comes from vectors)."""
        frame = {k: PLACEHOLDER_FRAME if k.endswith("_rgb") else v[t] for k, v in episode.obs.items()}
        return self.adapter.recorded(frame, episode.instruction).proprio

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, t = (int(v) for v in self._index[i])
        episode, actions = self.episodes[e], self.actions[e]
        steps = np.arange(t, t + self.chunk_size)
        item = {
            "images": {view: np.ascontiguousarray(image) for view, image in self.observation(e, t).images.items()},
            "proprio": self.proprio[e][t].copy(),
            "actions": actions[np.minimum(steps, len(actions) - 1)],
            "action_is_pad": steps >= len(actions),
            "instruction": episode.instruction,
            "task_index": self._task_index[e],
        }
        if self.has_target:  # privileged: where the named cube is, for the auxiliary grounding loss
            item["target_offset"] = (episode.obs["target_pos"][t] - episode.obs["ee_pos"][t]).astype(np.float32)
            item["target_uv"] = {view: episode.obs["target_uv"][t, i] for i, view in enumerate(self.adapter.views)}
        return item
