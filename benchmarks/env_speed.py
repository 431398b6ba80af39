"""Embedded-suite speed: env steps/s and reset time per task, with and without cameras.

    .venv/bin/python benchmarks/env_speed.py [--steps 100] [--sizes 128 224]

Steps run a zero action (the arm holds still), so the number is simulator + renderer cost only.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import vla_agents
from vla_agents.sim.embedded import load_suite


def measure(task: str, image_size: int, use_cameras: bool, steps: int, resets: int = 5) -> tuple[float, float]:
    env = vla_agents.make_env(f"embedded/{task}", image_size=image_size, use_cameras=use_cameras)
    env.reset(seed=0)
    start = time.perf_counter()
    for seed in range(1, resets + 1):
        env.reset(seed=seed)
    reset_s = (time.perf_counter() - start) / resets
    start = time.perf_counter()
    for _ in range(steps):
        env.step(np.zeros(7))
    steps_per_s = steps / (time.perf_counter() - start)
    env.close()
    return steps_per_s, reset_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    args = parser.parse_args()
    table = Table(title="embedded suite speed (1 env, CPU)")
    for column in ("task", "image px", "cameras", "steps/s", "reset (ms)"):
        table.add_column(column, justify="right")
    for task in load_suite():
        for size in args.sizes:
            for cams in (True, False):
                if not cams and size != args.sizes[0]:
                    continue  # without cameras the image size does not matter
                sps, reset_s = measure(task, size, cams, args.steps)
                table.add_row(task, str(size) if cams else "-", "2" if cams else "0", f"{sps:.1f}", f"{1000 * reset_s:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
