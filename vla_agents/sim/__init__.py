"""`make_env(spec)`: one entry point for every suite. Spec strings are `<suite>/<task>`."""
from __future__ import annotations

import importlib.util

import gymnasium as gym

# suite -> (python module that must be importable, pip extra that provides it)
EXTERNAL_SUITES = {
    "libero": ("libero", "libero"),
    "simpler": ("simpler_env", "simpler"),
    "robotwin": ("envs._base_task", "robotwin"),
}


def list_envs() -> list[str]:
    """Every environment spec that runs on this machine."""
    from vla_agents.sim.embedded import load_suite

    return [f"embedded/{task}" for task in load_suite()]


def make_env(spec: str, **kwargs) -> gym.Env:
    """Build a Gymnasium environment, e.g. `make_env("embedded/pick_color", image_size=224)`."""
    suite, _, task = spec.partition("/")
    if suite == "embedded":
        from vla_agents.sim.embedded import EmbeddedEnv

        return EmbeddedEnv(task, **kwargs)
    if suite in EXTERNAL_SUITES:
        module, extra = EXTERNAL_SUITES[suite]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ImportError(
                f"{spec!r} needs the {suite} simulator, which is not installed: "
                f"pip install 'vla-agents[{extra}]'"
            )
        raise NotImplementedError(f"the {suite} environment wrapper is not part of this release yet; see README")
    raise ValueError(f"unknown environment spec {spec!r}: expected '<suite>/<task>' with suite in "
                     f"{['embedded', *EXTERNAL_SUITES]}; embedded tasks: {list_envs()}")
