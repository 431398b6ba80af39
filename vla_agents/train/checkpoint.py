"""Training checkpoints, BC's and RL's alike: `out_dir/checkpoint/`, replaced in one recoverable swap
(`vla_agents.atomic`), so a run killed at any moment leaves the previous checkpoint or the new one."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from vla_agents.atomic import replace_folder

CHECKPOINT = "checkpoint"


def write_checkpoint(out_dir: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(folder)` fills a fresh folder, which then replaces `out_dir/checkpoint/`."""
    return replace_folder(Path(out_dir) / CHECKPOINT, write)
