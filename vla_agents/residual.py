"""The residual agent: a frozen base VLAAgent plus a small SB3 policy's bounded correction
(Policy Decorator / ResiP style), usable wherever a VLAAgent is. Training it is `train/residual.py`'s;
this module only acts, saves and loads, so `load_agent` can open a residual folder without the trainers.

SB3 sees a flat vector: normalized proprio (8) + the base action about to run (7) + pooled VLA
features (the base agent's `last_pooled`: the last LLM hidden state, mean over tokens, at its last
model call; fixed random projection to `feature_dim`) + the chunk phase (1) + optionally privileged
simulator state read from the raw observation (`state_sizes`, e.g. the embedded suite's
`object-state`: ResiP's residual sees state). Such an agent needs those keys at deployment too.

Folder layout written by `ResidualAgent.save_pretrained(dir)`: `dir/base/` (the frozen VLAAgent
folder), `dir/residual_policy.safetensors` (the SB3 policy's weights), `dir/residual.json` (its
settings, SB3's constructor arguments and the weights' SHA-256) and `dir/residual_trainer_state.pt`
(optimizer states, read with `weights_only` and only to continue training). Opening the folder runs
no code. Folders of vla-agents 0.1 hold SB3's own `residual_policy.zip`, which SB3 would unpickle;
they are read without it: the tensors with `weights_only`, the settings from its plain JSON.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import save_file

from vla_agents.atomic import replace_folder
from vla_agents.checksums import digests, read_weights, verify_digests
from vla_agents.types import AttentionMaps

__all__ = ["ResidualAgent", "load_residual_agent"]

# The measured residual recipe (benchmarks/README.md): PPO gained in every run where SAC collapsed,
# and a scale of 0.5 or more lets the correction undo the base's saturated pushes.
DEFAULT_ALGO = "ppo"
RESIDUAL_SCALE = 0.5
ALGOS = ("sac", "ppo")
POLICY_FILE, TRAINER_STATE, CONFIG_FILE, BASE_DIR = (
    "residual_policy.safetensors", "residual_trainer_state.pt", "residual.json", "base")
LEGACY_POLICY_FILE = "residual_policy.zip"  # format 1 (vla-agents 0.1): SB3's own archive
FORMAT_VERSION = 2
REQUIRED = ("algo", "scale", "feature_dim", "action_low", "action_high")  # residual.json keys without a default
# SB3 constructor arguments a saved residual is rebuilt with (format 1 keeps them in its zip's JSON).
SB3_KWARGS = ("n_steps", "batch_size", "learning_starts", "learning_rate", "policy_kwargs")


def _algo_class(algo: str):
    from stable_baselines3 import PPO, SAC

    if algo not in ALGOS:
        raise ValueError(f"unknown RL algorithm {algo!r}; expected one of {ALGOS}")
    return {"sac": SAC, "ppo": PPO}[algo]


class _SpacesOnly(gym.Env):
    """An env with spaces and nothing else: what SB3 needs to build a policy that is loaded, not trained."""

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)


def build_algorithm(algo: str, env: Any, sb3_kwargs: Mapping[str, Any], device: str, seed: int | None = None) -> Any:
    """SB3's `algo` with an MlpPolicy on `env` (`_SpacesOnly` for a policy that is only loaded)."""
    return _algo_class(algo)("MlpPolicy", env, seed=seed, device=device, verbose=0, **sb3_kwargs)


class ResidualAgent:
    """Frozen base agent + SB3 residual policy, usable wherever a VLAAgent is (`reset`, `act`,
    `last_attention`, `model_calls`, `save_pretrained`). With `policy=None` it only builds the
    observation vector (what `ResidualEnv` needs while the policy is being trained)."""

    def __init__(self, base: Any, policy: Any = None, scale: float = RESIDUAL_SCALE, feature_dim: int = 32,
                 algo: str = DEFAULT_ALGO, action_low: float = -1.0, action_high: float = 1.0,
                 state_sizes: Mapping[str, int] | None = None, sb3_kwargs: Mapping[str, Any] | None = None) -> None:
        self.base, self.policy, self.scale, self.algo = base, policy, float(scale), algo
        self.sb3_kwargs = dict(sb3_kwargs or {})  # what `policy` was built with, to rebuild it on load
        self.state_sizes = dict(state_sizes or {})  # raw-observation key -> flattened size
        self.feature_dim, self.action_low, self.action_high = int(feature_dim), float(action_low), float(action_high)
        self.action_dim = base.action_dim
        from vla_agents.models.policy import require_language_model  # here: the CLI imports this module, not transformers

        width = require_language_model(base.model, "residual RL (it observes the language model's pooled hidden state)").hidden_size
        # A fixed projection (seeded, so a reloaded agent sees the same features) keeps SB3's input small.
        gen = torch.Generator().manual_seed(0)
        self._projection = torch.randn(width, self.feature_dim, generator=gen) / width ** 0.5
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    @property
    def obs_dim(self) -> int:
        return self.base.recipe.agent.proprio_dim + self.action_dim + self.feature_dim + 1 + sum(self.state_sizes.values())

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

    def features(self) -> np.ndarray:
        """The base agent's pooled hidden state at its last model call (once per chunk), projected."""
        if self.base.last_pooled is None:
            return np.zeros(self.feature_dim, np.float32)
        return (torch.from_numpy(self.base.last_pooled) @ self._projection).numpy().astype(np.float32)

    def reset(self) -> None:
        self.base.reset()

    def observe(self, raw_obs: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """The base action for this step (advancing the base agent's chunk queue) and SB3's observation."""
        base_action = np.asarray(self.base.act(raw_obs), np.float32)
        proprio = self.base.adapter.observation(raw_obs).proprio
        if self.base.stats is not None:
            proprio = self.base.stats.normalize_proprio(proprio)
        n_open_loop = self.base.recipe.agent.n_open_loop
        remaining = len(getattr(self.base, "_queue", ()))
        phase = 0.0 if self.base.recipe.agent.temporal_ensemble else (n_open_loop - 1 - remaining) / n_open_loop
        obs = np.concatenate([np.asarray(proprio, np.float32), base_action, self.features(), [phase],
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
        return {"format_version": FORMAT_VERSION, "algo": self.algo, "scale": self.scale, "feature_dim": self.feature_dim,
                "obs_dim": self.obs_dim, "action_dim": self.action_dim, "action_low": self.action_low,
                "action_high": self.action_high, "state_sizes": self.state_sizes, "base": BASE_DIR,
                "policy": POLICY_FILE, "sb3_kwargs": self.sb3_kwargs}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder (module doc) in one recoverable swap, as `VLAAgent.save_pretrained` does."""
        if self.policy is None:
            raise RuntimeError("nothing to save: this ResidualAgent has no residual policy")
        return replace_folder(path, self.write_to)

    def write_to(self, folder: Path) -> None:
        """Fill the empty `folder` with the residual agent's files (see `VLAAgent.write_to`)."""
        (folder / BASE_DIR).mkdir()
        self.base.write_to(folder / BASE_DIR)
        optimizers = self.policy.get_parameters()  # SB3's state dicts: "policy" and its optimizers
        weights = optimizers.pop("policy")
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / POLICY_FILE))
        variables = self.policy._get_torch_save_params()[1]  # tensors outside any module, e.g. SAC's log_ent_coef
        torch.save({"optimizers": optimizers, "variables": {name: getattr(self.policy, name).detach().cpu()
                                                           for name in variables}}, folder / TRAINER_STATE)
        config = {**self.config(), "sha256": digests(folder, [POLICY_FILE])}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def _read_legacy(file: Path, trainer_state: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, trainer state, SB3 kwargs) from a format-1 `residual_policy.zip`, without unpickling:
    its .pth tensors with `weights_only`, and the plain (not pickled) entries of its JSON `data`."""
    try:
        with zipfile.ZipFile(file) as archive:
            def tensors(name: str) -> Any:
                return torch.load(io.BytesIO(archive.read(name)), weights_only=True, map_location="cpu")

            names = archive.namelist()
            data = json.loads(archive.read("data"))
            weights = tensors("policy.pth")
            state = {"optimizers": {n.removesuffix(".pth"): tensors(n) for n in names if n.endswith("optimizer.pth")},
                     "variables": tensors("pytorch_variables.pth") if "pytorch_variables.pth" in names else {}
                     } if trainer_state else {}
    except (zipfile.BadZipFile, KeyError, OSError, RuntimeError, json.JSONDecodeError, pickle.UnpicklingError) as e:
        raise ValueError(f"{file} is not a readable SB3 archive ({str(e).splitlines()[0]}): it is damaged, or holds "
                         "objects that would run code when loaded") from e
    kwargs = {k: data[k] for k in SB3_KWARGS if k in data and not (isinstance(data[k], dict) and ":serialized:" in data[k])}
    return weights, state, kwargs


def read_saved(path: Path, trainer_state: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(residual.json, policy weights, trainer state or {}) of a saved residual, checked, in either format.
    A format-2 folder keeps its trainer state in its own file, which only training reads (`train/residual.py`)."""
    config_path = path / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt residual agent file {config_path}: {e}") from e
    missing = [k for k in REQUIRED if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{config_path} has no {missing}; expected the settings ResidualAgent.save_pretrained writes")
    version = config.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {version}; this vla-agents reads up to {FORMAT_VERSION}: "
                         "upgrade vla-agents")
    if version == 1:
        weights, state, kwargs = _read_legacy(path / config.get("policy", LEGACY_POLICY_FILE), trainer_state)
        return {**config, "sb3_kwargs": kwargs}, weights, state
    verify_digests(path, config.get("sha256"), CONFIG_FILE)
    return config, read_weights(path / POLICY_FILE), {}


def load_parameters(model: Any, weights: dict[str, torch.Tensor], state: dict[str, Any], where: Path) -> None:
    """The saved weights (and, when `state` has them, optimizer states and variables) into `model`."""
    expected = model.policy.state_dict()
    bad = sorted(set(expected) ^ set(weights)) or [k for k in expected if expected[k].shape != weights[k].shape]
    if bad:
        raise ValueError(f"the residual policy weights in {where} do not fit an MlpPolicy for this agent's "
                         f"{model.observation_space.shape[0]} observations: {bad[:5]}")
    optimizers = state.get("optimizers", {})
    model.set_parameters({"policy": weights, **optimizers}, exact_match=bool(optimizers), device=model.device)
    for name, value in state.get("variables", {}).items():
        getattr(model, name).data.copy_(value)


def load_residual_agent(path: str | Path, device: str | torch.device | None, load_base: Callable[..., Any]) -> ResidualAgent:
    """Load a folder written by `ResidualAgent.save_pretrained`; no code from the folder runs (see the
    module doc). `load_agent` finds this loader by the folder's residual.json and passes itself as
    `load_base`, which opens the frozen base agent in base/."""
    path = Path(path)
    for name in (CONFIG_FILE, BASE_DIR):
        if not (path / name).exists():
            raise FileNotFoundError(f"residual agent folder {path} is missing {name}")
    config, weights, _ = read_saved(path)
    base = load_base(path / config.get("base", BASE_DIR), device=device)
    agent = ResidualAgent(base, None, config["scale"], config["feature_dim"], config["algo"], config["action_low"],
                          config["action_high"], config.get("state_sizes"), config["sb3_kwargs"])
    if config.get("obs_dim", agent.obs_dim) != agent.obs_dim:
        raise ValueError(f"residual policy in {path} expects observations ({config['obs_dim']},), "
                         f"the base agent gives ({agent.obs_dim},)")
    agent.policy = build_algorithm(agent.algo, _SpacesOnly(agent.obs_dim, agent.action_dim), agent.sb3_kwargs,
                                   str(device or "cpu"))
    load_parameters(agent.policy, weights, {}, path / config.get("policy", POLICY_FILE))
    return agent


