"""`VLAAgent`: a policy model wrapped as a Gymnasium-style agent.

Raw benchmark observation in, env-ready action out. The agent owns everything between the two:
the benchmark adapter, normalization statistics, image preprocessing (resize; centre crop at test
time when trained with random crops), prompt tokenization, and the action queue that executes each
predicted chunk open-loop (or ACT-style temporal ensembling). One folder holds a whole agent:
`model.safetensors`, `config.json`, `norm_stats.json` and the tokenizer files.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vla_agents.atomic import complete_folder, replace_folder
from vla_agents.checksums import digests, read_weights, verify_digests
from vla_agents.adapters import ObservationError, fit_recipe, make_adapter
from vla_agents.data.images import crop_resize, uv_in_crop
from vla_agents.data.normalization import NormStats
from vla_agents.hub import download_agent, looks_like_hub_id
from vla_agents.models.backbone_folder import resolve_shipped_path
from vla_agents.models.backbones import build_byte_tokenizer, left_padded
from vla_agents.models.dtp import DTP, DTPPolicy
from vla_agents.models.policy import require_language_model
from vla_agents.policies import (
    WRAPPERS, build_model, check_policy, list_policies, load_recipe, load_wrapper_recipe, parse_recipe, split_name,
    split_wrapper,
)
from vla_agents.recipe import BackboneConfig, Recipe
from vla_agents.residual import load_residual_agent
from vla_agents.types import AttentionMaps, Observation

__all__ = ["VLAAgent", "make_agent", "load_agent", "list_policies"]

FORMAT_VERSION = 1
CHECKSUMMED = ("model.safetensors", "norm_stats.json")  # the files config.json records SHA-256 digests of
# Agents other than a VLAAgent folder, by the file that marks them: marker -> loader(path, device, load_agent).
LOADERS: dict[str, Callable[..., Any]] = {"residual.json": load_residual_agent}  # a residual on a frozen base in base/


def make_tokenizer(config: BackboneConfig) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: its own path, the pretrained backbone's, the LLM's, or the byte-level one."""
    if config.tokenizer_path:
        path = resolve_shipped_path(config.tokenizer_path)
    elif config.backbone_path:
        path = resolve_shipped_path(config.backbone_path) / "tokenizer"
    else:
        path = config.llm_path
    return AutoTokenizer.from_pretrained(str(path)) if path else build_byte_tokenizer()


def lora_targets(module: nn.Module) -> list[str]:
    """peft's "all-linear" inside `module`: the full name of every nn.Linear (full names, so a Linear
    called "0" in a Sequential never makes peft take "blocks.0" for one), except the projections
    torch's MultiheadAttention holds (it reads their weights directly; SigLIP's unused pooling head)."""
    inside_mha = [name for name, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return sorted(name for name, m in module.named_modules()
                  if isinstance(m, nn.Linear) and not any(name.startswith(f"{mha}.") for mha in inside_mha))


def preprocess_image(img: np.ndarray, config: BackboneConfig, train: bool) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, S, S) in [0, 1]: the recipe's `crop_area` crop (random when training,
    centred otherwise) resized to its `image_size`. A function of the recipe alone, so env wrappers can
    prepare policy inputs without loading the model."""
    return crop_resize([img], config.image_size, config.crop_area, train)[0][0]


class VLAAgent:
    """A policy model with its tokenizer, benchmark adapter and normalization statistics:
    raw benchmark observation in, env-ready action out (`act`), one model call per chunk."""

    model_calls = 0  # forward passes so far; evaluation uses it to tell chunk calls from queue pops

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        recipe: Recipe,
        stats: NormStats | None = None,
        adapter: str = "libero",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.recipe, self.stats = model, tokenizer, recipe, stats
        self.adapter_name, self.adapter = adapter, make_adapter(adapter)
        self.overrides = dict(overrides or {})
        self.views: list[str] = list(recipe.backbone.views)
        if not set(self.views) <= set(self.adapter.views) or recipe.agent.proprio_dim != self.adapter.proprio_dim:
            raise ValueError(f"the recipe's views {self.views} and proprio_dim {recipe.agent.proprio_dim} do not fit adapter "
                             f"{adapter!r} (views {list(self.adapter.views)}, proprio_dim {self.adapter.proprio_dim})")
        self.chunk, self.action_dim = recipe.agent.chunk, recipe.agent.action_dim
        self.lora: dict[str, int] | None = None
        self.training: dict[str, Any] | None = None  # what `train bc` trained it on, for the hub's model card
        self._prompt_cache: dict[str, list[int]] = {}
        self._last_attention = AttentionMaps(heatmaps={})
        self._last_hidden: torch.Tensor | None = None  # (1, T, d) the LLM's last layer at the last model call
        self._warned: set[str] = set()
        self.reset()

    # ------------------------------------------------------------------ control loop
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> VLAAgent:
        self.model.to(device)
        return self

    def reset(self) -> None:
        """Start of an episode: forget queued actions, the ensembling history and the adapter's state."""
        self.adapter.reset()
        self._queue: deque[np.ndarray] = deque()
        self._history: deque[tuple[int, np.ndarray]] = deque()
        self._t = 0
        self._episode_start = True
        self._batch_queues: list[deque[np.ndarray]] = []  # act_batch: one queue per env
        self.batch_attention: list[AttentionMaps] = []  # act_batch: each env's latest maps
        self.batch_queried = np.zeros(0, dtype=bool)  # act_batch: the envs the model ran for at the last call

    def set_n_open_loop(self, n: int) -> None:
        """Execute the first `n` actions of each predicted chunk before the model runs again. A deployment
        choice beside the recipe's value (what the agent was trained and first evaluated with): shorter
        horizons re-read the scene more often at the cost of more model calls. Starts a new episode."""
        chunk = self.recipe.agent.chunk
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= chunk:
            raise ValueError(f"n_open_loop must be an integer from 1 to the agent's chunk ({chunk}), got {n!r}")
        self.recipe = dataclasses.replace(self.recipe, agent=dataclasses.replace(self.recipe.agent, n_open_loop=n))
        self.reset()

    def act(self, raw_obs: Mapping, instruction: str | None = None) -> np.ndarray:
        """One env-ready action. The model runs only when the queue is empty (open-loop chunks, as
        OFT), or every step with temporal ensembling (as ACT: weights exp(-k*i), oldest first)."""
        if self.recipe.agent.temporal_ensemble:
            self._history.append((self._t, self._predict(raw_obs, instruction)))
            while self._history and self._history[0][0] <= self._t - self.chunk:
                self._history.popleft()
            preds = np.stack([chunk[self._t - t0] for t0, chunk in self._history])
            weights = np.exp(-self.recipe.agent.ensemble_k * np.arange(len(preds)))
            self._t += 1
            return self.adapter.action((weights[:, None] * preds).sum(0) / weights.sum())
        if not self._queue:
            self._queue.extend(self._predict(raw_obs, instruction)[: self.recipe.agent.n_open_loop])
        return self.adapter.action(self._queue.popleft())

    @torch.inference_mode()
    def act_batch(self, raw_obs: Mapping, episode_start: np.ndarray | None = None) -> np.ndarray:
        """One env-ready action per env of a vector env's batched observation, (N, A): the same
        actions as N agents' `act`, with one model call for the envs whose chunk queue is empty.
        `episode_start[i]` (as in SB3's `predict`) empties env i's queue first; `reset()` empties all.
        Each env's attention maps are in `batch_attention`; `batch_queried` marks the envs it just ran for."""
        if self.recipe.agent.temporal_ensemble:
            raise NotImplementedError("act_batch runs open-loop chunks; with temporal_ensemble call act() per env")
        envs = [{key: value[i] for key, value in raw_obs.items()} for i in range(len(raw_obs["language_instruction"]))]
        if len(self._batch_queues) != len(envs):
            self._batch_queues = [deque() for _ in envs]
            self.batch_attention = [AttentionMaps(heatmaps={}) for _ in envs]
        for i in np.flatnonzero(episode_start) if episode_start is not None else ():
            self._batch_queues[i].clear()
        due = [i for i, queue in enumerate(self._batch_queues) if not queue]
        self.batch_queried = np.isin(np.arange(len(envs)), due)
        if due:
            self.model_calls += 1
            items = []
            for i in due:
                obs = self.adapter.observation(envs[i])
                proprio = obs.proprio if self.stats is None else self.stats.normalize_proprio(obs.proprio)
                items.append({"images": obs.images, "proprio": np.asarray(proprio, np.float32),
                              "instruction": obs.instruction, "task_index": obs.task_id})
            self.model.eval()
            out = self.model.predict(self.collate(items, train=False))
            actions = out.actions.float().cpu().numpy()
            actions = actions if self.stats is None else self.stats.unnormalize_action(actions).astype(np.float32)
            for row, i in enumerate(due):
                self._batch_queues[i].extend(actions[row, : self.recipe.agent.n_open_loop])
                self.batch_attention[i] = AttentionMaps(
                    {v: a[row].float().cpu().numpy() for v, a in out.attention.items()},
                    {name: {v: m[row].cpu().numpy() for v, m in per_view.items()}
                     for name, per_view in getattr(out, "masks", {}).items()})
        return np.stack([self.adapter.action(queue.popleft()) for queue in self._batch_queues])

    def act_chunk(self, raw_obs: Mapping, instruction: str | None = None) -> np.ndarray:
        """The whole predicted chunk, env-ready, (T, A)."""
        return np.stack([self.adapter.action(a) for a in self._predict(raw_obs, instruction)])

    @property
    def policy_name(self) -> str:
        """The registered name this agent is made by: "oft", or "oft+dtp" when DTP wraps it."""
        return f"{self.recipe.policy}+dtp" if isinstance(self.model, DTPPolicy) else self.recipe.policy

    @property
    def last_attention(self) -> AttentionMaps:
        return self._last_attention

    @torch.inference_mode()
    def _predict(self, raw_obs: Mapping, instruction: str | None) -> np.ndarray:
        """Raw observation -> un-normalized canonical chunk (T, A); records the attention maps."""
        self.model_calls += 1
        try:
            obs: Observation = self.adapter.observation(raw_obs, instruction)
        except ObservationError as e:
            raise ObservationError(f"this agent was made with adapter {self.adapter_name!r}, which cannot read "
                                   f"this observation: {e}") from e
        self._check_unfamiliar(obs)
        proprio = obs.proprio if self.stats is None else self.stats.normalize_proprio(obs.proprio)
        item = {"images": obs.images, "proprio": np.asarray(proprio, np.float32), "instruction": obs.instruction,
                "task_index": obs.task_id}
        self.model.eval()
        out = self.model.predict(self.collate([item], train=False))
        masks = getattr(out, "masks", {})  # name -> view -> (B, h, w), from wrappers such as DTP
        self._last_attention = AttentionMaps(
            {v: a[0].float().cpu().numpy() for v, a in out.attention.items()},
            {name: {v: m[0].cpu().numpy() for v, m in per_view.items()} for name, per_view in masks.items()},
        )
        self._last_hidden = out.backbone.hidden_states[-1] if out.backbone is not None else None
        actions = out.actions[0].float().cpu().numpy()
        return actions if self.stats is None else self.stats.unnormalize_action(actions).astype(np.float32)

    def _check_unfamiliar(self, obs: Observation) -> None:
        """Valid inputs unlike the training data get one warning each per agent: the policy acts on
        them, but what it does there was never trained. The proprio is checked at the start of an
        episode, where the robot is in its initial pose: later a failing episode may drift anywhere,
        while a unit, frame or quaternion-order error is there from the first step."""
        size = self.recipe.backbone.image_size
        for view in self.views:
            h, w = obs.images[view].shape[:2]
            if h != w:
                self._warn_once(f"square {view}", f"the {view!r} image is {h}x{w} px; it is stretched to the policy's "
                                                  f"square {size}x{size} input. Crop it to a square to keep its proportions")
        far = self.stats.proprio.far_outside(obs.proprio) if self.stats is not None and self._episode_start else []
        self._episode_start = False
        if len(far):
            p = self.stats.proprio
            ranges = ", ".join(f"{i}: {obs.proprio[i]:.4g} not in [{p.min[i]:.4g}, {p.max[i]:.4g}]" for i in far)
            self._warn_once("proprio", f"proprio far outside the range the agent was trained on (dim {ranges}); the "
                                       "policy sees it clipped to that range. Check the units, the frame and the "
                                       "quaternion order (x, y, z, w)")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)

    # ------------------------------------------------------------------ preprocessing
    def prompt_ids(self, instruction: str) -> list[int]:
        """Tokenized prompt, cached per instruction (act() is a hot path)."""
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            text = self.recipe.agent.prompt_template.format(instruction=instruction.strip().rstrip(".").lower())
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.recipe.agent.add_bos:
                ids = [self.tokenizer.bos_token_id, *ids]
            self._prompt_cache[instruction] = ids
        return ids

    @property
    def last_pooled(self) -> np.ndarray | None:
        """(d,) the language model's last hidden state averaged over the sequence at the last model call:
        what a residual policy observes (`ResidualAgent`); None before one, or without a language model.
        Pooled when asked, so plain acting pays nothing for it."""
        if self._last_hidden is None:
            return None
        return self._last_hidden.float().mean(dim=1)[0].cpu().numpy()

    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts as the model reads them: (input_ids, attention_mask), left-padded (see `left_padded`)."""
        return left_padded([self.prompt_ids(s) for s in instructions], self.tokenizer.pad_token_id)

    def collate(self, items: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        """Dataset items (or one observation) -> the model batch, on the agent's device."""
        frames = [it["images"][v] for it in items for v in self.views]
        pixels, boxes = crop_resize(frames, self.recipe.backbone.image_size, self.recipe.backbone.crop_area, train)
        images = pixels.reshape(len(items), len(self.views), *pixels.shape[1:])
        input_ids, attention_mask = self.tokenize([it["instruction"] for it in items])
        batch = {
            "images": images,
            "proprio": torch.as_tensor(np.stack([it["proprio"] for it in items]), dtype=torch.float32),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if items[0].get("task_index") is not None:  # VAT's task-id conditioning
            batch["task_index"] = torch.as_tensor([it["task_index"] for it in items], dtype=torch.long)
        if "target_uv" in items[0]:  # privileged grounding targets, mapped into the crop the policy sees
            uv = torch.as_tensor(np.stack([[it["target_uv"][v] for v in self.views] for it in items]), dtype=torch.float32)
            batch["target_uv"] = uv_in_crop(uv, boxes.view(len(items), len(self.views), 4))
            batch["target_offset"] = torch.as_tensor(np.stack([it["target_offset"] for it in items]), dtype=torch.float32)
        if "actions" in items[0]:
            batch["actions"] = torch.as_tensor(np.stack([it["actions"] for it in items]), dtype=torch.float32)
            batch["action_is_pad"] = torch.as_tensor(np.stack([it["action_is_pad"] for it in items]), dtype=torch.bool)
        device = self.device
        return {k: v.to(device) for k, v in batch.items()}

    # ------------------------------------------------------------------ parameters and LoRA
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)

    def enable_lora(self, rank: int, alpha: int, scope: str = "vlm") -> None:
        """LoRA (peft, gaussian init) on every linear layer of the whole VLM, as VLA-Adapter's
        `finetune.py` does (`target_modules="all-linear"` on the VLA): the language model, the vision
        towers and the projector, whose own weights are then frozen. Action queries, policy, heads and
        the proprio projector stay fully trainable, and so do FiLM and DeepVision's vision expert and
        bridges (its paper trains them end to end). scope="llm" is what agents saved before issue 37
        used: LoRA on the language model only, the vision towers frozen, the projector fully trained."""
        from peft import LoraConfig, inject_adapter_in_model

        if scope not in ("vlm", "llm"):
            raise ValueError(f"LoRA scope must be 'vlm' or 'llm', got {scope!r}")
        require_language_model(self.model, "LoRA (it adapts the VLM's language model)")
        backbone = self.model.backbone
        adapted = [backbone.llm.model] if scope == "llm" else [backbone.llm.model, backbone.vision, backbone.projector]
        for module in adapted:
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                                target_modules=lora_targets(module))
            inject_adapter_in_model(config, module)
            for name, p in module.named_parameters():
                p.requires_grad = "lora_" in name
        if scope == "llm":
            for p in backbone.vision.parameters():
                p.requires_grad = False
        self.lora = {"rank": rank, "alpha": alpha, "scope": scope}

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "policy": self.recipe.policy,
            "scale": self.recipe.scale,
            "recipe": self.recipe.to_dict(),
            "overrides": self.overrides,
            "adapter": self.adapter_name,
            "chunk": self.chunk,
            "action_dim": self.action_dim,
            "proprio_dim": self.recipe.agent.proprio_dim,
            "hf_configs": self.model.hf_configs(),
            "lora": self.lora,
            "dtp": self.model.settings() if isinstance(self.model, DTPPolicy) else None,
            "has_norm_stats": self.stats is not None,
            "training": self.training,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the agent folder. An existing folder is replaced in one swap that a kill cannot half-do,
        and its other entries (a training checkpoint/, your own files) stay (`vla_agents.atomic`).
        config.json records the SHA-256 of the weights and statistics, which `load_agent` checks."""
        return replace_folder(path, self.write_to)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the agent with a generated model card to the hub repository `repo_id` (created if
        needed); `kwargs` as `vla_agents.hub.push_to_hub`. Returns the commit's URL."""
        from vla_agents.hub import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save_pretrained(Path(tmp) / repo_id.split("/")[-1]), repo_id, **kwargs)

    def write_to(self, folder: Path) -> None:
        """Fill the empty `folder` with the agent's files, as part of a larger folder swapped in whole
        (a training checkpoint); `save_pretrained` is the one to call otherwise."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "norm_stats.json").write_text(json.dumps(self.stats.to_dict() if self.stats else None, indent=2))
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        config = {**self.config(), "sha256": digests(folder, list(CHECKSUMMED))}
        (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))


def make_agent(
    policy: str, scale: str = "tiny", adapter: str = "libero", stats: NormStats | None = None, **overrides: Any
) -> VLAAgent:
    """A fresh agent from a recipe; `overrides` replace recipe keys (e.g. llm_path=..., gate_mode=...).
    A wrapper suffix ("oft+dtp") builds the base agent and wraps it, with settings from the
    wrapper's recipe (`policies/dtp.yaml`) updated by the overrides that name its keys."""
    policy, scale = split_name(policy, scale)
    base, wrapper = split_wrapper(policy)
    if wrapper:
        settings, overrides = load_wrapper_recipe(wrapper, overrides)
        return WRAPPERS[wrapper](make_agent(base, scale, adapter, stats, **overrides), **settings)
    return agent_from_recipe(load_recipe(policy, scale, overrides), adapter, stats, overrides)


def agent_from_recipe(recipe: Recipe, adapter: str = "libero", stats: NormStats | None = None,
                      overrides: dict[str, Any] | None = None) -> VLAAgent:
    """A fresh agent of a loaded recipe, its views, proprio_dim and action_dim fitted to `adapter`
    (`overrides`: the keys the recipe was loaded with, recorded in the saved agent)."""
    overrides = fit_recipe(adapter, overrides or {})
    recipe = recipe.replace(**{k: overrides[k] for k in ("views", "proprio_dim", "action_dim")})
    if stats is not None and stats.action.dim != recipe.agent.action_dim:
        raise ValueError(f"action-dimension mismatch: recipe action_dim={recipe.agent.action_dim}, stats have {stats.action.dim}")
    model = build_model(recipe)  # first: a missing or mismatched pretrained backbone is named before anything else
    tokenizer = make_tokenizer(recipe.backbone)
    llm = model.language_model
    vocab, where = (llm.config.vocab_size, "its language model's") if llm is not None else (recipe.backbone.vocab_size, "the recipe's")
    if vocab and len(tokenizer) > vocab:
        b = recipe.backbone
        source = b.tokenizer_path or b.backbone_path or b.llm_path or "the byte-level tokenizer"
        raise ValueError(f"tokenizer ({source}) has {len(tokenizer)} tokens but {where} vocabulary has {vocab}: "
                         "another tokenizer than the one the model was trained with")
    return VLAAgent(model, tokenizer, recipe, stats, adapter, overrides)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt agent file {path}: {e}") from e


def _read_stats(path: Path, config: dict[str, Any]) -> NormStats | None:
    """norm_stats.json, validated; `null` only from an agent that config.json says was saved without any."""
    file = path / "norm_stats.json"
    stats = _read_json(file)
    if stats is None and config.get("has_norm_stats") is False:
        warnings.warn(f"{path} was saved without normalization statistics: its actions come out in the policy's "
                      "normalized units", stacklevel=3)
        return None
    if stats is None:
        raise ValueError(f"{file} is null; expected the 'action' and 'proprio' statistics of the agent's training "
                         "data, without which its actions would come out unscaled")
    try:
        return NormStats.from_dict(stats)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def _read_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"tokenizer folder {folder} has no tokenizer.json or tokenizer_config.json; expected the "
                         "files save_pretrained writes there")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the tokenizer in {folder}: {e}") from e


def load_agent(path: str | Path, device: str | torch.device | None = None, revision: str | None = None) -> VLAAgent:
    """Load an agent folder written by `save_pretrained`, or a hub id ("org/name", at `revision`) through
    the Hugging Face cache (`vla_agents.hub`). A bad folder raises FileNotFoundError or
    ValueError naming the file, the key and what was expected; weights or statistics that differ
    from the SHA-256 digests in config.json are refused (folders saved without digests load as before)."""
    local = complete_folder(path)
    if not local.is_dir() and looks_like_hub_id(str(path)):
        local = download_agent(str(path), revision)
    elif revision is not None:
        raise ValueError(f"revision {revision!r} is for hub ids; {path} is a folder here")
    path = local
    if not path.is_dir():
        raise FileNotFoundError(f"agent folder not found: {path}")
    for marker, loader in LOADERS.items():
        if (path / marker).exists():
            return loader(path, device, load_agent)
    for name in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer"):
        if not (path / name).exists():
            raise FileNotFoundError(f"agent folder {path} is missing {name}")
    config_path = path / "config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict) or "recipe" not in config or "policy" not in config:
        raise ValueError(f"corrupt agent file {config_path}: expected an object with 'policy' and 'recipe'")
    if not isinstance(config["recipe"], dict):
        raise ValueError(f"corrupt agent file {config_path}: 'recipe' must be an object, got {config['recipe']!r:.80}")
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {config['format_version']}; this vla-agents reads up to "
                         f"{FORMAT_VERSION}: upgrade vla-agents")
    try:
        check_policy(config["policy"])
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from e
    verify_digests(path, config.get("sha256"), "config.json")
    recipe = parse_recipe(config["recipe"], str(config_path))
    stats = _read_stats(path, config)

    dims = {"config.json action_dim": config.get("action_dim"), "recipe action_dim": recipe.agent.action_dim}
    if stats is not None:
        dims["norm_stats.json action"] = stats.action.dim
        if stats.proprio.dim != recipe.agent.proprio_dim:
            raise ValueError(f"proprio-dimension mismatch in {path}: recipe proprio_dim={recipe.agent.proprio_dim}, "
                             f"norm_stats.json proprio has {stats.proprio.dim}")
    if len(set(dims.values())) > 1:
        raise ValueError(f"action-dimension mismatch in {path}: " + ", ".join(f"{k}={v}" for k, v in dims.items()))

    tokenizer = _read_tokenizer(path / "tokenizer")
    try:
        model = build_model(recipe, config.get("hf_configs"))
        agent = VLAAgent(model, tokenizer, recipe, stats, config.get("adapter", "libero"), config.get("overrides"))
        agent.training = config.get("training")
        lora = config.get("lora")
        if lora:
            if not (isinstance(lora, dict) and {"rank", "alpha"} <= set(lora)):
                raise ValueError(f"'lora' must be an object with 'rank' and 'alpha', got {lora!r}")
            agent.enable_lora(lora["rank"], lora["alpha"], lora.get("scope", "llm"))  # no scope: saved before issue 37
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path}: {e}") from e
    state = read_weights(path / "model.safetensors")
    expected = model.state_dict()
    bad = [f"{k}: weights {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
           for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if bad:
        raise ValueError(f"weights in {path / 'model.safetensors'} do not match config (action_dim={recipe.agent.action_dim}); "
                         "action-dimension or architecture mismatch: " + "; ".join(bad[:5]))
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights in {path / 'model.safetensors'} do not match the architecture: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state)
    if config.get("dtp"):
        known = sorted(load_wrapper_recipe("dtp", {})[0])
        unknown = sorted(set(config["dtp"]) - set(known)) if isinstance(config["dtp"], dict) else config["dtp"]
        if unknown:
            raise ValueError(f"{config_path}: 'dtp' has unknown setting(s) {unknown}; expected some of {known}")
        try:
            agent = DTP(agent, **config["dtp"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{config_path}: 'dtp': {e}") from e
    if device is not None:
        agent.to(device)
    return agent
