"""LeRobotDataset v3.0 folders, read and written with pyarrow and ffmpeg (imageio-ffmpeg's build).

The layout of LeRobot's `CODEBASE_VERSION = "v3.0"`:

    meta/info.json                        codebase_version, fps, features (dtype, shape, names), path templates
    meta/stats.json                       per feature: min, max, mean, std, count
    meta/tasks.parquet                    task (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   a row per episode: length, tasks, where its frames and videos are
    data/chunk-000/file-000.parquet       a row per frame: action, observation.*, timestamp, frame_index,
                                          episode_index, index, task_index
    videos/<feature>/chunk-000/file-000.mp4    each camera's episodes one after another (AV1, as LeRobot encodes)

LIBERO's LeRobot datasets (made from OpenVLA-OFT's no-op-free data) call the third-person view
`observation.images.image` and the wrist view `observation.images.wrist_image`, store both upright, and
pack eef position, axis-angle and gripper qpos into an 8-D `observation.state`. Files of the "libero" and
"embedded" adapters are written that way and read back into LIBERO's HDF5 keys (`joint_states`, which no
policy reads, is zeros where a dataset lacks `observation.states.joint_state`). Other adapters' keys map one
to one: `<view>_rgb` <-> `observation.images.<view>`, `<key>` <-> `observation.<key>`. `info.json["vla_agents"]`
records the adapter and the vectors' shapes; a dataset without it is read as LIBERO if it has LIBERO's
features. Vectors are read whole (small); frames when a step asks for them (`frames.VideoFrames`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_agents.adapters import make_adapter
from vla_agents.atomic import check_target, replace_folder
from vla_agents.data.frames import FRAME_CACHE, FrameCache, VideoFrames
from vla_agents.data.hdf5 import Episode, check_obs

CODEBASE_VERSION = "v3.0"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# LeRobot's encoder settings: AV1 by SVT-AV1, a key frame every 2 frames so that an episode starts close to one
VIDEO_CODEC, PIX_FMT, VIDEO_OPTIONS = "libsvtav1", "yuv420p", ["-g", "2", "-crf", "30", "-preset", "12"]
DEFAULT_FPS = 20  # LIBERO's control rate; the HDF5 layout records none
LIBERO_ADAPTERS = ("libero", "embedded")
LIBERO_VIEWS = {"agentview_rgb": "observation.images.image", "eye_in_hand_rgb": "observation.images.wrist_image"}
LIBERO_STATE = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2}  # packed into observation.state, in this order
LIBERO_JOINTS = ("joint_states", "observation.states.joint_state")
EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp")


@dataclass(frozen=True)
class Layout:
    """Where an adapter's obs keys go: `views` (obs key -> video feature), `vectors` (obs key -> feature);
    `libero` also packs LIBERO_STATE into observation.state and keeps videos upright."""

    views: dict[str, str]
    vectors: dict[str, str]
    libero: bool

    @classmethod
    def of(cls, adapter: str, keys: list[str]) -> Layout:
        libero = adapter in LIBERO_ADAPTERS
        views = {k: (LIBERO_VIEWS if libero else {}).get(k, f"observation.images.{k[:-4]}") for k in keys if k.endswith("_rgb")}
        vectors = {k: LIBERO_JOINTS[1] if libero and k == LIBERO_JOINTS[0] else f"observation.{k}"
                   for k in keys if not k.endswith("_rgb") and not (libero and k in LIBERO_STATE)}
        return cls(views, vectors, libero)


def write_lerobot(episodes: list[Episode], root: str | Path, fps: int = DEFAULT_FPS) -> Path:
    """`episodes` (of one adapter, with the same obs keys) as a new LeRobotDataset v3.0 folder `root`,
    which appears whole or not at all."""
    root = check_target(root)
    if root.exists():
        raise ValueError(f"{root} exists; a LeRobotDataset is written into a new folder")
    if not episodes:
        raise ValueError("no episodes to write")
    adapters = sorted({ep.adapter for ep in episodes})
    keys = sorted(episodes[0].obs)
    if len(adapters) > 1:
        raise ValueError(f"the episodes were recorded for different adapters {adapters}; a dataset holds one benchmark's")
    odd = [i for i, ep in enumerate(episodes) if sorted(ep.obs) != keys]
    if odd:
        raise ValueError(f"episode {odd[0]} has obs keys {sorted(episodes[odd[0]].obs)}, episode 0 {keys}; expected the same")
    layout = Layout.of(adapters[0], keys)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration for every file otherwise
    return replace_folder(root, lambda folder: _write(folder, episodes, layout, fps))


def _write(folder: Path, episodes: list[Episode], layout: Layout, fps: int) -> None:
    tasks = list(dict.fromkeys(ep.instruction for ep in episodes))
    columns: dict[str, list[np.ndarray]] = {}
    videos: dict[str, _Video] = {}
    rows, start = [], 0
    for e, ep in enumerate(episodes):
        T = len(ep)
        vectors = {"action": ep.actions, **{f: ep.obs[k] for k, f in layout.vectors.items()}}
        if layout.libero:
            vectors["observation.state"] = np.concatenate([np.reshape(ep.obs[k], (T, -1)) for k in LIBERO_STATE], axis=1)
        frame = np.arange(T)
        vectors |= {"timestamp": frame / fps, "frame_index": frame, "episode_index": np.full(T, e), "index": start + frame,
                    "task_index": np.full(T, tasks.index(ep.instruction))}
        for name, value in vectors.items():
            columns.setdefault(name, []).append(np.reshape(value, (T, -1)) if name.startswith(("action", "observation.")) else value)
        row = {"episode_index": e, "tasks": [ep.instruction], "length": T, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": start, "dataset_to_index": start + T}
        for key, feature in layout.views.items():
            video = videos.setdefault(feature, _Video(folder / VIDEO_PATH.format(video_key=feature, chunk_index=0, file_index=0), fps))
            row |= {f"videos/{feature}/chunk_index": 0, f"videos/{feature}/file_index": 0,
                    f"videos/{feature}/from_timestamp": video.frames / fps}
            for t in range(T):
                video.add(ep.obs[key][t][::-1, ::-1] if layout.libero else ep.obs[key][t])
            row[f"videos/{feature}/to_timestamp"] = video.frames / fps
        rows.append(row | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        start += T
    for video in videos.values():
        video.close()
    arrays = {name: np.concatenate(parts).astype(np.float32 if name.startswith(("action", "observation.")) or name == "timestamp"
                                                  else np.int64) for name, parts in columns.items()}
    _parquet({name: _column(a) for name, a in arrays.items()}, folder / DATA_PATH.format(chunk_index=0, file_index=0))
    _parquet(pa.Table.from_pylist(rows), folder / EPISODES_PATH.format(chunk_index=0, file_index=0))
    _write_tasks(tasks, folder / TASKS_PATH)
    stats = {name: _stats(a.reshape(len(a), -1)) for name, a in arrays.items()} | {f: v.stats() for f, v in videos.items()}
    (folder / STATS_PATH).write_text(json.dumps(stats, indent=2))
    features = {name: {"dtype": str(a.dtype), "shape": [a.shape[1] if a.ndim > 1 else 1], "names": None} for name, a in arrays.items()}
    features |= {f: v.feature() for f, v in videos.items()}
    shapes = {k: list(np.shape(episodes[0].obs[k])[1:]) for k in layout.vectors}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": "panda" if layout.libero else None,
            "total_episodes": len(episodes), "total_frames": start, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if videos else None, "features": features,
            "vla_agents": {"adapter": episodes[0].adapter, "shapes": shapes}}
    (folder / INFO_PATH).write_text(json.dumps(info, indent=2))


class _Video:
    """One camera's mp4, episodes appended one after another, with per-channel pixel statistics in [0, 1]."""

    def __init__(self, path: Path, fps: int) -> None:
        self.path, self.fps, self.frames, self._writer = path, fps, 0, None
        self._sum = self._squares = np.zeros(3)
        self._min, self._max = np.full(3, 255), np.zeros(3)

    def add(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if self._writer is None:
            self.shape = frame.shape
            if frame.shape[0] % 2 or frame.shape[1] % 2:
                raise ValueError(f"{self.path.parent.parent.name}: frames of {frame.shape[0]}x{frame.shape[1]} px; "
                                 "yuv420p video needs even heights and widths")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio_ffmpeg.write_frames(str(self.path), (frame.shape[1], frame.shape[0]), fps=self.fps,
                                                       codec=VIDEO_CODEC, pix_fmt_out=PIX_FMT, quality=None, macro_block_size=1,
                                                       output_params=VIDEO_OPTIONS, ffmpeg_log_level="error")
            self._writer.send(None)
        pixels = frame.reshape(-1, 3).astype(np.float64)
        self._sum, self._squares = self._sum + pixels.sum(0), self._squares + (pixels**2).sum(0)
        self._min, self._max = np.minimum(self._min, pixels.min(0)), np.maximum(self._max, pixels.max(0))
        self._writer.send(frame.tobytes())
        self.frames += 1

    def close(self) -> None:
        self._writer.close()

    def stats(self) -> dict[str, list]:
        n = self.frames * self.shape[0] * self.shape[1]
        mean = self._sum / n
        std = np.sqrt(np.maximum(self._squares / n - mean**2, 0.0))
        return {"min": _per_channel(self._min), "max": _per_channel(self._max), "mean": _per_channel(mean),
                "std": _per_channel(std), "count": [self.frames]}

    def feature(self) -> dict[str, Any]:
        height, width, _ = self.shape
        return {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": "av1", "video.pix_fmt": PIX_FMT,
                         "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "has_audio": False}}


def _per_channel(value: np.ndarray) -> list:
    """Pixel statistics in [0, 1] shaped (3, 1, 1), as LeRobot stores an image feature's."""
    return (np.asarray(value) / 255.0).reshape(3, 1, 1).tolist()


def _column(a: np.ndarray) -> pa.Array:
    """(N,) -> a plain column, (N, D) -> fixed-size lists of D, as LeRobot's `Sequence(length=D)` features."""
    return pa.array(a) if a.ndim == 1 else pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def _parquet(table: dict[str, pa.Array] | pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), path)


def _write_tasks(tasks: list[str], path: Path) -> None:
    """What pandas writes for LeRobot's `DataFrame({"task_index": ...}, index=pd.Index(tasks, name="task"))`."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas = {"index_columns": ["task"], "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                                             "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
              "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                          {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
              "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    _parquet(table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()}), path)


def _stats(x: np.ndarray) -> dict[str, list]:
    x = x.astype(np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "count": [len(x)]}


def read_lerobot(root: str | Path, cache: FrameCache = FRAME_CACHE) -> list[Episode]:
    """The episodes of a LeRobotDataset v3.0 folder, vectors in memory and frames decoded on demand."""
    root = Path(root)
    info = _info(root)
    features, where = info["features"], root / INFO_PATH
    adapter = info.get("vla_agents", {}).get("adapter") or _libero_or_refuse(features, where)
    spec, libero = make_adapter(adapter), adapter in LIBERO_ADAPTERS
    action = features.get("action", {}).get("shape")
    if action != [spec.action_dim]:
        raise ValueError(f"{where}: features['action'] has shape {action}; adapter {adapter!r} takes {spec.action_dim}-D actions")
    if libero and features.get("observation.state", {}).get("shape") != [sum(LIBERO_STATE.values())]:
        raise ValueError(f"{where}: features['observation.state'] has shape {features.get('observation.state', {}).get('shape')}; "
                         "LIBERO's is [8] (eef position 3, axis-angle 3, gripper qpos 2)")
    unsupported = [k for k, f in features.items() if f.get("dtype") == "image"]
    if unsupported:
        raise ValueError(f"{where}: features {unsupported} hold frames inside the parquet files (dtype 'image'); this "
                         "reader takes 'video' features, LeRobot's default")
    views = {k: f for k, f in features.items() if f.get("dtype") == "video"}
    vectors = [k for k in features if k == "action" or k.startswith("observation.") and k not in views]
    tasks, shapes = _read_tasks(root), info.get("vla_agents", {}).get("shapes", {})
    names = {f: k for k, f in LIBERO_VIEWS.items()} if libero else {}
    data: dict[tuple[int, int], dict[str, Any]] = {}
    episodes = []
    for row in _read_episode_rows(root, list(views)):
        file = (int(row["data/chunk_index"]), int(row["data/file_index"]))
        if file not in data:
            data[file] = _read_frames(root / DATA_PATH.format(chunk_index=file[0], file_index=file[1]), vectors)
        e, T = int(row["episode_index"]), int(row["length"])
        rows = data[file]["episodes"].get(e, np.zeros(0, np.int64))
        if len(rows) != T:
            raise ValueError(f"{root / DATA_PATH.format(chunk_index=file[0], file_index=file[1])}: episode {e} has "
                             f"{len(rows)} frames; meta/episodes says length {T}")
        columns = {k: data[file][k][rows] for k in vectors}
        obs: dict[str, Any] = {}
        for feature, value in columns.items():
            if feature == "action":
                continue
            if libero and feature == "observation.state":
                obs |= dict(zip(LIBERO_STATE, np.split(value, np.cumsum(list(LIBERO_STATE.values()))[:-1], axis=1)))
                continue
            key = LIBERO_JOINTS[0] if libero and feature == LIBERO_JOINTS[1] else feature.removeprefix("observation.")
            obs[key] = value.reshape(T, *shapes[key]) if key in shapes else value
        if libero:
            obs.setdefault(LIBERO_JOINTS[0], np.zeros((T, 7), np.float32))
        for feature, spec_f in views.items():
            video = root / VIDEO_PATH.format(video_key=feature, chunk_index=int(row[f"videos/{feature}/chunk_index"]),
                                             file_index=int(row[f"videos/{feature}/file_index"]))
            fps = spec_f.get("info", {}).get("video.fps", info["fps"])
            obs[names.get(feature, feature.removeprefix("observation.images.") + "_rgb")] = VideoFrames(
                video, row[f"videos/{feature}/from_timestamp"], T, fps, _frame_size(spec_f, feature, where), rotate=libero, cache=cache)
        task = int(data[file]["task_index"][rows[0]])
        if task not in tasks:
            raise ValueError(f"{root / TASKS_PATH}: no task_index {task}, which episode {e} names")
        check_obs(obs, T, spec.recorded_keys, where=f"{root}: episode {e}")
        episodes.append(Episode(actions=columns["action"].astype(np.float32), obs=obs, instruction=tasks[task], adapter=adapter))
    return episodes


def _info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobotDataset folder not found: {root}")
    if not path.is_file():
        raise ValueError(f"{root} has no {INFO_PATH}: not a LeRobotDataset folder (expected {INFO_PATH}, {TASKS_PATH}, "
                         "meta/episodes/, data/ and videos/, as LeRobot v3.0 writes them); HDF5 demonstrations are "
                         "passed as the .hdf5 files inside a folder")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); expected a LeRobotDataset's info") from e
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise ValueError(f"{path}: codebase_version is {version!r}; this package reads LeRobotDataset {CODEBASE_VERSION!r} "
                         "(LeRobot converts a v2.1 dataset with `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`)")
    if not isinstance(info.get("features"), dict) or "fps" not in info:
        raise ValueError(f"{path}: no 'features' object or no 'fps'; expected LeRobot v3.0's info.json")
    return info


def _libero_or_refuse(features: dict[str, Any], where: Path) -> str:
    missing = [f for f in (*LIBERO_VIEWS.values(), "observation.state", "action") if f not in features]
    if missing:
        raise ValueError(f"{where}: no 'vla_agents' adapter and not LIBERO's features (missing {missing}); this package "
                         f"reads LIBERO's LeRobot datasets and the ones `vla-agents convert` writes")
    return "libero"


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise ValueError(f"{root} has no {TASKS_PATH}; expected the LeRobot v3.0 task table (task -> task_index)")
    table = pq.read_table(path)
    index = (table.schema.pandas_metadata or {}).get("index_columns", [])
    text = "task" if "task" in table.column_names else next((c for c in index if isinstance(c, str)), None)
    if text is None or "task_index" not in table.column_names:
        raise ValueError(f"{path}: columns {table.column_names}; expected 'task_index' and the task text ('task')")
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist()))


def _read_episode_rows(root: Path, views: list[str]) -> list[dict[str, Any]]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{root} has no meta/episodes/chunk-*/file-*.parquet; expected LeRobot v3.0's episode table")
    rows = []
    for path in files:
        table = pq.read_table(path)
        need = [*EPISODE_COLUMNS, *(f"videos/{v}/{c}" for v in views for c in VIDEO_COLUMNS)]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; expected LeRobot v3.0's episode columns {need}")
        rows += table.select(need).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def _read_frames(path: Path, vectors: list[str]) -> dict[str, Any]:
    """The vector columns of one data file as arrays, and each episode's rows in frame order."""
    if not path.is_file():
        raise ValueError(f"data file not found: {path} (meta/episodes points to it)")
    names = pq.read_schema(path).names
    missing = [c for c in (*vectors, "episode_index", "frame_index", "task_index") if c not in names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}, which meta/info.json's features promise")
    table = pq.read_table(path, columns=[*vectors, "episode_index", "frame_index", "task_index"])
    arrays = {name: _array(table[name]) for name in table.column_names}
    order = np.lexsort((arrays["frame_index"], arrays["episode_index"]))
    starts = np.flatnonzero(np.diff(arrays["episode_index"][order], prepend=-1))
    arrays["episodes"] = {int(arrays["episode_index"][group[0]]): group for group in np.split(order, starts[1:])}
    return arrays


def _array(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type):
        return np.asarray(column.flatten()).reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False)


def _frame_size(feature: dict[str, Any], name: str, where: Path) -> tuple[int, int]:
    shape, names = feature.get("shape", []), feature.get("names")
    names = names if isinstance(names, list) else []
    if len(shape) != 3:
        raise ValueError(f"{where}: features[{name!r}] has shape {shape}; expected [height, width, 3] or [3, height, width]")
    if "height" in names and "width" in names:
        return shape[names.index("height")], shape[names.index("width")]
    return (shape[0], shape[1]) if shape[2] == 3 else (shape[1], shape[2])
