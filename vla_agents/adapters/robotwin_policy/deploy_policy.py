"""The four functions RoboTwin 2.0's `script/eval_policy.py` calls, backed by a vla-agents checkpoint.

Runner contract (BENCHMARKS.md 2.1): `get_model(usr_args)` once; `reset_model(model)` per episode;
`eval(TASK_ENV, model, observation)` repeatedly while `TASK_ENV.take_action_cnt < TASK_ENV.step_lim`,
with `observation = TASK_ENV.get_obs()`; the runner checks `TASK_ENV.eval_success` after each call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_agents.adapters.robotwin import CAMERAS, STATE_DIM, RoboTwinAdapter, chunk_steps
from vla_agents.types import Observation

__all__ = ["RoboTwinModel", "get_model", "eval", "reset_model", "encode_obs"]


@dataclass
class RoboTwinModel:
    """What `get_model` hands back to the runner: the agent (`reset()`, `act_chunk(obs) -> (T, A)`)
    and the adapter translating RoboTwin dicts for it."""

    agent: Any
    adapter: RoboTwinAdapter


def get_model(usr_args: dict[str, Any]) -> RoboTwinModel:
    """Load `usr_args["ckpt_dir"]` with `vla_agents.load_agent` (imported here so the module imports without models)."""
    if not usr_args.get("ckpt_dir"):
        raise ValueError("deploy_policy.yml / --overrides must set ckpt_dir (a vla-agents checkpoint path)")
    arm_dims = (usr_args.get("left_arm_dim"), usr_args.get("right_arm_dim"))
    if None not in arm_dims and sum(arm_dims) + 2 != STATE_DIM:
        raise ValueError(f"embodiment arm dims {arm_dims} do not give the {STATE_DIM}-D aloha-agilex layout")
    from vla_agents import load_agent

    adapter = RoboTwinAdapter(action_mode=usr_args.get("action_mode", "qpos"),
                              cameras=tuple(usr_args.get("cameras") or CAMERAS))
    return RoboTwinModel(agent=load_agent(usr_args["ckpt_dir"]), adapter=adapter)


def encode_obs(observation: dict[str, Any], adapter: RoboTwinAdapter | None = None) -> Observation:
    """RoboTwin `get_obs()` dict (plus the `"language"` key `eval` adds) -> canonical Observation."""
    return (adapter or RoboTwinAdapter()).observation(observation, observation.get("language", ""))


def eval(TASK_ENV: Any, model: RoboTwinModel, observation: dict[str, Any]) -> None:  # noqa: A001 - name fixed by RoboTwin
    """Query one action chunk and execute it open-loop, one `take_action` per action.

    The chunk is cut at the task's step limit and stops early once `eval_success` is set (the runner
    would end the episode there anyway). No `get_obs()` between actions: the agent is open-loop within
    a chunk and the runner fetches a fresh observation before the next `eval` call.
    """
    obs = encode_obs({**observation, "language": TASK_ENV.get_instruction()}, model.adapter)
    chunk = np.asarray(model.agent.act_chunk(obs))
    if chunk.ndim != 2:
        raise ValueError(f"agent.act_chunk must return (T, A), got shape {chunk.shape}")
    for action in chunk[:chunk_steps(chunk, TASK_ENV.step_lim, TASK_ENV.take_action_cnt)]:
        if TASK_ENV.eval_success:
            break
        TASK_ENV.take_action(model.adapter.action(action), action_type=model.adapter.action_mode)


def reset_model(model: RoboTwinModel) -> None:
    """Episode start: clear the agent's chunk queue / history."""
    model.agent.reset()
