"""Evaluation across machines on Ray: each (agent, task, episode shard) is one Ray task.

Episode i of a task runs with seed `seed + i` and reset option `episode_index` i wherever its shard
runs, and each task builds its agent afresh, so for an agent whose episodes do not depend on earlier
ones once it is reset (a VLAAgent), the merged reports hold the episodes one process gives.
`ray.init()` joins the cluster named by `RAY_ADDRESS`, or starts a local Ray instance:

    ray start --head                                  # one machine; then on the others:
    ray start --address=HEAD_IP:6379
    RAY_ADDRESS=HEAD_IP:6379 vla-agents compare runs/a runs/b --env embedded/lift --episodes 50 --backend ray

Every machine needs this package and the simulator, and the agent folders and video folder at the
same paths (shared storage). Ray is an optional extra: `pip install 'vla-agents[ray]'`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

from vla_agents.eval.rollout import EvalReport
from vla_agents.progress import LoggedProgress

Job = tuple[str, Callable[[], Any], str, Any]  # (agent name, agent factory, task name, make_env spec or env factory)


def require_ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError("the Ray backend needs ray, which is not installed here: pip install 'vla-agents[ray]'") from error
    return ray


def shards(episodes: int, shard_episodes: int) -> list[tuple[int, int]]:
    """(first episode, count) of each shard of `episodes` episodes."""
    if shard_episodes < 1:
        raise ValueError(f"shard_episodes must be at least 1, got {shard_episodes}")
    return [(first, min(shard_episodes, episodes - first)) for first in range(0, episodes, shard_episodes)]


def _evaluate_shard(name: str, factory: Callable[[], Any], task: str, source: Any, **options: Any) -> EvalReport:
    """One Ray task: one thread for torch (the simulator is most of an episode), then `evaluate`."""
    import torch

    from vla_agents.eval.compare import evaluate_or_record

    torch.set_num_threads(1)
    return evaluate_or_record(name, factory, task, source, progress=False, **options)


def merge_shards(task: str, reports: Sequence[EvalReport]) -> EvalReport:
    """One task's shard reports, in episode order, as one report. `eval_s` adds the shards' times (the
    compute spent, not the wall time); a shard that could not start makes the whole evaluation failed."""
    errors = [report.error for report in reports if report.error is not None]
    return EvalReport(env_name=task, policy_name=reports[0].policy_name,
                      episodes=[episode for report in reports for episode in report.episodes],
                      eval_s=sum(report.eval_s for report in reports),
                      num_parameters=next((r.num_parameters for r in reports if r.num_parameters is not None), None),
                      error=errors[0] if errors else None)


def evaluate_on_ray(jobs: Sequence[Job], episodes: int, shard_episodes: int, progress: bool,
                    video_dir: Callable[[str, str], Path | None], **options: Any) -> dict[tuple[str, str], EvalReport]:
    """Run every job's episodes in shards of `shard_episodes` as Ray tasks; (agent, task) -> report.
    `video_dir(agent, task)` is where that pair's videos go; `options` go to `evaluate` (seed, max_steps, ...)."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS if set, else a local instance
    remote = ray.remote(num_cpus=1)(_evaluate_shard)
    pending = {}
    for name, factory, task, source in jobs:
        for first, count in shards(episodes, shard_episodes):
            ref = remote.remote(name, factory, task, source, episodes=count, first_episode=first,
                                video_dir=video_dir(name, task), **options)
            pending[ref] = (name, task, first, count)
    done: dict[tuple[str, str], list[tuple[int, EvalReport]]] = {}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with LoggedProgress(*columns, disable=not progress, log_every=1 / len(pending)) as bar:
        bar_task = bar.add_task(f"{len(pending)} shards on Ray", total=len(pending))
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            name, task, first, count = pending.pop(ref)
            report = ray.get(ref)
            done.setdefault((name, task), []).append((first, report))
            wins = sum(ep.success for ep in report.episodes)
            outcome = f"failed: {report.error}" if report.error else f"{wins}/{len(report.episodes)} success"
            bar.console.print(f"{name} on {task}, episodes {first}-{first + count - 1}: {outcome}", markup=False)
            bar.advance(bar_task)
    return {key: merge_shards(key[1], [report for _, report in sorted(parts, key=lambda part: part[0])])
            for key, parts in done.items()}
