"""Behaviour cloning: L1 on normalized action chunks, through `accelerate`.

The same loop runs on a 2-core CPU (tiny scale) and on 1..N GPUs (`accelerate launch`), with bf16
autocast wherever the hardware multiplies bf16 natively (GPUs, CPUs with AVX512-BF16 or AMX). Tiny
recipes add the auxiliary grounding loss (`train.auxiliary`) when the demonstrations record the target. Paper scale fine-tunes the language model with LoRA (r=64, alpha=128 from the recipe).
Resuming is exact: the data order is a function of (seed, step) only, and the checkpoint holds
the optimizer, scheduler and RNG states.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup

from vla_agents.agent import VLAAgent, load_agent, make_agent
from vla_agents.data.dataset import DemoDataset
from vla_agents.data.hdf5 import PRIVILEGED_OBS
from vla_agents.models.blocks import action_loss
from vla_agents.policies import load_recipe, split_name
from vla_agents.progress import LoggedProgress
from vla_agents.train.auxiliary import TargetProbe, target_loss
from vla_agents.train.checkpoint import CHECKPOINT, write_checkpoint

TRAINER_STATE = "trainer_state.pt"
AUX_PROBE = "aux_probe.safetensors"  # the auxiliary grounding probe's weights, kept for an exact --resume


@dataclass
class BCResult:
    agent: VLAAgent
    history: list[dict[str, float]] = field(default_factory=list)


def batch_indices(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The samples of `step` on process `rank`: epoch e is a permutation seeded by seed+e, so any
    step's batch can be recomputed without replaying the ones before it."""
    per_step = batch_size * world
    steps_per_epoch = max(1, n // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    start = k * per_step + rank * batch_size
    return [int(i) % n for i in perm[start : start + batch_size].tolist()] or [int(perm[0])]


def cpu_autocast_dtype() -> torch.dtype | None:
    """bfloat16 where this CPU multiplies it natively (AVX512-BF16 / AMX: about 2.5x fp32's matmul speed
    on the tiny models), else None (emulated bfloat16 is slower than fp32)."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(agent: VLAAgent, out_dir: Path, trainer_state: dict[str, Any], probe: TargetProbe | None = None) -> Path:
    """`out_dir/checkpoint/`: the agent plus trainer_state.pt (and the auxiliary probe), swapped into place atomically."""

    def write(folder: Path) -> None:
        agent.save_pretrained(folder)
        torch.save(trainer_state, folder / TRAINER_STATE)
        if probe is not None:
            save_file({k: v.detach().contiguous() for k, v in probe.state_dict().items()}, str(folder / AUX_PROBE))

    return write_checkpoint(out_dir, write)


def train_bc(
    policy: str,
    data: list[str | Path],
    steps: int,
    out_dir: str | Path,
    scale: str = "tiny",
    batch_size: int | None = None,
    lr: float | None = None,
    warmup_steps: int | None = None,
    save_every: int = 0,
    resume: bool = False,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    eval_fn: Callable[[VLAAgent, int], dict[str, float]] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    mixed_precision: str | None = None,
) -> BCResult:
    """Train `policy` on demonstration files; the final agent is written to `out_dir`.
    `mixed_precision`: "bf16" or "no"; None picks bf16 on a GPU or a CPU that multiplies bf16 natively."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mixed_precision not in (None, "bf16", "no"):
        raise ValueError(f"mixed_precision must be 'bf16', 'no' or None (automatic), got {mixed_precision!r}")
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="no" if mixed_precision == "no" or not cuda else "bf16")
    # on a CPU, autocast directly: accelerate's process-wide state would pin one precision per process
    cpu_bf16 = not cuda and mixed_precision != "no" and cpu_autocast_dtype() is not None
    checkpoint = out_dir / CHECKPOINT
    resuming = resume and (checkpoint / TRAINER_STATE).is_file()

    torch.manual_seed(seed)
    if resuming:
        agent = load_agent(checkpoint)
        dataset = DemoDataset(data, chunk_size=agent.chunk, stats=agent.stats)
        if dataset.adapter_name != agent.adapter_name:
            raise ValueError(f"{checkpoint} was trained with adapter {agent.adapter_name!r}, these demonstrations are "
                             f"for {dataset.adapter_name!r}")
    else:
        dataset = DemoDataset(data, chunk_size=load_recipe(*split_name(policy, scale), overrides)["chunk"])
        agent = make_agent(policy, scale, adapter=dataset.adapter_name, stats=dataset.stats, **(overrides or {}))
        if agent.recipe["scale"] == "paper" and agent.recipe.get("lora_rank"):
            agent.enable_lora(agent.recipe["lora_rank"], agent.recipe["lora_alpha"])
    recipe = agent.recipe
    batch_size = batch_size or recipe["batch_size"]
    lr = lr if lr is not None else recipe["lr"]
    warmup_steps = warmup_steps if warmup_steps is not None else recipe["warmup_steps"]

    probe = None
    if recipe.get("aux_target_weight", 0.0) > 0:
        if not dataset.has_target:
            lacking = [str(p) for p in data if not DemoDataset([p], chunk_size=1).has_target]
            raise ValueError(f"recipe key aux_target_weight={recipe['aux_target_weight']} needs demonstrations that record the "
                             f"named object (obs {'/'.join(PRIVILEGED_OBS)}, written by `vla-agents collect`); "
                             f"{', '.join(lacking)} do not. Collect them again, or set aux_target_weight to 0")
        probe = TargetProbe(agent.model.backbone.dim, len(agent.views))
        if resuming and (checkpoint / AUX_PROBE).is_file():
            probe.load_state_dict(load_file(str(checkpoint / AUX_PROBE)))
    params = [p for p in agent.model.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.get("weight_decay", 0.0))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    start = 0
    if resuming:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start = state["step"]
    agent.model.to(accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(agent.model, optimizer, scheduler)

    history: list[dict[str, float]] = []
    columns = [TextColumn("[bold]bc {task.fields[policy]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.1f} samples/s"),
               TimeRemainingColumn()]
    bar = LoggedProgress(*columns, disable=not (progress and accelerator.is_main_process))
    with bar:
        task = bar.add_task("train", total=steps, completed=start, policy=recipe["policy"], loss=float("nan"), lr=lr, sps=0.0)
        for step in range(start, steps):
            tic = time.perf_counter()
            model.train()
            idx = batch_indices(step, len(dataset), batch_size, seed, accelerator.process_index, accelerator.num_processes)
            batch = agent.collate([dataset[i] for i in idx], train=True)
            with accelerator.autocast(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                out = model(batch)
            loss = action_loss(out.actions.float(), batch["actions"], batch["action_is_pad"], agent.model.loss_kind)
            terms = {}
            if probe is not None:
                aux, terms = target_loss(probe, out.features, batch)
                terms["action_loss"] = loss.item()
                loss = loss + recipe["aux_target_weight"] * aux
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            record = {"step": step + 1, "loss": loss.item(), **terms, "lr": scheduler.get_last_lr()[0]}
            sps = len(idx) * accelerator.num_processes / (time.perf_counter() - tic)
            if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
                record.update(eval_fn(agent, step + 1))
            history.append(record)
            bar.update(task, advance=1, loss=record["loss"], lr=record["lr"], sps=sps)
            if save_every and (step + 1) % save_every == 0 and accelerator.is_main_process:
                save_checkpoint(agent, out_dir, {
                    "step": step + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "seed": seed, "batch_size": batch_size,
                }, probe)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        agent.save_pretrained(out_dir)
        with open(out_dir / "train_log.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
    return BCResult(agent, history)
