"""`vla-agents` command line: demo, collect, corpus, pretrain, train bc, train rl, eval, push, compare, envs, policies.

Each subcommand parses its flags and calls one library function; the work lives in the library.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from vla_agents.atomic import write_file
from vla_agents.residual import RESIDUAL_SCALE

if TYPE_CHECKING:
    from vla_agents.eval.compare import ComparisonResult

os.environ.setdefault("MUJOCO_GL", "egl")


NOOP_HELP = ("drop no-op steps (arm still, gripper unchanged) as OpenVLA-OFT's LIBERO regeneration does "
             "(vla_agents/data/noop.py)")


def set_overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` flags -> overrides. Values are read as YAML, as the recipes are (`loss=l1`,
    `topk=null`, `agvp_layers=[0, 1]`); a dotted key sets a nested one (`a.b=1` -> {"a": {"b": 1}})."""
    import yaml

    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        *parents, last = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = yaml.safe_load(value)
    return out


def recipe_overrides(args: argparse.Namespace) -> dict | None:
    """--overrides (JSON) updated by the --set flags; None when neither is given."""
    overrides = {**(json.loads(args.overrides) if args.overrides else {}), **set_overrides(args.set)}
    return overrides or None


def _collect(args: argparse.Namespace) -> None:
    from vla_agents.sim.collect import collect_demos

    report = collect_demos(args.env, args.episodes, args.out, seed=args.seed, image_size=args.image_size, noise=args.noise,
                           let_go_on_arrival=args.let_go_on_arrival)
    print(f"wrote {report.episodes} successful episodes ({report.attempts} attempts, "
          f"mean length {report.mean_length:.1f}) to {report.path}")


def _corpus(args: argparse.Namespace) -> None:
    from vla_agents.sim.corpus import generate_corpus

    path = generate_corpus(args.out, args.scenes, seed=args.seed, image_size=args.image_size,
                           questions_per_scene=args.questions_per_scene)
    print(f"wrote {args.scenes} scenes, {args.scenes * args.questions_per_scene} questions to {path}")


def _pretrain(args: argparse.Namespace) -> None:
    from vla_agents.train.pretrain import pretrain_backbone

    overrides = recipe_overrides(args)
    result = pretrain_backbone(args.corpus, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, base=args.base, tokenizer=args.tokenizer, overrides=overrides,
                               save_every=args.save_every, eval_every=args.eval_every, resume=args.resume)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    print(f"backbone saved to {result.folder} (held-out: {shown}); name it in a recipe as backbone_path")


def _train_bc(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from vla_agents.train.bc import train_bc

    overrides = recipe_overrides(args)
    if bool(args.eval_env) != bool(args.eval_every) or (args.eval_env and args.eval_episodes < 1):
        raise ValueError("evaluation during training needs --eval-env, --eval-every >= 1 and --eval-episodes >= 1 "
                         f"together; got {args.eval_env!r}, {args.eval_every} and {args.eval_episodes}")
    eval_fn = None
    if args.eval_env and args.eval_every:
        from vla_agents.eval.rollout import evaluate

        def eval_fn(agent, step: int) -> dict[str, float]:
            agent.model.eval()
            report = evaluate(agent, args.eval_env, args.eval_episodes, seed=10_000, progress=False)
            return {"eval_pc_success": report.metrics()["pc_success"]}

    train_bc(policy=args.policy, data=args.data, steps=args.steps, out_dir=args.out, scale=args.scale,
             batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, save_every=args.save_every,
             resume=args.resume, seed=args.seed, overrides=overrides, eval_fn=eval_fn, eval_every=args.eval_every,
             mixed_precision=args.mixed_precision, log_with=args.log_with, without_noops=args.without_noops,
             init_from=args.init_from)
    if PartialState().is_main_process:  # under `accelerate launch`, once
        print(f"agent saved to {args.out}")


def _convert(args: argparse.Namespace) -> None:
    from vla_agents.data.formats import convert

    print(f"wrote {convert(args.sources, args.target, without_noops=args.without_noops, fps=args.fps)}")


def _train_rl(args: argparse.Namespace) -> None:
    from vla_agents.train.rl import RLConfig, train_rl

    train_rl(RLConfig(agent_dir=args.agent, env_spec=args.env, algo=args.algo, mode=args.mode_rl, steps=args.steps,
                      out_dir=args.out, n_envs=args.n_envs, seed=args.seed, reward=args.reward,
                      eval_episodes=args.eval_episodes, eval_every=args.eval_every, lr=args.lr, device=args.device,
                      scale=args.scale, progressive_explore=args.progressive_explore,
                      bc_weight=args.bc_weight, bc_data=args.bc_data, log_std_init=args.log_std_init,
                      save_every=args.save_every, state_keys=args.state_keys, tensorboard_log=args.tensorboard_log))
    print(f"{args.mode_rl} RL agent saved to {args.out} (curve: {Path(args.out) / 'curve.png'})")


def _push(args: argparse.Namespace) -> None:
    from vla_agents.hub import push_to_hub

    url = push_to_hub(args.agent, args.repo_id, revision=args.revision, private=args.private or None)
    print(f"pushed {args.agent} to {url}")


def _load_agent_for_eval(path: str | Path, n_open_loop: int | None):
    """`eval`'s agent (here, or in a Ray worker), with `--n-open-loop` applied."""
    from vla_agents.agent import load_agent

    agent = load_agent(path)
    if n_open_loop is not None:
        if not hasattr(agent, "set_n_open_loop"):
            raise SystemExit(f"--n-open-loop: {path} is a {type(agent).__name__}, which does not execute predicted chunks")
        agent.set_n_open_loop(n_open_loop)
    return agent


def _eval(args: argparse.Namespace) -> None:
    from vla_agents.eval.index import write_index
    from vla_agents.eval.provenance import provenance
    from vla_agents.eval.rollout import EvaluationInterrupted, episode_log_path, eval_info, evaluate, slugify
    from vla_agents.eval.video import OverlayStyle
    from vla_agents.sim import expand_spec

    specs = expand_spec(args.env)  # before loading the agent: a missing simulator fails at once
    agent = _load_agent_for_eval(args.agent, args.n_open_loop)
    options = dict(episodes=args.episodes, seed=args.seed, max_steps=args.max_steps, n_envs=args.n_envs,
                   overlay=OverlayStyle(args.overlay_scale, args.colormap))

    def video_dir(spec: str) -> Path | None:
        if not args.video_dir:
            return None
        return Path(args.video_dir).resolve() / slugify(spec) if len(specs) > 1 else Path(args.video_dir).resolve()

    def info_of(reports: list) -> dict:
        return eval_info(reports, provenance(agent, args.agent, specs, args.seed, args.episodes, max_steps=args.max_steps,
                                             n_envs=args.n_envs, backend=args.backend,
                                             **({"n_open_loop": args.n_open_loop} if args.n_open_loop else {})))

    if args.backend == "ray":
        from vla_agents.eval.ray_backend import evaluate_on_ray

        name, factory = Path(args.agent).name, partial(_load_agent_for_eval, Path(args.agent).resolve(), args.n_open_loop)
        by_task = evaluate_on_ray([(name, factory, spec, spec) for spec in specs], args.episodes, args.shard_episodes,
                                  True, lambda _, spec: video_dir(spec), **{k: v for k, v in options.items() if k != "episodes"})
        reports = [by_task[name, spec] for spec in specs]
    else:
        log = episode_log_path(args.json) if args.json else None
        if log is not None:
            log.unlink(missing_ok=True)  # the log of this evaluation only
        reports = []
        try:
            for spec in specs:
                reports.append(evaluate(agent, spec, video_dir=video_dir(spec), episode_log=log, **options))
                if len(specs) > 1:
                    print(f"{spec}: success {reports[-1].metrics()['pc_success']:.1f}%", flush=True)
        except EvaluationInterrupted as interrupt:
            reports.append(interrupt.report)
            if args.json:
                _write_json(Path(args.json), info_of(reports))
                print(f"partial results of {sum(len(r.episodes) for r in reports)} finished episodes in {args.json} "
                      f"and {log}", file=sys.stderr)
            raise
    info = info_of(reports)
    if args.json:
        _write_json(Path(args.json), info)
    if args.video_dir:
        write_index(reports, args.video_dir, title=f"{args.agent} on {args.env}")
    overall = info["overall"]
    print(f"{args.env}: success {overall['pc_success']:.1f}% over {overall['n_episodes']} episodes, "
          f"{overall['n_errors']} raised (act p50 {_ms(overall['step_ms_p50'])} ms/step, "
          f"{_ms(overall['chunk_ms_p50'])} ms/chunk)"
          + "".join(f"; {key} {value:.2f}" for key, value in overall.get("episode_stats", {}).items() if key.endswith("_ever"))
          + (f"; videos and index.html in {args.video_dir}" if args.video_dir else ""))
    failed = [f"{report.env_name}: {report.failure}" for report in reports if report.failure]
    if failed:
        raise RuntimeError("evaluation failed: " + "; ".join(failed))


def _ms(value: float | None) -> str:
    """A latency in ms, or "-" when nothing was timed (every episode raised before acting)."""
    return "-" if value is None else f"{value:.1f}"


def _compare(args: argparse.Namespace) -> None:
    from vla_agents.agent import load_agent
    from vla_agents.eval.compare import compare, render_table, table_console
    from vla_agents.eval.index import write_comparison_index
    from vla_agents.eval.rollout import episode_log_path
    from vla_agents.eval.video import OverlayStyle

    agents = [(Path(path).name, partial(load_agent, Path(path).resolve())) for path in args.agents]
    video_dir = Path(args.video_dir).resolve() if args.video_dir else None
    log = None
    if args.json:
        log = episode_log_path(args.json)
        log.unlink(missing_ok=True)  # the log of this comparison only
    result = compare(agents, args.env, episodes=args.episodes, seed=args.seed, video_dir=video_dir,
                     max_steps=args.max_steps, workers=args.workers, backend=args.backend,
                     shard_episodes=args.shard_episodes, n_envs=args.n_envs,
                     overlay=OverlayStyle(args.overlay_scale, args.colormap), episode_log=log)
    table_console().print(render_table(result))
    if args.json:
        written = [*result.save(args.json), *([log] if log.exists() else [])]
        print("wrote " + ", ".join(map(str, written)))
    if video_dir:
        print(f"videos: {write_comparison_index(result, video_dir)}")
    if result.interrupted:
        raise KeyboardInterrupt
    _raise_if_failed(result)


def _raise_if_failed(result: ComparisonResult) -> None:
    """The table and files keep what ran; the exit status says that something did not."""
    if result.failures:
        raise RuntimeError("; ".join(f"{agent} on {task} could not be evaluated: {error}" for agent, task, error in result.failures))


def _write_json(path: Path, payload: dict) -> None:
    """Atomic: a crash mid-write never leaves a truncated results file."""
    write_file(path, json.dumps(payload, indent=2))


def _demo(args: argparse.Namespace) -> None:
    from vla_agents.demo import run_demo

    _raise_if_failed(run_demo(out_dir=Path(args.out), episodes=args.episodes, retrain_first=args.retrain))


def _envs(args: argparse.Namespace) -> None:
    from rich.table import Table

    from vla_agents.adapters.simpler import SIMPLER_TASKS
    from vla_agents.eval.compare import table_console
    from vla_agents.sim import INSTALL, SUITES, suite_installed
    from vla_agents.sim.embedded import load_suite
    from vla_agents.sim.libero import SUITE_MAX_STEPS, SUITE_SIZES
    from vla_agents.sim.registration import gym_id

    installed = {suite: suite_installed(suite) for suite in SUITES}
    table = Table(title="Environments: make_env(spec) or gymnasium.make(id)", caption="`import vla_agents` registers the ids")
    for name in ("spec", "Gymnasium id", "steps", "installed", "description"):
        table.add_column(name, overflow="fold")
    mark = {True: "[green]yes[/green]", False: "[red]no[/red]"}
    for task, spec in load_suite().items():
        table.add_row(f"embedded/{task}", gym_id(f"embedded/{task}"), str(spec.max_episode_steps), mark[installed["embedded"]],
                      " ".join(spec.description.split()))
    for suite, size in SUITE_SIZES.items():
        table.add_row(f"libero/{suite}/0..{size - 1}", f"vla_agents/{suite}_task0..{size - 1}-v0", str(SUITE_MAX_STEPS[suite]),
                      mark[installed["libero"]], f"LIBERO {suite}, {size} tasks; the spec libero/{suite} evaluates them all")
    for task, spec in SIMPLER_TASKS.items():
        table.add_row(f"simpler/{task}", gym_id(f"simpler/{task}"), str(spec.max_episode_steps), mark[installed["simpler"]],
                      f"SIMPLER {spec.robot}: {spec.env_id}")
    table.add_row("robotwin/<task>", "-", "-", mark[installed["robotwin"]],
                  "RoboTwin 2.0 runs policies through its own script/eval_policy.py (vla_agents.adapters.robotwin_policy)")
    console = table_console()
    console.print(table)
    for suite in SUITES:
        if not installed[suite]:
            console.print(f"{suite} is not installed here: {INSTALL[suite]}", markup=False)


def _policies(args: argparse.Namespace) -> None:
    from rich.table import Table

    from vla_agents.eval.compare import table_console
    from vla_agents.models.dtp import can_wrap
    from vla_agents.policies import SCALES, WRAPPERS, build_model, list_policies, load_recipe, recipes_dir

    def summary(recipe: str) -> str:
        """A recipe file's header comment up to its first line ending a sentence: what the policy or wrapper is."""
        header = []
        for line in (recipes_dir() / f"{recipe}.yaml").read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("# "))
            if line.endswith("."):
                break
        return " ".join(header)

    table = Table(title="Policies: make_agent(name), train bc --policy name")
    for name in ("name", "scales", "what it is"):
        table.add_column(name, overflow="fold")
    for policy in list_policies():
        table.add_row(policy, ", ".join(SCALES), summary(f"{policy}-tiny"))
    wrappable = [policy for policy in list_policies() if can_wrap(build_model(load_recipe(policy, "tiny")))]
    for wrapper in WRAPPERS:
        table.add_row(f"<policy>+{wrapper}", "wrapper", f"{summary(wrapper)} Wraps {', '.join(wrappable)} here.")
    table_console().print(table)


def positive_int(text: str) -> int:
    """A count of at least 1, refused while parsing: before an agent is loaded, a worker or Ray started."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """How `eval` and `compare` run episodes and draw their videos."""
    from vla_agents.eval.compare import BACKENDS
    from vla_agents.eval.overlay import DEFAULT_COLORMAP, PERCEPTUAL_COLORMAPS
    from vla_agents.eval.video import SCALES

    parser.add_argument("--max-steps", type=positive_int, default=None, help="step limit per episode (default: the task's)")
    parser.add_argument("--n-envs", type=positive_int, default=1,
                        help="envs stepped in parallel worker processes, with one act_batch model call for all of them")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="ray: spread (agent, task, episode shard) work over the Ray cluster at $RAY_ADDRESS "
                             "(a local Ray instance without it); needs pip install 'vla-agents[ray]'")
    parser.add_argument("--shard-episodes", type=positive_int, default=10, help="with --backend ray: episodes per Ray task")
    parser.add_argument("--overlay-scale", choices=SCALES, default=SCALES[0],
                        help="attention colour scale in videos: one per episode (frames compare) or one per frame")
    parser.add_argument("--colormap", choices=PERCEPTUAL_COLORMAPS, default=DEFAULT_COLORMAP,
                        help="matplotlib colormap of the attention overlay")


class _DefaultsInHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where the default is None or off (its help
    says what then happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from vla_agents import __version__

    parser = argparse.ArgumentParser(prog="vla-agents", description="VLA policies as Gymnasium agents.",
                                     formatter_class=_DefaultsInHelp)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: add_parser(*a, formatter_class=_DefaultsInHelp, **kw)  # every subcommand

    p = sub.add_parser("demo", help="roll out the shipped agents on the embedded suite: videos + comparison table")
    p.add_argument("--out", default="runs/demo", help="where videos and tables go")
    p.add_argument("--episodes", type=int, default=8, help="episodes per agent and task (8 keeps the demo under 10 minutes on 2 CPU cores)")
    p.add_argument("--retrain", action="store_true", help="regenerate the shipped checkpoints from scratch first")
    p.set_defaults(func=_demo)

    p = sub.add_parser("collect", help="scripted-expert demonstrations -> LIBERO-layout HDF5")
    p.add_argument("env", help="environment spec, e.g. embedded/pick_color or simpler/widowx_carrot_on_plate")
    p.add_argument("--episodes", "-n", type=int, default=50, help="successful episodes to write")
    p.add_argument("--out", required=True, help="output .hdf5 file")
    p.add_argument("--seed", type=int, default=0, help="seed of the first attempt; each attempt takes the next")
    p.add_argument("--image-size", type=int, default=128, help="render size (embedded); stored frame height (simpler)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="std of Gaussian noise on the executed translation, in action units (SIMPLER's are metres); "
                        "the expert's clean action is stored (DART)")
    p.add_argument("--let-go-on-arrival", action="store_true",
                   help="embedded stack: the expert opens on reaching the place instead of holding closed there 2 steps")
    p.set_defaults(func=_collect)

    p = sub.add_parser("corpus", help="grounding corpus: rendered embedded scenes with questions the simulator answers")
    p.add_argument("--out", required=True, help="output .hdf5 file")
    p.add_argument("--scenes", type=int, default=24000)
    p.add_argument("--questions-per-scene", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.set_defaults(func=_corpus)

    p = sub.add_parser("pretrain", help="pretrain a tiny recipe's ViT and LLM on a grounding corpus -> a backbone folder")
    p.add_argument("--corpus", required=True, help="grounding corpus file (`vla-agents corpus`)")
    p.add_argument("--out", required=True, help="the backbone folder to write (a recipe's backbone_path)")
    p.add_argument("--base", default="oft-tiny", help="the tiny recipe whose backbone architecture is pretrained")
    p.add_argument("--tokenizer", choices=["word", "byte"], default="word")
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps")
    p.add_argument("--eval-every", type=int, default=0, help="held-out evaluation period in steps (0: at the end only)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
    p.add_argument("--overrides", default=None, help="JSON overrides of the base recipe's backbone keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one override, its value read as YAML (repeatable; applied after --overrides)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("convert", help="demonstrations between LIBERO/robomimic HDF5 and LeRobotDataset v3.0")
    p.add_argument("sources", nargs="+", metavar="SRC", help="HDF5 file(s), or one LeRobotDataset folder")
    p.add_argument("target", metavar="DST", help="a new LeRobotDataset folder (from HDF5) or .hdf5 file (from LeRobot)")
    p.add_argument("--without-noops", action="store_true", help=NOOP_HELP)
    p.add_argument("--fps", type=int, default=20, help="frame rate recorded in a LeRobotDataset (HDF5 records none)")
    p.set_defaults(func=_convert)

    train = sub.add_parser("train", help="fine-tune an agent").add_subparsers(dest="mode", required=True)
    p = train.add_parser("bc", help="behaviour cloning from demonstration files")
    p.add_argument("--policy", required=True, help="registered policy name (see `vla-agents policies`)")
    p.add_argument("--scale", choices=["tiny", "paper"], default="tiny", help="recipe size (tiny: CPU, minutes)")
    p.add_argument("--data", nargs="+", required=True, help="LIBERO/robomimic HDF5 files or LeRobotDataset v3.0 folders")
    p.add_argument("--without-noops", action="store_true", help=NOOP_HELP)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: the recipe's")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
    p.add_argument("--init-from", default=None, metavar="AGENT",
                   help="start from this trained agent's weights, recipe and normalization (a shipped checkpoint or a "
                        "`train bc` output) with a fresh optimizer and schedule: fine-tune it further")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and augmentation")
    p.add_argument("--overrides", default=None, help='JSON recipe overrides, e.g. \'{"gate_mode": "output_scale"}\'')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one recipe override, its value read as YAML, e.g. --set loss=l1 --set topk=null "
                        "(repeatable; applied after --overrides)")
    p.add_argument("--mixed-precision", choices=["bf16", "no"], default=None,
                   help="default: bf16 on a GPU or a CPU that multiplies bf16 natively, else no")
    p.add_argument("--log-with", choices=["tensorboard", "wandb"], default=None,
                   help="also send each step's loss and learning rate to TensorBoard (events in OUT/vla-agents/) or "
                        "W&B; default: nothing is sent anywhere (OUT/train_log.jsonl is always written)")
    p.add_argument("--eval-env", default=None, help="run evaluation rollouts on this env spec during training")
    p.add_argument("--eval-every", type=int, default=0, help="evaluation period in steps (0: never)")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    p.add_argument("--out", required=True, help="output folder (the trained agent)")
    p.set_defaults(func=_train_bc)

    p = train.add_parser("rl", help="RL fine-tuning (stable-baselines3): a residual on a frozen agent, or PPO on the whole VLA",
                         description="residual: a small SB3 policy (SAC or PPO) learns a bounded correction of a frozen "
                                     "agent's actions. full: PPO on the VLA itself (Gaussian around its L1 head, learned "
                                     "log-std, value head on its features; LoRA at paper scale), one decision per chunk, "
                                     "optionally regularised towards demonstrations. Either output loads with load_agent.")
    p.add_argument("--agent", required=True, help="BC agent folder (save_pretrained output) to start from")
    p.add_argument("--env", required=True, help="environment spec, e.g. embedded/lift")
    p.add_argument("--mode", dest="mode_rl", choices=["residual", "full"], default="residual",
                   help="residual: small policy corrects the frozen VLA's actions; full: PPO fine-tunes the VLA itself")
    p.add_argument("--algo", choices=["sac", "ppo"], default=None, help="default: ppo (the measured recipe; sac is residual-only)")
    p.add_argument("--steps", type=int, default=10_000, help="env steps, over all envs")
    p.add_argument("--n-envs", type=int, default=2, help="parallel envs (subprocesses when > 1)")
    p.add_argument("--reward", choices=["sparse", "shaped"], default="sparse", help="shaped: success - 1 per step")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: SB3's for residual; full: 3e-6 for the VLA, 100x for its log-std and value head)")
    p.add_argument("--scale", type=float, default=RESIDUAL_SCALE, help="residual: action scale of the correction")
    p.add_argument("--progressive-explore", type=int, default=0,
                   help="residual: use the correction with probability min(step/N, 1) (Policy Decorator); 0: always")
    p.add_argument("--state-keys", nargs="+", default=None, metavar="KEY",
                   help="residual: privileged simulator state it also observes, e.g. object-state "
                        "(ResiP); the saved agent then needs those keys in its observations")
    p.add_argument("--bc-weight", type=float, default=0.0,
                   help="full: weight of the L1 to demonstration chunks added to the PPO loss (needs --bc-data)")
    p.add_argument("--bc-data", nargs="+", default=None, help="full: demonstration HDF5 files for --bc-weight")
    p.add_argument("--log-std-init", type=float, default=-1.5,
                   help="PPO (full and residual): initial log-std of its Gaussian (-1.5: std 0.22)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluation period in env steps (0: start and end only)")
    p.add_argument("--save-every", type=int, default=0,
                   help="write the agent so far to OUT/checkpoint every N env steps (0: only at the end)")
    p.add_argument("--eval-episodes", type=int, default=5, help="seeded episodes per evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of the SB3 algorithm and the envs")
    p.add_argument("--device", default="cpu", help="device of the SB3 policy (full: of the VLA too)")
    p.add_argument("--tensorboard-log", default=None,
                   help="SB3's tensorboard_log: write its training statistics for TensorBoard under this folder")
    p.add_argument("--out", required=True, help="output folder (the agent, rl_log.json, curve.png)")
    p.set_defaults(func=_train_rl)

    p = sub.add_parser("eval", help="seeded evaluation episodes with videos and eval_info.json")
    p.add_argument("--agent", required=True, help="agent folder (save_pretrained output) or hub id (owner/name)")
    p.add_argument("--env", required=True,
                   help="environment spec, or a whole LIBERO suite (libero/libero_spatial: every task)")
    p.add_argument("--episodes", type=positive_int, default=50, help="per task; LIBERO episode i starts from init state i")
    p.add_argument("--seed", type=int, default=1000, help="first episode seed (demos use 0..)")
    p.add_argument("--video-dir", default=None, help="write one overlay video per episode, and index.html, here")
    p.add_argument("--json", default=None, help="write LeRobot-style eval_info.json here")
    p.add_argument("--n-open-loop", type=positive_int, default=None,
                   help="actions executed from each predicted chunk before the model runs again (default: the agent's recipe)")
    _run_arguments(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("push", help="upload an agent folder with a generated model card to the Hugging Face hub")
    p.add_argument("agent", help="agent folder (save_pretrained output); its checkpoint/ is not uploaded")
    p.add_argument("repo_id", help="hub repository, owner/name (created if needed; log in first: hf auth login)")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=_push)

    p = sub.add_parser("compare", help="evaluate several agents and print a comparison table")
    p.add_argument("agents", nargs="+", help="agent folders")
    p.add_argument("--env", nargs="+", required=True, help="environment specs")
    p.add_argument("--episodes", type=positive_int, default=20, help="per agent and task, the same seeds for every agent")
    p.add_argument("--seed", type=int, default=1000, help="first episode seed")
    p.add_argument("--video-dir", default=None, help="write videos to VIDEO_DIR/<agent>/<task>/ and index.html to VIDEO_DIR")
    p.add_argument("--json", default=None, help="write the table as JSON (and CSV beside it)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="evaluate (agent, task) pairs in this many processes, one core each (the simulator is the bottleneck)")
    _run_arguments(p)
    p.set_defaults(func=_compare)

    sub.add_parser("envs", help="list environment specs, their Gymnasium ids and whether their simulator is installed"
                   ).set_defaults(func=_envs)
    sub.add_parser("policies", help="list registered policies and wrappers").set_defaults(func=_policies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError, OSError) as error:
        print(f"vla-agents {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla-agents {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
