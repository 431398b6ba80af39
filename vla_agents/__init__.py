"""vla-agents: Vision-Language-Action policies as Gymnasium agents.

    env = vla_agents.make_env("embedded/pick_color")
    agent = vla_agents.load_agent("policies/checkpoints/vla_adapter-tiny-pick_color")
    action = agent.act(obs)

Importing it registers the environments with Gymnasium (`gym.make("vla_agents/lift-v0")`), which
imports gymnasium and NumPy but no simulator, torch or MuJoCo.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so `import vla_agents` stays cheap.
_EXPORTS = {
    "make_env": "vla_agents.sim",
    "list_envs": "vla_agents.sim",
    "make_agent": "vla_agents.agent",
    "load_agent": "vla_agents.agent",
    "list_policies": "vla_agents.agent",
    "list_adapters": "vla_agents.adapters",
}
__all__ = [*_EXPORTS, "__version__"]

# Every environment spec as a Gymnasium id (`gym.make("vla_agents/lift-v0")`); reads task lists only.
importlib.import_module("vla_agents.sim.registration").register_envs()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vla_agents' has no attribute {name!r}")
