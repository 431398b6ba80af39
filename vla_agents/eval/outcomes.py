"""How episodes on the embedded tasks end: success, the target cube lifted but the task not finished,
another cube lifted, or nothing lifted.

Success alone cannot say whether a policy found the target and fumbled, or went for a look-alike
(the question DeepVision-VLA's finer vision and FocusVLA's focus are about). Every episode is classed
by the cubes the environment reported lifted (`info["lifted"]`) at any step. On lift tasks lifting
the target is success, so "target lifted, not done" stays 0 there; on stack it is a cube picked up
and never placed."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from vla_agents.eval.rollout import EvalReport, evaluate

OUTCOMES = ("success", "target lifted, not done", "other cube lifted", "nothing lifted", "error")


class LiftedCubes(gym.Wrapper):
    """Collects, per episode seed, every cube `info["lifted"]` named and the episode's target."""

    def __init__(self, env: gym.Env, lifted: dict[int, set[str]], targets: dict[int, str]) -> None:
        super().__init__(env)
        self.lifted, self.targets, self.seed = lifted, targets, None

    def reset(self, *, seed: int | None = None, **kwargs: Any):
        obs, info = self.env.reset(seed=seed, **kwargs)
        self.seed = seed
        self.lifted[seed], self.targets[seed] = set(info["lifted"]), info["target"]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.lifted[self.seed].update(info["lifted"])
        return obs, reward, terminated, truncated, info


def episode_outcome(success: bool, error: str | None, lifted: set[str], target: str | None) -> str:
    """One of OUTCOMES for an episode, from its result and the cubes it lifted."""
    if error:
        return "error"
    if success:
        return "success"
    if target in lifted:
        return "target lifted, not done"
    return "other cube lifted" if lifted else "nothing lifted"


def evaluate_outcomes(agent: Any, make_env: Callable[[], gym.Env], episodes: int, seed: int,
                      **evaluate_kwargs: Any) -> tuple[EvalReport, dict[str, int]]:
    """`evaluate`, plus the count of each of OUTCOMES (all keys present, zeros included)."""
    probe = make_env()
    try:
        if "lifted" not in probe.reset(seed=seed)[1]:
            raise ValueError(f"{probe.unwrapped.__class__.__name__} reports no info['lifted']; expected an embedded "
                             "task whose info names the lifted cubes")
    finally:
        probe.close()
    lifted: dict[int, set[str]] = {}
    targets: dict[int, str] = {}
    report = evaluate(agent, lambda: LiftedCubes(make_env(), lifted, targets), episodes, seed=seed, **evaluate_kwargs)
    counts = Counter(episode_outcome(e.success, e.error, lifted.get(e.seed, set()), targets.get(e.seed))
                     for e in report.episodes)
    return report, {outcome: counts[outcome] for outcome in OUTCOMES}
