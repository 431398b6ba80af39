"""Where a world point lands in each camera image, in the orientation policies see.

The grounding corpus, the demonstrations' auxiliary targets and the attention-overlay check all ask
the same question ("which patch holds the red cube?"), so they share this one projection. Pixels are
returned as fractions of the frame (u right, v down, in [0, 1]) of the image *after* the adapter's
180-degree rotation, i.e. the frame a policy's patch grid covers before its centre crop.
"""
from __future__ import annotations

import numpy as np
from robosuite.utils.camera_utils import get_camera_transform_matrix

from vla_agents.data.images import crop_box


def project(sim, camera: str, points: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> (N, 2) uv fractions in policy orientation and (N,) in-view flags
    (in front of the camera and inside the frame)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    transform = get_camera_transform_matrix(sim, camera, image_size, image_size)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ transform.T
    depth = homogeneous[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    col, row = homogeneous[:, 0] / safe, homogeneous[:, 1] / safe  # robosuite's pixel indices of the raw render
    # robosuite's transform maps to the upright image; the raw OpenGL render is that image flipped
    # vertically, and the adapter's 180-degree rotation of the raw render flips it back horizontally.
    u = 1.0 - (col + 0.5) / image_size
    v = (row + 0.5) / image_size
    uv = np.stack([u, v], axis=1)
    in_view = (depth > 0) & (uv >= 0).all(axis=1) & (uv < 1).all(axis=1)
    return uv, in_view


def grid_cell(uv: np.ndarray, grid: int, frame_size: int, crop_area: float = 1.0) -> np.ndarray:
    """uv fractions of a square frame of `frame_size` px -> row-major cell index of a `grid` x `grid` patch
    map laid over the centre crop of `crop_area` that policies see at test time (the pixel crop
    `data.images.crop_box` takes); -1 where the point is outside it."""
    uv = np.asarray(uv, dtype=np.float64)
    top, left, height, width = (n / frame_size for n in crop_box(frame_size, frame_size, crop_area))
    inner = (uv - [left, top]) / [width, height]
    inside = (inner >= 0).all(axis=-1) & (inner < 1).all(axis=-1)
    cells = np.clip((inner * grid).astype(int), 0, grid - 1)
    return np.where(inside, cells[..., 1] * grid + cells[..., 0], -1)
