"""`train_rl`: RL fine-tuning of a saved agent with stable-baselines3, in one of two modes.

- residual (`residual.py`): the agent stays frozen; SAC or PPO learns a bounded correction of its actions.
- full (`full_rl.py`): PPO on the VLA itself, a Gaussian around its L1 head, initialised from BC.

This module holds what the two share: vectorised envs (subprocesses when n_envs > 1), the reward
options, seeded success evaluation of the deterministic agent (before, every `eval_every` env
steps, after), per-episode and per-update logs, a Rich progress bar, and the output folder: the
agent (`load_agent` reads it back), `rl_log.json` and `curve.png`.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_agents.atomic import check_target, recover, write_file
from vla_agents.residual import CONFIG_FILE, DEFAULT_ALGO, RESIDUAL_SCALE
from vla_agents.train.arguments import at_least, check_device
from vla_agents.train.checkpoint import write_checkpoint

MODES = ("residual", "full")
REWARDS = ("sparse", "shaped")


def shape_reward(reward: float, mode: str) -> float:
    """"sparse": the env's 0/1 success reward; "shaped": Policy Decorator's r - 1, a cost per step
    until success, so faster success pays more."""
    if mode not in REWARDS:
        raise ValueError(f"unknown reward {mode!r}; expected one of {REWARDS}")
    return float(reward) - 1.0 if mode == "shaped" else float(reward)


def vec_env(factory: Callable[[], Any], n_envs: int, seed: int) -> Any:
    """`n_envs` copies of `factory()`, monitored and seeded. robosuite/EGL contexts do not survive
    fork, so subprocess workers start fresh interpreters (and `factory` must pickle)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    venv = SubprocVecEnv([factory] * n_envs, start_method="forkserver") if n_envs > 1 else DummyVecEnv([factory])
    venv = VecMonitor(venv)
    venv.seed(seed)
    return venv


@dataclass
class RLRun:
    """What a mode sets up: the SB3 algorithm (on its vectorised env), the agent that evaluation
    runs and `save_pretrained` writes, SB3's step budget, and the mode's settings for the log."""

    model: Any
    agent: Any
    timesteps: int
    config: dict[str, Any] = field(default_factory=dict)


def success_rate(agent: Any, env_spec: str, env_kwargs: dict, episodes: int) -> float:
    from vla_agents.eval.rollout import evaluate
    from vla_agents.sim import make_env

    report = evaluate(agent, lambda: make_env(env_spec, **env_kwargs), episodes, seed=10_000, progress=False)
    return float(np.mean([r.success for r in report.episodes]))


def plot_curve(log: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if log["eval"]:
        ax.plot([e["step"] for e in log["eval"]], [e["success_rate"] for e in log["eval"]], "o-", label="eval success")
    episodes = log["train_episodes"]
    if episodes:
        wins = np.array([e["success"] for e in episodes], float)
        window = max(1, min(20, len(wins)))
        smooth = np.convolve(wins, np.ones(window) / window, mode="valid")
        ax.plot([e["step"] for e in episodes][window - 1 :], smooth, label=f"train success (mean of {window})")
    config = log["config"]
    ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.05, 1.05),
           title=f"{config['mode']} {config['algo'].upper()} on {config['env']}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_file(path, png.getvalue())


def _recorder(log: dict[str, Any], steps: int, eval_every: int, record_eval: Callable[[int], None],
              save_every: int, save_checkpoint: Callable[[int], None], progress: bool):
    """An SB3 callback counting env steps (a full-mode SB3 step runs a whole chunk, reported as
    `info["env_steps"]`), logging finished episodes, PPO updates, periodic evaluations and
    checkpoints, and drawing the progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from vla_agents.progress import LoggedProgress
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    config = log["config"]

    class Recorder(BaseCallback):
        def _on_training_start(self) -> None:
            self.env_steps, self.next_eval, self.next_save, self.updates = 0, eval_every, save_every, 0
            self.lengths = np.zeros(self.training_env.num_envs, dtype=int)
            self.start = time.perf_counter()
            self.bar = LoggedProgress(TextColumn(f"[bold]rl {config['mode']} {config['algo']}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not progress)
            self.bar.start()
            self.task = self.bar.add_task("env steps", total=steps, status="")

        def _on_step(self) -> bool:
            for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"])):
                n = int(info.get("env_steps", 1))
                self.env_steps += n
                self.lengths[i] += n
                if done:
                    if "episode" in info:
                        log["train_episodes"].append({"step": self.env_steps, "success": bool(info.get("success")),
                                                      "return": float(info["episode"]["r"]), "length": int(self.lengths[i])})
                    self.lengths[i] = 0
            if eval_every > 0 and self.env_steps >= self.next_eval:
                self.next_eval += eval_every
                record_eval(self.env_steps)
            if save_every > 0 and self.env_steps >= self.next_save:
                self.next_save += save_every
                save_checkpoint(self.env_steps)
            wins = [e["success"] for e in log["train_episodes"][-20:]]
            status = (f"{len(log['train_episodes'])} episodes, success {np.mean(wins) if wins else 0:.0%} (last 20)"
                      + (f", eval {log['eval'][-1]['success_rate']:.0%}" if log["eval"] else "")
                      + f", {self.env_steps / (time.perf_counter() - self.start):.1f} env steps/s")
            self.bar.update(self.task, completed=min(self.env_steps, steps), status=status)
            return True

        def _record_update(self) -> None:
            """PPO's statistics of its latest update (SB3 keeps them until its next log dump)."""
            values = self.model.logger.name_to_value
            n = values.get("train/n_updates")
            if isinstance(self.model, OnPolicyAlgorithm) and n is not None and n != self.updates:
                self.updates = n
                log["updates"].append({"step": self.env_steps, **{k.removeprefix("train/"): float(v)
                                                                   for k, v in values.items() if k.startswith("train/")}})

        def _on_rollout_start(self) -> None:
            self._record_update()

        def _on_training_end(self) -> None:
            self._record_update()
            self.bar.stop()

    return Recorder()


@dataclass
class RLConfig:
    """Everything an RL run is set by, each default here (`vla-agents train rl` flags set the same
    fields); checked when made, before any env process starts."""

    agent_dir: str
    """the agent folder to fine-tune; a residual agent folder continues training its residual"""
    env_spec: str
    """the environment spec, e.g. embedded/lift"""
    algo: str | None = None
    """residual: "ppo" (default) or "sac"; full: "ppo" only"""
    mode: str = "residual"
    """"residual" (a small SB3 policy corrects the frozen agent, see residual.py) or "full" (PPO on the VLA)"""
    steps: int = 10_000
    """env steps over all envs"""
    out_dir: str = "runs/rl"
    """where the agent, rl_log.json and curve.png are written"""
    n_envs: int = 2
    """envs stepped in worker processes"""
    seed: int = 0
    """seed of the SB3 algorithm and the envs"""
    reward: str = "sparse"
    """"sparse" (the env's 0/1 success) or "shaped" (Policy Decorator's r - 1)"""
    eval_episodes: int = 5
    """seeded episodes per evaluation"""
    eval_every: int = 0
    """evaluation period in env steps; 0: at the start and the end only"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """arguments of make_env (image_size, max_episode_steps, ...)"""
    lr: float | None = None
    """learning rate; None: SB3's (residual) or full mode's own"""
    device: str = "cpu"
    """device of the SB3 policy (full: of the VLA too)"""
    scale: float = RESIDUAL_SCALE
    """residual: the correction is scale * clip(r, -1, 1)"""
    progressive_explore: int = 0
    """residual: use the residual with probability min(steps / N, 1) (Policy Decorator); 0: always"""
    feature_dim: int = 32
    """residual: width of the projected VLA features it observes"""
    bc_weight: float = 0.0
    """full: weight of BC's loss to the demonstration chunks in bc_data, added to PPO's"""
    bc_data: list[str] | None = None
    """full: demonstration HDF5 files for bc_weight"""
    log_std_init: float = -1.5
    """PPO (full, and residual PPO): initial log-std of its Gaussian"""
    save_every: int = 0
    """write the agent so far to out_dir/checkpoint every N env steps; 0: only at the end"""
    state_keys: list[str] = field(default_factory=list)
    """residual: privileged raw-observation entries it observes too (e.g. object-state, as ResiP)"""
    tensorboard_log: str | None = None
    """SB3's tensorboard_log: its statistics as TensorBoard events under this folder"""

    def __post_init__(self) -> None:
        self.agent_dir, self.env_kwargs, self.state_keys = str(self.agent_dir), dict(self.env_kwargs or {}), list(self.state_keys or [])
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; expected one of {REWARDS}")
        for name, value in (("eval_every", self.eval_every), ("save_every", self.save_every)):
            if value < 0:
                raise ValueError(f"{name} is a period in env steps, 0 for never; got {value}")
        at_least(1, steps=self.steps, n_envs=self.n_envs, feature_dim=self.feature_dim)
        at_least(0, eval_episodes=self.eval_episodes, progressive_explore=self.progressive_explore, lr=self.lr,
                 bc_weight=self.bc_weight)
        if not self.scale > 0:
            raise ValueError(f"scale (of the residual's correction) must be > 0, got {self.scale}")
        check_device(self.device)


def train_rl(config: RLConfig, progress: bool = True) -> Any:
    """RL fine-tuning as `config` says. Returns the trained agent, also written to `config.out_dir`
    with `rl_log.json` and `curve.png`."""
    agent_dir, env_spec, env_kwargs, algo, steps = config.agent_dir, config.env_spec, config.env_kwargs, config.algo, config.steps
    out_dir = check_target(config.out_dir)
    recover(out_dir)  # a save or checkpoint a kill interrupted is completed, not lost
    if config.mode == "residual":
        from vla_agents.train.residual import setup_residual

        run = setup_residual(config)
    else:
        from vla_agents.train.full_rl import setup_full

        algo = algo or DEFAULT_ALGO
        if config.state_keys:
            raise ValueError(f"state keys {config.state_keys} are for the residual's observation; full mode's actor is the VLA")
        if (Path(agent_dir) / CONFIG_FILE).exists():
            raise ValueError(f"{agent_dir} is a residual agent; full mode fine-tunes a VLA agent folder "
                             "(its base/ folder, for instance)")
        if algo != "ppo":
            raise ValueError(f"mode='full' trains with PPO (its actor is a Gaussian with a log-prob), not {algo!r}")
        run = setup_full(config)
    algo = run.config.get("algo", algo)
    out_dir.mkdir(parents=True, exist_ok=True)

    log: dict[str, Any] = {"config": {"agent": agent_dir, "env": env_spec, "algo": algo, "mode": config.mode,
                                      "steps": steps, "n_envs": config.n_envs, "seed": config.seed,
                                      "reward": config.reward, "lr": config.lr, "eval_episodes": config.eval_episodes,
                                      **run.config},
                           "eval": [], "train_episodes": [], "updates": []}
    start, eval_s = time.perf_counter(), 0.0

    def record_eval(step: int) -> None:
        nonlocal eval_s
        if config.eval_episodes > 0:
            tic = time.perf_counter()
            rate = success_rate(run.agent, env_spec, env_kwargs, config.eval_episodes)
            eval_s += time.perf_counter() - tic
            log["eval"].append({"step": step, "success_rate": rate, "wall_s": time.perf_counter() - start})

    def save_checkpoint(step: int) -> None:
        def write(folder: Path) -> None:
            run.agent.write_to(folder)
            (folder / "rl_log.json").write_text(json.dumps({**log, "env_steps": step}, indent=2))

        write_checkpoint(out_dir, write)

    recorder = _recorder(log, steps, config.eval_every, record_eval, config.save_every, save_checkpoint, progress)
    # SB3's default logger makes an empty SB3-<time> folder in the temp dir even at verbose=0; the recorder reads
    # PPO's statistics from the logger in memory, and rl_log.json is this run's log.
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.utils import configure_logger

    run.model.set_logger(configure_logger(0, str(config.tensorboard_log), algo.upper()) if config.tensorboard_log
                         else Logger(folder=None, output_formats=[]))
    record_eval(0)
    try:
        run.model.learn(total_timesteps=run.timesteps, callback=recorder)
    finally:
        run.model.get_env().close()
    if not log["eval"] or log["eval"][-1]["step"] != recorder.env_steps:
        record_eval(recorder.env_steps)
    log.update(env_steps=recorder.env_steps, wall_s=time.perf_counter() - start, eval_s=eval_s)
    run.agent.save_pretrained(out_dir)
    write_file(out_dir / "rl_log.json", json.dumps(log, indent=2))
    plot_curve(log, out_dir / "curve.png")
    return run.agent
