"""Every `make_env` spec as a Gymnasium id, so `gym.make`, `gym.make_vec` and the tools keyed on
`env.spec` (wrappers, step limits, checkers) work on this package's environments.

    import gymnasium as gym
    import vla_agents                                   # registers the ids
    env = gym.make("vla_agents/lift-v0", max_episode_steps=150, render_mode="rgb_array")

Ids: `vla_agents/<task>-v0` for the embedded suite (`vla_agents/pick_color-v0`),
`vla_agents/<suite>_task<i>-v0` for LIBERO (`vla_agents/libero_spatial_task0-v0`) and
`vla_agents/simpler_<task>-v0` for SIMPLER. RoboTwin runs policies through its own script and has
no Gymnasium env. Registering reads only the task lists: no simulator is imported before `gym.make`,
which raises `make_env`'s ImportError naming what to install when the simulator is missing here.

A registered env's step limit is Gymnasium's `TimeLimit`: the task's limit, or `gym.make`'s
`max_episode_steps` (longer or shorter), so the env's own limit is switched off.
"""
from __future__ import annotations

import gymnasium as gym

from vla_agents.adapters.simpler import SIMPLER_TASKS
from vla_agents.sim import make_env
from vla_agents.sim.embedded import load_suite
from vla_agents.sim.libero import SUITE_MAX_STEPS, SUITE_SIZES

NAMESPACE = "vla_agents"
VERSION = 0
OWN_STEP_LIMIT = ("embedded/", "libero/")  # suites whose envs (this package's) truncate episodes themselves


def gym_id(spec: str) -> str:
    """The Gymnasium id of a `make_env` spec: "embedded/lift" -> "vla_agents/lift-v0"."""
    suite, _, task = spec.partition("/")
    if suite == "embedded":
        name = task
    elif suite == "libero":
        libero_suite, _, task_id = task.partition("/")
        name = f"{libero_suite}_task{task_id}"
    elif suite == "simpler":
        name = f"simpler_{task}"
    else:
        raise ValueError(f"{spec!r} has no Gymnasium id: expected an embedded, libero/<suite>/<i> or simpler spec")
    return f"{NAMESPACE}/{name}-v{VERSION}"


def registered_specs() -> dict[str, int]:
    """Every spec that gets a Gymnasium id -> its default step limit."""
    specs = {f"embedded/{name}": task.max_episode_steps for name, task in load_suite().items()}
    specs |= {f"libero/{suite}/{i}": SUITE_MAX_STEPS[suite] for suite, size in SUITE_SIZES.items() for i in range(size)}
    specs |= {f"simpler/{name}": task.max_episode_steps for name, task in SIMPLER_TASKS.items()}
    return specs


def make_registered(spec: str, **kwargs) -> gym.Env:
    """`gym.make`'s entry point: `make_env(spec, **kwargs)` with the env's own step limit switched
    off, since the `TimeLimit` that `gym.make` adds applies the registered or requested one."""
    env = make_env(spec, **kwargs)
    if spec.startswith(OWN_STEP_LIMIT):
        env.unwrapped.max_episode_steps = None
    return env


def register_envs() -> None:
    """Register every spec's id (once: importing twice does not re-register)."""
    for spec, limit in registered_specs().items():
        env_id = gym_id(spec)
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"{__name__}:make_registered", kwargs={"spec": spec}, max_episode_steps=limit)
