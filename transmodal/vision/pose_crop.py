"""ViTPose's top-down crop: a person box -> the affine warp the checkpoint's processor applies, as a grid.

The processor (``VitPoseImageProcessor``) turns a box into a center and scale (the box widened or heightened
to the crop's aspect ratio, padded by 1.25) and warps the image with scipy. :func:`crop_grid` gives the same
warp as a ``grid_sample`` grid, so a whole batch is cropped in one call on the model's device (:func:`warp`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PADDING = 1.25  # ViTPose's box padding (box_to_center_and_scale)


def xyxy_to_coco(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) x, y, w, h (COCO), the format ViTPose's processor takes."""
    boxes = np.asarray(boxes, np.float64)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def crop_geometry(
    boxes: np.ndarray, crop_size: tuple[int, int], normalize_factor: float = 200.0
) -> tuple[np.ndarray, np.ndarray]:
    """ViTPose's box -> (center (n, 2), region (n, 2) width and height), in frame pixels.

    As the processor's ``box_to_center_and_scale``: the box is widened or heightened to the crop's aspect
    ratio, then padded by 1.25; its "scale" is region / normalize_factor and the warp uses scale * 200.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    center = np.stack([boxes[:, 0] + width * 0.5, boxes[:, 1] + height * 0.5], axis=1)
    aspect = crop_size[1] / crop_size[0]
    height = np.where(width > aspect * height, width / aspect, height)
    width = np.where(width < aspect * height, height * aspect, width)
    region = np.stack([width, height], axis=1) / normalize_factor * PADDING * 200.0
    return center, region


def crop_grid(
    boxes: np.ndarray, in_h: int, in_w: int, crop_size: tuple[int, int], normalize_factor: float = 200.0
) -> np.ndarray:
    """The ``grid_sample`` grid (n, S_h, S_w, 2) float32 (``align_corners=True``) of the crops of ``boxes``
    (n, 4) x1, y1, x2, y2 in in_h x in_w frames: ViTPose's warp (:func:`crop_geometry`, unbiased).

    The warp only scales and shifts, so a column's x and a row's y are computed once (float64, then float32).
    Output pixel u samples input x = u * roi_w / (S_w - 1) + cx - roi_w / 2. scipy's mode="constant" gives 0
    to a sample outside [0, size - 1] (no blending with the border): such samples are moved far outside,
    where grid_sample's zero padding gives 0 too.
    """
    out_h, out_w = crop_size
    center, roi = crop_geometry(boxes, crop_size, normalize_factor)  # (n, 2) each, pixels
    u = np.arange(out_w, dtype=np.float64)
    v = np.arange(out_h, dtype=np.float64)
    src_x = u * (roi[:, :1] / (out_w - 1)) + (center[:, :1] - roi[:, :1] / 2)  # (n, S_w) input pixels
    src_y = v * (roi[:, 1:] / (out_h - 1)) + (center[:, 1:] - roi[:, 1:] / 2)  # (n, S_h)
    grid_x = np.where((src_x >= 0) & (src_x <= in_w - 1), 2 * src_x / (in_w - 1) - 1, 3.0)  # (n, S_w)
    grid_y = np.where((src_y >= 0) & (src_y <= in_h - 1), 2 * src_y / (in_h - 1) - 1, 3.0)  # (n, S_h)
    grid = np.empty((len(center), out_h, out_w, 2), np.float32)
    grid[..., 0] = grid_x[:, None, :]
    grid[..., 1] = grid_y[:, :, None]
    return grid


def warp(frames: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(k, 3, H, W) float 0..255 frames and their :func:`crop_grid` -> crops (k, 3, S_h, S_w), unrounded."""
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
