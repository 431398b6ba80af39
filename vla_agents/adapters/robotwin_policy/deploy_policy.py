"""The four functions RoboTwin 2.0's `script/eval_policy.py` calls, backed by a vla-agents checkpoint.

Runner contract (BENCHMARKS.md 2.1): `get_model(usr_args)` once; `reset_model(model)` per episode;
`eval(TASK_ENV, model, observation)` repeatedly while `TASK_ENV.take_action_cnt < TASK_ENV.step_lim`,
with `observation = TASK_ENV.get_obs()`; the runner checks `TASK_ENV.eval_success` after each call.
The model is the loaded agent itself: its `robotwin` / `robotwin_ee` adapter reads RoboTwin's
observation dicts and checks the actions, so the dict goes to the agent as the runner passes it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vla_agents.adapters.robotwin import STATE_DIM, RoboTwinAdapter, chunk_steps
from vla_agents.types import Observation

__all__ = ["get_model", "eval", "reset_model", "encode_obs"]

ADAPTER_FOR_MODE = {"qpos": "robotwin", "ee": "robotwin_ee"}


def get_model(usr_args: dict[str, Any]) -> Any:
    """Load `usr_args["ckpt_dir"]` with `vla_agents.load_agent` (imported here so the module imports without
    models); it must have been made with a RoboTwin adapter whose action mode is `usr_args["action_mode"]`."""
    if not usr_args.get("ckpt_dir"):
        raise ValueError("deploy_policy.yml / --overrides must set ckpt_dir (a vla-agents checkpoint path)")
    arm_dims = (usr_args.get("left_arm_dim"), usr_args.get("right_arm_dim"))
    if None not in arm_dims and sum(arm_dims) + 2 != STATE_DIM:
        raise ValueError(f"embodiment arm dims {arm_dims} do not give the {STATE_DIM}-D aloha-agilex layout")
    from vla_agents import load_agent

    agent = load_agent(usr_args["ckpt_dir"])
    mode = usr_args.get("action_mode") or "qpos"
    if mode not in ADAPTER_FOR_MODE:
        raise ValueError(f"action_mode must be one of {sorted(ADAPTER_FOR_MODE)}, got {mode!r}")
    name = getattr(agent, "adapter_name", None)
    if name != ADAPTER_FOR_MODE[mode]:
        raise ValueError(f"{usr_args['ckpt_dir']} was saved with adapter {name!r}; RoboTwin with action_mode {mode!r} "
                         f"needs an agent made with adapter {ADAPTER_FOR_MODE[mode]!r}")
    return agent


def encode_obs(observation: dict[str, Any], adapter: RoboTwinAdapter | None = None) -> Observation:
    """RoboTwin `get_obs()` dict (plus the `"language"` key) -> the canonical Observation the agent sees."""
    return (adapter or RoboTwinAdapter()).observation(observation)


def eval(TASK_ENV: Any, model: Any, observation: dict[str, Any]) -> None:  # noqa: A001 - name fixed by RoboTwin
    """Query one action chunk and execute it open-loop, one `take_action` per action.

    The chunk is cut at the task's step limit and stops early once `eval_success` is set (the runner
    would end the episode there anyway). No `get_obs()` between actions: the agent is open-loop within
    a chunk and the runner fetches a fresh observation before the next `eval` call.
    """
    chunk = np.asarray(model.act_chunk(observation, TASK_ENV.get_instruction()))
    if chunk.ndim != 2:
        raise ValueError(f"agent.act_chunk must return (T, A), got shape {chunk.shape}")
    for action in chunk[:chunk_steps(chunk, TASK_ENV.step_lim, TASK_ENV.take_action_cnt)]:
        if TASK_ENV.eval_success:
            break
        TASK_ENV.take_action(action, action_type=model.adapter.action_mode)


def reset_model(model: Any) -> None:
    """Episode start: clear the agent's chunk queue, history and adapter state."""
    model.reset()
