"""Full RL fine-tuning: PPO on the VLA itself, with stable-baselines3.

The actor is the VLA: a Gaussian whose mean is the policy's L1 head (normalized actions) and whose
state-independent log-std is learned, starting at `log_std_init`. A small value head reads the
VLA's pooled action-slot features and the proprio. Everything starts from the BC checkpoint, so
before the first update the deterministic actor *is* the BC agent. At paper scale the language
model trains through LoRA at the recipe's rank, as BC does; tiny agents train every weight.

One SB3 step is one VLA call: `ChunkEnv` executes the first `n_open_loop` actions of the sampled
chunk open-loop and returns their summed reward. That is the loop the agent runs at deployment
(so RL starts exactly from the BC agent's behaviour and success), it costs one forward pass per
chunk rather than per env step, and it turns a 100-step episode into 13 decisions for credit
assignment. The price: the action is a (n_open_loop x 7)-D Gaussian, its log-prob a sum of 56 terms.

With `bc_weight` > 0 and demonstration files, `bc_weight * L1(actor mean, demo chunk)` (BC's own
loss) joins the PPO loss, keeping the policy near the demonstrations while it explores. It enters
through the optimizer (`RegularisedAdam`), which SB3's unmodified PPO.train drives.

The output is an ordinary agent folder (`VLAAgent.save_pretrained`): `load_agent` returns an agent
whose deterministic `act` runs the fine-tuned weights.
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from torch import nn

from vla_agents.agent import VLAAgent, load_agent, make_adapter, preprocess_image
from vla_agents.data.dataset import DemoDataset
from vla_agents.data.normalization import NormStats
from vla_agents.models.dtp import DTPPolicy
from vla_agents.models.policy import require_language_model
from vla_agents.models.blocks import action_loss
from vla_agents.recipe import Recipe
from vla_agents.train.rl import REWARDS, RLConfig, RLRun, shape_reward, vec_env

__all__ = ["BCRegulariser", "ChunkEnv", "VLAActorCriticPolicy", "setup_full"]

# The VLA's rate is small: the policy gradient of a Gaussian scales as 1/std^2 (about 20 at std 0.22)
# and every weight of the VLA moves the mean (on the shipped tiny oft, 1e-5 gave PPO an approx KL of
# 0.4-0.6 per update, 3e-6 about 0.1). The heads (log-std, value) start from scratch or must move by
# O(1), so they learn HEADS_LR_SCALE times faster (3e-4, SB3's PPO default, at the default rate).
DEFAULT_LR = 3e-6
HEADS_LR_SCALE = 100.0
N_EPOCHS = 4


class ChunkEnv(gym.Wrapper):
    """The full-RL MDP: the observation is what the VLA reads, the action a normalized chunk.

    Observation (Dict): `images` uint8 (V, S, S, 3), the policy's views in policy orientation,
    centre-cropped and resized as the agent does at test time (uint8 keeps rollout buffers small);
    `proprio` float32, normalized; `task`, the instruction's index in `instructions` (SB3 cannot
    store text). Action: (n_open_loop, A) normalized actions, run open-loop until the episode ends.
    Reward: the sum over the steps run, per step "sparse" or "shaped" as in residual mode.
    `info["env_steps"]` says how many env steps the chunk took."""

    def __init__(self, env: gym.Env, recipe: Recipe, stats: NormStats | None, adapter: str,
                 instructions: list[str], reward: str = "sparse") -> None:
        super().__init__(env)
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; expected one of {REWARDS}")
        if recipe.agent.temporal_ensemble:
            raise ValueError("full RL runs chunks open-loop; this agent's recipe uses temporal ensembling")
        self.recipe, self.stats, self.adapter = recipe, stats, make_adapter(adapter)
        self.instructions, self.reward_mode, self.views = list(instructions), reward, list(recipe.backbone.views)
        size = recipe.backbone.image_size
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Box(0, 255, (len(self.views), size, size, 3), np.uint8),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (recipe.agent.proprio_dim,), np.float32),
            "task": gym.spaces.Discrete(len(self.instructions)),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (recipe.agent.n_open_loop, recipe.agent.action_dim), np.float32)

    def observation(self, raw: Mapping) -> dict[str, Any]:
        obs = self.adapter.observation(raw)
        if obs.instruction not in self.instructions:
            raise ValueError(f"instruction {obs.instruction!r} is not one of {self.instructions}")
        images = [preprocess_image(obs.images[v], self.recipe.backbone, train=False).mul(255).round().byte().permute(1, 2, 0)
                  for v in self.views]
        proprio = obs.proprio if self.stats is None else self.stats.normalize_proprio(obs.proprio)
        return {"images": torch.stack(images).numpy(), "proprio": np.asarray(proprio, np.float32),
                "task": self.instructions.index(obs.instruction)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        return self.observation(raw), info

    def step(self, action):
        chunk = np.asarray(action, np.float32).reshape(self.action_space.shape)
        if self.stats is not None:
            chunk = self.stats.unnormalize_action(chunk)
        total, steps = 0.0, 0
        for a in chunk:
            raw, reward, terminated, truncated, info = self.env.step(self.adapter.action(a))
            total += shape_reward(reward, self.reward_mode)
            steps += 1
            if terminated or truncated:
                break
        return self.observation(raw), total, bool(terminated), bool(truncated), {**info, "env_steps": steps}


class BCRegulariser:
    """`weight *` `train bc`'s loss (the recipe's `loss`, L1 by default) between the actor's mean chunk
    and demonstration chunks, on centre-cropped images as the actor sees them, on a fresh random batch
    each time."""

    def __init__(self, agent: VLAAgent, paths: list[str | Path], weight: float, batch_size: int, seed: int = 0) -> None:
        if agent.stats is None:
            raise ValueError("the BC regulariser needs the agent's normalization statistics")
        self.agent, self.weight, self.batch_size = agent, float(weight), int(batch_size)
        self.data = DemoDataset(paths, chunk_size=agent.chunk, stats=agent.stats)
        self.rng = np.random.default_rng(seed)
        self.l1: list[float] = []  # values since `pop_mean`

    def loss(self) -> torch.Tensor:
        """The unweighted BC loss on one batch, with its graph."""
        items = [self.data[int(i)] for i in self.rng.integers(len(self.data), size=self.batch_size)]
        batch = self.agent.collate(items, train=False)
        return action_loss(self.agent.model(batch).actions.float(), batch["actions"], batch["action_is_pad"],
                           self.agent.recipe.training.loss)

    def pop_mean(self) -> float:
        mean, self.l1 = float(np.mean(self.l1)) if self.l1 else math.nan, []
        return mean


class RegularisedAdam(torch.optim.Adam):
    """Adam whose `zero_grad` leaves the regulariser's gradient, `weight * grad L1`, instead of zeros.

    SB3's PPO.train runs `optimizer.zero_grad(); loss.backward(); clip_grad_norm_(); optimizer.step()`
    for every minibatch, so each update follows grad(L_PPO + weight * L1), clipped as a whole: the
    regulariser joins PPO's loss exactly, without a copy of PPO.train."""

    def __init__(self, params: Any, regulariser: BCRegulariser, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.regulariser = regulariser

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        l1 = self.regulariser.loss()
        (self.regulariser.weight * l1).backward()
        self.regulariser.l1.append(l1.item())


class VLAActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic on `ChunkEnv` observations whose actor is `agent`'s VLA (see the module doc).

    The value head reads the VLA's last-layer hidden states at its action slots (mean-pooled, from
    the backbone output the policy returns) with the proprio. Those features are detached: the critic learns on
    them but does not reshape them, so a randomly initialised value head cannot pull the BC
    features around before it is any good."""

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, lr_schedule: Any,
                 agent: VLAAgent, instructions: list[str], log_std_init: float = -1.5,
                 bc: BCRegulariser | None = None, **kwargs: Any) -> None:
        if not isinstance(agent, VLAAgent) or isinstance(agent.model, DTPPolicy):
            raise ValueError("full RL fine-tunes a plain agent, not a wrapper (DTP, a residual)")
        require_language_model(agent.model, "full RL (its value head reads the language model's hidden states)")
        # Plain attributes, set before nn.Module's constructor: the base constructor calls `_build`.
        self.agent, self.instructions, self.bc = agent, list(instructions), bc
        super().__init__(observation_space, action_space, lr_schedule, log_std_init=log_std_init, **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        self.vla = self.agent.model.eval()
        dim = self.vla.language_model.hidden_size + self.observation_space["proprio"].shape[0]
        self.log_std = nn.Parameter(torch.full((get_action_dim(self.action_space),), float(self.log_std_init)))
        self.value_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 256), nn.Tanh(), nn.Linear(256, 1))
        heads = [self.log_std, *self.value_head.parameters()]
        groups = [{"params": [p for p in self.vla.parameters() if p.requires_grad], "lr_scale": 1.0},
                  {"params": heads, "lr_scale": HEADS_LR_SCALE, "lr": lr_schedule(1) * HEADS_LR_SCALE}]
        if self.bc is None:
            self.optimizer = self.optimizer_class(groups, lr=lr_schedule(1), **self.optimizer_kwargs)
        else:
            self.optimizer = RegularisedAdam(groups, self.bc, lr=lr_schedule(1), **self.optimizer_kwargs)

    def set_training_mode(self, mode: bool) -> None:
        """The VLA always runs in eval mode: train-time noise (VLA-Adapter's latent noise, dropout)
        would make PPO's ratio compare the rollout policy with a different, noisier one."""
        super().set_training_mode(mode)
        self.vla.eval()

    def _batch(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """SB3 observation tensors (uint8 or float images, task index of any shape) -> model batch."""
        images = obs["images"].float().div(255.0).permute(0, 1, 4, 2, 3)
        tasks = obs["task"].reshape(-1).long().tolist()
        input_ids, attention_mask = self.agent.tokenize([self.instructions[t] for t in tasks])
        return {"images": images, "proprio": obs["proprio"].float(),
                "input_ids": input_ids.to(images.device), "attention_mask": attention_mask.to(images.device)}

    def _heads(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor mean (B, n_open_loop * A) and the value (B,), from one VLA forward pass."""
        batch = self._batch(obs)
        out = self.vla(batch)
        mean = out.actions[:, : self.action_space.shape[0]].float().flatten(1)
        pooled = out.backbone.hidden_states[-1][:, out.backbone.slots].float().mean(dim=1)
        values = self.value_head(torch.cat([pooled.detach(), batch["proprio"]], dim=-1)).squeeze(-1)
        return mean, values

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False):
        mean, values = self._heads(obs)
        distribution = self.action_dist.proba_distribution(mean, self.log_std)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions.reshape(-1, *self.action_space.shape), values, distribution.log_prob(actions)

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor):
        mean, values = self._heads(obs)
        distribution = self.action_dist.proba_distribution(mean, self.log_std)
        return values, distribution.log_prob(actions.reshape(len(mean), -1)), distribution.entropy()

    def get_distribution(self, obs: dict[str, torch.Tensor]):
        return self.action_dist.proba_distribution(self._heads(obs)[0], self.log_std)

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._heads(obs)[1]


class FullPPO(PPO):
    """PPO that keeps the heads' learning-rate multiple and logs the BC regulariser's mean L1."""

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)  # sets every parameter group to the schedule's rate
        for group in self.policy.optimizer.param_groups:
            group["lr"] *= group["lr_scale"]

    def train(self) -> None:
        super().train()
        if self.policy.bc is not None:
            self.logger.record("train/bc_l1", self.policy.bc.pop_mean())


def _make_chunk_env(env_spec: str, env_kwargs: dict, recipe: dict[str, Any], stats: NormStats | None, adapter: str,
                    instructions: list[str], reward: str) -> ChunkEnv:
    """Top-level (picklable) factory: workers get the recipe and statistics, never the model."""
    from vla_agents.sim import make_env

    os.environ.setdefault("MUJOCO_GL", "egl")
    return ChunkEnv(make_env(env_spec, **env_kwargs), recipe, stats, adapter, instructions, reward)


def env_instructions(env_spec: str, env_kwargs: dict) -> list[str]:
    """Every instruction the env can give: the SB3 observation carries an index into this list."""
    from vla_agents.sim import make_env

    env = make_env(env_spec, **env_kwargs)
    try:
        return list(getattr(env.unwrapped, "instructions", None) or [env.unwrapped.language_instruction])
    finally:
        env.close()


def setup_full(config: RLConfig) -> RLRun:
    """`train_rl`'s full mode: PPO with `VLAActorCriticPolicy` on `ChunkEnv`s. `config.steps` counts env
    steps; SB3 counts chunks."""
    agent_dir, env_spec, env_kwargs, steps, n_envs, seed = (config.agent_dir, config.env_spec, config.env_kwargs,
                                                            config.steps, config.n_envs, config.seed)
    bc_weight, bc_data, log_std_init = config.bc_weight, config.bc_data, config.log_std_init
    if bc_weight < 0 or (bc_weight > 0) != bool(bc_data):
        raise ValueError("the BC regulariser needs both bc_weight > 0 and bc_data demonstration files")
    lr = config.lr or DEFAULT_LR
    torch.manual_seed(seed)  # LoRA's random init
    agent = load_agent(agent_dir)
    training = agent.recipe.training
    if agent.lora is None and agent.recipe.scale == "paper" and training.lora_rank:
        agent.enable_lora(training.lora_rank, training.lora_alpha)
    instructions = env_instructions(env_spec, env_kwargs)
    chunk_steps = agent.recipe.agent.n_open_loop
    decisions = math.ceil(steps / chunk_steps)
    n_steps = max(4, min(32, decisions // n_envs))
    batch_size = min(16, n_steps * n_envs)
    bc = BCRegulariser(agent, bc_data, bc_weight, batch_size, seed) if bc_weight > 0 else None
    factory = partial(_make_chunk_env, env_spec, env_kwargs, agent.recipe, agent.stats, agent.adapter_name,
                      instructions, config.reward)
    venv = vec_env(factory, n_envs, seed)
    model = FullPPO(VLAActorCriticPolicy, venv, learning_rate=lr, n_steps=n_steps, batch_size=batch_size,
                    n_epochs=N_EPOCHS, seed=seed, device=config.device, verbose=0,
                    policy_kwargs=dict(agent=agent, instructions=instructions, log_std_init=log_std_init, bc=bc))
    return RLRun(model, agent, decisions, {
        "bc_weight": bc_weight, "bc_data": [str(p) for p in bc_data or []], "log_std_init": log_std_init,
        "lr": lr, "n_steps": n_steps, "batch_size": batch_size, "n_epochs": N_EPOCHS,
        "env_steps_per_decision": chunk_steps, "lora": agent.lora,
        "trainable_parameters": agent.num_parameters(trainable_only=True)})
