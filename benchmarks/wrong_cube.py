"""How trained agents fail on the embedded tasks: the wrong cube lifted, the right one lifted but the
task not finished, or no cube lifted at all.

    .venv/bin/python benchmarks/wrong_cube.py AGENT_DIR [AGENT_DIR ...] [--env embedded/lift_lookalikes]
        [--episodes 30] [--seed 20000] [--image-size 192]

Success alone cannot say whether a policy found the target and fumbled the grasp, or went for a
look-alike: the question DeepVision-VLA's finer vision is about. Every episode is classed by the
cubes the environment reported lifted (`info["lifted"]`) at any step: success; the target lifted
without success (stack: picked up, never placed; on lift tasks lifting the target is success, so this
stays 0); another cube (a look-alike, or stack's base or distractor) lifted; or no cube lifted. The
default seed is `demos/ablations.py`'s final evaluation seed, so the successes equal that study's
records for the same agents.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import gymnasium as gym
from rich.console import Console
from rich.table import Table

from vla_agents.agent import load_agent
from vla_agents.eval.rollout import evaluate
from vla_agents.sim import make_env


COLUMNS = ("success", "target lifted, not done", "other cube lifted", "nothing lifted", "error")


class LiftedCubes(gym.Wrapper):
    """Collects every cube `info["lifted"]` named, and the episode's target, per episode seed."""

    def __init__(self, env: gym.Env, lifted: dict[int, set[str]], targets: dict[int, str]) -> None:
        super().__init__(env)
        self.lifted, self.targets, self.seed = lifted, targets, None

    def reset(self, *, seed: int | None = None, **kwargs):
        obs, info = self.env.reset(seed=seed, **kwargs)
        self.seed = seed
        self.lifted[seed], self.targets[seed] = set(info["lifted"]), info["target"]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.lifted[self.seed].update(info["lifted"])
        return obs, reward, terminated, truncated, info


def failure_modes(agent_dir: Path, env: str, episodes: int, seed: int, image_size: int) -> Counter:
    probe = make_env(env, image_size=image_size)
    if "lifted" not in probe.reset(seed=seed)[1]:
        raise SystemExit(f"{env} reports no info['lifted']; expected an embedded task whose info names the lifted cubes")
    probe.close()
    lifted: dict[int, set[str]] = {}
    targets: dict[int, str] = {}
    report = evaluate(load_agent(agent_dir), lambda: LiftedCubes(make_env(env, image_size=image_size), lifted, targets),
                      episodes, seed=seed, env_name=env)
    return Counter(episode_class(e.success, e.error, lifted.get(e.seed, set()), targets.get(e.seed)) for e in report.episodes)


def episode_class(success: bool, error: str | None, lifted: set[str], target: str | None) -> str:
    """One of COLUMNS for an episode, from its outcome and the cubes it lifted."""
    if error:
        return "error"
    if success:
        return "success"
    if target in lifted:
        return "target lifted, not done"
    return "other cube lifted" if lifted else "nothing lifted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agents", nargs="+", type=Path)
    parser.add_argument("--env", default="embedded/lift_lookalikes")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=192)
    args = parser.parse_args()
    table = Table(title=f"{args.env}, {args.episodes} episodes from seed {args.seed}")
    table.add_column("agent", no_wrap=True)
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for agent_dir in args.agents:
        modes = failure_modes(agent_dir, args.env, args.episodes, args.seed, args.image_size)
        table.add_row("/".join(agent_dir.parts[-2:]), *(str(modes[c]) for c in COLUMNS))  # ablations: variant/seedN
    Console().print(table)


if __name__ == "__main__":
    main()
