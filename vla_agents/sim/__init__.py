"""`make_env(spec)`: one entry point for every suite. Spec strings are `<suite>/<task>`.

Each simulator lives in its own extra because their pins conflict (robosuite 1.5 for the embedded
suite, 1.4 for LIBERO); a spec whose simulator is missing raises one `ImportError` naming the
install command, never a fallback to something else.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util

import gymnasium as gym

INSTALL = {
    "embedded": "pip install 'vla-agents[embedded]' (or: bash scripts/setup.sh, which builds .venv)",
    "libero": "pip install 'vla-agents[libero]' && pip install --no-deps hf-libero==0.1.4 "
              "(or: bash scripts/setup_libero.sh, which builds .venv-libero)",
    "simpler": "pip install 'vla-agents[simpler]' plus Vulkan on the CPU (Mesa 25 lavapipe) "
               "(or: bash scripts/setup_simpler.sh, which installs both)",
    "robotwin": "pip install 'vla-agents[robotwin]', then clone RoboTwin 2.0 and run from its root (`envs` package)",
}
SUITES = ("embedded", "libero", "simpler", "robotwin")


def _robosuite_version() -> str | None:
    try:
        return importlib.metadata.version("robosuite")
    except importlib.metadata.PackageNotFoundError:
        return None


def _require(suite: str, spec: str, available: bool, detail: str = "") -> None:
    if not available:
        raise ImportError(f"{spec!r} needs the {suite} simulator{detail}, which is not installed here: {INSTALL[suite]}")


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def suite_installed(suite: str) -> bool:
    """Whether `suite`'s simulator is installed here (checked without importing it)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    if suite == "embedded":
        return (_robosuite_version() or "").startswith("1.5.")
    return _module_available({"libero": "libero", "simpler": "simpler_env", "robotwin": "envs._base_task"}[suite])


def list_envs() -> list[str]:
    """Every environment spec that runs in this Python environment."""
    specs = []
    if (_robosuite_version() or "").startswith("1.5."):
        from vla_agents.sim.embedded import load_suite

        specs += [f"embedded/{task}" for task in load_suite()]
    if _module_available("libero"):
        from vla_agents.sim.libero import SUITE_MAX_STEPS, suite_tasks

        specs += [spec for suite in SUITE_MAX_STEPS for spec in suite_tasks(suite)]
    if _module_available("mani_skill"):
        from vla_agents.sim.simpler import TASKS

        specs += [f"simpler/{task}" for task in TASKS]
    return specs


def expand_spec(spec: str) -> list[str]:
    """A whole LIBERO suite ("libero/libero_spatial") -> its task specs; any other spec -> itself."""
    suite, _, rest = spec.partition("/")
    if suite == "libero" and rest and "/" not in rest:
        from vla_agents.sim.libero import check_suite, suite_tasks

        check_suite(rest)
        _require(suite, spec, _module_available("libero"))
        return suite_tasks(rest)
    return [spec]


def make_env(spec: str, **kwargs) -> gym.Env:
    """Build a Gymnasium environment, e.g. `make_env("embedded/pick_color", image_size=224)`,
    `make_env("libero/libero_spatial/0")` or `make_env("simpler/widowx_carrot_on_plate")`."""
    suite, _, task = spec.partition("/")
    if suite == "embedded":
        version = _robosuite_version()
        _require(suite, spec, (version or "").startswith("1.5."),
                 f" (robosuite 1.5; this environment has robosuite {version})" if version else "")
        from vla_agents.sim.embedded import EmbeddedEnv

        return EmbeddedEnv(task, **kwargs)
    if suite == "libero":
        libero_suite, _, task_id = task.partition("/")
        if not task_id.isdigit():
            raise ValueError(f"LIBERO specs are 'libero/<suite>/<task_id>', e.g. 'libero/libero_spatial/0'; got {spec!r}")
        from vla_agents.sim.libero import LiberoEnv, check_suite

        check_suite(libero_suite)
        _require(suite, spec, _module_available("libero"))
        return LiberoEnv(libero_suite, int(task_id), **kwargs)
    if suite == "simpler":
        from vla_agents.adapters.simpler import SIMPLER_TASKS
        from vla_agents.sim.simpler import TASKS

        runs = [f"simpler/{t}" for t in TASKS]
        if task not in SIMPLER_TASKS:
            raise ValueError(f"unknown SIMPLER task {task!r}; expected one of {runs}")
        if task not in TASKS:
            raise ValueError(f"{spec!r} runs only in the original SIMPLER (ManiSkill2, sapien 2.2.2), whose renderer needs "
                             f"a GPU; on ManiSkill3 SIMPLER has {runs}")
        _require(suite, spec, _module_available("mani_skill"))
        from vla_agents.sim.simpler import SimplerEnv

        return SimplerEnv(task, **kwargs)
    if suite == "robotwin":
        _require(suite, spec, _module_available("envs._base_task"))
        raise NotImplementedError(
            f"{spec!r}: RoboTwin 2.0 is not a Gymnasium env; its own script/eval_policy.py runs policies. "
            "Point it at vla_agents.adapters.robotwin_policy (deploy_policy.py / deploy_policy.yml)")
    raise ValueError(f"unknown environment spec {spec!r}: expected '<suite>/<task>' with suite in {list(SUITES)}")
