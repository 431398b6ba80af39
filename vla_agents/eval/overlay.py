"""Attention drawn over one camera view, so a person can tell where the policy looked.

- Colour from a perceptually uniform matplotlib colormap (equal steps in attention look like equal
  steps in colour; jet's bright bands invent edges), and opacity proportional to attention: a patch
  the policy ignored leaves the frame exactly as it was, so object colours stay true.
- The attention grid covers only the part of the frame the policy saw: a centre crop of `crop_area`
  of it (the test-time crop of recipes trained with random crops), not the whole frame.
- The colour scale is explicit (`vmax`): one per frame, or one per episode so that a diffuse map
  does not glow as hot as a sharp one. `colorbar` draws it.
- Patch masks (DTP's important region and pruned tokens, AGVP's and FocusVLA's kept tokens) are
  outlined in a fixed colour per mask, named in `MASK_STYLES` for the legend.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PERCEPTUAL_COLORMAPS = ("inferno", "viridis", "magma", "plasma", "cividis")
DEFAULT_COLORMAP = "inferno"
MAX_ALPHA = 0.6  # opacity where attention reaches the top of the scale
CROP_LEGEND = "crop"  # the legend entry of `outline_crop`
# Mask name (as policies report it), or the crop outline -> legend label and outline colour.
MASK_STYLES = {
    CROP_LEGEND: ("policy's view (centre crop)", (160, 160, 160)),
    "important": ("DTP important region", (255, 255, 255)),
    "pruned": ("DTP pruned tokens", (0, 255, 255)),
    "kept_expert": ("AGVP kept tokens", (57, 255, 20)),
    "kept": ("FocusVLA top-K patches", (57, 255, 20)),
}
OTHER_MASK_COLORS = [(255, 0, 255), (255, 255, 0), (0, 128, 255)]
Box = tuple[int, int, int, int]  # top, left, height, width


def check_frame(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")


@lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a 256 x 3 uint8 lookup table."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}; perceptually uniform ones: {', '.join(PERCEPTUAL_COLORMAPS)}")
    return np.round(255 * colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]).astype(np.uint8)


def mask_color(name: str, index: int) -> tuple[int, int, int]:
    return MASK_STYLES[name][1] if name in MASK_STYLES else OTHER_MASK_COLORS[index % len(OTHER_MASK_COLORS)]


def mask_label(name: str) -> str:
    return MASK_STYLES[name][0] if name in MASK_STYLES else name


def centre_crop_box(height: int, width: int, crop_area: float) -> Box:
    """The region of a (height, width) view the policy sees: the centre crop `preprocess_image` takes
    at test time (same rounding), as (top, left, crop height, crop width)."""
    if not 0 < crop_area <= 1:
        raise ValueError(f"crop_area must be in (0, 1], got {crop_area}")
    if crop_area == 1:
        return 0, 0, height, width
    crop_h, crop_w = round(height * math.sqrt(crop_area)), round(width * math.sqrt(crop_area))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


@lru_cache(maxsize=64)
def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation with pixel-centre alignment, edges held: output pixel o
    mixes the two cells whose centres surround its own."""
    position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1.0 - (position - low))
    np.add.at(weights, (np.arange(n_out), high), position - low)
    return weights


def _resize_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment, so each patch cell lands over its own pixels."""
    return _linear_weights(grid.shape[0], height) @ grid @ _linear_weights(grid.shape[1], width).T


def overlay_heatmap(frame: np.ndarray, heatmap: np.ndarray, vmax: float | None = None,
                    colormap: str = DEFAULT_COLORMAP, box: Box | None = None, max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """Blend a patch-grid heatmap over `frame`, inside `box` (default: the whole frame).

    Attention is scaled by `vmax` (default: this map's maximum) to [0, 1]; that value picks the colour
    and, times `max_alpha`, the opacity. Zero attention leaves pixels unchanged."""
    check_frame(frame)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D patch grid, got shape {heatmap.shape}")
    grid = np.clip(np.nan_to_num(heatmap.astype(np.float64)), 0.0, None)
    scale = grid.max() if vmax is None else vmax
    if scale <= 0:
        return frame.copy()
    top, left, height, width = box or (0, 0, *frame.shape[:2])
    level = np.clip(_resize_bilinear(grid / scale, height, width), 0.0, 1.0).astype(np.float32)
    colors = colormap_lut(colormap).astype(np.float32)[np.round(level * 255).astype(np.uint8)]
    alpha = (max_alpha * level)[..., None]
    out = frame.copy()
    region = out[top : top + height, left : left + width].astype(np.float32)
    out[top : top + height, left : left + width] = np.round(region + alpha * (colors - region)).astype(np.uint8)
    return out


def outline_mask(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 255, 255),
                 box: Box | None = None) -> np.ndarray:
    """Draw a 1-pixel border around every patch cell where `mask` is True, on the grid laid over `box`."""
    check_frame(frame)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D patch grid, got shape {mask.shape}")
    out = frame.copy()
    top, left, height, width = box or (0, 0, *frame.shape[:2])
    row_edges = top + np.round(np.linspace(0, height, mask.shape[0] + 1)).astype(int)
    col_edges = left + np.round(np.linspace(0, width, mask.shape[1] + 1)).astype(int)
    for i, j in zip(*np.nonzero(mask)):
        y0, y1 = row_edges[i], max(row_edges[i + 1] - 1, row_edges[i])
        x0, x1 = col_edges[j], max(col_edges[j + 1] - 1, col_edges[j])
        out[y0, x0 : x1 + 1] = color
        out[y1, x0 : x1 + 1] = color
        out[y0 : y1 + 1, x0] = color
        out[y0 : y1 + 1, x1] = color
    return out


def outline_crop(frame: np.ndarray, box: Box, color: tuple[int, int, int] = (160, 160, 160)) -> np.ndarray:
    """A dotted rectangle around the crop the policy saw (every other pixel, so the scene shows through)."""
    out = frame.copy()
    top, left, height, width = box
    bottom, right = top + height - 1, left + width - 1
    out[top, left:right + 1:2] = out[bottom, left:right + 1:2] = color
    out[top:bottom + 1:2, left] = out[top:bottom + 1:2, right] = color
    return out


@lru_cache(maxsize=8)
def font(size: int = 13) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (its bitmap font where Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):
        return ImageFont.load_default()


@lru_cache(maxsize=16)  # an episode's frames share one bar
def colorbar(height: int, vmax: float, scale: str, colormap: str = DEFAULT_COLORMAP, width: int = 92) -> np.ndarray:
    """A vertical colour bar for attention in [0, vmax], labelled with its ends and whether the scale
    is this frame's or the episode's; opacity grows with it as in the overlay."""
    text = font(12)
    bar = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(bar)
    draw.text((4, 2), "attention", fill=(255, 255, 255), font=text)
    draw.text((4, 16), f"scale: {scale}", fill=(200, 200, 200), font=text)
    top, bottom, left = 36, height - 18, 6
    lut = colormap_lut(colormap)
    for y in range(top, bottom):
        level = round(255 * (bottom - 1 - y) / max(bottom - top - 1, 1))
        draw.line([(left, y), (left + 16, y)], fill=tuple(int(c) for c in lut[level]))
    draw.text((left + 20, top - 4), f"{vmax:.3g}", fill=(255, 255, 255), font=text)
    draw.text((left + 20, bottom - 10), "0", fill=(255, 255, 255), font=text)
    return np.asarray(bar)
