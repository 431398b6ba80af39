"""Camera frames of demonstrations, read on demand: a dataset larger than memory trains.

An `Episode`'s image observations are array-likes indexed by step, never loaded whole: an h5py dataset
(HDF5 reads the one frame asked for), `VideoFrames` (an episode's stretch of an mp4, decoded in one go
on first use and kept in a cache bounded in bytes that all episodes share, as decoding frame by frame
would seek from the last key frame every time), or `Steps` (some steps of another, e.g. without no-ops).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import imageio_ffmpeg
import numpy as np

CACHE_BYTES = 2 << 30  # decoded episodes kept: 2 GiB, about 40 LIBERO episodes of two 256 px views


class FrameCache:
    """Least-recently-used arrays, evicted once their total size passes `max_bytes` (the newest stays)."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._arrays: OrderedDict[Any, np.ndarray] = OrderedDict()

    def get(self, key: Any, load: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        array = self._arrays[key] = load()
        self.bytes += array.nbytes
        while self.bytes > self.max_bytes and len(self._arrays) > 1:
            self.bytes -= self._arrays.popitem(last=False)[1].nbytes
        return array


FRAME_CACHE = FrameCache()


class VideoFrames:
    """`length` frames of `path` from `start` seconds on, (H, W, 3) uint8; `rotate` turns them 180 degrees
    (LeRobot's LIBERO videos are upright, LIBERO's files upside down as rendered)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, start: float, length: int, fps: float, size: tuple[int, int], rotate: bool = False,
                 cache: FrameCache = FRAME_CACHE) -> None:
        self.path, self.start, self.fps, self.rotate, self.cache = Path(path), float(start), float(fps), rotate, cache
        self.shape = (int(length), int(size[0]), int(size[1]), 3)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.cache.get((self.path, self.start, self.rotate), self._decode)[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def _decode(self) -> np.ndarray:
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        # half a frame early: input seeking lands on the first frame at or after the time asked for
        seek = max(0.0, self.start - 0.5 / self.fps)
        reader = imageio_ffmpeg.read_frames(str(self.path), input_params=["-ss", f"{seek:.6f}"],
                                            output_params=["-frames:v", str(len(self))])
        meta = next(reader)
        n, height, width, _ = self.shape
        if tuple(meta["size"]) != (width, height):
            raise ValueError(f"{self.path}: frames are {meta['size'][0]}x{meta['size'][1]} (width x height); "
                             f"meta/info.json says {width}x{height}")
        frames = [np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader]
        if len(frames) != n:
            raise ValueError(f"{self.path}: {len(frames)} frames from {self.start:.3f} s on; meta/episodes says {n}")
        return np.ascontiguousarray(np.stack(frames)[:, ::-1, ::-1] if self.rotate else np.stack(frames))


class Steps:
    """Steps `index` of the array-like `base`, in that order, read from `base` on demand."""

    def __init__(self, base: Any, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape, self.dtype = (len(self.index), *base.shape[1:]), base.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, t: int) -> np.ndarray:
        return self.base[int(self.index[t])]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(np.asarray(self.base)[self.index], dtype=dtype)
