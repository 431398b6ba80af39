"""Benchmark adapters: turn a simulator's raw observation into the canonical `Observation`,
and a canonical action into what that simulator's `step` accepts."""
from __future__ import annotations


class ObservationError(ValueError):
    """A raw observation or action that does not follow its benchmark's conventions."""


# Imported after ObservationError, which the adapter modules import from here.
from vla_agents.adapters.libero import LiberoAdapter, quat2axisangle  # noqa: E402

__all__ = ["LiberoAdapter", "ObservationError", "quat2axisangle"]
