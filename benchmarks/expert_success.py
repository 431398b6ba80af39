"""Scripted-expert success per embedded task over seeded episodes (no cameras: state only).

    .venv/bin/python benchmarks/expert_success.py [--episodes 50]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import vla_agents
from vla_agents.eval.stats import wilson_interval
from vla_agents.sim.embedded import load_suite
from vla_agents.sim.experts import ScriptedExpert


def run(task: str, episodes: int) -> tuple[int, float, float]:
    env = vla_agents.make_env(f"embedded/{task}", use_cameras=False)
    expert = ScriptedExpert(env)
    successes, lengths, start = 0, [], time.perf_counter()
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        expert.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
        successes += info["success"]
        lengths.append(env.unwrapped.elapsed_steps)
    return successes, float(np.mean(lengths)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    table = Table(title=f"scripted experts, seeds 0..{args.episodes - 1}")
    for column in ("task", "success", "95% Wilson", "mean length", "wall s"):
        table.add_column(column, justify="right")
    for task in load_suite():
        wins, length, wall = run(task, args.episodes)
        low, high = wilson_interval(wins, args.episodes)
        table.add_row(task, f"{wins}/{args.episodes}", f"[{100 * low:.0f}, {100 * high:.0f}]%", f"{length:.1f}", f"{wall:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
