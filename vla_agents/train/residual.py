"""Residual RL on a frozen VLA (Policy Decorator / ResiP style), with stable-baselines3: the
training side of `vla_agents.residual.ResidualAgent`, whose module doc describes what the residual
observes and the folder it saves.

The base agent stays frozen and keeps executing its chunks open-loop (one VLA call per chunk); a
small SB3 policy learns a bounded correction `scale * clip(r, -1, 1)` added to each base action.
The base is treated as part of the environment (`ResidualEnv`), so every SB3 algorithm works
unchanged and its replay/rollout buffers store exactly the action the actor produced.
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from vla_agents.residual import (
    BASE_DIR, CONFIG_FILE, DEFAULT_ALGO, RESIDUAL_SCALE, TRAINER_STATE, ResidualAgent, _algo_class, build_algorithm,
    load_parameters, read_saved,
)
from vla_agents.train.checkpoint import load_trainer_state
from vla_agents.train.rl import REWARDS, RLConfig, RLRun, shape_reward, vec_env

__all__ = ["ResidualEnv", "setup_residual"]


def _read_for_training(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`read_saved` with the trainer state (optimizers, SAC's entropy coefficient) to continue from."""
    config, weights, state = read_saved(path, trainer_state=True)
    if config.get("format_version", 1) >= 2:
        if (path / TRAINER_STATE).is_file():
            state = load_trainer_state(path / TRAINER_STATE)
        else:
            warnings.warn(f"{path} has no {TRAINER_STATE}: the residual's optimizer starts afresh", stacklevel=3)
    return config, weights, state


def state_sizes(space: gym.spaces.Space, keys: Sequence[str]) -> dict[str, int]:
    """Flattened size of each privileged-state key, read from the env's observation space."""
    spaces = getattr(space, "spaces", {})
    missing = [key for key in keys if not isinstance(spaces.get(key), gym.spaces.Box)]
    if missing:
        boxes = sorted(k for k, v in spaces.items() if isinstance(v, gym.spaces.Box) and not k.endswith("_image"))
        raise ValueError(f"state keys {missing} are not vector entries of this env's observations; it has {boxes}")
    return {key: int(np.prod(spaces[key].shape)) for key in keys}


class ResidualEnv(gym.Wrapper):
    """The residual MDP: action = correction in [-1, 1]^A, the frozen base agent runs inside `step`.

    reward="sparse" passes the env's 0/1 success reward; "shaped" is Policy Decorator's `r - 1`
    (a per-step cost until success, so faster success pays more). `progressive_explore=N` > 0 uses
    the residual at each step with probability min(steps_so_far / N, 1) and zeroes it otherwise
    (Policy Decorator), counting this env's own steps; the buffer still stores the policy's action.
    `state_keys` names raw-observation entries (privileged state) the residual observes too."""

    def __init__(self, env: gym.Env, agent: Any, scale: float = RESIDUAL_SCALE, reward: str = "sparse",
                 progressive_explore: int = 0, feature_dim: int = 32, algo: str = DEFAULT_ALGO,
                 state_keys: Sequence[str] = ()) -> None:
        super().__init__(env)
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; expected one of {REWARDS}")
        low, high = float(np.min(env.action_space.low)), float(np.max(env.action_space.high))
        self.residual = agent if isinstance(agent, ResidualAgent) else ResidualAgent(
            agent, scale=scale, feature_dim=feature_dim, algo=algo, action_low=low, action_high=high,
            state_sizes=state_sizes(env.observation_space, state_keys))
        self.reward_mode, self.progressive_explore = reward, int(progressive_explore)
        self.observation_space = self.residual.observation_space
        self.residual_state_sizes = self.residual.state_sizes  # what the trainer's own ResidualAgent needs
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.residual.action_dim,), np.float32)
        self.total_steps = 0
        self._rng = np.random.default_rng()
        self._base_action = np.zeros(self.residual.action_dim, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        raw, info = self.env.reset(seed=seed, options=options)
        self.residual.reset()
        self._base_action, obs = self.residual.observe(raw)
        return obs, info

    def step(self, action):
        residual = np.asarray(action, np.float32)
        if self.progressive_explore > 0 and self._rng.random() >= min(self.total_steps / self.progressive_explore, 1.0):
            residual = np.zeros_like(residual)
        env_action = self.residual.combine(self._base_action, residual)
        raw, reward, terminated, truncated, info = self.env.step(env_action)
        self.total_steps += 1
        info = {**info, "base_action": self._base_action, "env_action": env_action}
        # The terminal observation needs its base action too: SB3 bootstraps truncated episodes from it.
        self._base_action, obs = self.residual.observe(raw)
        return obs, shape_reward(reward, self.reward_mode), bool(terminated), bool(truncated), info  # np.bool_ -> bool


def _make_residual_env(agent_dir: str, env_spec: str, env_kwargs: dict, **wrapper_kwargs: Any) -> ResidualEnv:
    """Top-level (picklable) factory: each worker process loads its own frozen base agent."""
    from vla_agents.agent import load_agent
    from vla_agents.sim import make_env

    os.environ.setdefault("MUJOCO_GL", "egl")
    return ResidualEnv(make_env(env_spec, **env_kwargs), load_agent(agent_dir), **wrapper_kwargs)


def setup_residual(config: RLConfig) -> RLRun:
    """`train_rl`'s residual mode: SB3's MlpPolicy on `ResidualEnv`s, evaluated as a `ResidualAgent`.

    PPO starts as ResiP does: a near-zero mean (SB3's orthogonal init, gain 0.01 on the action layer)
    and a small `log_std_init`, so the first rollouts behave like the base agent. SAC's initial
    policy is wide (std about 1) and its warm-up is uniform, which is what `progressive_explore` tempers.

    When `agent_dir` is itself a residual agent, training continues its residual policy (weights,
    optimizer, log-std) on the same frozen base, with the saved algorithm, scale, feature size and
    state keys: a long run can be split into parts, or taken further."""
    from vla_agents.agent import load_agent

    agent_dir, env_spec, env_kwargs, algo, steps, n_envs, seed, lr, device = (
        config.agent_dir, config.env_spec, config.env_kwargs, config.algo, config.steps, config.n_envs, config.seed,
        config.lr, config.device)
    scale, feature_dim, state_keys, log_std_init = config.scale, config.feature_dim, config.state_keys, config.log_std_init
    continued = (Path(agent_dir) / CONFIG_FILE).exists()
    if continued:
        saved, weights, state = _read_for_training(Path(agent_dir))
        if algo is not None and algo != saved["algo"]:
            raise ValueError(f"{agent_dir} holds a residual trained with {saved['algo']!r}; it cannot continue "
                             f"with {algo!r} (leave the algorithm unset, or start from its base/ folder)")
        algo, scale, feature_dim = saved["algo"], saved["scale"], saved["feature_dim"]
        if state_keys and list(state_keys) != list(saved.get("state_sizes", {})):
            raise ValueError(f"{agent_dir} holds a residual that observes state {list(saved.get('state_sizes', {}))}; "
                             f"it cannot continue observing {list(state_keys)}")
        state_keys = list(saved.get("state_sizes", {}))
        base_dir = str(Path(agent_dir) / saved.get("base", BASE_DIR))
    else:
        algo, base_dir = algo or DEFAULT_ALGO, agent_dir
    _algo_class(algo)  # an unknown algorithm fails before any env process starts
    factory = partial(_make_residual_env, base_dir, env_spec, env_kwargs, scale=scale, reward=config.reward,
                      progressive_explore=config.progressive_explore, feature_dim=feature_dim, algo=algo,
                      state_keys=tuple(state_keys))
    venv = vec_env(factory, n_envs, seed)
    if continued:
        kwargs = {**saved["sb3_kwargs"], **({"learning_rate": lr} if lr is not None else {})}
        model = build_algorithm(algo, venv, kwargs, device, seed)
        load_parameters(model, weights, state, Path(agent_dir))
    else:
        if algo == "ppo":
            # Sparse success rewards need several episodes per update; at least 4 updates per run.
            n_steps = max(16, min(1024, steps // (4 * n_envs)))
            kwargs = dict(n_steps=n_steps, batch_size=min(256, n_steps * n_envs),
                          policy_kwargs=dict(log_std_init=log_std_init))
        else:
            kwargs = dict(learning_starts=min(1000, steps // 4), batch_size=min(256, max(16, steps // 4)))
        if lr is not None:
            kwargs["learning_rate"] = lr
        model = build_algorithm(algo, venv, kwargs, device, seed)
    agent = ResidualAgent(load_agent(base_dir), model, scale, feature_dim, algo,
                          state_sizes=venv.get_attr("residual_state_sizes")[0], sb3_kwargs=kwargs)
    record = {"algo": algo, "scale": scale, "progressive_explore": config.progressive_explore, "feature_dim": feature_dim,
              "state_keys": list(state_keys),
              **({"log_std_init": log_std_init} if algo == "ppo" and not continued else {}),
              **({"continued_from": str(agent_dir)} if continued else {})}
    return RLRun(model, agent, steps, record)
