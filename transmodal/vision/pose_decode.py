"""ViTPose heatmaps -> keypoints in frame pixels: a batched torch version of the processor's post-processing.

``VitPoseImageProcessor.post_process_pose_estimation`` loops over every heatmap in scipy and costs more than
the model; :func:`decode_heatmaps` computes the same (argmax, DARK refinement, the unbiased transform back to
the frame) for a whole batch on the heatmaps' device.
"""

from __future__ import annotations

import numpy as np
import torch

from transmodal.vision.pose_crop import crop_geometry


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """scipy's mode="reflect" (half-sample symmetric: d c b a | a b c d) for any integer index."""
    index = index % (2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def decode_heatmaps(
    heatmaps: torch.Tensor, boxes: np.ndarray, crop_size: tuple[int, int], kernel_size: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """ViTPose heatmaps (n, J, h, w) of the crops of ``boxes`` (n, 4) x1, y1, x2, y2 -> keypoints (n, J, 2)
    frame pixels and scores (n, J) (the heatmap maxima), float32 tensors on the heatmaps' device.

    A batched torch version of the processor's ``post_process_pose_estimation``: argmax, DARK refinement (a
    Newton step on the log of the heatmap blurred by a gaussian, sigma 0.8, ``kernel_size`` taps, scipy's
    reflect border, the blurred map edge-padded), then the unbiased transform back to the frame. The blur is
    evaluated only at the 3 x 3 pixels around each maximum, which is all the Newton step reads. Equal to the
    processor's output up to float rounding (tested). A heatmap without a positive value keeps the
    processor's placeholder (heatmap pixel -1, -1, transformed, no refinement); its score is <= 0.
    """
    n, joints, h, w = heatmaps.shape
    device = heatmaps.device
    maps = heatmaps.reshape(n * joints, h, w)
    flat = maps.reshape(n * joints, h * w)
    index = flat.argmax(dim=-1)  # (N,), the first maximum as numpy's argmax; N = n * J
    scores = flat.gather(-1, index[:, None])[:, 0]  # (N,)
    peak_x, peak_y = index % w, index // w

    # the gaussian-blurred heatmap, needed only at the 3 x 3 pixels around each peak
    radius = (kernel_size - 1) // 2
    kernel = _blur_kernel(kernel_size, device)  # (K,) float64
    # The (2r + 3)^2 patch around the peak holds every pixel those blurs read (scipy's reflect border).
    reach = torch.arange(-radius - 1, radius + 2, device=device)  # (P,), P = K + 2
    rows = _reflect(peak_y[:, None] + reach, h)  # (N, P)
    cols = _reflect(peak_x[:, None] + reach, w)  # (N, P)
    heatmap_index = torch.arange(n * joints, device=device)[:, None, None]
    patch = maps.reshape(-1)[(heatmap_index * h + rows[:, :, None]) * w + cols[:, None, :]]  # (N, P, P)
    # scipy filters axis 0 then axis 1 in float64, rounding each pass to the input dtype: blurred values at
    # the peak's row/column offsets -1, 0, 1
    blurred = (patch.double().unfold(1, kernel_size, 1) @ kernel).to(maps.dtype)  # (N, 3, P): along rows
    blurred = (blurred.double().unfold(2, kernel_size, 1) @ kernel).to(maps.dtype)  # (N, 3, 3): along columns
    # DARK reads the blurred map edge-padded: a neighbour beyond the border is the border pixel
    offsets = torch.arange(-1, 2, device=device)
    row_pick = (peak_y[:, None] + offsets).clamp(0, h - 1) - peak_y[:, None] + 1  # (N, 3) in 0..2
    col_pick = (peak_x[:, None] + offsets).clamp(0, w - 1) - peak_x[:, None] + 1
    blurred = blurred.gather(1, row_pick[:, :, None].expand(-1, -1, 3))
    blurred = blurred.gather(2, col_pick[:, None, :].expand(-1, 3, -1))  # (N, 3, 3)
    log = blurred.clamp(0.001, 50).log()
    dx, dy, dxx, dyy, dxy = _log_derivatives(log)
    eps = float(np.finfo(np.float32).eps)  # the processor inverts hessian + eps * I
    a, b, d = dxx.double() + eps, dxy.double(), dyy.double() + eps
    det = a * d - b * b
    # one Newton step: (hessian + eps * I)^-1 @ gradient, (N, 2)
    step = torch.stack([(d * dx - b * dy) / det, (a * dy - b * dx) / det], dim=-1)
    coords = torch.stack([peak_x, peak_y], dim=-1).double() - step
    coords = torch.where(scores[:, None] > 0, coords, torch.full_like(coords, -1.0)).reshape(n, joints, 2)
    scores = scores.reshape(n, joints)

    # unbiased transform of heatmap pixels to frame pixels (transform_preds)
    center_xy, region = crop_geometry(boxes, crop_size)
    center_xy = torch.as_tensor(center_xy, device=device)[:, None, :]  # (n, 1, 2)
    region = torch.as_tensor(region, device=device)[:, None, :]  # (n, 1, 2)
    step = region / torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64, device=device)
    keypoints = coords * step + center_xy - region * 0.5  # (n, J, 2)
    return keypoints.float(), scores.float()


def _blur_kernel(kernel_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """DARK's gaussian (sigma 0.8, ``kernel_size`` taps) normalised to sum 1, float64 (K,)."""
    radius = (kernel_size - 1) // 2
    taps = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-0.5 * taps.double() ** 2 / 0.8**2)
    return kernel / kernel.sum()


def _log_derivatives(log):
    """DARK's finite differences of the log-heatmap patches (N, 3, 3): dx, dy, dxx, dyy, dxy, each (N,)."""
    dx = 0.5 * (log[:, 1, 2] - log[:, 1, 0])
    dy = 0.5 * (log[:, 2, 1] - log[:, 0, 1])
    dxx = log[:, 1, 2] - 2 * log[:, 1, 1] + log[:, 1, 0]
    dyy = log[:, 2, 1] - 2 * log[:, 1, 1] + log[:, 0, 1]
    dxy = 0.5 * (
        log[:, 2, 2]
        - log[:, 1, 2]
        - log[:, 2, 1]
        + 2 * log[:, 1, 1]
        - log[:, 1, 0]
        - log[:, 0, 1]
        + log[:, 0, 0]
    )
    return dx, dy, dxx, dyy, dxy
