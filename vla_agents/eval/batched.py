"""Evaluation over a Gymnasium vector env: `n_envs` episodes at a time in worker processes, with one
`agent.act_batch` model call per step for the envs whose action chunk ran out.

Episode i runs with seed `seed + i` and reset option `episode_index` i, as in `evaluate`, and each
env's actions are those the agent's `act` would give it (to float32 rounding, see
`VLAAgent.act_batch`), so the episodes are `evaluate`'s. A worker that finishes an episode starts the
next pending one: Gymnasium's autoreset is off, so each reset carries its own seed and episode index.
Workers start with `forkserver` (rendering does not survive fork()); the env factory travels to them
with cloudpickle. An exception from `act_batch` ends the episodes in flight, recorded as agent errors;
an env that raises takes the vector env down, so its episodes in flight are recorded as env errors
and the rest run on a fresh one. Step latencies are the batched call's.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.progress import (BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from vla_agents.eval.rollout import (MIN_VIDEO_VIEW_PX, EpisodeResult, EvalReport, _agent_name,
                                     _close_quietly, _num_parameters, caption_lines, episode_video, error_summary,
                                     finish_video, policy_views, video_path)
from vla_agents.eval.video import EpisodeVideo, OverlayStyle
from vla_agents.progress import LoggedProgress

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    """An episode in flight on one worker."""

    index: int
    result: EpisodeResult
    video: EpisodeVideo | None
    map_step: int | None = None


def _env_at(obs: Mapping[str, Any], j: int) -> dict[str, Any]:
    return {key: value[j] for key, value in obs.items()}


def _vector_env(make: Callable[[], gym.Env], n_envs: int) -> gym.vector.AsyncVectorEnv:
    return gym.vector.AsyncVectorEnv([make] * n_envs, context="forkserver",
                                     autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def evaluate_batched(agent: Any, make: Callable[[], gym.Env], episodes: int, n_envs: int, seed: int = 0,
                     first_episode: int = 0, video_dir: str | Path | None = None, progress: bool = True,
                     max_steps: int | None = None, env_name: str | None = None, fps: int = 20,
                     overlay: OverlayStyle = OverlayStyle(), min_view_px: int = MIN_VIDEO_VIEW_PX) -> EvalReport:
    """`evaluate(..., n_envs=n)` for an agent with `act_batch`; `make` builds one env. The step limit
    is `max_steps`, else the env's own truncation. The report is named `env_name` (default "env")."""
    if not callable(getattr(agent, "act_batch", None)):
        raise TypeError(f"n_envs > 1 needs an agent with act_batch (e.g. a VLAAgent); {type(agent).__name__} has none, "
                        "so evaluate it with n_envs=1")
    n_envs = min(n_envs, episodes)
    envs = _vector_env(make, n_envs)
    name = env_name or "env"
    policy = _agent_name(agent)
    pending = iter(range(first_episode, first_episode + episodes))
    running: list[_Running | None] = [None] * n_envs
    episode_start = np.zeros(n_envs, dtype=bool)
    results: dict[int, EpisodeResult] = {}
    obs: dict[str, Any] = {}

    def start_next(j: int) -> None:
        """Reset worker j into the next pending episode, or leave it idle when none is left."""
        nonlocal obs
        i = next(pending, None)
        running[j] = None
        if i is None:
            return
        seeds: list[int | None] = [None] * n_envs
        seeds[j] = seed + i
        mask = np.arange(n_envs) == j
        obs, _ = envs.reset(seed=seeds, options={"reset_mask": mask, "episode_index": i})
        result = EpisodeResult(seed=seed + i, instruction=str(obs["language_instruction"][j]))
        running[j] = _Running(i, result, episode_video(video_path(video_dir, i), agent, fps, overlay, min_view_px))
        episode_start[j] = True

    def finish(j: int, error: BaseException | None = None, stage: str | None = None) -> None:
        episode = running[j]
        if error is not None:
            episode.result.error, episode.result.error_source = error_summary(error), stage
            logger.warning("episode with seed %d failed in the %s: %s", episode.result.seed, stage, episode.result.error)
        elif episode.video is not None:
            episode.video.add(policy_views(_env_at(obs, j), agent.adapter, episode.result.instruction), None,
                              caption_lines(episode.result, episode.result.length, episode.map_step, False, final=True))
        finish_video(episode.video, episode.result)
        results[episode.index] = episode.result

    agent.reset()
    start = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[sr]}"), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with LoggedProgress(*columns, transient=True, disable=not progress, log_every=0.25) as bar:
            task = bar.add_task(f"{policy} on {name} ({n_envs} envs)", total=episodes, sr="")

            def done(j: int, error: BaseException | None = None, stage: str | None = None) -> None:
                finish(j, error, stage)
                wins = sum(r.success for r in results.values())
                bar.update(task, advance=1, sr=f"success {wins}/{len(results)}")

            for j in range(n_envs):
                start_next(j)
            while any(running):
                active = [j for j, episode in enumerate(running) if episode is not None]
                tic = time.perf_counter()
                try:
                    actions = np.asarray(agent.act_batch(obs, episode_start=episode_start))
                except Exception as exc:  # noqa: BLE001 - recorded on the episodes in flight
                    for j in active:
                        done(j, exc, "agent")
                        start_next(j)
                    continue
                elapsed = time.perf_counter() - tic
                episode_start[:] = False
                for j in active:
                    episode = running[j]
                    episode.result.step_latency_s.append(elapsed)
                    if agent.batch_queried[j]:
                        episode.result.chunk_latency_s.append(elapsed)
                        episode.map_step = episode.result.length
                    if episode.video is not None:
                        episode.video.add(policy_views(_env_at(obs, j), agent.adapter, episode.result.instruction), agent.batch_attention[j],
                                          caption_lines(episode.result, episode.result.length, episode.map_step, True),
                                          bool(agent.batch_queried[j]))
                try:
                    obs, rewards, terminated, truncated, infos = envs.step(actions)
                except Exception as exc:  # noqa: BLE001 - the vector env is unusable after a worker raised
                    _close_quietly(envs)
                    envs = _vector_env(make, n_envs)
                    envs.reset()  # every worker, even one left idle below, must be reset before it steps
                    for j in active:
                        done(j, exc, "env")
                    for j in range(n_envs):
                        start_next(j)
                    continue
                successes = infos.get("success", np.zeros(n_envs, dtype=bool))
                for j in active:
                    result = running[j].result
                    result.sum_reward += float(rewards[j])
                    result.max_reward = float(rewards[j]) if result.length == 0 else max(result.max_reward, float(rewards[j]))
                    result.length += 1
                    result.success = result.success or bool(successes[j])
                    if terminated[j] or truncated[j] or (max_steps is not None and result.length >= max_steps):
                        done(j)
                        start_next(j)
    finally:
        for episode in running:
            if episode is not None and episode.video is not None:
                episode.video.close(keep=False)
        _close_quietly(envs)
    return EvalReport(env_name=name, policy_name=policy, episodes=[results[i] for i in sorted(results)],
                      eval_s=time.perf_counter() - start, num_parameters=_num_parameters(agent))
