"""Training arguments checked before any work starts: a run with zero steps or a missing GPU would
otherwise save an untrained agent, or quietly run somewhere else, and exit 0."""
from __future__ import annotations

import torch


def at_least(minimum: float, **values: float | None) -> None:
    """Refuse any of `values` (argument name=value; None is "not given") below `minimum`."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here (e.g. "cuda" on a machine without a visible GPU)."""
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device ({e}); expected e.g. cpu or cuda:0") from e
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count() > 0:
        raise ValueError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}, built for "
                         f"CUDA {torch.version.cuda}); use cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
