"""Did agent B beat agent A? Two `vla-agents eval --json` files over the same seeds.

    .venv/bin/python benchmarks/paired_success.py runs/eval_before.json runs/eval_after.json

Prints both success rates with Wilson intervals, the difference with Newcombe's 95% interval as if
the episodes were independent, and, pairing episodes by seed, how many outcomes changed each way,
Newcombe's paired 95% interval of the difference and the exact McNemar p-value. The paired figures
are the ones that fit the design (same seeds); the unpaired interval is the conservative bound.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_agents.eval.stats import diff_interval, mcnemar_exact, paired_diff_interval, wilson_interval


def outcomes(path: Path) -> dict[tuple[str | None, int], bool]:
    """(task, seed) -> success, from a LeRobot-shaped eval_info JSON (rows name their task only when
    the evaluation ran several; then the same seeds repeat across tasks)."""
    try:
        info = json.loads(path.read_text())
        tasks = [f"{t['task_group']}/{t['task_id']}" for t in info["per_task"]]
        only = tasks[0] if len(tasks) == 1 else None
        return {(e.get("task", only), int(e["seed"])): bool(e["success"]) for e in info["per_episode"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not a `vla-agents eval --json` file (expected per_task, and per_episode rows "
                         f"with seed and success): {error!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="eval JSON of agent A (the reference)")
    parser.add_argument("after", type=Path, help="eval JSON of agent B")
    args = parser.parse_args()
    a, b = outcomes(args.before), outcomes(args.after)
    if a.keys() != b.keys():
        raise SystemExit(f"the two evaluations ran different episodes ({len(a.keys() ^ b.keys())} task/seed pairs "
                         "differ); run both on the same --env with the same --episodes and --seed")
    n, wins_a, wins_b = len(a), sum(a.values()), sum(b.values())
    for name, wins in (("A", wins_a), ("B", wins_b)):
        low, high = wilson_interval(wins, n)
        print(f"{name}: {wins}/{n} = {100 * wins / n:.0f}%  (Wilson 95%: {100 * low:.0f}-{100 * high:.0f}%)")
    low, high = diff_interval(wins_b, n, wins_a, n)
    print(f"B - A: {100 * (wins_b - wins_a) / n:+.0f} points  (unpaired Newcombe 95%: {100 * low:+.1f} to {100 * high:+.1f})")
    gained = sum(b[key] and not a[key] for key in a)
    lost = sum(a[key] and not b[key] for key in a)
    both = sum(a[key] and b[key] for key in a)
    low, high = paired_diff_interval(gained, lost, both, n - gained - lost - both)
    print(f"paired by seed: {gained} gained, {lost} lost; B - A paired 95%: {100 * low:+.1f} to {100 * high:+.1f}; "
          f"exact McNemar p = {mcnemar_exact(gained, lost):.4f}")


if __name__ == "__main__":
    main()
