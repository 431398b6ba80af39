"""Rollout videos: attention heatmaps blended over camera frames, a caption bar, atomic MP4 files.

No OpenCV or matplotlib: the colormap is a NumPy lookup table, resizing uses SciPy, and text
uses Pillow (already required by imageio)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType

import imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vla_agents.types import AttentionMaps


def _jet_lut() -> np.ndarray:
    """The classic piecewise-linear jet map (blue -> cyan -> yellow -> red), 256 x 3 uint8."""
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    return np.round(255 * np.stack(channels, axis=1)).astype(np.uint8)


_COLORMAPS = {
    "jet": _jet_lut(),
    "gray": np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
}
# Outline colours for named patch masks, assigned in the order the masks appear.
_MASK_COLORS = [(255, 255, 255), (255, 0, 255), (0, 255, 0), (255, 255, 0)]
_CAPTION_PAD = 3


def _check_frame(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")


def _resize_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment, so each patch cell lands over its own pixels."""
    h, w = grid.shape
    rows = (np.arange(height) + 0.5) * h / height - 0.5
    cols = (np.arange(width) + 0.5) * w / width - 0.5
    coords = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(grid, coords, order=1, mode="nearest")


def overlay_heatmap(frame: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Blend a patch-grid heatmap over `frame`: min-max normalise, upsample, colour, alpha-blend.

    A constant heatmap carries no "where", so it renders as the colormap's low end everywhere."""
    _check_frame(frame)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D patch grid, got shape {heatmap.shape}")
    if colormap not in _COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; available: {sorted(_COLORMAPS)}")
    grid = np.nan_to_num(heatmap.astype(np.float64))
    span = grid.max() - grid.min()
    grid = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
    upsampled = _resize_bilinear(grid, frame.shape[0], frame.shape[1])
    colors = _COLORMAPS[colormap][np.clip(np.round(upsampled * 255), 0, 255).astype(np.uint8)]
    blended = (1.0 - alpha) * frame.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def outline_mask(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Draw a 1-pixel border around every patch cell where `mask` is True (e.g. kept top-K tokens)."""
    _check_frame(frame)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D patch grid, got shape {mask.shape}")
    out = frame.copy()
    height, width = frame.shape[:2]
    row_edges = np.round(np.linspace(0, height, mask.shape[0] + 1)).astype(int)
    col_edges = np.round(np.linspace(0, width, mask.shape[1] + 1)).astype(int)
    for i, j in zip(*np.nonzero(mask)):
        top, bottom = row_edges[i], max(row_edges[i + 1] - 1, row_edges[i])
        left, right = col_edges[j], max(col_edges[j + 1] - 1, col_edges[j])
        out[top, left : right + 1] = color
        out[bottom, left : right + 1] = color
        out[top : bottom + 1, left] = color
        out[top : bottom + 1, right] = color
    return out


def _caption(lines: list[str], width: int) -> np.ndarray:
    """A black bar with one white text line per entry (Pillow's built-in font; long lines clip)."""
    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox("Ag|")
    line_height = bottom - top + 2
    bar = Image.new("RGB", (width, 2 * _CAPTION_PAD + line_height * len(lines)))
    draw = ImageDraw.Draw(bar)
    for k, line in enumerate(lines):
        draw.text((_CAPTION_PAD, _CAPTION_PAD + k * line_height - top), line, fill=(255, 255, 255), font=font)
    return np.asarray(bar)


def compose_frame(views: dict[str, np.ndarray], attention: AttentionMaps | None = None,
                  text_lines: list[str] | None = None, alpha: float = 0.45) -> np.ndarray:
    """One video frame: the views side by side (with any heatmap / mask of the same view name drawn
    over them), then a caption bar. Views must already be in policy orientation."""
    if not views:
        raise ValueError("compose_frame needs at least one view")
    panels = []
    for name, frame in views.items():
        _check_frame(frame)
        if attention is not None:
            if name in attention.heatmaps:
                frame = overlay_heatmap(frame, attention.heatmaps[name], alpha=alpha)
            for k, per_view in enumerate(attention.masks.values()):
                if name in per_view:
                    frame = outline_mask(frame, np.asarray(per_view[name], dtype=bool), _MASK_COLORS[k % len(_MASK_COLORS)])
        panels.append(frame)
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    image = np.concatenate(panels, axis=1)
    if text_lines:
        image = np.concatenate([image, _caption(text_lines, image.shape[1])], axis=0)
    return image


class VideoWriter:
    """H.264 MP4 writer that only ever leaves complete files behind.

    Frames go to a hidden temporary file beside `path`, which is renamed onto `path` on a clean
    close; `path` may be reassigned before closing (e.g. to put the episode's outcome in its name).
    On an exception, or when no frame was written, no file is left. Frames are padded to even
    sizes (yuv420p needs them) instead of letting imageio resize them."""

    def __init__(self, path: str | os.PathLike, fps: int = 20):
        self.path = Path(path)
        self.fps = fps
        self.frames_written = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.tmp.mp4")
        self._writer = None
        self._shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        _check_frame(frame)
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
        if self._writer is None:
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(self._tmp, fps=self.fps, codec="libx264", macro_block_size=1)
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"all frames of a video must share one size: got {frame.shape}, expected {self._shape}")
        self._writer.append_data(frame)
        self.frames_written += 1

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file; returns its final path, or None when nothing was kept."""
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        if not keep:
            self._tmp.unlink(missing_ok=True)
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(keep=exc_type is None)
