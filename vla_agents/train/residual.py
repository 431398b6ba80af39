"""Residual RL on a frozen VLA (Policy Decorator / ResiP style), with stable-baselines3.

The base agent stays frozen and keeps executing its chunks open-loop (one VLA call per chunk); a
small SB3 policy learns a bounded correction `scale * clip(r, -1, 1)` added to each base action.
The base is treated as part of the environment (`ResidualEnv`), so every SB3 algorithm works
unchanged and its replay/rollout buffers store exactly the action the actor produced.

SB3 sees a flat vector: normalized proprio (8) + the base action about to run (7) + pooled VLA
features (last LLM hidden state, mean over tokens, fixed random projection to `feature_dim`; cached
per chunk) + the chunk phase (1) + optionally privileged simulator state read from the raw
observation (`state_keys`, e.g. the embedded suite's `object-state`: ResiP's residual sees state).
`ResidualAgent` builds that vector the same way at deployment, so such an agent needs those keys.

Folder layout written by `ResidualAgent.save_pretrained(dir)`:
`dir/base/` (the frozen VLAAgent folder), `dir/residual_policy.zip` (SB3), `dir/residual.json`.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from vla_agents.train.rl import DEFAULT_ALGO, RESIDUAL_SCALE, REWARDS, RLRun, shape_reward, vec_env
from vla_agents.types import AttentionMaps

__all__ = ["ResidualAgent", "ResidualEnv", "load_residual_agent", "setup_residual"]

ALGOS = ("sac", "ppo")
POLICY_FILE, CONFIG_FILE, BASE_DIR = "residual_policy.zip", "residual.json", "base"


def _algo_class(algo: str):
    from stable_baselines3 import PPO, SAC

    if algo not in ALGOS:
        raise ValueError(f"unknown RL algorithm {algo!r}; expected one of {ALGOS}")
    return {"sac": SAC, "ppo": PPO}[algo]


class ResidualAgent:
    """Frozen base agent + SB3 residual policy, usable wherever a VLAAgent is (`reset`, `act`,
    `last_attention`, `model_calls`, `save_pretrained`). With `policy=None` it only builds the
    observation vector (what `ResidualEnv` needs while the policy is being trained)."""

    def __init__(self, base: Any, policy: Any = None, scale: float = RESIDUAL_SCALE, feature_dim: int = 32,
                 algo: str = DEFAULT_ALGO, action_low: float = -1.0, action_high: float = 1.0,
                 state_sizes: Mapping[str, int] | None = None) -> None:
        self.base, self.policy, self.scale, self.algo = base, policy, float(scale), algo
        self.state_sizes = dict(state_sizes or {})  # raw-observation key -> flattened size
        self.feature_dim, self.action_low, self.action_high = int(feature_dim), float(action_low), float(action_high)
        self.action_dim = base.action_dim
        backbone = base.model.backbone
        # A fixed projection (seeded, so a reloaded agent sees the same features) keeps SB3's input small.
        gen = torch.Generator().manual_seed(0)
        self._projection = torch.randn(backbone.llm.hidden_size, self.feature_dim, generator=gen) / backbone.llm.hidden_size ** 0.5
        self._features = np.zeros(self.feature_dim, np.float32)
        self._hook = backbone.register_forward_hook(self._pool)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    @property
    def obs_dim(self) -> int:
        return self.base.recipe["proprio_dim"] + self.action_dim + self.feature_dim + 1 + sum(self.state_sizes.values())

    @property
    def policy_name(self) -> str:
        """E.g. "oft+residual-ppo": what evaluation labels its rows and reports with."""
        return f"{self.base.policy_name}+residual-{self.algo}"

    @property
    def model_calls(self) -> int:
        return self.base.model_calls

    @property
    def last_attention(self) -> AttentionMaps:
        return self.base.last_attention

    def num_parameters(self) -> int:
        extra = sum(p.numel() for p in self.policy.policy.parameters()) if self.policy is not None else 0
        return self.base.num_parameters() + extra

    def _pool(self, module: torch.nn.Module, inputs: Any, out: Any) -> None:
        """Forward hook on the backbone: runs only when the VLA runs, i.e. once per chunk."""
        last = out.hidden_states[-1].float().mean(dim=1)[0].cpu()
        self._features = (last @ self._projection).numpy().astype(np.float32)

    def reset(self) -> None:
        self.base.reset()

    def observe(self, raw_obs: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """The base action for this step (advancing the base agent's chunk queue) and SB3's observation."""
        base_action = np.asarray(self.base.act(raw_obs), np.float32)
        proprio = self.base.adapter.observation(raw_obs).proprio
        if self.base.stats is not None:
            proprio = self.base.stats.normalize_proprio(proprio)
        n_open_loop = self.base.recipe.get("n_open_loop", self.base.chunk)
        remaining = len(getattr(self.base, "_queue", ()))
        phase = 0.0 if self.base.recipe.get("temporal_ensemble") else (n_open_loop - 1 - remaining) / n_open_loop
        obs = np.concatenate([np.asarray(proprio, np.float32), base_action, self._features, [phase],
                              *self._state(raw_obs)]).astype(np.float32)
        return base_action, obs

    def _state(self, raw_obs: Mapping) -> list[np.ndarray]:
        state = []
        for key, size in self.state_sizes.items():
            if key not in raw_obs:
                raise KeyError(f"this residual observes privileged state {key!r}, which the observation lacks "
                               f"(keys: {sorted(raw_obs)}); evaluate it in the simulator it was trained in")
            value = np.asarray(raw_obs[key], np.float32).ravel()
            if value.size != size:
                raise ValueError(f"state {key!r} has {value.size} numbers; this residual was trained on {size}")
            state.append(value)
        return state

    def combine(self, base_action: np.ndarray, residual: np.ndarray) -> np.ndarray:
        residual = np.clip(np.asarray(residual, np.float32), -1.0, 1.0)
        return np.clip(base_action + self.scale * residual, self.action_low, self.action_high).astype(np.float32)

    def act(self, raw_obs: Mapping, instruction: str | None = None) -> np.ndarray:
        if self.policy is None:
            raise RuntimeError("this ResidualAgent has no trained residual policy yet")
        base_action, obs = self.observe(raw_obs)
        residual, _ = self.policy.predict(obs, deterministic=True)
        return self.combine(base_action, residual)

    def config(self) -> dict[str, Any]:
        return {"algo": self.algo, "scale": self.scale, "feature_dim": self.feature_dim, "obs_dim": self.obs_dim,
                "action_dim": self.action_dim, "action_low": self.action_low, "action_high": self.action_high,
                "state_sizes": self.state_sizes, "base": BASE_DIR, "policy": POLICY_FILE}

    def save_pretrained(self, path: str | Path) -> Path:
        if self.policy is None:
            raise RuntimeError("nothing to save: this ResidualAgent has no residual policy")
        path = Path(path)
        self.base.save_pretrained(path / BASE_DIR)
        self.policy.save(str(path / POLICY_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
        return path


def load_residual_agent(path: str | Path, device: str | torch.device | None = None) -> ResidualAgent:
    """Load a folder written by `ResidualAgent.save_pretrained` (what `load_agent` delegates to)."""
    from vla_agents.agent import load_agent

    path = Path(path)
    for name in (CONFIG_FILE, POLICY_FILE, BASE_DIR):
        if not (path / name).exists():
            raise FileNotFoundError(f"residual agent folder {path} is missing {name}")
    config = json.loads((path / CONFIG_FILE).read_text())
    base = load_agent(path / config.get("base", BASE_DIR), device=device)
    policy = _algo_class(config["algo"]).load(str(path / config.get("policy", POLICY_FILE)), device=device or "cpu")
    agent = ResidualAgent(base, policy, config["scale"], config["feature_dim"], config["algo"],
                          config["action_low"], config["action_high"], config.get("state_sizes"))
    if policy.observation_space.shape != (agent.obs_dim,):
        raise ValueError(f"residual policy in {path} expects observations {policy.observation_space.shape}, "
                         f"the base agent gives ({agent.obs_dim},)")
    return agent


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


def setup_residual(agent_dir: str, env_spec: str, env_kwargs: dict, algo: str | None, steps: int, n_envs: int,
                   seed: int, reward: str, lr: float | None, device: str, scale: float, progressive_explore: int,
                   feature_dim: int, log_std_init: float, state_keys: Sequence[str] = ()) -> RLRun:
    """`train_rl`'s residual mode: SB3's MlpPolicy on `ResidualEnv`s, evaluated as a `ResidualAgent`.

    PPO starts as ResiP does: a near-zero mean (SB3's orthogonal init, gain 0.01 on the action layer)
    and a small `log_std_init`, so the first rollouts behave like the base agent. SAC's initial
    policy is wide (std about 1) and its warm-up is uniform, which is what `progressive_explore` tempers.

    When `agent_dir` is itself a residual agent, training continues its residual policy (weights,
    optimizer, log-std) on the same frozen base, with the saved algorithm, scale, feature size and
    state keys: a long run can be split into parts, or taken further."""
    from vla_agents.agent import load_agent

    continued = (Path(agent_dir) / CONFIG_FILE).exists()
    if continued:
        saved = json.loads((Path(agent_dir) / CONFIG_FILE).read_text())
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
    algo_class = _algo_class(algo)
    factory = partial(_make_residual_env, base_dir, env_spec, env_kwargs, scale=scale, reward=reward,
                      progressive_explore=progressive_explore, feature_dim=feature_dim, algo=algo,
                      state_keys=tuple(state_keys))
    venv = vec_env(factory, n_envs, seed)
    if continued:
        custom = {"learning_rate": lr} if lr is not None else None
        model = algo_class.load(str(Path(agent_dir) / POLICY_FILE), env=venv, device=device, custom_objects=custom)
        model.set_random_seed(seed)
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
        model = algo_class("MlpPolicy", venv, seed=seed, device=device, verbose=0, **kwargs)
    agent = ResidualAgent(load_agent(base_dir), model, scale, feature_dim, algo,
                          state_sizes=venv.get_attr("residual_state_sizes")[0])
    config = {"algo": algo, "scale": scale, "progressive_explore": progressive_explore, "feature_dim": feature_dim,
              "state_keys": list(state_keys),
              **({"log_std_init": log_std_init} if algo == "ppo" and not continued else {}),
              **({"continued_from": str(agent_dir)} if continued else {})}
    return RLRun(model, agent, steps, config)
