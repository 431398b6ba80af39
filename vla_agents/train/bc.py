"""Behaviour cloning: L1 on normalized action chunks, through `accelerate`.

The same loop runs on a 2-core CPU (tiny scale) and on 1..N GPUs (`accelerate launch`), with bf16
autocast wherever the hardware multiplies bf16 natively (GPUs, CPUs with AVX512-BF16 or AMX). Tiny
recipes add the auxiliary grounding loss (`train.auxiliary`) when the demonstrations record the target. Paper scale fine-tunes the language model with LoRA (r=64, alpha=128 from the recipe).
Resuming is exact: the data order is a function of (seed, step) only, and the checkpoint holds
the optimizer, scheduler and RNG states and the loss history. A resume with other settings than the
checkpoint's is refused.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR
from transformers import get_cosine_schedule_with_warmup

from vla_agents.agent import VLAAgent, agent_from_recipe, load_agent
from vla_agents.atomic import check_target, recover
from vla_agents.data.dataset import DemoDataset
from vla_agents.data.hdf5 import PRIVILEGED_OBS
from vla_agents.models.blocks import action_loss
from vla_agents.policies import load_recipe, split_name
from vla_agents.progress import LoggedProgress
from vla_agents.recipe import TrainingConfig
from vla_agents.train.arguments import at_least
from vla_agents.train.auxiliary import TargetProbe, attention_target_loss, target_loss
from vla_agents.train.checkpoint import CHECKPOINT, load_trainer_state, write_checkpoint
from vla_agents.train.logs import LOSS_CURVE, TRAIN_LOG, TrainLog, check_tracker, plot_loss_curve

TRAINER_STATE = "trainer_state.pt"
AUX_PROBE = "aux_probe.safetensors"  # the auxiliary grounding probe's weights, kept for an exact --resume
logger = logging.getLogger(__name__)


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
    """Plain values and tensors only (numpy's key as a list), so the state loads with weights_only."""
    name, key, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, key.tolist(), *rest), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_scheduler(optimizer: torch.optim.Optimizer, training: TrainingConfig, warmup_steps: int, steps: int,
                   processes: int = 1) -> LRScheduler:
    """The recipe's `lr_schedule`: "cosine" with linear warmup (the default, and recipes saved without
    the key), or "multistep", VLA-Adapter's released MultiStepLR: the rate drops x0.1 once, at
    `lr_decay_step` (finetune.py: milestones=[num_steps_before_decay], gamma=0.1; no warmup).
    Once prepared by accelerate, the scheduler steps `processes` times per optimizer step (each process
    brings its own batch), so every length is counted in scheduler steps, x `processes`, as accelerate's
    examples do: the rate at each optimizer step is then the one-process run's."""
    if training.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps * processes, steps * processes)
    return MultiStepLR(optimizer, milestones=[training.lr_decay_step * processes], gamma=0.1)


def save_checkpoint(agent: VLAAgent, out_dir: Path, trainer_state: dict[str, Any], probe: TargetProbe | None = None) -> Path:
    """`out_dir/checkpoint/`: the agent plus trainer_state.pt (and the auxiliary probe), swapped into place atomically."""

    def write(folder: Path) -> None:
        agent.write_to(folder)
        torch.save(trainer_state, folder / TRAINER_STATE)
        if probe is not None:
            save_file({k: v.detach().contiguous() for k, v in probe.state_dict().items()}, str(folder / AUX_PROBE))

    return write_checkpoint(out_dir, write)


def _check_resume(checkpoint: Path, agent: VLAAgent, state: dict[str, Any], asked: dict[str, Any],
                  overrides: dict[str, Any]) -> None:
    """Refuse a resume whose settings differ from the checkpoint's: it would go on training the saved
    run (its policy, data order, optimizer) while reporting the new settings. The number of processes
    is one of them: it sets the global batch and the scheduler's step count (checkpoints from before it
    was recorded were trained by one process)."""
    saved = {"policy": agent.policy_name, "scale": agent.recipe.scale, "processes": state.get("processes", 1),
             "without_noops": state.get("without_noops", False),
             **{k: state[k] for k in ("seed", "batch_size", "lr", "warmup_steps") if k in state}}
    differ = [f"{k}={saved[k]!r} (asked: {v!r})" for k, v in asked.items() if v is not None and k in saved and v != saved[k]]
    flat = agent.recipe.to_dict()
    differ += [f"{k}={flat.get(k)!r} (asked: {v!r})" for k, v in overrides.items() if flat.get(k) != v]
    if differ:
        raise ValueError(f"--resume: the checkpoint in {checkpoint} was trained with {', '.join(differ)}; resume with "
                         "its settings, or train into another --out without --resume")


def _check_same_settings(accelerator: Accelerator, settings: dict[str, Any]) -> None:
    """Refuse a launch whose processes were given different settings: each would train its own run
    while their gradients are averaged."""
    every = gather_object([json.dumps(settings, sort_keys=True, default=str)])
    if len(set(every)) > 1:
        mine = json.loads(every[0])
        differ = sorted({k for other in every[1:] for k, v in json.loads(other).items() if mine.get(k) != v})
        raise ValueError(f"the {len(every)} processes of this launch were given different settings ({', '.join(differ)}); "
                         "launch every process with the same arguments")


def _start_from_agent(folder: Path, policy: str, scale: str, overrides: dict[str, Any] | None, data: list[str | Path],
                      without_noops: bool) -> tuple[VLAAgent, DemoDataset]:
    """The trained agent in `folder` and the demonstrations in its normalization, refused where they cannot
    go on together: another policy or scale, recipe overrides (its recipe is kept as saved), another adapter."""
    if overrides:
        raise ValueError(f"--init-from {folder} keeps that agent's recipe; drop the recipe overrides "
                         f"({', '.join(sorted(overrides))}) or train from scratch without --init-from")
    agent = load_agent(folder)
    asked = split_name(policy, scale)
    if (agent.recipe.policy, agent.recipe.scale) != asked:
        raise ValueError(f"--init-from {folder} holds a {agent.recipe.policy} ({agent.recipe.scale}) agent; "
                         f"asked to train {asked[0]} ({asked[1]})")
    dataset = DemoDataset(data, chunk_size=agent.chunk, stats=agent.stats, without_noops=without_noops)
    if dataset.adapter_name != agent.adapter_name:
        raise ValueError(f"--init-from {folder} acts through adapter {agent.adapter_name!r}; these demonstrations "
                         f"are for {dataset.adapter_name!r}")
    return agent, dataset


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
    log_with: str | None = None,
    without_noops: bool = False,
    init_from: str | Path | None = None,
) -> BCResult:
    """Train `policy` on demonstration files; the final agent is written to `out_dir`, with train_log.jsonl
    (appended as training runs) and loss_curve.png (`train.logs`).
    `mixed_precision`: "bf16" or "no"; None picks bf16 on a GPU or a CPU that multiplies bf16 natively.
    `log_with`: "tensorboard" (events in `out_dir/vla-agents/`) or "wandb" also receive every step's
    record, through accelerate's trackers; None sends nothing anywhere. `data` may be HDF5 files or
    LeRobotDataset folders; `without_noops` drops their no-op steps (`data.noop`). `init_from`, a trained agent's
    folder (a shipped checkpoint, any `train bc` output), starts from its weights, recipe and normalization with a
    fresh optimizer and schedule: fine-tuning a trained agent further, on its data or new demonstrations."""
    at_least(1, steps=steps, batch_size=batch_size)
    at_least(0, save_every=save_every, eval_every=eval_every, warmup_steps=warmup_steps, lr=lr)
    if mixed_precision not in (None, "bf16", "no"):
        raise ValueError(f"mixed_precision must be 'bf16', 'no' or None (automatic), got {mixed_precision!r}")
    out_dir = check_target(out_dir)  # before training: "." or its parents cannot take the final swap
    check_tracker(log_with)
    cuda = torch.cuda.is_available()
    # cpu=True where there is no GPU: otherwise accelerate ignores a torchrun launch's processes on a CPU
    # machine, and each trains alone (gloo is its CPU backend)
    accelerator = Accelerator(mixed_precision="no" if mixed_precision == "no" or not cuda else "bf16",
                              cpu=not cuda and not torch.backends.mps.is_available(), log_with=log_with,
                              project_dir=out_dir)
    # on a CPU, autocast directly: accelerate's process-wide state would pin one precision per process
    cpu_bf16 = not cuda and mixed_precision != "no" and cpu_autocast_dtype() is not None
    checkpoint = out_dir / CHECKPOINT
    _check_same_settings(accelerator, {"policy": policy, "data": [str(Path(p).resolve()) for p in data], "steps": steps,
                                       "out_dir": str(out_dir), "scale": scale, "batch_size": batch_size, "lr": lr,
                                       "warmup_steps": warmup_steps, "resume": resume, "seed": seed, "overrides": overrides,
                                       "without_noops": without_noops, "init_from": str(init_from)})
    main = accelerator.is_main_process  # the one process that writes, prints and evaluates
    if main:  # a save or checkpoint a kill interrupted is completed, not lost
        recover(out_dir)
        recover(checkpoint)
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    resuming = resume and (checkpoint / TRAINER_STATE).is_file()
    if resume and not resuming and main:
        logger.warning("--resume: no checkpoint in %s; training starts at step 0", checkpoint)

    torch.manual_seed(seed)
    history: list[dict[str, float]] = []
    if resuming:
        agent = load_agent(checkpoint)
        state = load_trainer_state(checkpoint / TRAINER_STATE)
        asked = {"policy": split_name(policy, scale)[0], "scale": split_name(policy, scale)[1], "seed": seed,
                 "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps, "processes": accelerator.num_processes,
                 "without_noops": without_noops}
        _check_resume(checkpoint, agent, state, asked, overrides or {})
        batch_size, lr = batch_size or state["batch_size"], lr if lr is not None else state.get("lr")
        warmup_steps = warmup_steps if warmup_steps is not None else state.get("warmup_steps")
        history = list(state.get("history", []))
        if main:
            logger.warning("--resume: continuing from step %d of the checkpoint in %s", state["step"], checkpoint)
        dataset = DemoDataset(data, chunk_size=agent.chunk, stats=agent.stats, without_noops=without_noops)
        if dataset.adapter_name != agent.adapter_name:
            raise ValueError(f"{checkpoint} was trained with adapter {agent.adapter_name!r}, these demonstrations are "
                             f"for {dataset.adapter_name!r}")
    elif init_from is not None:
        agent, dataset = _start_from_agent(Path(init_from), policy, scale, overrides, data, without_noops)
    else:
        recipe = load_recipe(*split_name(policy, scale), overrides)
        dataset = DemoDataset(data, chunk_size=recipe.agent.chunk, without_noops=without_noops)
        agent = agent_from_recipe(recipe, dataset.adapter_name, dataset.stats, overrides)
        if agent.recipe.scale == "paper" and agent.recipe.training.lora_rank:
            agent.enable_lora(agent.recipe.training.lora_rank, agent.recipe.training.lora_alpha)
    recipe, training = agent.recipe, agent.recipe.training
    batch_size = batch_size or training.batch_size
    lr = lr if lr is not None else training.lr
    warmup_steps = warmup_steps if warmup_steps is not None else training.warmup_steps
    if init_from is None:
        lineage = None
    elif resuming:  # the lineage the checkpoint saved
        lineage = (agent.training or {}).get("init_from")
    else:  # what the starting weights had been trained on
        lineage = {"path": str(init_from), "training": agent.training}
    agent.training = {"data": [Path(p).name for p in data], "steps": steps, "batch_size": batch_size,
                      "processes": accelerator.num_processes, "lr": lr, "seed": seed, "without_noops": without_noops}
    if lineage is not None:
        agent.training["init_from"] = lineage

    probe = None
    attend_weight = training.aux_attention_weight
    if training.aux_target_weight > 0 or attend_weight > 0:
        if not dataset.has_target:
            lacking = [str(p) for p in data if not DemoDataset([p], chunk_size=1).has_target]
            raise ValueError(f"recipe keys aux_target_weight={training.aux_target_weight}, aux_attention_weight="
                             f"{attend_weight} need demonstrations that record the "
                             f"named object (obs {'/'.join(PRIVILEGED_OBS)}, written by `vla-agents collect`); "
                             f"{', '.join(lacking)} do not. Collect them again, or set both to 0")
    if training.aux_target_weight > 0:
        probe = TargetProbe(agent.model.backbone.dim, len(agent.views))
        if resuming and (checkpoint / AUX_PROBE).is_file():
            probe.load_state_dict(load_file(str(checkpoint / AUX_PROBE)))
    params = [p for p in agent.model.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=training.weight_decay)
    scheduler = make_scheduler(optimizer, training, warmup_steps, steps, accelerator.num_processes)
    start = 0
    if resuming:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start = state["step"]
    agent.model.to(accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(agent.model, optimizer, scheduler)
    trained_probe = accelerator.prepare(probe) if probe is not None else None  # its gradients averaged like the model's

    accelerator.init_trackers("vla-agents", config={
        "policy": recipe.policy, "scale": recipe.scale, "steps": steps, "batch_size": batch_size, "lr": lr,
        "warmup_steps": warmup_steps, "seed": seed, "processes": accelerator.num_processes})
    log = TrainLog(out_dir / TRAIN_LOG, history) if main else None
    columns = [TextColumn("[bold]bc {task.fields[policy]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.1f} samples/s"),
               TimeRemainingColumn()]
    bar = LoggedProgress(*columns, disable=not (progress and main))
    with bar, log or contextlib.nullcontext():
        task = bar.add_task("train", total=steps, completed=start, policy=recipe.policy, loss=float("nan"), lr=lr, sps=0.0)
        for step in range(start, steps):
            tic = time.perf_counter()
            model.train()
            idx = batch_indices(step, len(dataset), batch_size, seed, accelerator.process_index, accelerator.num_processes)
            batch = agent.collate([dataset[i] for i in idx], train=True)
            with accelerator.autocast(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                out = model(batch, with_attention=attend_weight > 0)
            loss = action_loss(out.actions.float(), batch["actions"], batch["action_is_pad"], recipe.training.loss)
            terms = {"action_loss": loss.item()} if probe is not None or attend_weight > 0 else {}
            if probe is not None:
                aux, probe_terms = target_loss(trained_probe, out.features, batch)
                terms |= probe_terms
                loss = loss + training.aux_target_weight * aux
            if attend_weight > 0:
                attend = torch.stack([attention_target_loss(maps, batch["target_uv"], agent.views)
                                      for maps in out.grounding_maps()]).mean()
                terms["aux_attention"] = attend.item()
                loss = loss + attend_weight * attend
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # the mean over processes: the loss of the step's whole batch, as one process would log it
            means = accelerator.reduce(torch.tensor([loss.item(), *terms.values()], dtype=torch.float64, device=accelerator.device), "mean")
            record = {"step": step + 1, "loss": means[0].item(), **dict(zip(terms, means[1:].tolist())),
                      "lr": scheduler.get_last_lr()[0]}
            sps = len(idx) * accelerator.num_processes / (time.perf_counter() - tic)
            if eval_fn is not None and eval_every and (step + 1) % eval_every == 0 and main:
                record.update(eval_fn(agent, step + 1))
            history.append(record)
            if log is not None:
                log.append(record)
            accelerator.log(record, step=step + 1)
            bar.update(task, advance=1, loss=record["loss"], lr=record["lr"], sps=sps)
            if save_every and (step + 1) % save_every == 0 and main:
                save_checkpoint(agent, out_dir, {
                    "step": step + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "seed": seed, "batch_size": batch_size, "lr": lr,
                    "warmup_steps": warmup_steps, "processes": accelerator.num_processes, "history": history,
                    "without_noops": without_noops,
                }, probe)
    for tracker in accelerator.trackers:  # end_training would also end the launch's process group
        tracker.finish()
    accelerator.wait_for_everyone()
    if main:
        agent.save_pretrained(out_dir)
        plot_loss_curve(history, out_dir / LOSS_CURVE, f"bc {recipe.policy}-{recipe.scale}")
    return BCResult(agent, history)
