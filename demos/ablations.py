"""The papers' ablations at our scale: same demonstrations, same training steps, several seeds.

    python demos/ablations.py focusvla   [--data FILE ...] [--steps N --seeds 0 1 2 --episodes E --out DIR]
    python demos/ablations.py vat        [the same options]
    python demos/ablations.py deepvision [the same options]
    python demos/ablations.py dtp --agents DIR [DIR ...] [--taus 0.25 0.5 ...] [--episodes E]

Training studies (issue 40). Every run of a study trains once on the same demonstrations (`--data`: the
shipped agents' files, so each arm is trained as its shipped recipe's first stage is, from the pretrained
tiny backbone; without `--data`, one collected file per evaluated task) and is evaluated on each task:
- focusvla, on embedded/pick_color_clutter and embedded/stack: FocusVLA vs VLA-Adapter-Pro (the baseline
  of FocusVLA's tables), success and the training steps needed to reach 80% of the final success
  (periodic evaluation during training); then FocusVLA's Tab. 2: VLA-Adapter's mixed attention vs the
  cascade with no focus (its first two rows), then on the full model top-K of the 128 patches and
  the gate's granularity (the "scalar" arm is VLA-Adapter's tanh(g), g = 0).
- vat, on the same tasks: every action module reading its own ViT layer vs every one reading the last
  layer (same depth; the official code's arm).
- deepvision, on embedded/lift_lookalikes and embedded/pick_color_clutter: the last n expert layers
  feeding the last n LLM layers (the paper's choice) vs the first n and n spread uniformly; DeepVision vs
  its QwenVLA-OFT base (no vision expert); AGVP (action-guided pruning of the expert's tokens) off, and
  guided by the expert's CLS or the instruction instead of the action tokens (the paper's guidance rows).
DTP study (issue 40):
- dtp, on trained agents: success across a tau sweep vs the unwrapped policy and vs DTP's random-mask
  ablations, and the DTP paper's analysis: the share of action-to-vision attention outside DTP's
  important region, in failed vs successful episodes of the unwrapped policy (Mann-Whitney U).

Each study writes `<out>/<study>.json` (every run, every seed, evaluation curves, how the final
episodes ended: `vla_agents.eval.outcomes`) and
`<out>/<study>.md` (mean ± std over seeds, with the per-seed values), prints the markdown, and with
`--append-readout benchmarks/README.md` appends it there. Runs already in the JSON are skipped, so
an interrupted study resumes where it stopped; `--report` trains nothing and writes the tables of the
runs recorded so far (each variant against the arm the paper compares it with: pooled successes,
Fisher exact test). Runs recorded under an earlier definition of their arm (other declared keys)
count for neither. A run checkpoints every `--save-every` steps, so a killed run resumes from its last
checkpoint, not from step 0.

The default budget fits a 2-core CPU, one run at a time: a tiny policy trains at 1-2 steps/s
(DeepVision 0.3-1) and a failed 120-step evaluation episode takes about 10 s, so one run of the
default budget is 30-90 min. A whole study is many runs; `--variants` and `--tasks` run a part.
Parts may run side by side with the same `--out` once the demonstrations exist (the first part
run alone collects them).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy.stats import fisher_exact, mannwhitneyu

from vla_agents.agent import VLAAgent, load_agent
from vla_agents.eval.outcomes import evaluate_outcomes
from vla_agents.eval.rollout import EvalReport, evaluate, slugify
from vla_agents.models.dtp import DTP, DTPStep, can_wrap
from vla_agents.policies import load_wrapper_recipe, recipe_keys
from vla_agents.progress import LoggedProgress
from vla_agents.sim import make_env
from vla_agents.sim.collect import collect_demos
from vla_agents.train.bc import TRAINER_STATE, train_bc
from vla_agents.train.checkpoint import CHECKPOINT

PERIODIC_EVAL_SEED = 10_000  # every variant and seed is evaluated on the same episodes
FINAL_EVAL_SEED = 20_000
SUCCESS_FRACTION = 0.8  # "steps to reach 80% of the final success"
NEVER_PRUNE = 1e9  # a DTP tau no attention ratio exceeds: detection only, actions of the unwrapped policy
DATA_DIR = Path("runs/ablations/data")
DTP_BUDGET = ("episodes", "image_size", "max_episode_steps", "overrides")  # the Budget fields a study without training uses


# ----------------------------------------------------------------------------------------------
# Studies as data
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One arm of a study: a policy recipe, the keys that make this arm what it is, and the arm the
    paper compares it against (its table reports the pooled successes of both and a Fisher exact test)."""

    name: str
    policy: str
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None


@dataclass(frozen=True)
class TrainingStudy:
    name: str
    title: str
    tasks: tuple[str, ...]
    variants: tuple[Variant, ...]
    image_size: int  # camera px of the demonstrations and evaluation episodes


# The reference arms pin the switches their ablations flip, so they do not drift with the recipes, and
# the switches issue 37 added, so runs recorded before it (other mechanisms) never pass for these arms.
FOCUSVLA = {"layout": "pro", "focus_scores": "action_query", "attention_mode": "cascaded", "topk": 64, "gate": "element",
            "visual_source": "raw"}  # top-64 of 2 views x 8x8 patches
CASCADE_ONLY = FOCUSVLA | {"topk": None, "gate": "none", "visual_source": "vlm"}  # Tab. 2, second row: no focus
VAT = {"kv_norm": "vision"}
DEEPVISION = {"coupled_layers": 2, "coupling": "last", "pruning": True, "guidance": "action", "shared_attention": "joint", "expert_cls_token": True}

STUDIES = {
    "focusvla": TrainingStudy(
        name="focusvla",
        title="FocusVLA vs VLA-Adapter-Pro, and FocusVLA's components (its Tab. 2; issue 40)",
        tasks=("embedded/pick_color_clutter", "embedded/stack"),
        variants=(
            # the headline (its Tab. 1 and convergence claim), then Tab. 2's rows
            Variant("focusvla", "focusvla", FOCUSVLA, baseline="vla_adapter"),
            Variant("vla_adapter", "vla_adapter", {"variant": "pro"}),
            # Tab. 2's first two rows: VLA-Adapter-Pro's own (mixed) attention vs the bare cascade
            Variant("focusvla-mixed", "focusvla", CASCADE_ONLY | {"attention_mode": "mixed"}, baseline="focusvla-cascade-only"),
            Variant("focusvla-cascade-only", "focusvla", CASCADE_ONLY, baseline="focusvla"),
            # then one switch at a time on the full model
            Variant("focusvla-topk-all", "focusvla", FOCUSVLA | {"topk": None}, baseline="focusvla"),
            Variant("focusvla-topk-32", "focusvla", FOCUSVLA | {"topk": 32}, baseline="focusvla"),
            Variant("focusvla-topk-96", "focusvla", FOCUSVLA | {"topk": 96}, baseline="focusvla"),
            Variant("focusvla-gate-none", "focusvla", FOCUSVLA | {"gate": "none"}, baseline="focusvla"),
            Variant("focusvla-gate-scalar", "focusvla", FOCUSVLA | {"gate": "scalar"}, baseline="focusvla"),
            Variant("focusvla-gate-head", "focusvla", FOCUSVLA | {"gate": "head"}, baseline="focusvla"),
        ),
        image_size=128,
    ),
    "vat": TrainingStudy(
        name="vat",
        title="VAT: an action module reading every ViT layer vs every one reading the last (issue 40)",
        tasks=("embedded/pick_color_clutter", "embedded/stack"),
        variants=(
            Variant("vat-all-layers", "vat", VAT | {"action_layers": "all"}),
            Variant("vat-last-layer", "vat", VAT | {"action_layers": "last"}, baseline="vat-all-layers"),  # same depth
        ),
        image_size=128,
    ),
    "deepvision": TrainingStudy(
        name="deepvision",
        title="DeepVision-VLA: which expert layers feed the deep LLM layers, its base, AGVP and its guidance (issue 40)",
        tasks=("embedded/lift_lookalikes", "embedded/pick_color_clutter"),
        variants=(
            # the headline (the paper's last-16 vs first-16 expert layers), then its fusion and pruning rows
            Variant("deepvision", "deepvision", DEEPVISION, baseline="deepvision-base"),
            Variant("deepvision-first-layers", "deepvision", DEEPVISION | {"coupling": "first"}, baseline="deepvision"),
            Variant("deepvision-uniform-layers", "deepvision", DEEPVISION | {"coupling": "uniform"}, baseline="deepvision"),
            Variant("deepvision-base", "deepvision", DEEPVISION | {"coupled_layers": 0}),  # QwenVLA-OFT, no expert
            Variant("deepvision-no-agvp", "deepvision", DEEPVISION | {"pruning": False}, baseline="deepvision"),  # every expert token joins
            Variant("deepvision-cls-guidance", "deepvision", DEEPVISION | {"guidance": "cls"}, baseline="deepvision"),
            Variant("deepvision-instruction-guidance", "deepvision", DEEPVISION | {"guidance": "instruction"}, baseline="deepvision"),
        ),
        image_size=192,  # the vision expert's resolution in deepvision-tiny.yaml
    ),
}


def dtp_variants(taus: Sequence[float], random_taus: Sequence[float]) -> list[Variant]:
    """The unwrapped policy (observed through DTP's detection, never pruning), DTP over the tau
    sweep, and both random-mask ablations at `random_taus` (they prune as many tokens as DTP would).
    Their overrides are DTP settings (policies/dtp.yaml)."""
    return [
        Variant("unwrapped", "dtp", {"tau": NEVER_PRUNE}),
        *(Variant(f"dtp-tau-{tau:g}", "dtp", {"tau": tau}) for tau in taus),
        *(Variant(f"random-{where}-tau-{tau:g}", "dtp", {"tau": tau, "random_mask": where})
          for tau in random_taus for where in ("unimportant", "all")),
    ]


@dataclass
class Budget:
    """What every run of a study gets alike; a resumed study must use the same budget."""

    steps: int = 2000
    episodes: int = 20  # final evaluation episodes per run
    eval_every: int = 500  # training steps between periodic evaluations
    eval_episodes: int = 5
    demos: int = 50  # successful expert episodes per task, when collected here
    batch_size: int | None = None  # None: the recipe's
    image_size: int | None = None  # None: the study's (dtp: each agent's input size)
    max_episode_steps: int | None = None  # None: the task's limit
    save_every: int = 500  # training steps between checkpoints: an interrupted run resumes from its last one
    overrides: dict[str, Any] = field(default_factory=dict)  # recipe keys (or DTP settings) for every variant that has them


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the values that exist; the std of a single value is undefined (None)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    std = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return float(np.mean(present)), std


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def p_value(p: float | None) -> str:
    """Two significant digits, so a tiny p does not print as 0.0000."""
    return "-" if p is None else f"{p:.2g}"


def format_cell(values: Sequence[float | None], digits: int = 1) -> str:
    """`mean ± std (v1, v2, ...)`, or `mean (v1, ...)` when only one value exists; a missing
    per-seed value shows as '-'."""
    mean, std = mean_std(values)
    seeds = ", ".join(number(v, digits) for v in values)
    if mean is None:
        return "-"
    spread = "" if std is None else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} ({seeds})"


def steps_to_fraction(curve: Sequence[Sequence[float]], fraction: float = SUCCESS_FRACTION) -> int | None:
    """First evaluated step whose success reaches `fraction` of the final (last) one; None when the
    final success is 0, since then there is nothing to reach."""
    final = curve[-1][1]
    if final <= 0:
        return None
    return next(int(step) for step, success in curve if success >= fraction * final)


def demo_env_name(path: Path) -> str:
    """The environment spec a `vla-agents collect` file was recorded in."""
    with h5py.File(path, "r") as f:
        name = f["data"].attrs.get("env_name", "")
    return name.decode() if isinstance(name, bytes) else str(name)


def training_files(tasks: Sequence[str], given: Sequence[str | Path], demos: int, image_size: int, data_dir: Path) -> list[Path]:
    """The demonstrations every run trains on: the given files (e.g. the shipped agents' data, so an arm is
    trained as its shipped recipe is), else one file per evaluated task collected with the scripted expert
    (kept in `data_dir` for the next study)."""
    if given:
        return [Path(p) for p in given]
    files = []
    for task in tasks:
        path = data_dir / f"{slugify(task)}-{demos}demos-{image_size}px.hdf5"
        if not path.exists():
            collect_demos(task, demos, path, image_size=image_size)
        files.append(path)
    return files


def variant_overrides(variant: Variant, shared: dict[str, Any]) -> dict[str, Any]:
    """The shared overrides this variant's recipe knows, then the variant's own keys. A shared key
    the variant declares is an error: it would silently change what the variant is."""
    clash = sorted(set(shared) & set(variant.overrides))
    if clash:
        raise ValueError(f"--overrides {clash} would change what variant {variant.name!r} declares")
    keys = recipe_keys(variant.policy)
    return {k: v for k, v in shared.items() if k in keys} | variant.overrides


def as_declared(run: dict[str, Any], variant: Variant | None) -> bool:
    """Whether a recorded run trained the arm as declared now (every declared key, recorded alike)."""
    return variant is not None and all(k in run["overrides"] and run["overrides"][k] == v for k, v in variant.overrides.items())


def success_report(agent: Any, task: str, episodes: int, seed: int, budget: Budget, image_size: int) -> EvalReport:
    return evaluate(agent, partial(make_env, task, image_size=image_size), episodes, seed=seed, progress=False,
                    max_steps=budget.max_episode_steps, env_name=task)


class ResultsFile:
    """`<out>/<study>.json`, rewritten after every run, so an interrupted study resumes. Each write
    first merges the runs already on disk, so processes running other variants may share it."""

    def __init__(self, path: Path, study: str, budget: dict[str, Any]) -> None:
        self.path, self.study = path, study
        self.budget = json.loads(json.dumps(budget))  # as it reads back from JSON
        self.runs = self.saved_runs()

    def saved_runs(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        saved = json.loads(self.path.read_text())
        if saved["budget"] != self.budget:
            raise SystemExit(f"{self.path} holds runs of another budget ({saved['budget']}); choose another --out")
        return saved["runs"]

    def find(self, **key: Any) -> dict[str, Any] | None:
        return next((r for r in self.runs if all(r[k] == v for k, v in key.items())), None)

    def add(self, run: dict[str, Any], **extra: Any) -> None:
        self.runs = [*self.saved_runs(), run]
        self.write(**extra)

    def write(self, **extra: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"study": self.study, "budget": self.budget, "runs": self.runs, **extra}, indent=1))
        os.replace(tmp, self.path)


def progress_bar() -> LoggedProgress:
    """A study runs for hours, usually under nohup: it also logs a line every 2% of each run."""
    return LoggedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          log_every=0.02)


# ----------------------------------------------------------------------------------------------
# Training studies: focusvla, deepvision
# ----------------------------------------------------------------------------------------------
def periodic_key(task: str) -> str:
    """The train log's key of a periodic evaluation on `task`."""
    return f"eval_pc_success/{task}"


def train_and_evaluate(variant: Variant, tasks: Sequence[str], seed: int, data: Sequence[Path], budget: Budget,
                       image_size: int, run_dir: Path, on_step: Callable[[int], None]) -> list[dict[str, Any]]:
    """Train one variant with one seed on every file of `data`, evaluating each task every `eval_every`
    steps; then one record per task, its curve ending with the final evaluation (more episodes) at the last
    step. A run whose folder holds a checkpoint resumes from it: its periodic evaluations come back from
    the checkpoint's training history."""
    overrides = variant_overrides(variant, budget.overrides)
    eval_s = 0.0

    def eval_fn(agent: VLAAgent, step: int) -> dict[str, float]:
        nonlocal eval_s
        on_step(step)
        if not budget.eval_every or step % budget.eval_every or step >= budget.steps:
            return {}
        tic = time.perf_counter()
        successes = {periodic_key(task): success_report(agent, task, budget.eval_episodes, PERIODIC_EVAL_SEED, budget,
                                                        image_size).metrics()["pc_success"] for task in tasks}
        eval_s += time.perf_counter() - tic
        return successes

    resumed = (run_dir / CHECKPOINT / TRAINER_STATE).is_file()
    tic = time.perf_counter()
    result = train_bc(variant.policy, list(data), budget.steps, run_dir, batch_size=budget.batch_size, seed=seed,
                      overrides=overrides, eval_fn=eval_fn, eval_every=1, save_every=budget.save_every, resume=resumed,
                      progress=False)
    train_s = time.perf_counter() - tic - eval_s
    losses = [r["loss"] for r in result.history]
    records = []
    for task in tasks:
        tic = time.perf_counter()
        report, outcomes = evaluate_outcomes(result.agent, partial(make_env, task, image_size=image_size), budget.episodes,
                                             FINAL_EVAL_SEED, progress=False, max_steps=budget.max_episode_steps, env_name=task)
        final = report.metrics()
        curve = [[r["step"], r[periodic_key(task)]] for r in result.history if periodic_key(task) in r]
        curve.append([budget.steps, final["pc_success"]])
        records.append({
            "variant": variant.name, "policy": variant.policy, "overrides": overrides, "task": task, "seed": seed,
            "success": final["pc_success"], "successes": final["successes"], "episodes": final["n_episodes"], "outcomes": outcomes,
            "steps_to_80pc": steps_to_fraction(curve), "curve": curve,
            "final_loss": float(np.mean(losses[-10:])), "train_s": train_s, "resumed": resumed,
            "eval_s": eval_s + time.perf_counter() - tic, "agent_dir": str(run_dir),
            "data": [Path(p).name for p in data], "num_parameters": result.agent.num_parameters(),
        })
    return records


def run_training_study(study: TrainingStudy, budget: Budget, seeds: Sequence[int], out: Path,
                       data: Sequence[str | Path] = (), variants: Sequence[str] | None = None,
                       tasks: Sequence[str] | None = None, data_dir: Path = DATA_DIR) -> dict[str, Any]:
    """Every (variant, seed) with a task not yet in `<out>/<study>.json`: train once on the study's
    demonstrations, evaluate on each task, record one run per task."""
    chosen = [v for v in study.variants if variants is None or v.name in variants]
    unknown = sorted(set(variants or ()) - {v.name for v in study.variants})
    if unknown:
        raise ValueError(f"unknown variants {unknown} for {study.name}; declared: {[v.name for v in study.variants]}")
    known = {k for v in chosen for k in recipe_keys(v.policy)}
    if set(budget.overrides) - known:
        raise ValueError(f"--overrides {sorted(set(budget.overrides) - known)} are keys of none of the variants' recipes")
    for v in chosen:
        variant_overrides(v, budget.overrides)  # fail on clashes before hours of training
    tasks = list(tasks or study.tasks)
    image_size = budget.image_size or study.image_size
    files = training_files(tasks, data, budget.demos, image_size, data_dir)
    results = ResultsFile(out / f"{study.name}.json", study.name, asdict(budget))
    extra = {"title": study.title, "variants": [asdict(v) for v in study.variants], "data": [str(p) for p in files]}

    def missing(variant: Variant, seed: int) -> list[str]:
        return [t for t in tasks if not any(as_declared(r, variant) for r in results.runs
                                            if (r["variant"], r["task"], r["seed"]) == (variant.name, t, seed))]

    todo = [(v, s) for v in chosen for s in seeds if missing(v, s)]
    with progress_bar() as bar:
        overall = bar.add_task(study.name, total=len(todo) * budget.steps, status=f"{len(todo)} runs")
        for variant, seed in todo:
            run = bar.add_task(f"{variant.name} seed {seed}", total=budget.steps, status="")

            def on_step(step: int, run: int = run) -> None:
                bar.update(run, completed=step)
                bar.advance(overall)

            run_dir = out / "agents" / variant.name / f"seed{seed}"
            records = train_and_evaluate(variant, missing(variant, seed), seed, files, budget, image_size, run_dir, on_step)
            bar.remove_task(run)
            bar.update(overall, status="last: " + ", ".join(f"{variant.name} {r['task'].split('/')[-1]} {r['success']:.0f}%"
                                                             for r in records))
            for record in records:
                results.add(record, **extra)
    results.write(**extra)
    return {"study": study.name, "budget": results.budget, "runs": results.runs, **extra}


def recorded_study(study: TrainingStudy, out: Path, variants: Sequence[str] | None = None,
                   tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """The runs already in `<out>/<study>.json` (of the chosen variants and tasks) that trained their arm
    as declared now, with the study's variants as declared now, so tables of runs from several sessions
    come from one command; `left_out` counts, per variant, the runs of an earlier definition."""
    path = out / f"{study.name}.json"
    if not path.exists():
        raise SystemExit(f"--report needs the study's results, and {path} does not exist; pass the --out the runs used")
    unknown = sorted(set(variants or ()) - {v.name for v in study.variants})
    if unknown:
        raise ValueError(f"unknown variants {unknown} for {study.name}; declared: {[v.name for v in study.variants]}")
    saved = json.loads(path.read_text())
    chosen = [r for r in saved["runs"] if (variants is None or r["variant"] in variants) and (tasks is None or r["task"] in tasks)]
    declared = {v.name: v for v in study.variants}
    runs = [r for r in chosen if as_declared(r, declared.get(r["variant"]))]
    left_out: dict[str, int] = {}
    for r in chosen:
        if r not in runs:
            left_out[r["variant"]] = left_out.get(r["variant"], 0) + 1
    return saved | {"title": study.title, "variants": [asdict(v) for v in study.variants], "runs": runs, "left_out": left_out}


def pooled(runs: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Final successes and final episodes summed over runs."""
    return sum(r["successes"] for r in runs), sum(r["episodes"] for r in runs)


def versus_baseline(mine: dict[int, dict[str, Any]], theirs: dict[int, dict[str, Any]]) -> str:
    """`k/n vs k'/n', p = x`: both arms' final successes pooled over the seeds both ran, and the
    two-sided Fisher exact test of the difference ('-' when no seed was run by both)."""
    common = sorted(set(mine) & set(theirs))
    if not common:
        return "-"
    (k, n), (k_base, n_base) = pooled([mine[s] for s in common]), pooled([theirs[s] for s in common])
    p = fisher_exact([[k, n - k], [k_base, n_base - k_base]]).pvalue
    return f"{k}/{n} vs {k_base}/{n_base}, p = {p:.2g}"


def training_markdown(result: dict[str, Any], seeds: Sequence[int]) -> str:
    """One row per variant: its size, and per task the final success % (per seed), the successes pooled
    over the seeds, the comparison with the variant's baseline arm, steps to 80% of the final success
    and the training time."""
    runs = [r for r in result["runs"] if r["seed"] in seeds]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    declared = {v["name"]: v for v in result["variants"] if any(r["variant"] == v["name"] for r in runs)}
    by_seed = {(name, task): {r["seed"]: r for r in runs if r["variant"] == name and r["task"] == task}
               for name in declared for task in tasks}
    metrics = ("success %", "successes", "vs baseline", "steps to 80%", "train min")
    header = ["variant", "policy", "overrides", "parameters", "baseline"] + [f"{t.split('/')[-1]} {m}" for t in tasks for m in metrics]
    lines = [f"### {result['title']}", "", budget_line(result["budget"], seeds, result.get("data")), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, variant in declared.items():
        baseline = variant.get("baseline")
        parameters = next(r["num_parameters"] for r in runs if r["variant"] == name)
        cells = [name, variant["policy"], ", ".join(f"{k}={v}" for k, v in variant["overrides"].items()) or "-",
                 f"{parameters / 1e6:.2f} M", baseline or "-"]
        for task in tasks:
            per_seed = by_seed[name, task]
            k, n = pooled(list(per_seed.values()))
            minutes = sorted(round(r["train_s"] / 60) for r in per_seed.values() if not r.get("resumed"))
            cells += [format_cell([per_seed[s]["success"] if s in per_seed else None for s in seeds]),
                      f"{k}/{n}" if per_seed else "-",
                      versus_baseline(per_seed, by_seed.get((baseline, task), {})),
                      format_cell([per_seed[s]["steps_to_80pc"] if s in per_seed else None for s in seeds], 0),
                      "-" if not minutes else f"{minutes[0]}" if minutes[0] == minutes[-1] else f"{minutes[0]}-{minutes[-1]}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean ± sample std over the seeds run, no ± for a single seed (per-seed values in seed order; '-': seed not run). "
              "Successes: final successes / final episodes over the seeds run. Vs baseline: both arms pooled over the seeds both ran, "
              "two-sided Fisher exact p. Steps to 80%: first periodic evaluation reaching 80% of the final success ('-': final success 0). "
              "Train min: training time per run without the evaluations, fastest-slowest (it depends on what else ran on the machine; "
              "runs resumed from a checkpoint left out)."]
    if result.get("left_out"):
        lines += ["", "Left out, recorded under an earlier definition of their arm: "
                  + ", ".join(f"{name} ({n} run{'s' * (n > 1)})" for name, n in result["left_out"].items()) + "."]
    return "\n".join(lines) + "\n"


def budget_line(budget: dict[str, Any], seeds: Sequence[int], data: Sequence[str] | None = None) -> str:
    """The settings every run shared. With the demonstration files named, `demos` (the episodes
    collected when no file is given) is left out: it says nothing about files given with --data."""
    settings = ", ".join(f"{k}={v}" for k, v in budget.items() if v not in (None, {}) and not (data and k == "demos"))
    paths = data.values() if isinstance(data, dict) else data or ()  # a dict: the per-task files of issues 4 and 5's records
    files = "; trained on " + ", ".join(Path(path).name for path in paths) if data else ""
    return f"Seeds {list(seeds)}; {settings}{files}. Command: `{shlex.join(['python', *sys.argv])}`"


# ----------------------------------------------------------------------------------------------
# DTP study
# ----------------------------------------------------------------------------------------------
def unimportant_share(step: DTPStep) -> float:
    """Share of the action-to-vision attention (DTP's Eq. 4 map) outside the important region G."""
    total = sum(float(a.sum()) for a in step.action_attention.values())
    outside = sum(float(a[~step.important[v]].sum()) for v, a in step.action_attention.items())
    return outside / total if total > 0 else float("nan")


class AttentionRecorder:
    """A DTP-wrapped agent for `evaluate` that keeps, per episode, the unimportant-region share of
    every model call (the wrapper's `last` analysis), and how many visual tokens each call pruned."""

    def __init__(self, agent: VLAAgent) -> None:
        self.agent, self.policy_name = agent, f"{agent.recipe.policy}+dtp"
        self.episodes: list[list[float]] = []
        self.pruned: list[int] = []

    @property
    def model_calls(self) -> int:
        return self.agent.model_calls

    def reset(self) -> None:
        self.agent.reset()
        self.episodes.append([])

    def act(self, obs: Any) -> np.ndarray:
        calls = self.agent.model_calls
        action = self.agent.act(obs)
        if self.agent.model_calls != calls:
            step = self.agent.model.last
            self.episodes[-1].append(unimportant_share(step))
            self.pruned.append(sum(int(m.sum()) for m in step.pruned.values()))
        return action


def compare_shares(successful: Sequence[float], failed: Sequence[float]) -> dict[str, Any]:
    """Mann-Whitney U (two-sided) of per-episode unimportant-region shares, failed vs successful;
    U above n_failed * n_successful / 2 means failed episodes look outside the region more."""
    summary = {"n_success": len(successful), "n_failed": len(failed),
               "share_success": mean_std(successful)[0], "share_failed": mean_std(failed)[0], "U": None, "p": None}
    if successful and failed:
        test = mannwhitneyu(failed, successful, alternative="two-sided")
        summary |= {"U": float(test.statistic), "p": float(test.pvalue)}
    return summary


def run_dtp_study(agents: Sequence[str | Path], env: str, budget: Budget, seeds: Sequence[int], out: Path,
                  taus: Sequence[float], random_taus: Sequence[float]) -> dict[str, Any]:
    """Every (agent, variant, seed) not yet in `<out>/dtp.json`, then the attention analysis."""
    variants = dtp_variants(taus, random_taus)
    unknown = set(budget.overrides) - set(load_wrapper_recipe("dtp", {})[0])
    if unknown:
        raise ValueError(f"--overrides {sorted(unknown)} are not DTP settings (policies/dtp.yaml)")
    results = ResultsFile(out / "dtp.json", "dtp", {k: v for k, v in asdict(budget).items() if k in DTP_BUDGET} | {"env": env})
    skipped: dict[str, str] = {}
    loaded = {}
    for path in map(str, agents):
        agent = load_agent(path)
        if can_wrap(agent.model):
            loaded[path] = agent
        else:
            skipped[path] = f"{agent.recipe.policy} has no language-model attention for DTP"
    todo = [(a, v, s) for a in loaded for v in variants for s in seeds if not results.find(agent=a, variant=v.name, seed=s)]

    def extra() -> dict[str, Any]:
        return {"env": env, "skipped": skipped, "analysis": dtp_analysis(results.runs)}

    with progress_bar() as bar:
        overall = bar.add_task("dtp", total=len(todo) * budget.episodes, status=f"{len(todo)} evaluations")
        for path, variant, seed in todo:
            settings, _ = load_wrapper_recipe("dtp", budget.overrides | variant.overrides | {"seed": seed})
            wrapped = AttentionRecorder(DTP(loaded[path], **settings))
            image_size = budget.image_size or loaded[path].recipe.backbone.image_size
            report = success_report(wrapped, env, budget.episodes, FINAL_EVAL_SEED + 1000 * seed, budget, image_size)
            m = report.metrics()
            results.add({
                "agent": path, "policy": loaded[path].recipe.policy, "variant": variant.name, "settings": settings,
                "seed": seed, "success": m["pc_success"], "successes": m["successes"], "episodes": m["n_episodes"],
                "episode_success": [ep.success for ep in report.episodes],
                "unimportant_share": [float(np.mean(s)) if s else None for s in wrapped.episodes],
                "pruned_per_call": float(np.mean(wrapped.pruned)) if wrapped.pruned else 0.0,
            }, **extra())
            bar.update(overall, advance=budget.episodes, status=f"{Path(path).name} {variant.name} {m['pc_success']:.0f}%")
    results.write(**extra())
    return {"study": "dtp", "budget": results.budget, "runs": results.runs, **extra(),
            "variants": [asdict(v) for v in variants]}


def dtp_analysis(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per agent, over the unwrapped policy's episodes of every seed: successful vs failed shares."""
    analysis = {}
    for agent in dict.fromkeys(r["agent"] for r in runs):
        pairs = [(ok, share) for r in runs if r["agent"] == agent and r["variant"] == "unwrapped"
                 for ok, share in zip(r["episode_success"], r["unimportant_share"]) if share is not None]
        analysis[agent] = compare_shares([s for ok, s in pairs if ok], [s for ok, s in pairs if not ok])
    return analysis


def pooled_against_unwrapped(runs: Sequence[dict[str, Any]], agents: Sequence[str], names: Sequence[str]) -> list[str]:
    """Each arm's successes pooled over the seeds it shares with the unwrapped policy, the two-sided Fisher
    exact p against it, in bold under Bonferroni's 0.05 / m (m: the arms compared with it)."""
    arms = [n for n in names if n != "unwrapped"]
    alpha = 0.05 / max(len(arms), 1)
    lines = [f"Successes pooled over seeds; each arm against the unwrapped policy on the seeds both ran, two-sided Fisher "
             f"exact p (**bold**: under Bonferroni's 0.05 / {len(arms)} = {alpha:.2g}):", "",
             "| agent | unwrapped | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for agent in agents:
        by_arm = {n: {r["seed"]: r for r in runs if r["agent"] == agent and r["variant"] == n} for n in names}
        k, n = pooled(list(by_arm.get("unwrapped", {}).values()))
        cells = [f"{k}/{n}" if n else "-"]
        for arm in arms:
            common = sorted(set(by_arm[arm]) & set(by_arm.get("unwrapped", {})))
            if not common:
                cells.append("-")
                continue
            (k, n), (k0, n0) = pooled([by_arm[arm][s] for s in common]), pooled([by_arm["unwrapped"][s] for s in common])
            p = fisher_exact([[k, n - k], [k0, n0 - k0]]).pvalue
            cell = f"{k}/{n} vs {k0}/{n0}, p = {p:.2g}"
            cells.append(f"**{cell}**" if p < alpha else cell)
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return lines


def dtp_markdown(result: dict[str, Any], seeds: Sequence[int]) -> str:
    runs = [r for r in result["runs"] if r["seed"] in seeds]
    names = list(dict.fromkeys(r["variant"] for r in runs))  # also those of earlier invocations (other taus)
    agents = list(dict.fromkeys(r["agent"] for r in runs))
    lines = [f"### DTP on each base policy, {result['env']}", "", budget_line(result["budget"], seeds), "",
             "| agent | policy | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for agent in agents:
        mine = [r for r in runs if r["agent"] == agent]
        cells = []
        for name in names:
            per_seed = {r["seed"]: r["success"] for r in mine if r["variant"] == name}
            cells.append(format_cell([per_seed[s] for s in seeds if s in per_seed]))
        lines.append(f"| {agent} | {mine[0]['policy']} | " + " | ".join(cells) + " |")
    lines += ["", "Success %: mean ± sample std over seeds (per-seed values). tau: DTP's tolerance; random-*: "
              "as many random tokens pruned as DTP would prune, outside its important region or anywhere.", "",
              *pooled_against_unwrapped(runs, agents, names), "",
              "Visual tokens pruned per act (mean over calls; mean ± std over seeds):", "",
              "| agent | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for agent in agents:
        mine = [r for r in runs if r["agent"] == agent]
        cells = [format_cell([r["pruned_per_call"] for r in mine if r["variant"] == name]) for name in names]
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    lines += ["",
              "Share of action-to-vision attention outside DTP's important region, unwrapped policy, per episode "
              "(all seeds pooled); Mann-Whitney U of failed vs successful episodes, two-sided:", "",
              "| agent | successful (n) | failed (n) | share, successful | share, failed | U | p |", "|---|---|---|---|---|---|---|"]
    for agent in agents:
        a = result["analysis"][agent]
        lines.append(f"| {agent} | {a['n_success']} | {a['n_failed']} | {number(a['share_success'])} | "
                     f"{number(a['share_failed'])} | {number(a['U'], 1)} | {p_value(a['p'])} |")
    for agent, why in result["skipped"].items():
        lines.append(f"\nSkipped {agent}: {why}.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=[*STUDIES, "dtp"])
    p.add_argument("--out", type=Path, default=None, help="default: runs/ablations/<study>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=Budget.steps, help="training steps per run")
    p.add_argument("--episodes", type=int, default=Budget.episodes, help="final evaluation episodes per run")
    p.add_argument("--eval-every", type=int, default=Budget.eval_every, help="steps between periodic evaluations")
    p.add_argument("--eval-episodes", type=int, default=Budget.eval_episodes, help="episodes per periodic evaluation and task")
    p.add_argument("--save-every", type=int, default=Budget.save_every, help="training steps between checkpoints (resume points)")
    p.add_argument("--demos", type=int, default=Budget.demos, help="expert episodes per task when collecting")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="camera px (default: the study's; dtp: each agent's input size)")
    p.add_argument("--max-episode-steps", type=int, default=None, help="cap on episode length (default: the task's)")
    p.add_argument("--overrides", default="{}", help="JSON recipe keys for every variant whose recipe has them "
                   "(dtp: DTP settings, e.g. '{\"layers\": [1, 2]}')")
    p.add_argument("--data", nargs="*", default=[], help="HDF5 demonstrations (vla-agents collect) every run trains on; "
                   "none: one file per task is collected")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where collected demonstrations are kept")
    p.add_argument("--variants", nargs="+", default=None, help="run only these variants (trained and tabled in the study's declared order)")
    p.add_argument("--tasks", nargs="+", default=None, help="env specs (default: the study's)")
    p.add_argument("--agents", nargs="+", default=[], help="dtp: trained agent folders")
    p.add_argument("--env", default="embedded/pick_color_clutter", help="dtp: evaluation environment")
    p.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0], help="dtp: tau sweep")
    p.add_argument("--random-taus", type=float, nargs="*", default=[0.5], help="dtp: taus of the random-mask ablations (none: no such arm)")
    p.add_argument("--report", action="store_true", help="train nothing: write the tables from the runs already in "
                   "<out>/<study>.json (all their seeds in --seeds)")
    p.add_argument("--append-readout", type=Path, default=None, help="append the markdown to this file (e.g. benchmarks/README.md)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or Path("runs/ablations") / args.study
    budget = Budget(steps=args.steps, episodes=args.episodes, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                    demos=args.demos, batch_size=args.batch_size, image_size=args.image_size,
                    max_episode_steps=args.max_episode_steps, save_every=args.save_every, overrides=json.loads(args.overrides))
    if args.study == "dtp":
        if args.report:
            raise SystemExit(f"--report is for the training studies ({', '.join(STUDIES)}); the dtp study prints its tables as it runs")
        if not args.agents:
            raise SystemExit("the dtp study needs --agents DIR [DIR ...] (trained agent folders)")
        result = run_dtp_study(args.agents, args.env, budget, args.seeds, out, args.taus, args.random_taus)
        markdown = dtp_markdown(result, args.seeds)
    elif args.report:
        result = recorded_study(STUDIES[args.study], out, args.variants, args.tasks)
        markdown = training_markdown(result, args.seeds)
    else:
        result = run_training_study(STUDIES[args.study], budget, args.seeds, out, args.data, args.variants, args.tasks, args.data_dir)
        markdown = training_markdown(result, args.seeds)
    (out / f"{args.study}.md").write_text(markdown)
    print(markdown)
    if args.append_readout:
        with args.append_readout.open("a") as f:
            f.write("\n" + markdown)
        print(f"appended to {args.append_readout}")


if __name__ == "__main__":
    main()
