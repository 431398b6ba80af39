"""SIMPLER on ManiSkill3: env build time, steps/s, and the scripted expert's success per Bridge task.

    MS_ASSET_DIR=<asset folder> .venv/bin/python benchmarks/simpler_bench.py [--episodes 50] [--tasks ...]

Steps/s: 60 zero actions after a reset (physics at 500 Hz, 5 Hz control, the 640x480 camera rendered
and green-screened every step), per wall-clock second and per CPU second of this process (the latter
hardly moves when other jobs share the CPU). `--episodes 0` measures speed only. The expert runs SimplerEnv's episodes 0..N-1 (`episode_id`, taken
modulo the task's 24 configurations) with seeds 0..N-1, as `vla-agents eval` would.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from vla_agents.eval.rollout import evaluate
from vla_agents.eval.stats import wilson_interval
from vla_agents.sim import make_env
from vla_agents.sim.simpler import TASKS
from vla_agents.sim.simpler_expert import SimplerExpert


def speed(task: str) -> tuple[float, float, float, float]:
    """(build s, reset s, steps per wall second, steps per CPU second)."""
    start = time.perf_counter()
    env = make_env(f"simpler/{task}")
    build = time.perf_counter() - start
    start = time.perf_counter()
    env.reset(seed=0, options={"episode_id": 0})
    reset = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(60):
        env.step(np.zeros(7))
    steps_per_s, steps_per_cpu_s = 60 / (time.perf_counter() - start), 60 / (time.process_time() - cpu)
    env.close()
    return build, reset, steps_per_s, steps_per_cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50, help="expert episodes per task (0: speed only)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    args = parser.parse_args()
    table = Table(title="SIMPLER (ManiSkill3), " + (f"scripted expert over episodes 0..{args.episodes - 1}" if args.episodes else "speed"))
    for column in ("task", "build s", "reset s", "steps/s", "steps/CPU-s", "expert success", "95% Wilson", "grasped", "eval s"):
        table.add_column(column, justify="right")
    for task in args.tasks:
        build, reset, steps_per_s, steps_per_cpu_s = speed(task)
        row = [task, f"{build:.1f}", f"{reset:.2f}", f"{steps_per_s:.1f}", f"{steps_per_cpu_s:.1f}"]
        print(f"{task}: build {build:.1f} s, reset {reset:.2f} s, {steps_per_s:.1f} steps/s, {steps_per_cpu_s:.1f} steps/CPU-s",
              flush=True)
        if not args.episodes:
            table.add_row(*row, "-", "-", "-", "-")
            continue
        expert = SimplerExpert()
        report = evaluate(expert, lambda t=task: expert.bind(make_env(f"simpler/{t}")), args.episodes, seed=0,
                          progress=False, env_name=f"simpler/{task}")
        metrics = report.metrics()
        low, high = wilson_interval(metrics["successes"], args.episodes)
        table.add_row(*row, f"{metrics['successes']}/{args.episodes}", f"[{100 * low:.0f}, {100 * high:.0f}]%",
                      f"{100 * metrics['episode_stats']['is_src_obj_grasped_ever']:.0f}%", f"{report.eval_s:.0f}")
        print(f"{task}: expert {metrics['successes']}/{args.episodes}, eval {report.eval_s:.0f} s", flush=True)
    Console().print(table)


if __name__ == "__main__":
    main()
