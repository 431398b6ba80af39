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


@dataclass(frozen=True)
class Demos:
    """One demonstration file of the shipped agents: `collect`'s task, episode count and expert option."""

    task: str
    episodes: int
    let_go_on_arrival: bool = False  # `collect --let-go-on-arrival` (stack: open on reaching the place)

    def file_name(self, noise: float) -> str:
        return (f"{self.task.split('/')[1]}{self.episodes}{f'_noise{noise}' if noise else ''}"
                f"{'_let_go_on_arrival' if self.let_go_on_arrival else ''}.hdf5")


# the shipped agents' demonstrations (issue 33): every task the grounding targets, more pick_color scenes
GROUNDED_DATA = (Demos("embedded/lift", 200), Demos("embedded/pick_color", 300), Demos("embedded/pick_color_clutter", 200),
                 Demos("embedded/stack", 200))
# the last fine-tuning stage's: the same scenes, the stack expert letting go on arrival over the base (stop 48)
ARRIVAL_DATA = (*GROUNDED_DATA[:3], Demos("embedded/stack", 200, let_go_on_arrival=True))
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
class FineTuning:
    """A stage of `train bc --init-from` the previous one: a fresh cosine from `lr`, on `data`."""

    steps: int
    lr: float
    data: tuple[Demos, ...]


@dataclass(frozen=True)
class ShippedAgent:
    """A checkpoint the demo ships, and how it was made: `train bc` for `steps` on `data`, then each stage of
    `fine_tuned` from the previous stage's weights."""

    name: str
    policy: str
    fine_tuned: tuple[FineTuning, ...]
    steps: int = 8000
    batch_size: int = 16
    data_noise: float = 0.4  # `collect --noise` of its demonstrations (DART; 0: the expert's own path)
    data: tuple[Demos, ...] = GROUNDED_DATA

    def all_data(self) -> list[Demos]:
        """Every demonstration file its stages read, each once."""
        return list(dict.fromkeys([*self.data, *(d for stage in self.fine_tuned for d in stage.data)]))

    def train_steps(self, files: dict[Demos, Path], out: Path, work: Path) -> list[Step]:
        """Every stage (the earlier ones into `work`), run through the library, recorded as the equivalent
        command lines. `files`: where each of its demonstration sets was collected."""
        from vla_agents.train.bc import train_bc

        stages = [work / f"{self.name}-stage{i}" for i in range(len(self.fine_tuned))] + [out]

        def stage(data: tuple[Demos, ...], steps: int, out_dir: Path, extra: list[str], **kw) -> Step:
            paths = [files[d] for d in data]
            args = ["train", "bc", "--policy", self.policy, "--scale", "tiny", "--data", *map(str, paths),
                    "--batch-size", str(self.batch_size), "--save-every", "500", "--steps", str(steps), *extra, "--out", str(out_dir)]
            return Step(args, partial(train_bc, policy=self.policy, data=paths, scale="tiny", batch_size=self.batch_size,
                                      save_every=500, steps=steps, out_dir=out_dir, **kw))

        steps = [stage(self.data, self.steps, stages[0], [])]
        for tuning, start, end in zip(self.fine_tuned, stages, stages[1:]):
            steps.append(stage(tuning.data, tuning.steps, end, ["--lr", str(tuning.lr), "--init-from", str(start)],
                               lr=tuning.lr, init_from=start))
        return steps


HALF_PEAK = 2.5e-4  # the fine-tuning stages' learning rate: half the tiny recipes' peak
FINE_TUNING = FineTuning(8000, HALF_PEAK, ARRIVAL_DATA)
# the grounded agents (issue 33), one data set; the fine-tuning stages each shipped checkpoint had: 16000 steps
# after the first stage for every one (two fresh cosines, stop 49, or VAT's one long one)
SHIPPED = (
    ShippedAgent("oft-tiny-embedded", "oft", fine_tuned=(FINE_TUNING, FINE_TUNING)),
    ShippedAgent("vla_adapter-tiny-embedded", "vla_adapter", fine_tuned=(FINE_TUNING, FINE_TUNING)),
    ShippedAgent("focusvla-tiny-embedded", "focusvla", fine_tuned=(FINE_TUNING, FINE_TUNING)),
    ShippedAgent("vat-tiny-embedded", "vat", fine_tuned=(FineTuning(16000, HALF_PEAK, ARRIVAL_DATA),)),
    ShippedAgent("deepvision-tiny-embedded", "deepvision",
                 fine_tuned=(FineTuning(8000, HALF_PEAK, GROUNDED_DATA), FINE_TUNING)),
)


def retrain(data_dir: Path, console: Console) -> None:
    """Collect the demonstrations and train every shipped checkpoint from scratch."""
    from vla_agents.sim.collect import collect_demos

    data_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    files: dict[float, dict[Demos, Path]] = {}  # DART noise -> each demonstration set, collected once
    for agent in SHIPPED:
        mine = files.setdefault(agent.data_noise, {})
        for demos in agent.all_data():
            if demos not in mine:
                mine[demos] = data_dir / demos.file_name(agent.data_noise)
                args = ["collect", demos.task, "--episodes", str(demos.episodes), "--seed", str(DEMO_DATA_SEED),
                        *(["--noise", str(agent.data_noise)] if agent.data_noise else []),
                        *(["--let-go-on-arrival"] if demos.let_go_on_arrival else []), "--out", str(mine[demos])]
                steps.append(Step(args, partial(collect_demos, demos.task, demos.episodes, mine[demos], seed=DEMO_DATA_SEED,
                                                image_size=128, noise=agent.data_noise,
                                                let_go_on_arrival=demos.let_go_on_arrival)))
    steps += [step for agent in SHIPPED
              for step in agent.train_steps(files[agent.data_noise], CHECKPOINTS / agent.name, data_dir.parent / "training_stages")]
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
