"""Record scripted-expert demonstrations into LIBERO's HDF5 layout, for the embedded suite and SIMPLER.

Only successful episodes are written, as LIBERO's demonstration files hold only successes.
Observation t is stored with action t, the pairing behaviour cloning trains on; the file names the
adapter that reads its observations (`libero` for the embedded suite, `simpler_widowx` for SIMPLER, whose
recorder is `sim.simpler_expert.record_episode`).

With `noise` > 0 the executed translation is perturbed while the expert's own action is what gets
stored (DART, Laskey et al. 2017): the demonstrations then also cover states off the expert's path,
each labelled with the correction back toward it, which is what a cloned policy needs once its own
errors take it there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vla_agents.adapters.libero import quat2axisangle
from vla_agents.data.hdf5 import PRIVILEGED_OBS, DemoWriter
from vla_agents.progress import LoggedProgress
from vla_agents.sim import make_env
from vla_agents.sim.embedded import CAMERAS
from vla_agents.sim.experts import ScriptedExpert
from vla_agents.sim.projection import project


@dataclass
class CollectionReport:
    path: Path
    episodes: int
    attempts: int
    mean_length: float


def record_episode(env, expert: ScriptedExpert, seed: int, noise: float = 0.0, image_size: int = 128
                   ) -> tuple[bool, np.ndarray, dict[str, np.ndarray]]:
    """Roll the expert out once; return (success, the expert's actions (T, 7), LIBERO obs arrays (T, ...)
    plus the privileged position of the cube the expert's step is about (`ScriptedExpert.focus`: the
    named cube, then the base once it is carried there): world xyz and where it is in each camera view).
    `noise`: std of the Gaussian added to the executed translation (dx, dy, dz), seeded by `seed`."""
    if noise < 0:
        raise ValueError(f"noise must be a non-negative std (action units), got {noise}")
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    expert.reset()
    frames: dict[str, list] = {k: [] for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states", "joint_states",
                                               *PRIVILEGED_OBS)}
    scene = env.unwrapped.sim
    actions = []
    terminated = truncated = False
    while not (terminated or truncated):
        frames["agentview_rgb"].append(obs["agentview_image"])
        frames["eye_in_hand_rgb"].append(obs["robot0_eye_in_hand_image"])
        frames["ee_pos"].append(obs["robot0_eef_pos"])
        frames["ee_ori"].append(quat2axisangle(obs["robot0_eef_quat"]))
        frames["gripper_states"].append(obs["robot0_gripper_qpos"])
        frames["joint_states"].append(obs["robot0_joint_pos"])
        action = expert.act(obs)
        target = scene.cube_pos(expert.focus())
        frames["target_pos"].append(target)
        frames["target_uv"].append(np.stack([project(scene.sim, camera, target, image_size)[0][0] for camera in CAMERAS]))
        actions.append(action)
        executed = action.copy()
        if noise:
            executed[:3] = np.clip(executed[:3] + rng.normal(0.0, noise, 3), -1.0, 1.0)
        obs, _, terminated, truncated, info = env.step(executed)
    arrays = {k: np.stack(v) for k, v in frames.items()}
    return bool(info["success"]), np.stack(actions).astype(np.float32), arrays


def collect_demos(spec: str, episodes: int, out: str | Path, seed: int = 0, image_size: int = 128,
                  max_attempts: int | None = None, noise: float = 0.0, let_go_on_arrival: bool = False) -> CollectionReport:
    """Write `episodes` successful expert episodes of `spec` to `out` (seeds seed, seed+1, ...);
    `noise` > 0 perturbs the executed translation (DART, see the module docstring);
    `let_go_on_arrival`: the stack expert opens on reaching the place (`ScriptedExpert`)."""
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if let_go_on_arrival and not spec.startswith("embedded/"):
        raise ValueError(f"--let-go-on-arrival is an option of the embedded suite's expert, not of {spec}'s")
    if spec.startswith("simpler/"):  # renders at SIMPLER's own 640x480; frames are scaled down when stored
        from vla_agents.sim import simpler_expert

        env = make_env(spec)
        expert, record, template = simpler_expert.SimplerExpert(env), simpler_expert.record_episode, env.unwrapped.instruction
    else:
        env = make_env(spec, image_size=image_size)
        expert = ScriptedExpert(env, let_go_on_arrival=let_go_on_arrival)
        record, template = record_episode, env.unwrapped.spec_.instruction
    max_attempts = max_attempts or 2 * episodes + 10
    lengths, attempts = [], 0
    columns = (TextColumn("[bold]collect[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with DemoWriter(out, instruction=template, env_name=spec, env_kwargs={"image_size": image_size},
                    adapter=env.unwrapped.adapters[0]) as writer, LoggedProgress(*columns) as progress:
        bar = progress.add_task(spec, total=episodes, status="")
        while len(lengths) < episodes:
            if attempts >= max_attempts:
                raise RuntimeError(f"only {len(lengths)}/{episodes} successful episodes after {attempts} attempts on {spec}")
            success, actions, obs = record(env, expert, seed + attempts, noise, image_size)
            attempts += 1
            if success:
                writer.add_episode(actions, obs, instruction=env.unwrapped.instruction)
                lengths.append(len(actions))
                progress.update(bar, advance=1, status=f"success {len(lengths)}/{attempts}")
    env.close()
    return CollectionReport(Path(out), len(lengths), attempts, float(np.mean(lengths)))
