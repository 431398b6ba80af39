"""Rollout videos: camera views side by side with the policy's attention drawn over them
(`vla_agents.eval.overlay`), view labels, a colour bar, a caption with a legend, atomic MP4 files.

Each frame shows one observation and the attention map the agent acted with. The map refreshes
only when the model runs (once per action chunk), so frames where it did are marked "new map" and
the caption says from which step the map shown comes. The colour scale is one per episode (the
default: frames compare) or one per frame; an episode-scaled video is drawn when its episode ends,
so it keeps the episode's camera frames in memory until then."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import imageio
import numpy as np
from PIL import Image, ImageDraw

from vla_agents.atomic import AtomicFile
from vla_agents.eval.overlay import (CROP_LEGEND, DEFAULT_COLORMAP, check_frame, centre_crop_box, colorbar, colormap_lut,
                                     font, mask_color, mask_label, outline_crop, outline_mask, overlay_heatmap)
from vla_agents.types import AttentionMaps

SCALES = ("episode", "frame")
_PAD = 4


@dataclass(frozen=True)
class OverlayStyle:
    """How attention is drawn: one colour scale per `episode` or per `frame`, and the colormap."""

    scale: str = "episode"
    colormap: str = DEFAULT_COLORMAP

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"overlay scale must be one of {SCALES}, got {self.scale!r}")
        colormap_lut(self.colormap)  # an unknown name fails here, naming the perceptually uniform ones


def _label(panel: np.ndarray, text: str, corner: str = "left", color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """`text` on a dark box in the panel's top-left (or top-right) corner."""
    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    face = font(13)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    x = _PAD if corner == "left" else panel.shape[1] - (right - left) - 3 * _PAD
    draw.rectangle([x, _PAD, x + right - left + 2 * _PAD, _PAD + bottom + _PAD], fill=(0, 0, 0))
    draw.text((x + _PAD, _PAD + 1), text, fill=color, font=face)
    return np.asarray(image)


def _legend_rows(legend: list[str], width: int, draw: ImageDraw.ImageDraw, face) -> list[list[tuple[str, int, int]]]:
    """Legend entries as rows of (name, index, x), wrapped to fit `width`."""
    rows: list[list[tuple[str, int, int]]] = [[]] if legend else []
    x = _PAD
    for k, name in enumerate(legend):
        size = 16 + int(draw.textlength(mask_label(name), font=face)) + 3 * _PAD
        if rows[-1] and x + size > width:
            rows.append([])
            x = _PAD
        rows[-1].append((name, k, x))
        x += size
    return rows


def _caption(lines: list[str], legend: list[str], width: int) -> np.ndarray:
    """A black bar: one text line per entry, then the legend of the outlines (a swatch and a name each)."""
    face = font(13)
    line_height = 18
    rows = _legend_rows(legend, width, ImageDraw.Draw(Image.new("RGB", (1, 1))), face)
    bar = Image.new("RGB", (width, 2 * _PAD + line_height * (len(lines) + len(rows))))
    draw = ImageDraw.Draw(bar)
    for k, line in enumerate(lines):
        draw.text((_PAD, _PAD + k * line_height), line, fill=(255, 255, 255), font=face)
    for r, row in enumerate(rows):
        y = _PAD + (len(lines) + r) * line_height
        for name, k, x in row:
            draw.rectangle([x, y + 3, x + 11, y + 14], outline=mask_color(name, k), width=2)
            draw.text((x + 16, y), mask_label(name), fill=(255, 255, 255), font=face)
    return np.asarray(bar)


def frame_vmax(attention: AttentionMaps | None) -> float:
    """The largest attention in a frame's maps (0 without maps)."""
    if attention is None or not attention.heatmaps:
        return 0.0
    return float(max(np.nan_to_num(np.asarray(h, dtype=np.float64)).max() for h in attention.heatmaps.values()))


def compose_frame(views: dict[str, np.ndarray], attention: AttentionMaps | None = None,
                  text_lines: list[str] | None = None, style: OverlayStyle = OverlayStyle(), vmax: float | None = None,
                  crop_area: float = 1.0, min_view_px: int = 0, refreshed: bool = False,
                  with_colorbar: bool | None = None, legend: list[str] | None = None) -> np.ndarray:
    """One video frame: the views side by side, each labelled, with its heatmap and mask outlines laid
    over the centre crop of `crop_area` the policy saw; a colour bar for [0, vmax] (default: this
    frame's largest attention); then a caption with the mask legend.

    Views must be in policy orientation; smaller than `min_view_px` they are enlarged (nearest
    neighbour) to stay legible. `with_colorbar` and `legend` default to what `attention` has; a video
    fixes them for all its frames, which must share one size."""
    if not views:
        raise ValueError("compose_frame needs at least one view")
    vmax = frame_vmax(attention) if vmax is None else vmax
    with_colorbar = bool(attention and attention.heatmaps) if with_colorbar is None else with_colorbar
    legend = list(attention.masks) if legend is None and attention is not None else list(legend or [])
    if crop_area < 1 and CROP_LEGEND not in legend:
        legend.insert(0, CROP_LEGEND)
    panels = []
    for name, frame in views.items():
        check_frame(frame)
        factor = max(1, min_view_px // frame.shape[0])
        top, left, height, width = centre_crop_box(*frame.shape[:2], crop_area)
        box = (top * factor, left * factor, height * factor, width * factor)
        frame = np.ascontiguousarray(frame.repeat(factor, 0).repeat(factor, 1))
        if crop_area < 1:
            frame = outline_crop(frame, box)
        heatmap = attention.heatmaps.get(name) if attention is not None else None
        if heatmap is not None and vmax > 0:
            frame = overlay_heatmap(frame, np.asarray(heatmap), vmax=vmax, colormap=style.colormap, box=box)
        for k, (mask_name, per_view) in enumerate(attention.masks.items() if attention is not None else ()):
            if name in per_view:
                frame = outline_mask(frame, np.asarray(per_view[name], dtype=bool), mask_color(mask_name, k), box)
        frame = _label(frame, name)
        if refreshed and heatmap is not None:
            frame = _label(frame, "new map", corner="right", color=(57, 255, 20))
        panels.append(frame)
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    if with_colorbar:
        panels.append(colorbar(height, vmax, style.scale, style.colormap))
    image = np.concatenate(panels, axis=1)
    if text_lines or legend:
        image = np.concatenate([image, _caption(list(text_lines or []), legend, image.shape[1])], axis=0)
    return image


class EpisodeVideo:
    """One episode's video, drawn with one colour scale for the whole episode or one per frame.

    With the episode's scale, frames are kept (camera views at their own size, and the maps) and
    drawn at `close`, once the episode's largest attention is known. The layout (colour bar, legend)
    is fixed by the first frame. `path` may be reassigned before closing, as with `VideoWriter`."""

    def __init__(self, path: str | os.PathLike, fps: int = 20, style: OverlayStyle = OverlayStyle(),
                 crop_area: float = 1.0, min_view_px: int = 0):
        self.writer = VideoWriter(path, fps=fps)
        self.style, self.crop_area, self.min_view_px = style, crop_area, min_view_px
        self._layout: dict | None = None
        self._pending: list[tuple] = []
        self._vmax = 0.0

    @property
    def path(self) -> Path:
        return self.writer.path

    @path.setter
    def path(self, value: Path) -> None:
        self.writer.path = value

    def add(self, views: dict[str, np.ndarray], attention: AttentionMaps | None, text_lines: list[str],
            refreshed: bool = False) -> None:
        if self._layout is None:
            self._layout = {"with_colorbar": bool(attention and attention.heatmaps),
                            "legend": list(attention.masks) if attention is not None else []}
        if self.style.scale == "episode":
            self._pending.append((views, attention, text_lines, refreshed))
            self._vmax = max(self._vmax, frame_vmax(attention))
        else:
            self.writer.append(self._draw(views, attention, text_lines, refreshed, frame_vmax(attention)))

    def _draw(self, views, attention, text_lines, refreshed, vmax) -> np.ndarray:
        return compose_frame(views, attention, text_lines, self.style, vmax, self.crop_area, self.min_view_px,
                             refreshed, **self._layout)

    def close(self, keep: bool = True) -> Path | None:
        """Draw what is pending and finish the file; returns its path, or None when nothing was kept."""
        pending, self._pending = self._pending, []
        try:
            for frame in pending if keep else ():
                self.writer.append(self._draw(*frame, self._vmax))
        except BaseException:
            self.writer.close(keep=False)
            raise
        return self.writer.close(keep=keep)


class VideoWriter:
    """H.264 MP4 writer that only ever leaves complete files behind.

    Frames go to a hidden temporary file beside `path`, which is renamed onto `path` on a clean
    close; `path` may be reassigned before closing (e.g. to put the episode's outcome in its name).
    On an exception, or when no frame was written, no file is left. Frames are padded to even
    sizes (yuv420p needs them) instead of letting imageio resize them."""

    def __init__(self, path: str | os.PathLike, fps: int = 20):
        self._file = AtomicFile(path, suffix=".mp4")  # imageio picks the format by the extension
        self.fps = fps
        self.frames_written = 0
        self._writer = None
        self._shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        check_frame(frame)
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
        if self._writer is None:
            self._file.__enter__()
            self._writer = imageio.get_writer(self._file.tmp, fps=self.fps, codec="libx264", macro_block_size=1)
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
            self._file.discard()
            return None
        return self._file.commit()

    @property
    def path(self) -> Path:
        return self._file.path

    @path.setter
    def path(self, path: str | os.PathLike) -> None:
        self._file.path = Path(path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(keep=exc_type is None)
