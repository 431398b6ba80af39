"""How trained agents fail on the embedded tasks: the wrong cube lifted, the right one lifted but the
task not finished, or no cube lifted at all.

    .venv/bin/python benchmarks/wrong_cube.py AGENT_DIR [AGENT_DIR ...] [--env embedded/lift_lookalikes]
        [--episodes 30] [--seed 20000] [--image-size 192]

Episodes are classed by `vla_agents.eval.outcomes`. The default seed is `demos/ablations.py`'s final
evaluation seed, so the successes equal that study's records for the same agents (which, from stop 21
on, record these classes themselves as `outcomes`).
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vla_agents.agent import load_agent
from vla_agents.eval.outcomes import OUTCOMES, evaluate_outcomes
from vla_agents.sim import make_env


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
    for column in OUTCOMES:
        table.add_column(column, justify="right")
    for agent_dir in args.agents:
        try:
            _, counts = evaluate_outcomes(load_agent(agent_dir), partial(make_env, args.env, image_size=args.image_size),
                                          args.episodes, args.seed, env_name=args.env)
        except ValueError as exc:  # a task without info["lifted"]
            raise SystemExit(str(exc)) from exc
        table.add_row("/".join(agent_dir.parts[-2:]), *(str(counts[c]) for c in OUTCOMES))  # ablations: variant/seedN
    Console().print(table)


if __name__ == "__main__":
    main()
