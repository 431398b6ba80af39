"""Demonstrations in LIBERO's (robomimic-style) HDF5 layout.

Files we record and LIBERO's own downloads load through the same reader, so any policy trains on
either unchanged. Layout: `data/demo_{i}/{actions, rewards, dones, obs/<key>}`, with the task in
`data.attrs["problem_info"]` (JSON, `language_instruction`). Images are stored as the renderer
returns them (LIBERO's upside down, OpenGL), exactly as each benchmark stores them; turning them into
policy inputs is the job of the benchmark's adapter, named in `data.attrs["adapter"]` (files without
it, like LIBERO's own downloads, are "libero"), whose `recorded_keys` every episode must hold.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from vla_agents.adapters import make_adapter
from vla_agents.atomic import AtomicFile, recover

DEFAULT_ADAPTER = "libero"
VECTOR_OBS = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2, "joint_states": 7}  # sizes checked where present
# Privileged simulator state our collectors also record (LIBERO's files do not have it): the position of the
# object the expert's step is about (the named cube; when stacking, the base once the cube is held): world (T, 3) and its uv fractions in each of the adapter's views in policy orientation (T, V, 2);
# with the gripper's `ee_pos`, the targets of behaviour cloning's auxiliary grounding loss.
PRIVILEGED_OBS = ("target_pos", "target_uv")


@dataclass
class Episode:
    """One demonstration: actions (T, A) float32 (A: the adapter's action_dim), obs key -> (T, ...) array, its instruction, and the
    adapter that reads its observations."""

    actions: np.ndarray
    obs: dict[str, np.ndarray]
    instruction: str
    adapter: str = DEFAULT_ADAPTER

    def __len__(self) -> int:
        return len(self.actions)


class DemoWriter:
    """Write episodes of one task to `path`, atomically: to a hidden `.NAME.tmp-<id>` beside it, renamed
    onto `path` on a clean exit (so `--data runs/data/*` never picks up the file of a killed run).

    A LIBERO file holds one task, named in `problem_info`. Tasks whose wording changes per episode
    (e.g. "pick up the {target} cube") pass the template here and each episode's instruction to
    `add_episode`; it is stored as `demo_i.attrs["language_instruction"]`, which the reader prefers.
    """

    def __init__(self, path: str | Path, instruction: str | None = None, env_name: str = "", env_kwargs: dict[str, Any] | None = None,
                 problem_name: str | None = None, bddl_file_name: str = "", adapter: str = DEFAULT_ADAPTER) -> None:
        self.path = Path(path)
        self.adapter = adapter
        spec = make_adapter(adapter)
        self.required, self.action_dim = spec.recorded_keys, spec.action_dim
        self.instruction = instruction
        self.env_name = env_name
        self.env_kwargs = dict(env_kwargs or {})
        self.problem_name = problem_name or env_name
        self.bddl_file_name = bddl_file_name
        self.num_episodes = 0
        self.total = 0
        self._file: h5py.File | None = None

    def __enter__(self) -> DemoWriter:
        recover(self.path)  # the unfinished file of a killed earlier run
        self._target = AtomicFile(self.path).__enter__()
        self._file = h5py.File(self._target.tmp, "w")
        self._data = self._file.create_group("data")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._file is not None
        with self._target:  # moved onto `path` if the attributes are written, else deleted
            try:
                if exc is not None:
                    raise exc
                self._write_attrs()
            finally:
                self._file.close()
                self._file = None

    def add_episode(self, actions: np.ndarray, obs: dict[str, np.ndarray], rewards: np.ndarray | None = None,
                    dones: np.ndarray | None = None, instruction: str | None = None) -> None:
        """Append one episode. rewards/dones default to LIBERO's: 0 everywhere, 1 at the last step."""
        if self._file is None:
            raise RuntimeError("DemoWriter must be used as a context manager: `with DemoWriter(...) as w:`")
        instruction = instruction or self.instruction
        if instruction is None:
            raise ValueError("no instruction for this episode: pass instruction= to DemoWriter or add_episode")
        self.instruction = self.instruction or instruction
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim or len(actions) == 0:
            raise ValueError(f"actions must have shape (T, {self.action_dim}) with T >= 1, got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        T = len(actions)
        check_obs(obs, T, self.required, where="add_episode")
        rewards, dones = (np.asarray(x) if x is not None else _last_step_flag(T) for x in (rewards, dones))
        for name, x in (("rewards", rewards), ("dones", dones)):
            if x.shape != (T,):
                raise ValueError(f"{name} must have shape ({T},) like actions, got {x.shape}")

        demo = self._data.create_group(f"demo_{self.num_episodes}")
        demo.create_dataset("actions", data=actions)
        demo.create_dataset("rewards", data=rewards)
        demo.create_dataset("dones", data=dones)
        obs_group = demo.create_group("obs")
        for key, value in obs.items():
            value = np.asarray(value)
            if key.endswith("_rgb"):
                obs_group.create_dataset(key, data=value, compression="lzf", chunks=(1, *value.shape[1:]))
            else:
                obs_group.create_dataset(key, data=value)
        demo.attrs["num_samples"] = T
        demo.attrs["language_instruction"] = instruction
        self.num_episodes += 1
        self.total += T

    def _write_attrs(self) -> None:
        if self.instruction is None:
            raise ValueError(f"no instruction for {self.path}: pass instruction= to DemoWriter or add_episode")
        self._data.attrs["total"] = self.total
        self._data.attrs["num_demos"] = self.num_episodes
        self._data.attrs["env_name"] = self.env_name
        self._data.attrs["bddl_file_name"] = self.bddl_file_name
        self._data.attrs["adapter"] = self.adapter
        if self.adapter in ("libero", "embedded"):
            self._data.attrs["macros_image_convention"] = "opengl"
        self._data.attrs["env_args"] = json.dumps({"type": 1, "env_name": self.env_name, "problem_name": self.problem_name,
                                                   "bddl_file": self.bddl_file_name, "env_kwargs": self.env_kwargs})
        self._data.attrs["problem_info"] = json.dumps({"problem_name": self.problem_name, "domain_name": "robosuite",
                                                       "language_instruction": self.instruction})


def read_demos(path: str | Path) -> list[Episode]:
    """All episodes of one file (ours or LIBERO's), in demo index order; extra keys are ignored. Vectors
    are read into memory, frames (`*_rgb`) stay in the file and are read a step at a time."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a demonstration .hdf5 file (pass the files inside it)")
    if not path.exists():
        raise FileNotFoundError(f"demonstration file not found: {path}")
    if path.name.endswith(".tmp") or path.name.startswith(".") and ".tmp-" in path.name:
        raise ValueError(f"{path} is the unfinished file of an interrupted `collect`; delete it and collect again")
    try:
        return _read_episodes(path)
    except OSError as e:  # h5py's errors name no file
        raise ValueError(f"{path} is not a readable HDF5 file ({e}); it is empty, truncated or of another format. "
                         "Expected a LIBERO/robomimic demonstration file, as `vla-agents collect` writes") from e


def _read_episodes(path: Path) -> list[Episode]:
    f = h5py.File(path, "r")  # left open: the frames' datasets keep it so, and close it once dropped
    with contextlib.ExitStack() as failed:
        failed.callback(f.close)
        if "data" not in f:
            raise ValueError(f"{path}: no 'data' group; not a LIBERO/robomimic demonstration file")
        data = f["data"]
        instruction = _instruction(path, data.attrs)
        adapter = str(data.attrs.get("adapter", DEFAULT_ADAPTER))
        spec = make_adapter(adapter)
        required = spec.recorded_keys
        names = sorted((k for k in data if re.fullmatch(r"demo_\d+", k)), key=lambda k: int(k.split("_")[1]))
        episodes = []
        for name in names:
            demo = data[name]
            if "actions" not in demo:
                raise ValueError(f"{path}: {name} has no 'actions' dataset")
            if "obs" not in demo:
                raise ValueError(f"{path}: {name} has no 'obs' group; expected obs keys {list(required)}")
            missing = [k for k in required if k not in demo["obs"]]
            if missing:
                raise ValueError(f"{path}: {name}/obs is missing key(s) {missing}; expected {list(required)}")
            actions = np.asarray(demo["actions"][()], dtype=np.float32)
            obs = {k: demo["obs"][k] if k.endswith("_rgb") else demo["obs"][k][()]
                   for k in dict.fromkeys((*required, "ee_pos", *PRIVILEGED_OBS)) if k in demo["obs"]}
            if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
                raise ValueError(f"{path}: {name}/actions must have shape (T, {spec.action_dim}), got {actions.shape}")
            check_obs(obs, len(actions), required, where=f"{path}: {name}/obs")
            episodes.append(Episode(actions=actions, obs=obs, instruction=str(demo.attrs.get("language_instruction", instruction)),
                                    adapter=adapter))
        failed.pop_all()
    return episodes


def _instruction(path: Path, attrs: h5py.AttributeManager) -> str:
    raw = attrs.get("problem_info")
    if raw is None:
        raise ValueError(f"{path}: data.attrs has no 'problem_info'; cannot tell the task's language instruction")
    info = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    text = info.get("language_instruction")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{path}: data.attrs['problem_info'] has no 'language_instruction' string: {info}")
    return text


def check_obs(obs: dict[str, Any], T: int, required: tuple[str, ...], where: str) -> None:
    """Keys, shapes and dtypes of one episode's obs; frames read on demand (`frames`) stay unread."""
    missing = [k for k in required if k not in obs]
    if missing:
        raise ValueError(f"{where}: obs is missing key(s) {missing}; expected {list(required)}")
    for key, value in obs.items():
        value = value if hasattr(value, "shape") and hasattr(value, "dtype") else np.asarray(value)
        if key.endswith("_rgb"):
            if value.ndim != 4 or value.shape[0] != T or value.shape[3] != 3 or value.dtype != np.uint8:
                raise ValueError(f"{where}: {key!r} must be uint8 of shape ({T}, H, W, 3), got {value.dtype} {value.shape}")
        elif key in VECTOR_OBS and value.shape != (T, VECTOR_OBS[key]):
            raise ValueError(f"{where}: {key!r} must have shape ({T}, {VECTOR_OBS[key]}), got {value.shape}")
        elif value.ndim == 0 or value.shape[0] != T:
            raise ValueError(f"{where}: {key!r} must have one entry per step ({T}), got shape {value.shape}")


def _last_step_flag(T: int) -> np.ndarray:
    flag = np.zeros(T, dtype=np.uint8)
    flag[-1] = 1
    return flag
