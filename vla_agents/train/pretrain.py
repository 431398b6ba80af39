"""`vla-agents pretrain`: the tiny counterpart of the VLM a paper recipe loads.

A tiny recipe's ViT and language model would otherwise start from random weights and meet the world
through a few hundred demonstrations, too few to learn which cube a colour word names. Pretraining
them on the grounding corpus (thousands of scenes, questions the simulator answers exactly) gives
behaviour cloning a backbone that already finds the named object; the result is a backbone folder
(`models.backbone_folder`) that tiny recipes name in `backbone_path` as paper recipes name a hub id.

The batch order is a function of (seed, step) and the checkpoint holds the optimizer, scheduler and
RNG states, so `resume=True` continues exactly; nothing in a checkpoint is unpickled.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup

from vla_agents.atomic import write_file
from vla_agents.data.corpus import Corpus, read_corpus
from vla_agents.data.images import crop_resize, uv_in_crop
from vla_agents.models.backbone_folder import VISION_KEYS, save_backbone
from vla_agents.models.backbones import build_backbone, build_byte_tokenizer, build_word_tokenizer, left_padded
from vla_agents.models.grounding import OFFSET_UNIT, GroundingModel, grounding_loss, grounding_metrics
from vla_agents.policies import list_policies, load_recipe
from vla_agents.progress import LoggedProgress
from vla_agents.recipe import BackboneConfig
from vla_agents.resources import resource_dir
from vla_agents.train.bc import batch_indices, cpu_autocast_dtype
from vla_agents.train.checkpoint import CHECKPOINT, write_checkpoint

TOKENIZERS = ("word", "byte")
HELD_OUT = 0.05  # the last 5% of scenes are never trained on; metrics are measured on their questions


@dataclass
class PretrainResult:
    folder: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def vocabulary(corpus: Corpus) -> list[str]:
    """Every word of the corpus's questions, of the embedded suite's instructions and of the tiny
    recipes' prompt templates: the words the tiny policies will read."""
    import yaml

    from vla_agents.models.backbones import WORD_PATTERN

    texts = list(set(corpus.qa_question))
    suite = yaml.safe_load((resource_dir("envs") / "embedded.yaml").read_text())["tasks"]
    texts += [t["instruction"].format(target=c) for t in suite.values() for c in corpus.objects]
    texts += [load_recipe(p, "tiny").agent.prompt_template for p in list_policies()]
    return sorted({w.lower() for text in texts for w in WORD_PATTERN.findall(text.replace("{instruction}", " "))})


class CorpusBatches:
    """Corpus questions -> model batches: images in policy orientation, cropped and resized as the
    policies' recipe does, answers mapped into the crop (a patch cropped away is "not in view")."""

    def __init__(self, corpus: Corpus, tokenizer: Any, config: BackboneConfig, grid: tuple[int, int], seed: int) -> None:
        self.corpus, self.tokenizer, self.config, self.grid = corpus, tokenizer, config, grid
        held_out = corpus.qa_scene >= int(corpus.num_scenes * (1 - HELD_OUT))
        self.train_ids, self.eval_ids = np.flatnonzero(~held_out), np.flatnonzero(held_out)
        templates = sorted({load_recipe(p, "tiny").agent.prompt_template for p in list_policies()})
        # half the questions are wrapped in a policy's prompt template, so the colour word is found in either context
        rng = np.random.default_rng(seed)
        self.prompts = [q if rng.random() < 0.5 else str(rng.choice(templates)).format(instruction=q) for q in corpus.qa_question]
        self._ids: dict[str, list[int]] = {}

    def _prompt_ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = [self.tokenizer.bos_token_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        return self._ids[text]

    def __call__(self, questions: np.ndarray, train: bool) -> dict[str, torch.Tensor]:
        c, views = self.corpus, self.corpus.views
        scenes, objects = c.qa_scene[questions], c.qa_object[questions].astype(np.int64)
        frames = [c.images[v][s][::-1, ::-1] for s in scenes for v in views]
        pixels, boxes = crop_resize(frames, self.config.image_size, self.config.crop_area, train)
        b, n_views = len(questions), len(views)
        known = objects >= 0
        obj = np.where(known, objects, 0)
        uv = uv_in_crop(torch.from_numpy(c.uv[scenes, obj]), boxes.view(b, n_views, 4))
        inside = torch.from_numpy(c.in_view[scenes, obj] & known[:, None]) & (uv >= 0).all(-1) & (uv < 1).all(-1)
        h, w = self.grid
        cells = (uv[..., 1].clamp(0, 1 - 1e-6) * h).long() * w + (uv[..., 0].clamp(0, 1 - 1e-6) * w).long()
        ids, mask = left_padded([self._prompt_ids(self.prompts[q]) for q in questions], self.tokenizer.pad_token_id)
        patch_objects = self.patch_objects(scenes, boxes.view(b, n_views, 4))
        offset = (c.pos[scenes, obj] - c.eef_pos[scenes]) / OFFSET_UNIT
        return {
            "images": pixels.view(b, n_views, *pixels.shape[1:]), "input_ids": ids, "attention_mask": mask,
            "kind": torch.from_numpy(c.qa_kind[questions].astype(np.int64)),
            "cell": torch.where(inside, cells, h * w), "uv": uv.float(),
            "offset": torch.from_numpy(offset.astype(np.float32)),
            "object": torch.from_numpy(obj), "answer": torch.from_numpy(c.qa_answer[questions].astype(np.int64)),
            "patch_objects": patch_objects,
        }

    def patch_objects(self, scenes: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
        """(B, V, h*w) long: 1 + the index of the object whose centre falls in each patch of the crop, 0 for none."""
        c, (h, w) = self.corpus, self.grid
        labels = torch.zeros(len(scenes), len(c.views), h * w, dtype=torch.long)
        uv = uv_in_crop(torch.from_numpy(c.uv[scenes]), boxes[:, None])  # (B, K, V, 2)
        seen = torch.from_numpy(c.in_view[scenes]) & (uv >= 0).all(-1) & (uv < 1).all(-1)
        cells = (uv[..., 1].clamp(0, 1 - 1e-6) * h).long() * w + (uv[..., 0].clamp(0, 1 - 1e-6) * w).long()
        for i, k, v in seen.nonzero().tolist():
            labels[i, v, cells[i, k, v]] = k + 1
        return labels


def backbone_config(base: str, tokenizer_size: int, overrides: dict[str, Any] | None) -> BackboneConfig:
    """The backbone keys (vision tower, language model) of the recipe `base`, which the pretrained backbone takes."""
    recipe = load_recipe(*base.rsplit("-", 1), {**(overrides or {}), "backbone_path": None, "film": False})
    return dataclasses.replace(recipe.backbone, vocab_size=tokenizer_size)


@torch.no_grad()
def evaluate_grounding(model: GroundingModel, batches: CorpusBatches, limit: int = 2000, batch_size: int = 64) -> dict[str, float]:
    """Held-out accuracy: mean of each `grounding_metrics` list over up to `limit` held-out questions."""
    model.eval()
    pooled: dict[str, list[float]] = {}
    ids = batches.eval_ids[:limit]
    for start in range(0, len(ids), batch_size):
        batch = batches(ids[start : start + batch_size], train=False)
        for name, values in grounding_metrics(model(batch), batch).items():
            pooled.setdefault(name, []).extend(values)
    model.train()
    return {name: float(np.mean(values)) for name, values in pooled.items()}


def pretrain_backbone(
    corpus: str | Path, out_dir: str | Path, steps: int = 12000, batch_size: int = 32, lr: float = 5e-4,
    warmup_steps: int = 200, seed: int = 0, base: str = "oft-tiny", tokenizer: str = "word",
    overrides: dict[str, Any] | None = None, save_every: int = 500, eval_every: int = 0, resume: bool = False,
    progress: bool = True, causal: bool = True,
) -> PretrainResult:
    """Pretrain `base`'s tiny backbone on a grounding corpus; `out_dir` becomes the backbone folder (with the
    resumable `checkpoint/` and `pretrain_log.jsonl` beside the backbone's files)."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT
    data = read_corpus(corpus)
    tok = build_word_tokenizer(vocabulary(data)) if tokenizer == "word" else build_byte_tokenizer()
    config = backbone_config(base, len(tok), overrides)
    if config.vision != "tiny_vit" or config.llm_path:
        raise ValueError(f"pretrain builds a tiny backbone from scratch; {base} names vision={config.vision!r}, "
                         f"llm_path={config.llm_path!r}")
    if data.attrs["image_size"] < config.image_size:
        raise ValueError(f"{data.path}: corpus images are {data.attrs['image_size']} px, the recipe needs {config.image_size}")
    torch.manual_seed(seed)
    model = GroundingModel(build_backbone(config), num_objects=len(data.objects), causal=causal)
    batches = CorpusBatches(data, tok, config, model.backbone.grid, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    start, history = 0, []
    if resume and (checkpoint / "trainer.json").is_file():
        start, history = _load_checkpoint(checkpoint, model, optimizer, scheduler, seed, tokenizer, base)
    elif resume:
        print(f"--resume: no checkpoint in {checkpoint}, starting from step 0")
    autocast = cpu_autocast_dtype()
    log = out_dir / "pretrain_log.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  {task.fields[sps]:.0f} samples/s"), TimeRemainingColumn()]
    model.train()
    with LoggedProgress(*columns, disable=not progress) as bar:
        task = bar.add_task("pretrain", total=steps, completed=start, loss=float("nan"), sps=0.0)
        for step in range(start, steps):
            tic = time.perf_counter()
            batch = batches(batches.train_ids[batch_indices(step, len(batches.train_ids), batch_size, seed)], train=True)
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                out = model(batch)
            loss, terms = grounding_loss(out, batch)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, "loss": loss.item(), **terms, "lr": scheduler.get_last_lr()[0]}
            if eval_every and (step + 1) % eval_every == 0:
                record |= {f"eval_{k}": v for k, v in evaluate_grounding(model, batches, limit=500).items()}
            history.append(record)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(task, advance=1, loss=record["loss"], sps=batch_size / (time.perf_counter() - tic))
            if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                _save_checkpoint(out_dir, model, optimizer, scheduler, step + 1, seed, tokenizer, base)
    metrics = evaluate_grounding(model, batches)
    provenance = {
        "corpus": {"path": str(data.path), "scenes": data.num_scenes, "questions": len(data), "seed": int(data.attrs["seed"])},
        "pretrain": {"base": base, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "tokenizer": tokenizer,
                     "held_out_scenes": int(data.num_scenes * HELD_OUT)},
        "held_out_metrics": metrics,
    }
    bb = model.backbone
    save_backbone(out_dir, bb.vision, bb.projector, bb.llm.model, tok, {k: getattr(config, k) for k in VISION_KEYS}, provenance)
    return PretrainResult(out_dir, metrics, history)


def _save_checkpoint(out_dir: Path, model: GroundingModel, optimizer, scheduler, step: int, seed: int, tokenizer: str,
                     base: str) -> None:
    def write(folder: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
                   folder / "optimizer.pt")
        (folder / "trainer.json").write_text(json.dumps({"step": step, "seed": seed, "tokenizer": tokenizer, "base": base}))

    write_checkpoint(out_dir, write)


def _load_checkpoint(folder: Path, model: GroundingModel, optimizer, scheduler, seed: int, tokenizer: str, base: str
                     ) -> tuple[int, list[dict[str, float]]]:
    state = json.loads((folder / "trainer.json").read_text())
    if (state["seed"], state["tokenizer"], state["base"]) != (seed, tokenizer, base):
        raise ValueError(f"--resume: {folder} was trained with seed={state['seed']}, tokenizer={state['tokenizer']!r}, "
                         f"base={state['base']!r}; this run asks for seed={seed}, tokenizer={tokenizer!r}, base={base!r}")
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    extra = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    log = folder.parent / "pretrain_log.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    history = [r for r in history if r["step"] <= state["step"]]
    write_file(log, "".join(json.dumps(r) + "\n" for r in history))
    print(f"--resume: continuing from step {state['step']} of {folder}")
    return state["step"], history
