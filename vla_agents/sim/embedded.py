"""The embedded suite as Gymnasium environments, with LIBERO's raw observation conventions.

Observations carry the keys LIBERO's `OffScreenRenderEnv` returns (`agentview_image`,
`robot0_eye_in_hand_image` upside down as OpenGL renders them, `robot0_eef_pos`,
`robot0_eef_quat` as x,y,z,w, `robot0_gripper_qpos`, `robot0_joint_pos`) plus the task's
`language_instruction`, so `LiberoAdapter` turns them into policy inputs exactly as it does for
LIBERO itself. Actions are LIBERO's: 7-D OSC delta pose in [-1, 1], gripper -1 open / +1 close.
`info` has `success`, `instruction`, `task`, `target` and `lifted` (the cubes now above the lift
height: on the cluttered tasks, lifting only a look-alike is the wrong-cube failure).

`object-state` (robosuite's name) is privileged simulator state that no VLA reads: for the target
cube, then the stack's base, its position, quaternion (x,y,z,w) and offset from the gripper, 10
numbers per cube. Residual RL can observe it (`--state-keys`, ResiP's state-based residual).
"""
from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from vla_agents.resources import resource_dir
from vla_agents.sim.instruction import InstructionSpace

os.environ.setdefault("MUJOCO_GL", "egl")
# robosuite logs to the console at INFO in every process that imports it (advice on private macro
# files, each controller file it loads); keep its errors only, so progress bars and tables stay readable.
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)

CAMERAS = ("agentview", "robot0_eye_in_hand")
OBJECT_STATE_PER_CUBE = 10  # position (3), quaternion (4), offset from the gripper (3)
# Scene parameters (TabletopCubes arguments): suite defaults, which a task may override or extend.
SCENE_KEYS = ("cube_half_size", "placement_range", "min_cube_distance", "lookalikes", "lookalike_half_size",
              "clutter", "clutter_range", "clutter_distance")
INSTRUCTION_MAX_CHARS = 128
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.;:'-_()"


@dataclass(frozen=True)
class TaskSpec:
    """One task of `envs/embedded.yaml`."""

    name: str
    kind: str  # "lift" or "stack"
    cubes: tuple[str, ...]
    instruction: str
    max_episode_steps: int
    target: str | None = None
    base: str | None = None
    randomize_target: bool = False
    description: str = ""
    scene: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def load_suite() -> dict[str, TaskSpec]:
    spec = yaml.safe_load((resource_dir("envs") / "embedded.yaml").read_text())
    defaults = spec["defaults"]
    tasks = {}
    for name, t in spec["tasks"].items():
        scene = {k: t.get(k, defaults.get(k)) for k in SCENE_KEYS if k in t or k in defaults}
        tasks[name] = TaskSpec(
            name=name,
            kind=t["kind"],
            cubes=tuple(t["cubes"]),
            instruction=t["instruction"],
            max_episode_steps=int(t["max_episode_steps"]),
            target=t.get("target", t["cubes"][0]),
            base=t.get("base"),
            randomize_target=bool(t.get("randomize_target", False)),
            description=t.get("description", ""),
            scene=scene,
        )
    return tasks



def osc_action(action) -> np.ndarray:
    """A 7-D LIBERO/robosuite OSC action, checked and clipped to [-1, 1] (shared by the embedded
    suite and real LIBERO, which take the same actions)."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (7,):
        raise ValueError(f"action must have shape (7,) [dx, dy, dz, drx, dry, drz, gripper], got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains NaN or inf: {action}")
    return np.clip(action, -1.0, 1.0)


def make_render_context_current(mj_sim) -> None:
    """robosuite (1.4 and 1.5) renders into whichever GL context is current, and building or closing
    another env switches it: without this before each render, an evaluation env opened beside a
    training env in the same process leaves the training env reading another (or no) framebuffer."""
    context = getattr(mj_sim, "_render_context_offscreen", None)
    if context is not None:
        context.gl_ctx.make_current()


_RENDERING_PID: int | None = None  # the process that built an offscreen renderer; a forked child inherits it


def claim_offscreen_rendering() -> None:
    """Fail fast where robosuite would hang: in a process forked from one that had already built an
    offscreen renderer (EGL and OSMesa state does not survive fork()). Gymnasium's AsyncVectorEnv
    forks by default, after building a first env in the parent to read its spaces."""
    global _RENDERING_PID
    if _RENDERING_PID not in (None, os.getpid()):
        raise RuntimeError(
            f"this process was forked from process {_RENDERING_PID}, which had already rendered with "
            f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: GL state does not survive fork() and rendering here would hang. "
            "Start vector-env workers with 'forkserver' or 'spawn': AsyncVectorEnv(env_fns, context='forkserver') or "
            "gym.make_vec(env_id, num_envs, vectorization_mode='async', vector_kwargs={'context': 'forkserver'})")
    _RENDERING_PID = os.getpid()


def build_tabletop(cubes: list[str], scene: dict[str, Any], image_size: int, use_cameras: bool, offscreen: bool):
    """The suite's robosuite scene (Panda, OSC pose control at 20 Hz, both cameras at `image_size`)."""
    from robosuite.controllers import load_composite_controller_config

    from vla_agents.sim.tabletop import TabletopCubes

    if offscreen:
        claim_offscreen_rendering()
    return TabletopCubes(
        colors=cubes,
        **scene,
        robots="Panda",
        controller_configs=load_composite_controller_config(robot="Panda"),
        initialization_noise={"magnitude": 0.02, "type": "gaussian"},
        use_camera_obs=use_cameras,
        has_renderer=False,
        has_offscreen_renderer=offscreen,
        camera_names=list(CAMERAS),
        camera_heights=image_size,
        camera_widths=image_size,
        control_freq=20,
        horizon=10**6,  # the wrapper owns the step limit
        ignore_done=True,
        hard_reset=False,
    )


class EmbeddedEnv(gym.Env):
    """A task of the embedded suite. Success terminates the episode and is reported in
    `info["success"]`; the step limit (`max_episode_steps`, default the suite spec's) truncates it.
    `render()` returns the agentview frame, upright, when `render_mode="rgb_array"`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    adapters = ("libero", "embedded")  # the agent adapters that read its observations

    def __init__(self, task: str, image_size: int = 128, use_cameras: bool = True, render_mode: str | None = None,
                 max_episode_steps: int | None = None):
        suite = load_suite()
        if task not in suite:
            raise ValueError(f"unknown embedded task {task!r}; expected one of {sorted(suite)}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 px, got {image_size}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.spec_ = suite[task]
        self.task_name = task
        self.image_size = int(image_size)
        self.use_cameras = use_cameras
        self.render_mode = render_mode
        # The step limit that truncates; set to None (registered envs) it is gym.make's TimeLimit alone.
        self.max_episode_steps = max_episode_steps or self.spec_.max_episode_steps
        self.sim = build_tabletop(list(self.spec_.cubes), self.spec_.scene, self.image_size, use_cameras,
                                  offscreen=use_cameras or render_mode == "rgb_array")
        self.target = self.spec_.target
        self.base = self.spec_.base
        image = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        spaces = {
            "robot0_eef_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
            "robot0_eef_quat": gym.spaces.Box(-1.0, 1.0, (4,), np.float64),
            "robot0_gripper_qpos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "robot0_joint_pos": gym.spaces.Box(-np.inf, np.inf, (7,), np.float64),
            "object-state": gym.spaces.Box(-np.inf, np.inf, (OBJECT_STATE_PER_CUBE * len(self.state_cubes),), np.float64),
            "language_instruction": InstructionSpace(INSTRUCTION_MAX_CHARS, charset=INSTRUCTION_CHARSET),
        }
        if use_cameras:
            spaces |= {f"{cam}_image": image for cam in CAMERAS}
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.instruction = self.spec_.instruction
        self.elapsed_steps = 0
        self._last_raw: dict[str, Any] = {}
        self._reset_done = self._closed = False

    # -- task ------------------------------------------------------------------------------------
    @property
    def language_instruction(self) -> str:
        """LIBERO exposes the instruction under this attribute name."""
        return self.instruction

    @property
    def instructions(self) -> list[str]:
        """Every instruction this task can give (one per cube when the target is random)."""
        targets = self.spec_.cubes if self.spec_.randomize_target else (self.spec_.target,)
        return [self.spec_.instruction.format(target=t) for t in targets]

    def _choose_task(self) -> None:
        if self.spec_.randomize_target:
            self.target = str(self.np_random.choice(self.spec_.cubes))
        self.instruction = self.spec_.instruction.format(target=self.target)

    def success(self) -> bool:
        if self.spec_.kind == "lift":
            return self.sim.is_lifted(self.target)
        return self.sim.is_stacked(self.target, self.base)

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._check_open("reset")
        super().reset(seed=seed)
        make_render_context_current(self.sim.sim)
        self.sim.rng = np.random.default_rng(self.np_random.integers(2**63))
        self._choose_task()
        raw = self.sim.reset()
        self.elapsed_steps = 0
        self._reset_done = True
        return self._observation(raw), self._info(success=False)

    def step(self, action):
        self._check_open("step")
        if not self._reset_done:  # the scene and, on templated tasks, the instruction are chosen by reset
            raise gym.error.ResetNeeded(f"{self.task_name}: call reset() before step()")
        make_render_context_current(self.sim.sim)
        raw, _, _, _ = self.sim.step(osc_action(action))
        self.elapsed_steps += 1
        success = self.success()
        truncated = not success and self.max_episode_steps is not None and self.elapsed_steps >= self.max_episode_steps
        return self._observation(raw), float(success), success, truncated, self._info(success)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() needs a render_mode; build the env with render_mode='rgb_array'")
            return None
        if self.use_cameras:
            return self._last_raw["agentview_image"][::-1].copy()
        make_render_context_current(self.sim.sim)
        frame = self.sim.sim.render(camera_name="agentview", width=self.image_size, height=self.image_size)
        return frame[::-1].copy()

    def close(self):
        if not self._closed:
            self.sim.close()
        self._closed = True

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise gym.error.ClosedEnvironmentError(f"{self.task_name}: {method}() after close(); make a new env")

    # -- helpers ---------------------------------------------------------------------------------
    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs = {key: np.asarray(raw[key], dtype=np.float64) for key in self.observation_space.spaces if key.startswith("robot0_") and not key.endswith("_image")}
        obs["object-state"] = np.concatenate([self._cube_state(color) for color in self.state_cubes])
        obs["language_instruction"] = self.instruction
        if self.use_cameras:
            for cam in CAMERAS:
                obs[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"], dtype=np.uint8)
        self._last_raw = obs
        return obs

    @property
    def state_cubes(self) -> tuple[str, ...]:
        """The cubes `object-state` describes: the target, then the stack's base."""
        return (self.target,) if self.spec_.kind == "lift" else (self.target, self.base)

    def _cube_state(self, color: str) -> np.ndarray:
        pos = self.sim.cube_pos(color)
        return np.concatenate([pos, self.sim.cube_quat(color), pos - self.sim.eef_pos()])

    def _info(self, success: bool) -> dict[str, Any]:
        lifted = [color for color in self.sim.cubes if self.sim.is_lifted(color)]  # a failure that lifted a look-alike instead
        return {"success": bool(success), "instruction": self.instruction, "task": self.task_name, "target": self.target,
                "lifted": lifted}
