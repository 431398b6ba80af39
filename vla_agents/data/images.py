"""Camera frames -> policy pixels: crop (random when training, centred otherwise) and resize.

One function for every consumer (the agent at test time, behaviour cloning, pretraining), so a policy
sees the same pixels in training and deployment. Frames of one shape are resized in one batched call:
per frame the result is the same as resizing it alone, and the random crops draw from torch's global
generator in frame order, so a seeded run is reproducible whatever the batch layout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crop_resize(frames: Sequence[np.ndarray], size: int, crop_area: float = 1.0, train: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) frames -> float (N, 3, size, size) in [0, 1], and each crop's box as fractions of
    its frame, (N, 4) = (top, left, height, width): what a pixel position must be mapped through."""
    crops, boxes = [], []
    for frame in frames:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        h, w = x.shape[1:]
        top, left, ch, cw = crop_box(h, w, crop_area, train)
        crops.append(x[:, top : top + ch, left : left + cw])
        boxes.append((top / h, left / w, ch / h, cw / w))
    if len({c.shape for c in crops}) == 1:
        pixels = _resize(torch.stack(crops).float().div_(255.0), size)
    else:
        pixels = torch.cat([_resize(c[None].float().div_(255.0), size) for c in crops])
    return pixels, torch.tensor(boxes, dtype=torch.float32)


def crop_box(height: int, width: int, crop_area: float = 1.0, train: bool = False) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of the crop of `crop_area` of the frame: random when training
    (two draws from torch's generator), centred otherwise."""
    if crop_area >= 1.0:
        return 0, 0, height, width
    ch, cw = round(height * math.sqrt(crop_area)), round(width * math.sqrt(crop_area))
    if train:
        top, left = (int(torch.randint(0, n - c + 1, ())) for n, c in ((height, ch), (width, cw)))
    else:
        top, left = (height - ch) // 2, (width - cw) // 2
    return top, left, ch, cw


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def uv_in_crop(uv: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """uv fractions (u right, v down) of the frame -> fractions of the crop (outside [0, 1) if cropped away)."""
    top, left, height, width = boxes.unbind(-1)
    return torch.stack([(uv[..., 0] - left) / width, (uv[..., 1] - top) / height], dim=-1)
