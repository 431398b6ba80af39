"""Training checkpoints, BC's and RL's alike: a folder filled beside its final place and swapped in
whole, so a run killed at any moment leaves the previous checkpoint or the new one, never half of one."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Callable

CHECKPOINT = "checkpoint"


def write_checkpoint(out_dir: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(folder)` fills a fresh folder, which then replaces `out_dir/checkpoint/`."""
    out_dir = Path(out_dir)
    tmp = out_dir / f".{CHECKPOINT}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
