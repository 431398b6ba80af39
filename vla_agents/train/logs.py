"""Behaviour cloning's own training log, readable while training runs: `train_log.jsonl`, one JSON line
per step, appended and flushed as each step ends, so a killed run keeps its loss history; and
`loss_curve.png`, the loss against the step (RL's counterpart is `curve.png`). TensorBoard and W&B are
accelerate's trackers (`train_bc(log_with=...)`); they see only what a run is asked to send them.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from vla_agents.atomic import write_file

TRAIN_LOG = "train_log.jsonl"
LOSS_CURVE = "loss_curve.png"
TRACKERS = ("tensorboard", "wandb")


class TrainLog:
    """`path` starts as `history` (on --resume, the checkpoint's: the steps a killed run logged past its
    checkpoint are trained again, and logged once), then takes one line per `append`."""

    def __init__(self, path: str | Path, history: list[dict[str, Any]]) -> None:
        self.path = write_file(path, "".join(json.dumps(r) + "\n" for r in history))
        self._file = self.path.open("a")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_tracker(log_with: str | None) -> None:
    """Refuse an unknown tracker, or one whose package is not installed, before training starts."""
    if log_with is None:
        return
    if log_with not in TRACKERS:
        raise ValueError(f"log_with must be one of {', '.join(TRACKERS)} or None, got {log_with!r}")
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[log_with]():
        raise ImportError(f"--log-with {log_with} needs the {log_with} package, which is not installed: "
                          f"pip install 'vla-agents[{log_with}]'")


def plot_loss_curve(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """The loss (and the action loss, where an auxiliary loss is added to it) on a log scale, the
    learning rate on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["loss"] for r in history], label="loss", lw=1)
    if history and "action_loss" in history[0]:
        ax.plot(steps, [r["action_loss"] for r in history], label="action loss", lw=1)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    lr = ax.twinx()
    lr.plot(steps, [r["lr"] for r in history], color="grey", ls="--", lw=1)
    lr.set_ylabel("learning rate (dashed)")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_file(path, png.getvalue())
