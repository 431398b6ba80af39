"""Side-by-side evaluation of several agents on the same tasks and seeds, reported as a rich
table (success % with 95% Wilson intervals, size, latency) and as JSON/CSV for later analysis.

Data lives in `ComparisonResult`; the `Table` is only built when printing (rich #1331). An
evaluation that cannot start (a broken checkpoint, an env that fails to build) is recorded as
failed and the comparison goes on: one bad agent must not cost the evaluations of the others."""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from vla_agents.atomic import write_file
from vla_agents.eval.rollout import EvalReport, EvaluationInterrupted, episode_metrics, error_summary, evaluate, slugify
from vla_agents.eval.video import OverlayStyle
from vla_agents.progress import LoggedProgress

OVERALL = "overall"
BACKENDS = ("local", "ray")
_CSV_FIELDS = ["policy", "num_parameters", "task", "successes", "n_episodes", "pc_success", "ci95_low", "ci95_high",
               "mean_length", "n_errors", "step_ms_p50", "step_ms_p95", "chunk_ms_p50", "chunk_ms_p95", "error"]


def format_parameters(count: int | None) -> str:
    """Human-readable parameter count: 1234567 -> '1.2M'."""
    if count is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


@dataclass
class ComparisonRow:
    """One agent's evaluations, keyed by environment name."""

    name: str
    reports: dict[str, EvalReport]
    num_parameters: int | None = None

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Task name (and 'overall', pooling every episode) -> `episode_metrics`."""
        per_task = {task: episode_metrics(report.episodes) for task, report in self.reports.items()}
        per_task[OVERALL] = episode_metrics([ep for report in self.reports.values() for ep in report.episodes])
        return per_task

    @property
    def errors(self) -> dict[str, str]:
        """Task -> why its evaluation failed (`EvalReport.failure`: could not start, every episode
        raised, or interrupted), for the tasks that failed."""
        return {task: report.failure for task, report in self.reports.items() if report.failure is not None}


@dataclass
class ComparisonResult:
    rows: list[ComparisonRow] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C stopped the comparison; the evaluations it cut short read failed

    def add(self, name: str, reports: Iterable[EvalReport], num_parameters: int | None = None) -> ComparisonRow:
        """Add an agent from evaluations already run (e.g. by `evaluate`)."""
        by_task: dict[str, EvalReport] = {}
        for report in reports:
            if report.env_name in by_task:
                raise ValueError(f"two reports for {report.env_name!r} in row {name!r}")
            by_task[report.env_name] = report
        if num_parameters is None:
            num_parameters = next((r.num_parameters for r in by_task.values() if r.num_parameters is not None), None)
        row = ComparisonRow(name, by_task, num_parameters)
        self.rows.append(row)
        return row

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        """(agent, task, error) for every evaluation that failed (see `ComparisonRow.errors`)."""
        return [(row.name, task, error) for row in self.rows for task, error in row.errors.items()]

    @property
    def tasks(self) -> list[str]:
        """Every task any row was evaluated on, in first-seen order."""
        return list(dict.fromkeys(task for row in self.rows for task in row.reports))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "rows": [{"policy": row.name, "num_parameters": row.num_parameters, "metrics": row.metrics(), "errors": row.errors}
                     for row in self.rows],
        }

    def to_json(self, path: str | Path) -> Path:
        return write_file(path, json.dumps(self.to_dict(), indent=2))

    def to_csv(self, path: str | Path) -> Path:
        """One line per (policy, task), plus a pooled 'overall' line per policy; percentages in %."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in self.rows:
            errors = row.errors
            for task, m in row.metrics().items():
                low, high = m["pc_success_ci95"]
                writer.writerow({"policy": row.name, "num_parameters": row.num_parameters, "task": task,
                                 "ci95_low": low, "ci95_high": high, "error": errors.get(task, ""),
                                 **{k: m[k] for k in _CSV_FIELDS if k in m}})
        return write_file(path, text.getvalue())

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the JSON to `path` (`.json` added when it has another suffix or none: "results.v2" ->
        "results.v2.json") and the CSV beside it with `.csv` in place of `.json`; returns both paths."""
        path = Path(path)
        json_path = path if path.suffix == ".json" else path.with_name(f"{path.name}.json")
        return self.to_json(json_path), self.to_csv(json_path.with_suffix(".csv"))


def _cell(m: dict[str, Any]) -> str:
    low, high = m["pc_success_ci95"]
    return f"{m['pc_success']:.1f}% [{low:.0f}-{high:.0f}] n={m['n_episodes']}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def table_console(file_width: int = 160) -> Console:
    """Where comparison tables print: the terminal at its own width; a file or pipe (nohup, CI logs)
    at `file_width` columns, since rich's 80-column default there folds every cell into stubs."""
    console = Console()
    return console if console.is_terminal else Console(width=file_width)


def render_table(result: ComparisonResult, title: str = "Agent comparison") -> Table:
    """One row per agent; the best success rate in each task column is bold. A failed evaluation reads
    'failed', and its agent's overall '-': an overall over fewer tasks would not compare."""
    tasks = [*result.tasks, OVERALL]
    metrics = [row.metrics() for row in result.rows]
    errors = [row.errors for row in result.rows]
    ran = [{task: m for task, m in row_metrics.items() if not (task in failed or task == OVERALL and failed)}
           for row_metrics, failed in zip(metrics, errors)]  # the cells that compare
    best = {task: max((m[task]["pc_success"] for m in ran if task in m), default=None) for task in tasks}
    table = Table(title=title, caption="success % [95% Wilson interval]; latency = time inside act(), p50")
    table.add_column("policy", style="cyan", overflow="fold")  # wrap, never truncate: names may differ only at the end (+dtp)
    table.add_column("params", justify="right")
    for task in tasks:
        table.add_column(task, justify="right")
    for name in ("mean len", "step ms", "chunk ms"):
        table.add_column(name, justify="right")
    for row, m, ok, failed in zip(result.rows, metrics, ran, errors):
        cells = []
        for task in tasks:
            if task in failed:
                cells.append("[red]failed[/red]")
            elif task not in ok:
                cells.append("-")
            else:
                text = _cell(m[task])
                cells.append(f"[bold]{text}[/bold]" if len(result.rows) > 1 and m[task]["pc_success"] == best[task] else text)
        overall = m[OVERALL]
        table.add_row(row.name, format_parameters(row.num_parameters), *cells, f"{overall['mean_length']:.1f}",
                      _ms(overall["step_ms_p50"]), _ms(overall["chunk_ms_p50"]))
    return table


def compare(agents: Sequence[tuple[str, Callable[[], Any]]], envs: Sequence[str] | Mapping[str, Callable[[], gym.Env]],
            episodes: int, seed: int = 0, video_dir: str | Path | None = None, progress: bool = True,
            max_steps: int | None = None, workers: int = 1, backend: str = "local", shard_episodes: int = 10,
            n_envs: int = 1, overlay: OverlayStyle = OverlayStyle(), episode_log: str | Path | None = None
            ) -> ComparisonResult:
    """Evaluate every agent on every environment with the same seeds.

    `envs` is a list of `make_env` specs or a mapping name -> env factory. With one worker each
    agent factory is called once; the agent is reset between episodes. Videos go to `video_dir/<agent>/<task>/`.
    `workers` > 1 runs the (agent, task) evaluations in that many processes, one torch thread
    each: the simulator, not the model, is most of an episode's time, and it uses one core. The
    factories must then be picklable (top-level functions or `functools.partial`), and each
    evaluation calls its agent factory afresh.

    `backend="ray"` runs each (agent, task, shard of `shard_episodes` episodes) as a Ray task on the
    cluster `RAY_ADDRESS` names, or on a local Ray instance (`vla_agents.eval.ray_backend`); the
    factories then travel with cloudpickle and `workers` does not apply. `n_envs` and `overlay` go to
    `evaluate`.

    An agent or env that cannot be built does not stop the comparison: its evaluations are recorded as failed
    (`ComparisonResult.failures`) and the others go on. Failed episodes are recorded by `evaluate`, and
    appended to `episode_log` as they finish. Ctrl-C returns what finished, with `interrupted` set: the
    evaluations it cut short or never started read failed."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    for name, value in (("episodes", episodes), ("n_envs", n_envs), ("shard_episodes", shard_episodes)):
        if value < 1:  # checked here: inside an evaluation it would be recorded as a failure of every agent
            raise ValueError(f"{name} must be >= 1, got {value}")
    sources: dict[str, str | Callable[[], gym.Env]] = dict(envs) if isinstance(envs, Mapping) else {spec: spec for spec in envs}
    options = dict(episodes=episodes, seed=seed, max_steps=max_steps, episode_log=episode_log, n_envs=n_envs, overlay=overlay)
    reports: dict[tuple[str, str], EvalReport] = {}
    interrupted = False
    try:
        if backend == "ray":
            from vla_agents.eval.ray_backend import evaluate_on_ray

            jobs = [(name, factory, task, source) for name, factory in agents for task, source in sources.items()]
            reports.update(evaluate_on_ray(jobs, episodes, shard_episodes, progress, partial(_videos, video_dir),
                                           seed=seed, max_steps=max_steps, n_envs=n_envs, overlay=overlay))
        elif workers == 1:
            _evaluate_here(agents, sources, progress, video_dir, options, reports)
        else:
            jobs = [(name, factory, task, source) for name, factory in agents for task, source in sources.items()]
            _evaluate_in_processes(jobs, workers, progress, video_dir, options, reports)
    except KeyboardInterrupt:
        interrupted = True
    result = ComparisonResult(interrupted=interrupted)
    for name, _ in agents:
        result.add(name, [reports.get((name, task)) or _failed(name, task, KeyboardInterrupt("interrupted before it ran"),
                                                               time.perf_counter()) for task in sources])
    return result


def _evaluate_here(agents: Sequence[tuple[str, Callable[[], Any]]], sources: Mapping[str, Any], progress: bool,
                   video_dir: str | Path | None, options: dict[str, Any],
                   reports: dict[tuple[str, str], EvalReport]) -> None:
    """One process: each agent factory is called once, and its agent reset between episodes."""
    for name, factory in agents:
        start = time.perf_counter()
        try:
            agent = factory()
        except Exception as error:  # noqa: BLE001 - recorded in the report, and in the table
            reports.update({(name, task): _failed(name, task, error, start) for task in sources})
            continue
        for task, source in sources.items():
            try:
                reports[name, task] = evaluate_or_record(name, agent, task, source, progress=progress,
                                                         video_dir=_videos(video_dir, name, task), **options)
            except EvaluationInterrupted as interrupt:
                reports[name, task] = interrupt.report  # the episodes that finished
                raise


def _videos(video_dir: str | Path | None, name: str, task: str) -> Path | None:
    return Path(video_dir) / slugify(name) / slugify(task) if video_dir else None


def evaluate_or_record(name: str, agent: Any, task: str, source: str | Callable[[], gym.Env], **options: Any) -> EvalReport:
    """`evaluate`, or a report of no episodes naming why, when the agent (a factory) or env cannot be built."""
    start = time.perf_counter()
    try:
        return evaluate(agent, source, env_name=task, **options)
    except Exception as error:  # noqa: BLE001 - recorded in the report, and in the table
        return _failed(name, task, error, start)


def _failed(name: str, task: str, error: Exception, start: float) -> EvalReport:
    return EvalReport(env_name=task, policy_name=name, episodes=[], eval_s=time.perf_counter() - start,
                      error=error_summary(error))


def _evaluate_in_processes(jobs: list[tuple], workers: int, progress: bool, video_dir: str | Path | None,
                           options: dict[str, Any], reports: dict[tuple[str, str], EvalReport]) -> None:
    for name, factory, task, source in jobs:
        try:
            pickle.dumps((factory, source))
        except Exception as error:
            raise ValueError(f"compare(workers > 1) sends each factory to another process, but the one for {name!r} "
                             f"on {task!r} cannot be pickled ({error}); use a top-level function or "
                             "functools.partial, or workers=1") from error
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool, \
            LoggedProgress(*columns, disable=not progress, log_every=1 / len(jobs)) as bar:
        bar_task = bar.add_task(f"{len(jobs)} evaluations in {workers} processes", total=len(jobs))
        futures = {pool.submit(evaluate_or_record, name, factory, task, source, progress=False,
                               video_dir=_videos(video_dir, name, task), **options): (name, task)
                   for name, factory, task, source in jobs}
        for future in as_completed(futures):
            name, task = futures[future]
            reports[name, task] = report = future.result()
            wins = sum(ep.success for ep in report.episodes)
            outcome = f"failed: {report.error}" if report.error else f"{wins}/{len(report.episodes)} success"
            bar.console.print(f"{name} on {task}: {outcome} ({report.eval_s:.0f} s)", markup=False)
            bar.advance(bar_task)


def _one_thread() -> None:
    """Worker initializer: parallel evaluations, not parallel matrix products, use the cores."""
    import torch

    torch.set_num_threads(1)
