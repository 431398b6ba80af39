"""Run agents in environments: one episode (`run_episode`) or a seeded evaluation (`evaluate`)
that survives crashing episodes and reports in LeRobot's `eval_info.json` shape."""
from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from vla_agents.adapters import Adapter, make_adapter
from vla_agents.eval.stats import wilson_interval
from vla_agents.eval.video import EpisodeVideo, OverlayStyle
from vla_agents.progress import LoggedProgress
from vla_agents.recipe import Recipe

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


def policy_views(obs: Mapping[str, Any], adapter: Adapter, instruction: str) -> dict[str, np.ndarray]:
    """What the policy sees of `obs`: its views through the env's adapter (e.g. LIBERO's renders rotated 180 degrees)."""
    return dict(adapter.observation(obs, instruction or None).images)


def _video_adapter(env: gym.Env) -> Adapter:
    """Videos show what policies see: the env's observations through the adapter made for them."""
    return make_adapter((getattr(env.unwrapped, "adapters", None) or (DEFAULT_ADAPTER,))[0])


def caption_lines(result: EpisodeResult, step: int, map_step: int | None, has_map: bool, final: bool = False) -> list[str]:
    """The instruction, step and outcome so far, and which step's observation the attention map comes from."""
    if final:
        where = "final observation"
    elif not has_map:
        where = "no attention map"
    elif map_step == step:
        where = "attention map: new, the model ran on this frame"
    else:
        where = f"attention map: from step {map_step}, the model runs once per action chunk"
    return [result.instruction, f"step {step}   success: {result.success}", where]


def agent_recipe(agent: Any) -> Recipe | None:
    """The policy recipe behind an agent (a residual agent's is its frozen base's); None for other agents."""
    recipe = getattr(agent, "recipe", None)
    if recipe is None and hasattr(agent, "base"):
        recipe = getattr(agent.base, "recipe", None)
    return recipe


def episode_video(path: str | Path | None, agent: Any, fps: int, overlay: OverlayStyle, min_view_px: int) -> EpisodeVideo | None:
    """The episode's video, with the attention grid laid over the centre crop the agent's policy saw."""
    if path is None:
        return None
    recipe = agent_recipe(agent)
    crop_area = recipe.backbone.crop_area if recipe is not None else 1.0
    return EpisodeVideo(path, fps=fps, style=overlay, crop_area=crop_area, min_view_px=min_view_px)


def finish_video(video: EpisodeVideo | None, result: EpisodeResult) -> None:
    """Name the file after the outcome (`{success}`, `{task}`) and write it; a failure here is the episode's error."""
    if video is None:
        return
    video.path = Path(str(video.path).replace("{success}", str(result.success)).replace("{task}", slugify(result.instruction)))
    try:
        final = video.close()
    except Exception as exc:  # noqa: BLE001 - the episode ran; only its video failed
        result.error, result.error_source = result.error or error_summary(exc), result.error_source or "video"
        logger.warning("the video of the episode with seed %d failed: %s", result.seed, result.error, exc_info=True)
        return
    result.video_path = str(final) if final is not None else None


def run_episode(env: gym.Env, agent: Any, seed: int, max_steps: int | None = None,
                video_path: str | Path | None = None, min_view_px: int = MIN_VIDEO_VIEW_PX, fps: int = 20,
                options: dict[str, Any] | None = None, overlay: OverlayStyle = OverlayStyle()) -> EpisodeResult:
    """Play one episode; exceptions from the agent or env end it and are recorded, not raised.

    `options` go to `env.reset` (e.g. `{"init_state": 3}` for LIBERO).
    The video has one frame per observation (length + 1): frame t shows observation t with the
    attention map the agent acted with, marked where the model ran (`vla_agents.eval.video`).
    `{success}` and `{task}` in `video_path` are filled in at the end, so file names can carry the outcome."""
    result = EpisodeResult(seed=seed)
    limit = max_steps if max_steps is not None else _step_limit(env)
    video = episode_video(video_path, agent, fps, overlay, min_view_px)
    adapter = _video_adapter(env) if video is not None else None
    map_step: int | None = None
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
            refreshed = calls_before is None or agent.model_calls != calls_before
            if refreshed:
                result.chunk_latency_s.append(elapsed)
                map_step = result.length
            if video is not None:
                stage = "video"
                attention = getattr(agent, "last_attention", None)
                video.add(policy_views(obs, adapter, result.instruction), attention,
                          caption_lines(result, result.length, map_step, attention is not None), refreshed)
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
        if video is not None:
            stage = "video"
            video.add(policy_views(obs, adapter, result.instruction), None,
                      caption_lines(result, result.length, map_step, False, final=True))
    except Exception as exc:  # noqa: BLE001 - one bad episode must not end an evaluation
        result.error, result.error_source = error_summary(exc), stage
        logger.warning("episode with seed %d failed in the %s: %s", seed, stage, result.error, exc_info=True)
    except BaseException:
        if video is not None:
            video.close(keep=False)
        raise
    finish_video(video, result)
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
    interrupted: bool = False  # stopped (Ctrl-C) before its last episode: `episodes` holds those that finished

    @property
    def failure(self) -> str | None:
        """Why these results do not measure the agent: it could not start, every episode raised, or it was
        interrupted. A comparison shows such a cell as failed rather than as a success rate."""
        if self.error is not None:
            return self.error
        if self.episodes and all(ep.error is not None for ep in self.episodes):
            return f"all {len(self.episodes)} episodes raised an error; the first: {self.episodes[0].error}"
        if self.interrupted:
            return f"interrupted after {len(self.episodes)} episodes"
        return None

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
    """Summary metrics over the reports' episodes; in eval_info the count of successes is `n_successes`,
    since `successes` is LeRobot's per-episode list there."""
    if len(reports) == 1:
        metrics = reports[0].metrics()
    else:
        episodes = [ep for report in reports for ep in report.episodes]
        eval_s = sum(report.eval_s for report in reports)
        metrics = {**episode_metrics(episodes), "eval_s": eval_s, "eval_ep_s": eval_s / len(episodes) if episodes else 0.0,
                   "video_paths": [ep.video_path for ep in episodes if ep.video_path]}
    metrics["n_successes"] = metrics.pop("successes")
    return metrics


def task_metrics(report: EvalReport) -> dict[str, Any]:
    """A `per_task` entry's metrics: the per-episode lists `lerobot-eval` writes (`sum_rewards`,
    `max_rewards`, `successes`, `video_paths`), then the summary (`pc_success`, intervals, latencies)."""
    return {"sum_rewards": [ep.sum_reward for ep in report.episodes],
            "max_rewards": [ep.max_reward for ep in report.episodes],
            "successes": [ep.success for ep in report.episodes],
            **_pooled_metrics([report])}


def eval_info(reports: Sequence[EvalReport], provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Several tasks' reports (e.g. a LIBERO suite) in LeRobot's `eval_info.json` layout: the group
    of "libero/libero_spatial/3" is "libero/libero_spatial", its task id "3"; groups and overall pool
    their episodes. Episode rows name their task only when there are several (LeRobot's single-task
    rows have no such key), and carry the instruction and video. `provenance` (which agent, code,
    environments and seeds: `vla_agents.eval.provenance`) is written as its own top-level block."""
    groups: dict[str, list[EvalReport]] = {}
    per_task = []
    for report in reports:
        group, _, task = report.env_name.rpartition("/")
        groups.setdefault(group or task, []).append(report)
        per_task.append({"task_group": group or task, "task_id": task, "metrics": task_metrics(report)})
    info = {
        **({"interrupted": True} if any(report.interrupted for report in reports) else {}),
        "per_episode": [
            {"episode_ix": i, **({"task": report.env_name} if len(reports) > 1 else {}), "sum_reward": ep.sum_reward,
             "max_reward": ep.max_reward, "success": ep.success, "seed": ep.seed, "length": ep.length, "error": ep.error,
             "instruction": ep.instruction, "video_path": ep.video_path,
             **({"episode_stats": ep.episode_stats} if ep.episode_stats else {})}
            for report in reports for i, ep in enumerate(report.episodes)
        ],
        "per_task": per_task,
        "per_group": {group: _pooled_metrics(members) for group, members in groups.items()},
        "overall": _pooled_metrics(reports),
    }
    return info | ({"provenance": dict(provenance)} if provenance is not None else {})


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during `evaluate`; `report` holds the episodes that finished (`report.interrupted`)."""

    def __init__(self, report: EvalReport) -> None:
        super().__init__(report)
        self.report = report


def episode_log_path(json_path: str | Path) -> Path:
    """Where the per-episode log of results saved to `json_path` goes: eval_info.json -> eval_info.episodes.jsonl."""
    json_path = Path(json_path)
    return json_path.with_name(f"{json_path.stem}.episodes.jsonl")


def _log_episode(path: Path, task: str, policy: str, index: int, result: EpisodeResult) -> None:
    """One JSON line per finished episode, appended at once: a killed evaluation keeps every episode it finished."""
    row = {"task": task, "policy": policy, "episode_ix": index, "seed": result.seed, "success": result.success,
           "length": result.length, "sum_reward": result.sum_reward, "max_reward": result.max_reward,
           "error": result.error, "instruction": result.instruction, "video_path": result.video_path}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _agent_name(agent: Any) -> str:
    return getattr(agent, "policy_name", None) or type(agent).__name__


def _num_parameters(agent: Any) -> int | None:
    count = getattr(agent, "num_parameters", None)
    return int(count()) if callable(count) else None


def video_path(video_dir: str | Path | None, episode: int) -> Path | None:
    """OpenVLA's video name; `run_episode` fills in the outcome and task."""
    return Path(video_dir) / f"episode={episode}--success={{success}}--task={{task}}.mp4" if video_dir else None


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
             env_name: str | None = None, fps: int = 20, first_episode: int = 0, n_envs: int = 1,
             overlay: OverlayStyle = OverlayStyle(), episode_log: str | Path | None = None) -> EvalReport:
    """Run episodes i = first_episode, ..., first_episode + episodes - 1, with seed `seed + i` and
    reset option `episode_index` i (environments with fixed initial conditions, like LIBERO's init
    states, take episode i's from it), so a range of episodes gives the same results alone as inside
    a longer evaluation.

    `agent` is an agent or a zero-argument factory; `env` is a `make_env` spec or a zero-argument
    env factory. A failed episode is recorded (see `EpisodeResult.error`) and the evaluation goes
    on, on a fresh environment when the env itself raised. Videos are written to `video_dir` as
    `episode=<i>--success=<bool>--task=<slug>.mp4`. Each finished episode is appended to `episode_log`
    (JSON lines) when given; Ctrl-C raises `EvaluationInterrupted` with the episodes that finished.
    `n_envs` > 1 runs that many envs in worker processes and the agent's `act_batch`
    (`vla_agents.eval.batched`)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
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
    if n_envs > 1:
        from vla_agents.eval.batched import evaluate_batched

        return evaluate_batched(agent, make, episodes, n_envs, seed=seed, first_episode=first_episode, video_dir=video_dir,
                                progress=progress, max_steps=max_steps, fps=fps, overlay=overlay,
                                env_name=env_name or (env if isinstance(env, str) else None))
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
            for i in range(first_episode, first_episode + episodes):
                result = run_episode(instance, agent, seed + i, max_steps=max_steps, video_path=video_path(video_dir, i),
                                     fps=fps, options={"episode_index": i}, overlay=overlay)
                results.append(result)
                if episode_log is not None:
                    _log_episode(Path(episode_log), name, policy, i, result)
                if result.error_source == "env":
                    _close_quietly(instance)
                    instance = make()
                wins = sum(r.success for r in results)
                bar.update(task, advance=1, sr=f"success {wins}/{len(results)}")
    except KeyboardInterrupt as interrupt:
        raise EvaluationInterrupted(EvalReport(env_name=name, policy_name=policy, episodes=results,
                                               eval_s=time.perf_counter() - start, num_parameters=_num_parameters(agent),
                                               interrupted=True)) from interrupt
    finally:
        _close_quietly(instance)
    return EvalReport(env_name=name, policy_name=policy, episodes=results, eval_s=time.perf_counter() - start,
                      num_parameters=_num_parameters(agent))
