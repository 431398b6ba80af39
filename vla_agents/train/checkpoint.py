"""Training checkpoints, BC's and RL's alike: `out_dir/checkpoint/`, replaced in one recoverable swap
(`vla_agents.atomic`), so a run killed at any moment leaves the previous checkpoint or the new one;
and trainer state (optimizer, scheduler, RNG), read back without unpickling code.

The trainer state is not accelerate's `save_state`/`load_state`, although it holds the same things: that
writes a file from every process into a folder all of them name (each its RNG state), where ours is written
by the main process into a fresh folder swapped in whole; it saves the weights as `model.safetensors`, the
name of the agent's own file in the same folder; and the step, settings and loss history a resume checks
would have to be registered objects, which `load_state` unpickles with `weights_only=False`, so opening a
checkpoint could run code. The optimizer, scheduler and RNG states are what accelerate would save."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vla_agents.atomic import replace_folder

CHECKPOINT = "checkpoint"
# Trainer state written by vla-agents 0.1 holds numpy's RNG state as an array: these rebuild exactly
# that, and are all `torch.load(weights_only=True)` is allowed beyond tensors and plain values.
NUMPY_ARRAY_GLOBALS = [np.dtype, np.ndarray, np.core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def write_checkpoint(out_dir: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(folder)` fills a fresh folder, which then replaces `out_dir/checkpoint/`."""
    return replace_folder(Path(out_dir) / CHECKPOINT, write)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """A `torch.save`d trainer state, read with `weights_only=True`: tensors, plain values and numpy
    arrays only, so opening a checkpoint cannot run code."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise ValueError(f"{path} holds objects other than tensors, plain values and numpy arrays, which would "
                             "run code when loaded; refusing to open it. Train without --resume") from e
        raise ValueError(f"{path} is not a readable trainer state; it is damaged. Train without --resume") from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable trainer state ({type(e).__name__}: {str(e)[:120]}); it is "
                         "empty, truncated or damaged. Train without --resume") from e
