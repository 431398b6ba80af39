"""`vla-agents` command line: demo, collect, corpus, pretrain, train bc, train rl, eval, compare, envs, policies.

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

from vla_agents.train.rl import RESIDUAL_SCALE

if TYPE_CHECKING:
    from vla_agents.eval.compare import ComparisonResult

os.environ.setdefault("MUJOCO_GL", "egl")


def _collect(args: argparse.Namespace) -> None:
    from vla_agents.sim.collect import collect_demos

    report = collect_demos(args.env, args.episodes, args.out, seed=args.seed, image_size=args.image_size, noise=args.noise)
    print(f"wrote {report.episodes} successful episodes ({report.attempts} attempts, "
          f"mean length {report.mean_length:.1f}) to {report.path}")


def _corpus(args: argparse.Namespace) -> None:
    from vla_agents.sim.corpus import generate_corpus

    path = generate_corpus(args.out, args.scenes, seed=args.seed, image_size=args.image_size,
                           questions_per_scene=args.questions_per_scene)
    print(f"wrote {args.scenes} scenes, {args.scenes * args.questions_per_scene} questions to {path}")


def _pretrain(args: argparse.Namespace) -> None:
    from vla_agents.train.pretrain import pretrain_backbone

    overrides = dict(json.loads(args.overrides)) if args.overrides else None
    result = pretrain_backbone(args.corpus, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, base=args.base, tokenizer=args.tokenizer, overrides=overrides,
                               save_every=args.save_every, eval_every=args.eval_every, resume=args.resume)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    print(f"backbone saved to {result.folder} (held-out: {shown}); name it in a recipe as backbone_path")


def _train_bc(args: argparse.Namespace) -> None:
    from vla_agents.train.bc import train_bc

    overrides = dict(json.loads(args.overrides)) if args.overrides else None
    eval_fn = None
    if args.eval_env and args.eval_every:
        from vla_agents.eval.rollout import evaluate

        def eval_fn(agent, step: int) -> dict[str, float]:
            agent.model.eval()
            report = evaluate(agent, args.eval_env, args.eval_episodes, seed=10_000, progress=False)
            return {"eval_pc_success": report.metrics()["pc_success"]}

    train_bc(policy=args.policy, data=args.data, steps=args.steps, out_dir=args.out, scale=args.scale,
             batch_size=args.batch_size, lr=args.lr, save_every=args.save_every, resume=args.resume,
             seed=args.seed, overrides=overrides, eval_fn=eval_fn, eval_every=args.eval_every)
    print(f"agent saved to {args.out}")


def _train_rl(args: argparse.Namespace) -> None:
    from vla_agents.train.rl import train_rl

    train_rl(agent_dir=args.agent, env_spec=args.env, algo=args.algo, mode=args.mode_rl, steps=args.steps,
             out_dir=args.out, n_envs=args.n_envs, seed=args.seed, reward=args.reward,
             eval_episodes=args.eval_episodes, eval_every=args.eval_every, lr=args.lr, device=args.device,
             scale=args.scale, progressive_explore=args.progressive_explore,
             bc_weight=args.bc_weight, bc_data=args.bc_data, log_std_init=args.log_std_init,
             save_every=args.save_every, state_keys=args.state_keys)
    print(f"{args.mode_rl} RL agent saved to {args.out} (curve: {Path(args.out) / 'curve.png'})")


def _eval(args: argparse.Namespace) -> None:
    from vla_agents.agent import load_agent
    from vla_agents.eval.rollout import eval_info, evaluate, slugify
    from vla_agents.sim import expand_spec

    specs = expand_spec(args.env)  # before loading the agent: a missing simulator fails at once
    agent = load_agent(args.agent)
    reports = []
    for spec in specs:
        video_dir = Path(args.video_dir) / slugify(spec) if args.video_dir and len(specs) > 1 else args.video_dir
        reports.append(evaluate(agent, spec, episodes=args.episodes, seed=args.seed, video_dir=video_dir))
        if len(specs) > 1:
            print(f"{spec}: success {reports[-1].metrics()['pc_success']:.1f}%", flush=True)
    info = eval_info(reports)
    if args.json:
        _write_json(Path(args.json), info)
    overall = info["overall"]
    print(f"{args.env}: success {overall['pc_success']:.1f}% over {overall['n_episodes']} episodes "
          f"(act p50 {overall['step_ms_p50']:.1f} ms/step, {overall['chunk_ms_p50']:.1f} ms/chunk)"
          + "".join(f"; {key} {value:.2f}" for key, value in overall.get("episode_stats", {}).items() if key.endswith("_ever"))
          + (f"; videos in {args.video_dir}" if args.video_dir else ""))


def _compare(args: argparse.Namespace) -> None:
    from vla_agents.agent import load_agent
    from vla_agents.eval.compare import compare, render_table, table_console

    agents = [(Path(path).name, partial(load_agent, path)) for path in args.agents]
    result = compare(agents, args.env, episodes=args.episodes, seed=args.seed, video_dir=args.video_dir,
                     workers=args.workers)
    table_console().print(render_table(result))
    if args.json:
        result.save(Path(args.json).with_suffix(""))
        print(f"wrote {Path(args.json).with_suffix('.json')} and {Path(args.json).with_suffix('.csv')}")
    _raise_if_failed(result)


def _raise_if_failed(result: ComparisonResult) -> None:
    """The table and files keep what ran; the exit status says that something did not."""
    if result.failures:
        raise RuntimeError("; ".join(f"{agent} on {task} could not be evaluated: {error}" for agent, task, error in result.failures))


def _write_json(path: Path, payload: dict) -> None:
    """Atomic: a crash mid-write never leaves a truncated results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _demo(args: argparse.Namespace) -> None:
    from vla_agents.demo import run_demo

    _raise_if_failed(run_demo(out_dir=Path(args.out), episodes=args.episodes, retrain_first=args.retrain))


def _envs(args: argparse.Namespace) -> None:
    import vla_agents

    print("\n".join(vla_agents.list_envs()))


def _policies(args: argparse.Namespace) -> None:
    import vla_agents

    print("\n".join(vla_agents.list_policies()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-agents", description="VLA policies as Gymnasium agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="roll out the shipped agents on the embedded suite: videos + comparison table")
    p.add_argument("--out", default="runs/demo", help="where videos and tables go")
    p.add_argument("--episodes", type=int, default=8, help="episodes per agent and task (8 keeps the demo under 10 minutes on 2 CPU cores)")
    p.add_argument("--retrain", action="store_true", help="regenerate the shipped checkpoints from scratch first")
    p.set_defaults(func=_demo)

    p = sub.add_parser("collect", help="scripted-expert demonstrations -> LIBERO-layout HDF5")
    p.add_argument("env", help="environment spec, e.g. embedded/pick_color or simpler/widowx_carrot_on_plate")
    p.add_argument("--episodes", "-n", type=int, default=50, help="successful episodes to write")
    p.add_argument("--out", required=True, help="output .hdf5 file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="render size (embedded); stored frame height (simpler)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="std of Gaussian noise on the executed translation, in action units (SIMPLER's are metres); "
                        "the expert's clean action is stored (DART)")
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
    p.add_argument("--out", required=True, help="output folder; the backbone is written to OUT/backbone")
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
    p.set_defaults(func=_pretrain)

    train = sub.add_parser("train", help="fine-tune an agent").add_subparsers(dest="mode", required=True)
    p = train.add_parser("bc", help="behaviour cloning from demonstration files")
    p.add_argument("--policy", required=True, help="registered policy name (see `vla-agents policies`)")
    p.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    p.add_argument("--data", nargs="+", required=True, help="LIBERO/robomimic HDF5 files")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overrides", default=None, help='JSON recipe overrides, e.g. \'{"gate_mode": "output_scale"}\'')
    p.add_argument("--eval-env", default=None, help="run evaluation rollouts on this env spec during training")
    p.add_argument("--eval-every", type=int, default=0, help="evaluation period in steps (0: never)")
    p.add_argument("--eval-episodes", type=int, default=5)
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
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device of the SB3 policy (full: of the VLA too)")
    p.add_argument("--out", required=True, help="output folder (the agent, rl_log.json, curve.png)")
    p.set_defaults(func=_train_rl)

    p = sub.add_parser("eval", help="seeded evaluation episodes with videos and eval_info.json")
    p.add_argument("--agent", required=True, help="agent folder (save_pretrained output)")
    p.add_argument("--env", required=True,
                   help="environment spec, or a whole LIBERO suite (libero/libero_spatial: every task)")
    p.add_argument("--episodes", type=int, default=50, help="per task; LIBERO episode i starts from init state i")
    p.add_argument("--seed", type=int, default=1000, help="first episode seed (demos use 0..)")
    p.add_argument("--video-dir", default=None)
    p.add_argument("--json", default=None, help="write LeRobot-style eval_info.json here")
    p.set_defaults(func=_eval)

    p = sub.add_parser("compare", help="evaluate several agents and print a comparison table")
    p.add_argument("agents", nargs="+", help="agent folders")
    p.add_argument("--env", nargs="+", required=True, help="environment specs")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--video-dir", default=None)
    p.add_argument("--json", default=None, help="write the table as JSON (and CSV beside it)")
    p.add_argument("--workers", type=int, default=1,
                   help="evaluate (agent, task) pairs in this many processes, one core each (the simulator is the bottleneck)")
    p.set_defaults(func=_compare)

    sub.add_parser("envs", help="list environment specs").set_defaults(func=_envs)
    sub.add_parser("policies", help="list registered policies").set_defaults(func=_policies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        print(f"vla-agents {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
