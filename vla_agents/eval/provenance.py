"""Which agent, code, environments and seeds produced an evaluation: the `provenance` block of
`eval_info.json`, so a results file still says what it measured after it is copied elsewhere."""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vla_agents import __version__
from vla_agents.eval.rollout import agent_recipe
from vla_agents.recipe import Recipe
from vla_agents.sim.registration import gym_id

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def recipe_sha256(recipe: Recipe) -> str:
    """A stable fingerprint of every recipe key (sorted JSON), to tell apart agents that share a policy name."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> dict[str, Any] | None:
    """The checkout the package runs from (commit, and whether files differ from it); None when it
    is installed from a wheel or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _gym_id(spec: str) -> str | None:
    try:
        return gym_id(spec)
    except ValueError:  # an env factory's name, not a make_env spec
        return None


def provenance(agent: Any, agent_source: str, specs: Sequence[str], seed: int, episodes: int,
               **settings: Any) -> dict[str, Any]:
    """The provenance block: `agent_source` is the agent folder or hub id as the user gave it; episode
    i of every task ran with seed `seed + i`; `settings` records how it ran (n_envs, backend, ...)."""
    recipe = agent_recipe(agent)
    config = agent.config() if callable(getattr(agent, "config", None)) else {}
    return {
        "agent": agent_source,
        "policy": getattr(agent, "policy_name", None) or type(agent).__name__,
        "recipe_sha256": recipe_sha256(recipe) if recipe is not None else None,
        "dtp": config.get("dtp"),  # DTP's settings when it wraps the policy
        "vla_agents_version": __version__,
        "git": git_commit(),
        "envs": [{"spec": spec, "gym_id": _gym_id(spec)} for spec in specs],
        "seeds": list(range(seed, seed + episodes)),
        **settings,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
