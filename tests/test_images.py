"""The batched image pipeline gives exactly what resizing each frame alone gave, crops included."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vla_agents.data.images import crop_resize, uv_in_crop


def one_frame_at_a_time(frame: np.ndarray, size: int, area: float, train: bool) -> torch.Tensor:
    """The per-frame preprocessing the agent used before the batched pipeline (same RNG draws)."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
    h, w = x.shape[1:]
    ch, cw = round(h * math.sqrt(area)), round(w * math.sqrt(area))
    if train:
        top, left = (int(torch.randint(0, n - c + 1, ())) for n, c in ((h, ch), (w, cw)))
    else:
        top, left = (h - ch) // 2, (w - cw) // 2
    x = x[:, top : top + ch, left : left + cw]
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def test_batched_crop_resize_equals_one_frame_at_a_time() -> None:
    frames = list(np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8))
    for train in (True, False):
        torch.manual_seed(5)
        batched, _ = crop_resize(frames, 48, crop_area=0.9, train=train)
        torch.manual_seed(5)
        reference = torch.stack([one_frame_at_a_time(f, 48, 0.9, train) for f in frames])
        assert torch.equal(batched, reference)


def test_crop_boxes_and_uv_mapping() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    _, boxes = crop_resize([frame], 32, crop_area=0.81, train=False)  # 90 px centred: offset 5 px
    np.testing.assert_allclose(boxes[0].numpy(), [0.05, 0.05, 0.9, 0.9])
    uv = uv_in_crop(torch.tensor([[0.5, 0.5], [0.05, 0.95], [0.0, 0.5]]), boxes[0])
    np.testing.assert_allclose(uv.numpy(), [[0.5, 0.5], [0.0, 1.0], [-0.05 / 0.9, 0.5]], atol=1e-6)


def test_frames_of_different_sizes_still_resize() -> None:
    frames = [np.full((40, 40, 3), 255, np.uint8), np.zeros((64, 48, 3), np.uint8)]
    pixels, boxes = crop_resize(frames, 16)
    assert pixels.shape == (2, 3, 16, 16)
    assert torch.allclose(pixels[0], torch.ones(3, 16, 16)) and torch.count_nonzero(pixels[1]) == 0
    np.testing.assert_allclose(boxes.numpy(), [[0, 0, 1, 1], [0, 0, 1, 1]])
