"""`vla-agents demo`: the shipped agents on the embedded suite, with videos and a comparison table.

The shipped checkpoints in `policies/checkpoints/` are produced by the project's own `collect` and
`train bc`; `SHIPPED` below is the single source of those commands, `--retrain` re-runs them and
`policies/checkpoints/README.md` records them as the equivalent command lines. Each shipped agent whose policy DTP can wrap (all but
VAT, which has no prompt tokens) also appears wrapped in DTP (training-free distracting-token pruning,
`policies/dtp.yaml` settings) beside the unwrapped one. Where SIMPLER's simulator and assets are
installed, a second table puts the shipped SIMPLER agent beside its scripted expert on
`simpler/widowx_carrot_on_plate`; elsewhere the demo says what to install.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from vla_agents.atomic import write_file
from vla_agents.resources import resource_dir
from vla_agents.sim import INSTALL, make_env
from vla_agents.sim.experts import ScriptedExpert

if TYPE_CHECKING:
    from vla_agents.eval.compare import ComparisonResult

CHECKPOINTS = resource_dir("policies") / "checkpoints"
DEMO_TASKS = ("embedded/lift", "embedded/pick_color")
DEMO_DATA = (("embedded/lift", 200), ("embedded/pick_color", 200))  # expert episodes collected per task
# the grounded agents' set (issue 33): the clutter and stack tasks too, more pick_color scenes
GROUNDED_DATA = (("embedded/lift", 200), ("embedded/pick_color", 300), ("embedded/pick_color_clutter", 200),
                 ("embedded/stack", 200))
DEMO_DATA_SEED = 100000  # far from the evaluation seeds (1000 on), so no training scene is evaluated
SIMPLER_TASK = "simpler/widowx_carrot_on_plate"
SIMPLER_AGENT = "vat-tiny-simpler"  # trained on SIMPLER_TASK; its commands are in policies/checkpoints/README.md
SIMPLER_HEADING = "## SIMPLER"  # that README's section on it, which `--retrain` (embedded only) keeps


@dataclass(frozen=True)
class Step:
    """One step of `--retrain`: the command line the record shows, and the library call that runs it."""

    args: list[str]
    run: Callable[[], object]


@dataclass(frozen=True)
class ShippedAgent:
    """A checkpoint the demo ships, and how it was made."""

    name: str
    policy: str
    steps: int
    batch_size: int = 16
    overrides: str = ""  # JSON recipe overrides, when the checkpoint predates a recipe change
    data_noise: float = 0.0  # `collect --noise` of its demonstrations (DART; 0: the expert's own path)
    data: tuple[tuple[str, int], ...] = DEMO_DATA  # (task, episodes) of its demonstrations
    continued_to: int = 0  # then `--resume --steps continued_to`: the cosine schedule restretched to the
    # longer run, so it restarts at its value there (half the peak lr when continued_to = 2 x steps)
    fine_tuned: tuple[int, float] | None = None  # then (steps, lr) more from its weights (`--init-from`), a fresh cosine

    def train_steps(self, data: list[Path], out: Path, work: Path) -> list[Step]:
        """`train bc`, then `train bc --resume` to `continued_to` steps, then `train bc --init-from` that agent
        for `fine_tuned` (the earlier stages then train into `work`): run through the library, recorded as the
        equivalent command lines."""
        from vla_agents.train.bc import train_bc

        base = work / self.name if self.fine_tuned else out
        overrides = ["--overrides", self.overrides] if self.overrides else []
        first = ["train", "bc", "--policy", self.policy, "--scale", "tiny", "--data", *map(str, data),
                 "--steps", str(self.steps), "--batch-size", str(self.batch_size), "--save-every", "500",
                 *overrides, "--out", str(base)]
        train = partial(train_bc, policy=self.policy, data=list(data), out_dir=base, scale="tiny",
                        batch_size=self.batch_size, save_every=500, overrides=json.loads(self.overrides) if self.overrides else None)
        steps = [Step(first, partial(train, steps=self.steps))]
        if self.continued_to:
            at = first.index("--steps") + 1
            steps.append(Step([*first[:at], str(self.continued_to), *first[at + 1:], "--resume"],
                              partial(train, steps=self.continued_to, resume=True)))
        if self.fine_tuned:
            more, lr = self.fine_tuned
            steps.append(Step(["train", "bc", "--policy", self.policy, "--scale", "tiny", "--data", *map(str, data),
                               "--steps", str(more), "--batch-size", str(self.batch_size), "--lr", str(lr),
                               "--save-every", "500", "--init-from", str(base), "--out", str(out)],
                              partial(train_bc, policy=self.policy, data=list(data), out_dir=out, scale="tiny", steps=more,
                                      batch_size=self.batch_size, lr=lr, save_every=500, init_from=base)))
        return steps


UNGROUNDED = '{"backbone_path": null, "aux_target_weight": 0.0, "aux_attention_weight": 0.0}'  # before issue 33
SHIPPED = (
    ShippedAgent("oft-tiny-embedded", "oft", steps=8000, data_noise=0.4, data=GROUNDED_DATA, fine_tuned=(8000, 2.5e-4)),
    ShippedAgent("vla_adapter-tiny-embedded", "vla_adapter", steps=4000, continued_to=8000, overrides=UNGROUNDED),
    ShippedAgent("focusvla-tiny-embedded", "focusvla", steps=8000, data_noise=0.4, data=GROUNDED_DATA,  # as oft and VAT
                 fine_tuned=(8000, 2.5e-4)),
    ShippedAgent("vat-tiny-embedded", "vat", steps=8000, data_noise=0.4, data=GROUNDED_DATA,  # an OFT head: oft's data
                 fine_tuned=(16000, 2.5e-4)),
    ShippedAgent("deepvision-tiny-embedded", "deepvision", steps=8000, data_noise=0.4, data=GROUNDED_DATA,  # QwenVLA-OFT base
                 fine_tuned=(8000, 2.5e-4)),  # as oft
)


def retrain(data_dir: Path, console: Console) -> None:
    """Collect the demonstrations and train every shipped checkpoint from scratch."""
    from vla_agents.sim.collect import collect_demos

    data_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    files: dict[tuple[str, int, float], Path] = {}  # each (task, episodes, DART noise) collected once
    for agent in SHIPPED:
        for spec, episodes in agent.data:
            key = (spec, episodes, agent.data_noise)
            if key not in files:
                files[key] = data_dir / f"{spec.split('/')[1]}{episodes}{f'_noise{agent.data_noise}' if agent.data_noise else ''}.hdf5"
                args = ["collect", spec, "--episodes", str(episodes), "--seed", str(DEMO_DATA_SEED),
                        *(["--noise", str(agent.data_noise)] if agent.data_noise else []), "--out", str(files[key])]
                steps.append(Step(args, partial(collect_demos, spec, episodes, files[key], seed=DEMO_DATA_SEED,
                                                image_size=128, noise=agent.data_noise)))
    steps += [step for agent in SHIPPED
              for step in agent.train_steps([files[(s, n, agent.data_noise)] for s, n in agent.data], CHECKPOINTS / agent.name,
                                            data_dir.parent / "before_fine_tuning")]
    log = []
    root = CHECKPOINTS.parents[1]
    for step in steps:
        console.print(f"[bold]$ vla-agents {shlex.join(step.args)}")
        start = time.perf_counter()
        step.run()
        shown = [os.path.relpath(a, root) if a.startswith("/") else a for a in step.args]  # no machine paths in the record
        log.append(f"vla-agents {shlex.join(shown)}    # {time.perf_counter() - start:.0f} s")
    readme = CHECKPOINTS / "README.md"
    previous = readme.read_text() if readme.exists() else ""
    simpler = previous[previous.index(SIMPLER_HEADING):] if SIMPLER_HEADING in previous else ""  # not retrained here
    write_file(
        readme, "# Shipped tiny checkpoints\n\nProduced by `vla-agents demo --retrain`, which ran exactly these commands "
        "(wall time on the machine that made them after `#`):\n\n```\n" + "\n".join(log) + "\n```\n"
        + (f"\n{simpler}" if simpler else "")
    )


def _dtp_agent(path: Path):
    """A shipped agent wrapped in DTP (top level, so evaluation processes can unpickle it)."""
    from vla_agents.agent import load_agent
    from vla_agents.models.dtp import DTP

    return DTP(load_agent(path))


def run_demo(out_dir: Path, episodes: int = 8, retrain_first: bool = False, console: Console | None = None) -> ComparisonResult:
    from vla_agents.agent import load_agent
    from vla_agents.eval.compare import compare, render_table, table_console
    from vla_agents.eval.index import write_comparison_index
    from vla_agents.models.dtp import can_wrap

    console = console or table_console()
    missing = [a.name for a in SHIPPED if not (CHECKPOINTS / a.name / "config.json").exists()]
    if retrain_first or missing:
        if missing and not retrain_first:
            console.print(f"[yellow]checkpoints {missing} are missing: training them first")
        retrain(out_dir / "data", console)

    expert = ScriptedExpert()
    rows = compare(
        [("scripted-expert", lambda: expert)],
        {spec.split("/")[1]: (lambda s=spec: expert.bind(make_env(s))) for spec in DEMO_TASKS},
        episodes=episodes, seed=1000, video_dir=out_dir / "videos",
    )
    agents = []
    for a in SHIPPED:
        path = CHECKPOINTS / a.name
        agents.append((a.name, partial(load_agent, path)))
        if can_wrap(load_agent(path).model):  # DTP is training-free: the same weights, wrapped
            agents.append((f"{a.name}+dtp", partial(_dtp_agent, path)))
    tasks = {spec.split("/")[1]: spec for spec in DEMO_TASKS}
    rows.rows += compare(agents, tasks, episodes=episodes, seed=1000, video_dir=out_dir / "videos",
                         workers=min(2, os.cpu_count() or 1)).rows
    console.print(render_table(rows, title=f"embedded suite, {episodes} seeded episodes per task"))
    rows.save(out_dir / "comparison")
    index = write_comparison_index(rows, out_dir / "videos", title=f"vla-agents demo, {episodes} episodes per task")
    console.print(f"videos: {index}   table: {out_dir / 'comparison.json'} (and .csv)")
    simpler = simpler_rows(out_dir, episodes, console)
    if simpler is not None:
        rows.rows += [row for row in simpler.rows if row.errors]  # the exit status covers both tables
    return rows


def simpler_unavailable() -> str | None:
    """Why the SIMPLER rows cannot run here, or None when they can."""
    import importlib.util

    if importlib.util.find_spec("mani_skill") is None:
        return f"the SIMPLER simulator is not installed: {INSTALL['simpler']}"
    from vla_agents.adapters.simpler import SIMPLER_TASKS
    from vla_agents.sim import simpler_assets

    try:
        simpler_assets.check_assets(SIMPLER_TASKS[SIMPLER_TASK.split("/")[1]].ms3_env_id, simpler_assets.asset_dir())
    except FileNotFoundError as error:
        return str(error)
    return None


def simpler_rows(out_dir: Path, episodes: int, console: Console) -> ComparisonResult | None:
    """The scripted expert and the shipped SIMPLER agent on SIMPLER_TASK, or None (and why) when it cannot run."""
    from vla_agents.agent import load_agent
    from vla_agents.eval.compare import compare, render_table
    from vla_agents.sim.simpler_expert import SimplerExpert

    reason = simpler_unavailable()
    if reason:
        console.print(f"[yellow]SIMPLER rows skipped: {reason}")
        return None
    expert, task = SimplerExpert(), SIMPLER_TASK.split("/")[1]
    rows = compare([("scripted-expert", lambda: expert)], {task: lambda: expert.bind(make_env(SIMPLER_TASK))},
                   episodes=episodes, seed=1000, video_dir=out_dir / "videos")
    rows.rows += compare([(SIMPLER_AGENT, partial(load_agent, CHECKPOINTS / SIMPLER_AGENT))], {task: SIMPLER_TASK},
                         episodes=episodes, seed=1000, video_dir=out_dir / "videos").rows
    console.print(render_table(rows, title=f"SIMPLER (ManiSkill3), {episodes} episodes (SimplerEnv's episodes 0..)"))
    rows.save(out_dir / "comparison_simpler")
    return rows
