"""Benchmark adapters: everything an agent needs to know about one benchmark's conventions.

An adapter turns a simulator's raw observation into the canonical `Observation` (`observation`), a
policy action into what that simulator's `step` accepts (`action`), and forgets per-episode state
(`reset`: SIMPLER's Google Robot gripper filter is stateful). It also names the `views`, `proprio_dim`
and `action_dim` it produces and takes, so an agent made for it gets matching inputs, and reads one
step of a demonstration file in its benchmark's recorded layout (`recorded`, `recorded_keys`), so
training sees the pixels and proprio that deployment will.

Agents, demonstrations and evaluation find adapters by name in `ADAPTERS`. Adding a benchmark is one
adapter module plus one entry there (or `register_adapter` from outside the package).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vla_agents.types import Observation


class ObservationError(ValueError):
    """A raw observation or action that does not follow its benchmark's conventions."""


@runtime_checkable
class Adapter(Protocol):
    views: tuple[str, ...]  # image names of its Observations, in the order models take them
    proprio_dim: int
    action_dim: int  # of the policy action `action` takes
    recorded_keys: tuple[str, ...]  # obs keys a demonstration file holds for it

    def observation(self, raw: Mapping[str, Any], instruction: str | None = None) -> Observation: ...

    def action(self, action: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...

    def recorded(self, frame: Mapping[str, np.ndarray], instruction: str) -> Observation: ...


ADAPTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "libero": ("vla_agents.adapters.libero:LiberoAdapter", {}),
    "embedded": ("vla_agents.adapters.libero:LiberoAdapter", {}),  # the embedded suite keeps LIBERO's conventions
    "simpler_widowx": ("vla_agents.adapters.simpler:SimplerAdapter", {"robot": "widowx"}),
    "simpler_google_robot": ("vla_agents.adapters.simpler:SimplerAdapter", {"robot": "google_robot"}),
    "robotwin": ("vla_agents.adapters.robotwin:RoboTwinAdapter", {"action_mode": "qpos"}),
    "robotwin_ee": ("vla_agents.adapters.robotwin:RoboTwinAdapter", {"action_mode": "ee"}),
}
"""name -> ("module:factory", keyword arguments). Imported on first use: no simulator is needed to list them."""


def register_adapter(name: str, factory: str, **kwargs: Any) -> None:
    """Make `make_adapter(name)` call `factory` ("package.module:callable") with `kwargs`."""
    if name in ADAPTERS:
        raise ValueError(f"adapter {name!r} is already registered (to {ADAPTERS[name][0]})")
    ADAPTERS[name] = (factory, kwargs)


def list_adapters() -> list[str]:
    return sorted(ADAPTERS)


def make_adapter(name: str) -> Adapter:
    """A fresh adapter (its own episode state) by registered name."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; available: {', '.join(list_adapters())}")
    target, kwargs = ADAPTERS[name]
    module, factory = target.split(":")
    return getattr(importlib.import_module(module), factory)(**kwargs)


def fit_recipe(adapter: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe overrides that make a model's inputs and outputs those of `adapter`: its views (an explicit
    `views` override may pick a subset), proprio_dim and action_dim (an explicit override must agree)."""
    spec = make_adapter(adapter)
    views = list(overrides.get("views") or spec.views)
    if not set(views) <= set(spec.views):
        raise ValueError(f"views {views} are not all views of adapter {adapter!r}, which gives {list(spec.views)}")
    for key in ("proprio_dim", "action_dim"):
        if key in overrides and overrides[key] != getattr(spec, key):
            raise ValueError(f"{key}={overrides[key]} does not fit adapter {adapter!r}, whose {key} is {getattr(spec, key)}")
    return {**overrides, "views": views, "proprio_dim": spec.proprio_dim, "action_dim": spec.action_dim}


# Imported after ObservationError, which the adapter modules import from here.
from vla_agents.adapters.libero import LiberoAdapter, quat2axisangle  # noqa: E402

__all__ = ["ADAPTERS", "Adapter", "LiberoAdapter", "ObservationError", "fit_recipe", "list_adapters", "make_adapter",
           "quat2axisangle", "register_adapter"]
