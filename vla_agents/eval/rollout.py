"""Run agents in environments: one episode (`run_episode`) or a seeded evaluation (`evaluate`)
that survives crashing episodes and reports in LeRobot's `eval_info.json` shape."""
from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from vla_agents.adapters import Adapter, make_adapter
from vla_agents.eval.stats import wilson_interval
from vla_agents.eval.video import VideoWriter, compose_frame
from vla_agents.progress import LoggedProgress

logger = logging.getLogger(__name__)

DEFAULT_ADAPTER = "libero"  # for envs that do not name the adapters their observations are for (`env.adapters`)
MIN_VIDEO_VIEW_PX = 256  # smaller views are enlarged (nearest neighbour) so the overlay is legible


@dataclass
class EpisodeResult:
    """What happened in one episode. Latencies are wall-clock seconds spent inside `agent.act`:
    `step_latency_s` has one entry per env step, `chunk_latency_s` only the calls that ran the
    model (the rest popped an action queue)."""

    seed: int
    success: bool = False
    length: int = 0
    sum_reward: float = 0.0
    max_reward: float = 0.0
    error: str | None = None
    error_source: str | None = None  # "agent", "env" or "video": where `error` was raised
    instruction: str = ""
    step_latency_s: list[float] = field(default_factory=list)
    chunk_latency_s: list[float] = field(default_factory=list)
    video_path: str | None = None
    episode_stats: dict[str, float] = field(default_factory=dict)  # the env's `info["episode_stats"]` at the end (SIMPLER's grasps)


def slugify(text: str, max_chars: int = 50) -> str:
    """OpenVLA-style file-name slug: lower-case snake case, truncated."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_chars] or "task"


def _step_limit(env: gym.Env) -> int | None:
    limit = getattr(env.unwrapped, "max_episode_steps", None)
    if limit is None and env.spec is not None:
        limit = env.spec.max_episode_steps
    return limit


def error_summary(exc: BaseException) -> str:
    """`Type: message (at file:line in function)`, pointing at the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _video_adapter(env: gym.Env) -> Adapter:
    """Videos show what policies see: the env's observations through the adapter made for them."""
    return make_adapter((getattr(env.unwrapped, "adapters", None) or (DEFAULT_ADAPTER,))[0])


def _policy_views(obs: dict[str, Any], adapter: Adapter, instruction: str, min_px: int) -> dict[str, np.ndarray]:
    """The adapter's views (e.g. LIBERO's renders rotated 180 degrees), small ones enlarged to `min_px`."""
    images = {}
    for view, image in adapter.observation(obs, instruction or None).images.items():
        factor = max(1, min_px // image.shape[0])
        images[view] = np.ascontiguousarray(image.repeat(factor, 0).repeat(factor, 1))
    return images


def _caption_lines(result: EpisodeResult, step: int) -> list[str]:
    return [result.instruction, f"step {step}", f"success: {result.success}"]


def run_episode(env: gym.Env, agent: Any, seed: int, max_steps: int | None = None,
                video_path: str | Path | None = None,
                min_view_px: int = MIN_VIDEO_VIEW_PX,
                fps: int = 20, options: dict[str, Any] | None = None) -> EpisodeResult:
    """Play one episode; exceptions from the agent or env end it and are recorded, not raised.

    `options` go to `env.reset` (e.g. `{"init_state": 3}` for LIBERO).
    The video has one frame per observation (length + 1): frame t shows observation t with the
    attention the agent computed while acting on it. `{success}` and `{task}` in `video_path`
    are filled in at the end, so file names can carry the outcome."""
    result = EpisodeResult(seed=seed)
    limit = max_steps if max_steps is not None else _step_limit(env)
    writer = VideoWriter(video_path, fps=fps) if video_path is not None else None
    adapter = _video_adapter(env) if writer is not None else None
    last_step_success = getattr(env.unwrapped, "success_at_last_step", False)  # SIMPLER: the flag at the last step
    stage = "agent"
    try:
        agent.reset()
        stage = "env"
        obs, _ = env.reset(seed=seed, options=options)
        result.instruction = str(obs.get("language_instruction", ""))
        while limit is None or result.length < limit:
            stage = "agent"
            calls_before = getattr(agent, "model_calls", None)
            start = time.perf_counter()
            action = np.asarray(agent.act(obs))
            elapsed = time.perf_counter() - start
            result.step_latency_s.append(elapsed)
            if calls_before is None or agent.model_calls != calls_before:
                result.chunk_latency_s.append(elapsed)
            if writer is not None:
                stage = "video"
                writer.append(compose_frame(_policy_views(obs, adapter, result.instruction, min_view_px), getattr(agent, "last_attention", None),
                                            _caption_lines(result, result.length)))
            stage = "env"
            obs, reward, terminated, truncated, info = env.step(action)
            result.sum_reward += float(reward)
            result.max_reward = float(reward) if result.length == 0 else max(result.max_reward, float(reward))
            result.length += 1
            success = bool(info.get("success", False))
            result.success = success if last_step_success else result.success or success
            result.episode_stats = dict(info.get("episode_stats", {}))
            if terminated or truncated:
                break
        if writer is not None:
            stage = "video"
            writer.append(compose_frame(_policy_views(obs, adapter, result.instruction, min_view_px), None, _caption_lines(result, result.length)))
    except Exception as exc:  # noqa: BLE001 - one bad episode must not end an evaluation
        result.error, result.error_source = error_summary(exc), stage
        logger.warning("episode with seed %d failed in the %s: %s", seed, stage, result.error, exc_info=True)
    except BaseException:
        if writer is not None:
            writer.close(keep=False)
        raise
    if writer is not None:
        name = str(video_path).replace("{success}", str(result.success)).replace("{task}", slugify(result.instruction))
        writer.path = Path(name)
        final = writer.close()
        result.video_path = str(final) if final is not None else None
    return result


def _percentile_ms(seconds: list[float], q: float) -> float | None:
    return float(np.percentile(seconds, q) * 1000.0) if seconds else None


def episode_metrics(episodes: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Aggregate metrics over episodes: LeRobot's keys plus successes, a 95% Wilson interval,
    mean length and `act` latency percentiles (ms, per step and per model-running chunk call)."""
    n = len(episodes)
    successes = sum(ep.success for ep in episodes)
    low, high = wilson_interval(successes, n)
    steps = [s for ep in episodes for s in ep.step_latency_s]
    chunks = [s for ep in episodes for s in ep.chunk_latency_s]
    stat_keys = sorted({k for ep in episodes for k in ep.episode_stats})
    return {
        "avg_sum_reward": float(np.mean([ep.sum_reward for ep in episodes])) if n else 0.0,
        "avg_max_reward": float(np.mean([ep.max_reward for ep in episodes])) if n else 0.0,
        "pc_success": 100.0 * successes / n if n else 0.0,
        "pc_success_ci95": [100.0 * low, 100.0 * high],
        "successes": successes,
        "n_episodes": n,
        "n_errors": sum(ep.error is not None for ep in episodes),
        "mean_length": float(np.mean([ep.length for ep in episodes])) if n else 0.0,
        "step_ms_p50": _percentile_ms(steps, 50),
        "step_ms_p95": _percentile_ms(steps, 95),
        "chunk_ms_p50": _percentile_ms(chunks, 50),
        "chunk_ms_p95": _percentile_ms(chunks, 95),
        **({"episode_stats": {k: float(np.mean([ep.episode_stats.get(k, 0.0) for ep in episodes])) for k in stat_keys}}
           if stat_keys else {}),
    }


@dataclass
class EvalReport:
    """The episodes of one agent on one environment, plus what is needed to report them."""

    env_name: str  # "<suite>/<task>", e.g. "embedded/pick_color"
    policy_name: str
    episodes: list[EpisodeResult]
    eval_s: float
    num_parameters: int | None = None
    error: str | None = None  # the evaluation could not start (building its agent or env raised); no episodes

    def metrics(self) -> dict[str, Any]:
        n = len(self.episodes)
        return {
            **episode_metrics(self.episodes),
            "eval_s": self.eval_s,
            "eval_ep_s": self.eval_s / n if n else 0.0,
            "video_paths": [ep.video_path for ep in self.episodes if ep.video_path],
        }

    def to_eval_info(self) -> dict[str, Any]:
        """LeRobot's `eval_info.json` layout (per_episode, per_task, per_group, overall)."""
        return eval_info([self])


def _pooled_metrics(reports: Sequence[EvalReport]) -> dict[str, Any]:
    if len(reports) == 1:
        return reports[0].metrics()
    episodes = [ep for report in reports for ep in report.episodes]
    eval_s = sum(report.eval_s for report in reports)
    return {**episode_metrics(episodes), "eval_s": eval_s, "eval_ep_s": eval_s / len(episodes) if episodes else 0.0,
            "video_paths": [ep.video_path for ep in episodes if ep.video_path]}


def eval_info(reports: Sequence[EvalReport]) -> dict[str, Any]:
    """Several tasks' reports (e.g. a LIBERO suite) in LeRobot's `eval_info.json` layout: the group
    of "libero/libero_spatial/3" is "libero/libero_spatial", its task id "3"; groups and overall pool
    their episodes. Episode rows name their task only when there are several (LeRobot's single-task
    rows have no such key)."""
    groups: dict[str, list[EvalReport]] = {}
    per_task = []
    for report in reports:
        group, _, task = report.env_name.rpartition("/")
        groups.setdefault(group or task, []).append(report)
        per_task.append({"task_group": group or task, "task_id": task, "metrics": report.metrics()})
    return {
        "per_episode": [
            {"episode_ix": i, **({"task": report.env_name} if len(reports) > 1 else {}), "sum_reward": ep.sum_reward,
             "max_reward": ep.max_reward, "success": ep.success, "seed": ep.seed, "length": ep.length, "error": ep.error,
             **({"episode_stats": ep.episode_stats} if ep.episode_stats else {})}
            for report in reports for i, ep in enumerate(report.episodes)
        ],
        "per_task": per_task,
        "per_group": {group: _pooled_metrics(members) for group, members in groups.items()},
        "overall": _pooled_metrics(reports),
    }


def _agent_name(agent: Any) -> str:
    return getattr(agent, "policy_name", None) or type(agent).__name__


def _num_parameters(agent: Any) -> int | None:
    count = getattr(agent, "num_parameters", None)
    return int(count()) if callable(count) else None


def _close_quietly(env: gym.Env) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - a broken env may fail to close; we are discarding it anyway
        logger.debug("closing a failed environment raised", exc_info=True)


def _check_adapter(agent: Any, env: gym.Env, name: str) -> None:
    """Fail before the first episode when the agent was made for another benchmark's observations."""
    accepted = getattr(env.unwrapped, "adapters", None)
    adapter = getattr(agent, "adapter_name", None)
    if accepted and adapter and adapter not in accepted:
        raise ValueError(f"{_agent_name(agent)} was made with adapter {adapter!r}, but {name} gives observations for "
                         f"adapter {' or '.join(map(repr, accepted))}: evaluate it on its own benchmark")


def evaluate(agent: Any, env: str | Callable[[], gym.Env], episodes: int, seed: int = 0,
             video_dir: str | Path | None = None, progress: bool = True, max_steps: int | None = None,
             env_name: str | None = None, fps: int = 20) -> EvalReport:
    """Run `episodes` episodes with seeds seed, seed+1, ... and reset option `episode_index` 0, 1, ...
    (environments with fixed initial conditions, like LIBERO's init states, take episode i's from it).

    `agent` is an agent or a zero-argument factory; `env` is a `make_env` spec or a zero-argument
    env factory. A failed episode is recorded (see `EpisodeResult.error`) and the evaluation goes
    on, on a fresh environment when the env itself raised. Videos are written to `video_dir` as
    `episode=<i>--success=<bool>--task=<slug>.mp4`."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if isinstance(agent, type) or not hasattr(agent, "act"):  # a class is a factory, not an agent
        if not callable(agent):
            raise TypeError(f"expected an agent with act() or a factory returning one, got {type(agent).__name__}")
        agent = agent()
    if isinstance(env, str):
        from vla_agents.sim import make_env

        spec = env
        make: Callable[[], gym.Env] = lambda: make_env(spec)  # noqa: E731
    elif callable(env):
        make = env
    else:
        raise TypeError(f"env must be a make_env spec string or an env factory, got {type(env).__name__}")
    instance = make()
    name = env_name or (env if isinstance(env, str) else getattr(instance.unwrapped, "task_name", type(instance.unwrapped).__name__))
    policy = _agent_name(agent)
    results: list[EpisodeResult] = []
    start = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[sr]}"), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        _check_adapter(agent, instance, name)
        with LoggedProgress(*columns, transient=True, disable=not progress, log_every=0.25) as bar:
            task = bar.add_task(f"{policy} on {name}", total=episodes, sr="")
            for i in range(episodes):
                path = Path(video_dir) / f"episode={i}--success={{success}}--task={{task}}.mp4" if video_dir else None
                result = run_episode(instance, agent, seed + i, max_steps=max_steps, video_path=path, fps=fps,
                                     options={"episode_index": i})
                results.append(result)
                if result.error_source == "env":
                    _close_quietly(instance)
                    instance = make()
                wins = sum(r.success for r in results)
                bar.update(task, advance=1, sr=f"success {wins}/{len(results)}")
    finally:
        _close_quietly(instance)
    return EvalReport(env_name=name, policy_name=policy, episodes=results, eval_s=time.perf_counter() - start,
                      num_parameters=_num_parameters(agent))
