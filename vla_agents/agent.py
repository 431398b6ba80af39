"""`VLAAgent`: a policy model wrapped as a Gymnasium-style agent.

Raw benchmark observation in, env-ready action out. The agent owns everything between the two:
the benchmark adapter, normalization statistics, image preprocessing (resize; centre crop at test
time when trained with random crops), prompt tokenization, and the action queue that executes each
predicted chunk open-loop (or ACT-style temporal ensembling). One folder holds a whole agent:
`model.safetensors`, `config.json`, `norm_stats.json` and the tokenizer files.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vla_agents.adapters import ObservationError, fit_recipe, make_adapter
from vla_agents.data.images import crop_resize, uv_in_crop
from vla_agents.data.normalization import NormStats
from vla_agents.models.backbone_folder import resolve_backbone_path
from vla_agents.models.backbones import build_byte_tokenizer, left_padded
from vla_agents.models.dtp import DTP, DTPPolicy
from vla_agents.policies import (
    WRAPPERS, build_model, check_policy, list_policies, load_recipe, load_wrapper_recipe, split_name, split_wrapper,
)
from vla_agents.types import AttentionMaps, Observation

__all__ = ["VLAAgent", "make_agent", "load_agent", "list_policies"]

FORMAT_VERSION = 1


def make_tokenizer(recipe: dict[str, Any]) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: its own path, the pretrained backbone's, the LLM's, or the byte-level one."""
    path = recipe.get("tokenizer_path")
    if not path and recipe.get("backbone_path"):
        path = resolve_backbone_path(recipe["backbone_path"]) / "tokenizer"
    path = path or recipe.get("llm_path")
    return AutoTokenizer.from_pretrained(str(path)) if path else build_byte_tokenizer()


def lora_targets(module: nn.Module) -> list[str]:
    """peft's "all-linear": every nn.Linear inside the language model."""
    return sorted({name.split(".")[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


def preprocess_image(img: np.ndarray, recipe: dict[str, Any], train: bool) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, S, S) in [0, 1]: the recipe's `crop_area` crop (random when training,
    centred otherwise) resized to its `image_size`. A function of the recipe alone, so env wrappers can
    prepare policy inputs without loading the model."""
    return crop_resize([img], recipe["image_size"], recipe.get("crop_area", 1.0), train)[0][0]


class VLAAgent:
    """A policy model with its tokenizer, benchmark adapter and normalization statistics:
    raw benchmark observation in, env-ready action out (`act`), one model call per chunk."""

    model_calls = 0  # forward passes so far; evaluation uses it to tell chunk calls from queue pops

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        recipe: dict[str, Any],
        stats: NormStats | None = None,
        adapter: str = "libero",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.recipe, self.stats = model, tokenizer, recipe, stats
        self.adapter_name, self.adapter = adapter, make_adapter(adapter)
        self.overrides = dict(overrides or {})
        self.views: list[str] = list(recipe["views"])
        if not set(self.views) <= set(self.adapter.views) or recipe["proprio_dim"] != self.adapter.proprio_dim:
            raise ValueError(f"the recipe's views {self.views} and proprio_dim {recipe['proprio_dim']} do not fit adapter "
                             f"{adapter!r} (views {list(self.adapter.views)}, proprio_dim {self.adapter.proprio_dim})")
        self.chunk, self.action_dim = recipe["chunk"], recipe["action_dim"]
        self.lora: dict[str, int] | None = None
        self._prompt_cache: dict[str, list[int]] = {}
        self._last_attention = AttentionMaps(heatmaps={})
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

    def act(self, raw_obs: Mapping, instruction: str | None = None) -> np.ndarray:
        """One env-ready action. The model runs only when the queue is empty (open-loop chunks, as
        OFT), or every step with temporal ensembling (as ACT: weights exp(-k*i), oldest first)."""
        if self.recipe.get("temporal_ensemble"):
            self._history.append((self._t, self._predict(raw_obs, instruction)))
            while self._history and self._history[0][0] <= self._t - self.chunk:
                self._history.popleft()
            preds = np.stack([chunk[self._t - t0] for t0, chunk in self._history])
            weights = np.exp(-self.recipe["ensemble_k"] * np.arange(len(preds)))
            self._t += 1
            return self.adapter.action((weights[:, None] * preds).sum(0) / weights.sum())
        if not self._queue:
            self._queue.extend(self._predict(raw_obs, instruction)[: self.recipe["n_open_loop"]])
        return self.adapter.action(self._queue.popleft())

    def act_chunk(self, raw_obs: Mapping, instruction: str | None = None) -> np.ndarray:
        """The whole predicted chunk, env-ready, (T, A)."""
        return np.stack([self.adapter.action(a) for a in self._predict(raw_obs, instruction)])

    @property
    def policy_name(self) -> str:
        """The registered name this agent is made by: "oft", or "oft+dtp" when DTP wraps it."""
        return f"{self.recipe['policy']}+dtp" if isinstance(self.model, DTPPolicy) else self.recipe["policy"]

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
        actions = out.actions[0].float().cpu().numpy()
        return actions if self.stats is None else self.stats.unnormalize_action(actions).astype(np.float32)

    # ------------------------------------------------------------------ preprocessing
    def prompt_ids(self, instruction: str) -> list[int]:
        """Tokenized prompt, cached per instruction (act() is a hot path)."""
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            text = self.recipe["prompt_template"].format(instruction=instruction.strip().rstrip(".").lower())
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.recipe.get("add_bos"):
                ids = [self.tokenizer.bos_token_id, *ids]
            self._prompt_cache[instruction] = ids
        return ids

    def _tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_padded([self.prompt_ids(s) for s in instructions], self.tokenizer.pad_token_id)

    def collate(self, items: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        """Dataset items (or one observation) -> the model batch, on the agent's device."""
        frames = [it["images"][v] for it in items for v in self.views]
        pixels, boxes = crop_resize(frames, self.recipe["image_size"], self.recipe.get("crop_area", 1.0), train)
        images = pixels.reshape(len(items), len(self.views), *pixels.shape[1:])
        input_ids, attention_mask = self._tokenize([it["instruction"] for it in items])
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

    def enable_lora(self, rank: int, alpha: int) -> None:
        """LoRA (peft, gaussian init) on every linear layer of the language model; the LLM and the
        vision towers are frozen, while action queries, heads and projectors stay trainable.
        DeepVision's vision expert is not a tower here and stays trainable: its paper trains the
        expert and its bridges end to end."""
        from peft import LoraConfig, inject_adapter_in_model

        backbone = self.model.backbone
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                            target_modules=lora_targets(backbone.llm.model))
        inject_adapter_in_model(config, backbone.llm.model)
        for name, p in backbone.llm.named_parameters():
            p.requires_grad = "lora_" in name
        for p in backbone.vision.parameters():
            p.requires_grad = False
        self.lora = {"rank": rank, "alpha": alpha}

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "policy": self.recipe["policy"],
            "scale": self.recipe["scale"],
            "recipe": self.recipe,
            "overrides": self.overrides,
            "adapter": self.adapter_name,
            "chunk": self.chunk,
            "action_dim": self.action_dim,
            "proprio_dim": self.recipe["proprio_dim"],
            "hf_configs": self.model.backbone.hf_configs(),
            "lora": self.lora,
            "dtp": self.model.settings() if isinstance(self.model, DTPPolicy) else None,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the agent folder atomically: a temp folder beside it, then swapped into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.config(), indent=2, default=str))
            (tmp / "norm_stats.json").write_text(json.dumps(self.stats.to_dict() if self.stats else None, indent=2))
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            if path.exists():
                for entry in path.iterdir():  # keep what else lives there (e.g. a training checkpoint/)
                    if not (tmp / entry.name).exists():
                        entry.rename(tmp / entry.name)
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def make_agent(
    policy: str, scale: str = "tiny", adapter: str = "libero", stats: NormStats | None = None, **overrides: Any
) -> VLAAgent:
    """A fresh agent from a recipe; `overrides` replace recipe keys (e.g. llm_path=..., gate_mode=...).
    A wrapper suffix ("oft+dtp") builds the base agent and wraps it, with settings from the
    wrapper's recipe (`policies/dtp.yaml`) updated by the overrides that name its keys."""
    policy, scale = split_name(policy, scale)
    overrides = fit_recipe(adapter, overrides)
    base, wrapper = split_wrapper(policy)
    if wrapper:
        settings, overrides = load_wrapper_recipe(wrapper, overrides)
        return WRAPPERS[wrapper](make_agent(base, scale, adapter, stats, **overrides), **settings)
    recipe = load_recipe(policy, scale, overrides)
    if stats is not None and stats.action.dim != recipe["action_dim"]:
        raise ValueError(f"action-dimension mismatch: recipe action_dim={recipe['action_dim']}, stats have {stats.action.dim}")
    model = build_model(recipe)  # first: a missing or mismatched pretrained backbone is named before anything else
    tokenizer = make_tokenizer(recipe)
    llm = getattr(getattr(model, "backbone", None), "llm", None)
    vocab, where = (llm.config.vocab_size, "its language model's") if llm is not None else (recipe.get("vocab_size"), "the recipe's")
    if vocab and len(tokenizer) > vocab:
        source = recipe.get("tokenizer_path") or recipe.get("backbone_path") or recipe.get("llm_path") or "the byte-level tokenizer"
        raise ValueError(f"tokenizer ({source}) has {len(tokenizer)} tokens but {where} vocabulary has {vocab}: "
                         "another tokenizer than the one the model was trained with")
    return VLAAgent(model, tokenizer, recipe, stats, adapter, overrides)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt agent file {path}: {e}") from e


def load_agent(path: str | Path, device: str | torch.device | None = None) -> VLAAgent:
    """Load an agent folder written by `save_pretrained`, with clear errors for bad folders."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"agent folder not found: {path}")
    if (path / "residual.json").exists():  # an RL residual on a frozen base agent saved in path/base
        from vla_agents.train.residual import load_residual_agent

        return load_residual_agent(path, device)
    for name in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer"):
        if not (path / name).exists():
            raise FileNotFoundError(f"agent folder {path} is missing {name}")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict) or "recipe" not in config or "policy" not in config:
        raise ValueError(f"corrupt agent file {path / 'config.json'}: expected an object with 'policy' and 'recipe'")
    check_policy(config["policy"])
    recipe = config["recipe"]
    stats_dict = _read_json(path / "norm_stats.json")
    stats = NormStats.from_dict(stats_dict) if stats_dict else None

    dims = {"config.json action_dim": config.get("action_dim"), "recipe action_dim": recipe.get("action_dim")}
    if stats is not None:
        dims["norm_stats.json action"] = stats.action.dim
    if len(set(dims.values())) > 1:
        raise ValueError(f"action-dimension mismatch in {path}: " + ", ".join(f"{k}={v}" for k, v in dims.items()))

    model = build_model(recipe, config.get("hf_configs"))
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    agent = VLAAgent(model, tokenizer, recipe, stats, config.get("adapter", "libero"), config.get("overrides"))
    if config.get("lora"):
        agent.enable_lora(config["lora"]["rank"], config["lora"]["alpha"])
    state = load_file(str(path / "model.safetensors"))
    expected = model.state_dict()
    bad = [f"{k}: weights {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
           for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if bad:
        raise ValueError(f"weights in {path / 'model.safetensors'} do not match config (action_dim={recipe['action_dim']}); "
                         "action-dimension or architecture mismatch: " + "; ".join(bad[:5]))
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights in {path / 'model.safetensors'} do not match the architecture: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state)
    if config.get("dtp"):
        agent = DTP(agent, **config["dtp"])
    if device is not None:
        agent.to(device)
    return agent
