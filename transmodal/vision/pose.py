"""Pose stage (paper 3.1 step 2): ViTPose++ COCO-17 keypoints on the primary track's box in every kept frame.

``run_pose`` returns the keypoints table (``data/keypoints.parquet``: one row per kept frame of every stored
video; video_id, frame_idx, then ``{joint}_x`` for the 17 COCO joints, ``{joint}_y``, ``{joint}_score``;
contract in docs/data-contracts.md) and the metrics written to ``metrics/pose.json``. With
``pose.source: annotations`` the keypoints are the ground truth of the actor (person 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from transmodal.data.coco import NUM_JOINTS, joint_columns
from transmodal.data.frames import FrameStore
from transmodal.params import ParamError, PoseConfig
from transmodal.vision import checkpoints
from transmodal.vision.detect import (
    FramePiece,
    VideoFrames,
    _size_hw,
    cpu_threads,
    frames_to_tensor,
    iter_frame_batches,
    overlapped,
    pipelined,
    stored_videos,
)
from transmodal.vision.offload import Ring, forked_pipeline, shared_array
from transmodal.vision.quality import FrameKeys, lookup, pose_quality

KEYPOINT_COLUMNS = [
    "video_id",
    "frame_idx",
    *joint_columns("x"),
    *joint_columns("y"),
    *joint_columns("score"),
]
PADDING = 1.25  # ViTPose's box padding (box_to_center_and_scale)
# On the CPU, frames are warped this many bytes of float pixels at a time (8 frames of 160 x 120): a chunk stays
# in the core's cache between its conversion to float and the warp (PoseEstimator.preprocess)
CROP_CHUNK_BYTES = 2_000_000


def empty_keypoints() -> pd.DataFrame:
    """A keypoints table with no rows and the contract's columns and dtypes."""
    columns = {"video_id": pd.Series(dtype=str), "frame_idx": pd.Series(dtype=np.int32)}
    columns.update({name: pd.Series(dtype=np.float32) for name in KEYPOINT_COLUMNS[2:]})
    return pd.DataFrame(columns)


def keypoint_table(video_id, frame_idx: np.ndarray, xy: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Rows ``frame_idx`` (T,), ``xy`` (T, J, 2) frame pixels, ``scores`` (T, J) in [0, 1] of one video
    (``video_id`` a str) or of several (``video_id`` (T,), one per row)."""
    if isinstance(video_id, str):
        video_id = np.full(len(frame_idx), video_id, dtype=object)
    columns = {
        "video_id": np.asarray(video_id, dtype=object),
        "frame_idx": frame_idx.astype(np.int32),
    }
    columns.update(zip(joint_columns("x"), xy[:, :, 0].astype(np.float32).T, strict=True))
    columns.update(zip(joint_columns("y"), xy[:, :, 1].astype(np.float32).T, strict=True))
    columns.update(zip(joint_columns("score"), scores.astype(np.float32).T, strict=True))
    return pd.DataFrame(columns)[KEYPOINT_COLUMNS]


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


def crop_window(
    boxes: np.ndarray, in_h: int, in_w: int, crop_size: tuple[int, int], normalize_factor: float = 200.0
) -> np.ndarray:
    """(n, 4) int64 rows y0, y1 and columns x0, x1 (ends exclusive) of the in_h x in_w frame pixels that the
    crops of ``boxes`` can read (:func:`crop_grid`; clipped to the frame, empty where the crop lies outside).

    The warp's samples run from center - region / 2 to center + region / 2; bilinear sampling reads the
    pixel below a sample and the one after it. The window has one pixel more on each side, so that the
    float32 rounding of the grid can never reach outside it.
    """
    center, region = crop_geometry(boxes, crop_size, normalize_factor)
    low = np.floor(center - region / 2).astype(np.int64) - 1  # (n, 2) x, y
    high = np.floor(center + region / 2).astype(np.int64) + 3
    x0, x1 = low[:, 0].clip(0, in_w), high[:, 0].clip(0, in_w)
    y0, y1 = low[:, 1].clip(0, in_h), high[:, 1].clip(0, in_h)
    return np.stack([y0, y1, x0, x1], axis=1)


def _warp(frames: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(k, 3, H, W) float 0..255 frames and their :func:`crop_grid` -> crops (k, 3, S_h, S_w)."""
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


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

    Heatmaps on the CPU are decoded by :func:`_decode_heatmaps_numpy`, the same arithmetic in numpy, equal to
    the torch version bit for bit (tested) at about 60% of its cost (numpy's per-op overhead is smaller).
    """
    if heatmaps.device.type == "cpu" and heatmaps.dtype in (torch.float32, torch.float64):
        keypoints, scores = _decode_heatmaps_numpy(heatmaps.detach().numpy(), boxes, crop_size, kernel_size)
        return torch.from_numpy(keypoints), torch.from_numpy(scores)
    return _decode_heatmaps_torch(heatmaps, boxes, crop_size, kernel_size)


def _blur_kernel(kernel_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """DARK's gaussian (sigma 0.8, ``kernel_size`` taps) normalised to sum 1, float64 (K,)."""
    radius = (kernel_size - 1) // 2
    taps = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-0.5 * taps.double() ** 2 / 0.8**2)
    return kernel / kernel.sum()


@lru_cache(maxsize=16)
def _blur_kernel_numpy(kernel_size: int) -> np.ndarray:
    return _blur_kernel(kernel_size).numpy()


@lru_cache(maxsize=16)
def _reflect_table(size: int, margin: int) -> np.ndarray:
    """:func:`_reflect` of the indices -margin .. size + margin - 1, at position index + margin."""
    return _reflect(torch.arange(-margin, size + margin), size).numpy()


def _decode_heatmaps_numpy(
    heatmaps: np.ndarray, boxes: np.ndarray, crop_size: tuple[int, int], kernel_size: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_decode_heatmaps_torch` in numpy, operation for operation (same dtypes, same order of the
    blur's sums; the log through torch), so bit for bit the same result: keypoints (n, J, 2) and scores
    (n, J), float32."""
    n, joints, h, w = heatmaps.shape
    count = n * joints  # N heatmaps
    dtype = heatmaps.dtype
    flat = np.ascontiguousarray(heatmaps).reshape(count, h * w)
    index = flat.argmax(axis=1)  # (N,), the first maximum
    scores = flat[np.arange(count), index]  # (N,)
    peak_x, peak_y = index % w, index // w

    # the gaussian-blurred heatmap at the 3 x 3 pixels around each peak, from the (2r + 3)^2 patch around it
    radius = (kernel_size - 1) // 2
    kernel = _blur_kernel_numpy(kernel_size)  # (K,) float64
    reach = np.arange(2 * radius + 3)  # (P,) patch offsets -r-1 .. r+1, shifted by r + 1 to index the tables
    rows = _reflect_table(h, radius + 1)[peak_y[:, None] + reach]  # (N, P) scipy's reflect border
    cols = _reflect_table(w, radius + 1)[peak_x[:, None] + reach]  # (N, P)
    # the patch laid out (P rows, N, P columns): each blur step reads one contiguous slice
    where = (rows.T * w + (np.arange(count) * (h * w)))[:, :, None] + cols[None, :, :]  # (P, N, P)
    patch = flat.reshape(-1).take(where).astype(np.float64)
    # along rows then along columns, each a sum over the taps in order (as torch's small matmul), rounded to
    # the heatmaps' dtype in between (as scipy)
    blurred = _sequential_blur(patch, kernel).astype(dtype)  # (3 rows, N, P columns)
    blurred = blurred.transpose(2, 0, 1).astype(np.float64)  # (P columns, 3 rows, N)
    blurred = _sequential_blur(blurred, kernel).astype(dtype)  # (3 columns, 3 rows, N)
    blurred = blurred.transpose(2, 1, 0).reshape(count, 9)  # (N, 3 x 3) row-major
    # DARK reads the blurred map edge-padded: a neighbour beyond the border is the border pixel
    offsets = np.arange(-1, 2)
    row_pick = np.clip(peak_y[:, None] + offsets, 0, h - 1) - peak_y[:, None] + 1  # (N, 3) in 0..2
    col_pick = np.clip(peak_x[:, None] + offsets, 0, w - 1) - peak_x[:, None] + 1
    pick = (row_pick[:, :, None] * 3 + col_pick[:, None, :]).reshape(count, 9)
    blurred = np.take_along_axis(blurred, pick, axis=1)
    log = torch.from_numpy(blurred).clamp_(0.001, 50).log_().numpy().reshape(count, 3, 3)
    dx, dy, dxx, dyy, dxy = _log_derivatives(log)
    eps = float(np.finfo(np.float32).eps)
    a, b, d = dxx.astype(np.float64) + eps, dxy.astype(np.float64), dyy.astype(np.float64) + eps
    with np.errstate(divide="ignore", invalid="ignore"):  # torch gives inf / nan silently
        det = a * d - b * b
        step = np.stack([(d * dx - b * dy) / det, (a * dy - b * dx) / det], axis=-1)
    coords = np.stack([peak_x, peak_y], axis=-1).astype(np.float64) - step
    coords = np.where(scores[:, None] > 0, coords, -1.0).reshape(n, joints, 2)

    center_xy, region = crop_geometry(boxes, crop_size)
    step = region / np.array([w - 1.0, h - 1.0])
    keypoints = coords * step[:, None, :] + center_xy[:, None, :] - region[:, None, :] * 0.5
    return keypoints.astype(np.float32), scores.reshape(n, joints).astype(np.float32)


def _log_derivatives(log):
    """DARK's finite differences of the log-heatmap patches (N, 3, 3), numpy or torch alike (the same
    operations in the same order for both decoders): dx, dy, dxx, dyy, dxy, each (N,)."""
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


def _sequential_blur(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(P, ...) float64 -> (3, ...): out[i] = sum over k in order of values[i + k] * kernel[k]."""
    out = values[0:3] * kernel[0]
    term = np.empty_like(out)
    for k in range(1, len(kernel)):
        np.multiply(values[k : k + 3], kernel[k], out=term)
        out += term
    return out


def _decode_heatmaps_torch(
    heatmaps: torch.Tensor, boxes: np.ndarray, crop_size: tuple[int, int], kernel_size: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_heatmaps` as batched torch ops on the heatmaps' device."""
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


class PoseEstimator:
    """ViTPose / ViTPose++ through transformers, top-down on one box per frame.

    ``estimator(frames (n, H, W, 3) uint8 RGB, boxes (n, 4) x1, y1, x2, y2 pixels) -> (keypoints (n, 17, 2)
    float32 frame pixels, scores (n, 17) float32 in [0, 1])``. Boxes must have positive width and height.

    Every crop is sent with ``dataset_index`` (ViTPose++ picks its expert head by it; 0 = COCO). The crop
    follows the checkpoint's own image processor: box -> center and scale (padding 1.25, the crop's aspect
    ratio), then an affine warp. For the standard configuration it runs as one batched ``grid_sample`` on the
    model's device, equal to the processor's scipy warp up to uint8 rounding (tested); other configurations go
    through the processor. Heatmaps are decoded on the model's device by :func:`decode_heatmaps`, a batched
    equivalent of the processor's ``post_process_pose_estimation`` (tested against it; that one loops over
    every heatmap in scipy and costs more than the model: ``postprocess_with_processor`` keeps it as the
    reference). Keypoints are always mapped back with our boxes. A joint's score is its heatmap maximum,
    clipped to [0, 1].
    """

    def __init__(self, model, processor, dataset_index: int, device: torch.device):
        self.model = model
        self.processor = processor
        self.dataset_index = dataset_index
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self._fast = self._fast_preprocess_spec(processor)
        self._buffers = threading.local()  # the float frames of the CPU crop, per thread

    @classmethod
    def from_config(cls, cfg: PoseConfig) -> PoseEstimator:
        """Load ``pose.checkpoint`` (hub id or folder) on ``pose.device`` in ``pose.precision``."""
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        folder = checkpoints.resolve_checkpoint(cfg.checkpoint, "pose.checkpoint")
        device = checkpoints.pick_device(cfg.device)
        dtype = checkpoints.pick_dtype(cfg.precision, device)
        model = checkpoints.load_model(VitPoseForPoseEstimation, folder, "pose.checkpoint", device, dtype)
        if model.config.num_labels != NUM_JOINTS:
            raise checkpoints.CheckpointError(
                f"params.yaml: pose.checkpoint is {cfg.checkpoint!r}: it predicts {model.config.num_labels} "
                f"keypoints; the pipeline needs the {NUM_JOINTS} COCO joints"
            )
        num_experts = int(getattr(model.config.backbone_config, "num_experts", 1))
        if cfg.dataset_index >= num_experts:
            raise ParamError(
                f"params.yaml: pose.dataset_index is {cfg.dataset_index}, but {cfg.checkpoint!r} has "
                f"{num_experts} expert head(s) (valid: 0..{num_experts - 1}; 0 = COCO)"
            )
        processor = checkpoints.load_processor(AutoImageProcessor, folder, "pose.checkpoint")
        return cls(model, processor, cfg.dataset_index, device)

    @staticmethod
    def _fast_preprocess_spec(processor) -> dict | None:
        size = _size_hw(getattr(processor, "size", None))
        if size is None or not getattr(processor, "do_affine_transform", True):
            return None
        # rescale then normalise, folded into one multiply-add per channel: x * weight + bias
        scale = processor.rescale_factor if processor.do_rescale else 1.0
        mean, std = np.zeros(3), np.ones(3)
        if processor.do_normalize:
            mean, std = np.asarray(processor.image_mean, float), np.asarray(processor.image_std, float)
        return {
            "size": size,
            "normalize_factor": float(getattr(processor, "normalize_factor", 200.0)),
            "weight": torch.tensor(scale / std, dtype=torch.float32).view(1, 3, 1, 1),
            "bias": torch.tensor(-mean / std, dtype=torch.float32).view(1, 3, 1, 1),
        }

    def preprocess(
        self, frames: np.ndarray | Sequence[np.ndarray], boxes: np.ndarray, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crops (n, 3, S_h, S_w) on the model's device and dtype, one per frame and box (x1, y1, x2, y2).

        ``frames`` is (n, H, W, 3) uint8 RGB, or a list of such pieces (their frames in order; sizes may
        differ between pieces) so that a batch spanning videos needs no copy into one array. With ``out``
        (at least n crops of that shape, on the model's device) the crops are written into its first n rows
        and those rows are returned, e.g. straight into a buffer shared with another process.

        On the CPU the frames are converted to float and warped a few at a time (:data:`CROP_CHUNK_BYTES` of
        float pixels), so that the float frames stay in the core's cache, and only the pixels the crops read
        are converted (:func:`crop_window`): the pose worker's work per frame costs less than with one pass
        over the batch (``benchmarks/pose_worker.py``, ``docs/decisions.md`` 23). Each crop depends only on its
        own frame and box, never on the batch.
        """
        pieces = [frames] if isinstance(frames, np.ndarray) else list(frames)
        count = sum(len(piece) for piece in pieces)
        if count != len(boxes):
            raise ValueError(f"{count} frames but {len(boxes)} boxes: one box per frame")
        if self._fast is None:
            coco = xyxy_to_coco(boxes)
            pixel_values = self.processor(
                images=[frame for piece in pieces for frame in piece],
                boxes=[[box.tolist()] for box in coco],
                return_tensors="pt",
            )["pixel_values"]
            if out is None:
                return pixel_values.to(self.device, self.dtype)
            return out[:count].copy_(pixel_values)
        spec = self._fast
        crop_size = spec["size"]
        if out is None:
            out = torch.empty((count, 3, *crop_size), dtype=self.dtype, device=self.device)
        elif len(out) < count or tuple(out.shape[1:]) != (3, *crop_size):
            raise ValueError(
                f"room for {len(out)} crops of {tuple(out.shape[1:])}; need {count} of {(3, *crop_size)}"
            )
        weight, bias = spec["weight"].to(self.device), spec["bias"].to(self.device)
        row = 0
        for piece in pieces:
            piece_boxes = boxes[row : row + len(piece)]
            in_h, in_w = piece.shape[1:3]
            grid = crop_grid(piece_boxes, in_h, in_w, crop_size, spec["normalize_factor"])
            grid = torch.from_numpy(grid).to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                window = crop_window(piece_boxes, in_h, in_w, crop_size, spec["normalize_factor"])
                crops = self._crop_on_cpu(piece, grid, window)
            else:
                crops = [(0, _warp(frames_to_tensor(piece, self.device), grid))]
            for first, crop in crops:
                # the processor warps uint8 images: round, then rescale and normalise in one multiply-add
                rows = slice(row + first, row + first + len(crop))
                torch.addcmul(bias, crop.round_(), weight, out=out[rows])
            row += len(piece)
        return out[:count]

    def _crop_on_cpu(
        self, frames: np.ndarray, grid: torch.Tensor, window: np.ndarray
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Crops of ``frames`` (n, H, W, 3) uint8 on the CPU, 0..255 unrounded, :data:`CROP_CHUNK_BYTES` of
        float frames at a time: (index of the chunk's first frame, its crops (k, 3, S_h, S_w)) per chunk.
        Only the pixels the chunk's crops can read (the union of their :func:`crop_window`) are converted to
        float, into a buffer kept for the next chunks; the warp reads nothing else, so the crops are those of
        whole converted frames, bit for bit."""
        count, in_h, in_w = frames.shape[:3]
        step = max(1, CROP_CHUNK_BYTES // (in_h * in_w * 3 * 4))
        buffer = self._float_frames(min(step, count), in_h, in_w)  # (k, H, W, 3) float32
        for first in range(0, count, step):
            part = slice(first, first + step)
            k = len(frames[part])
            y0, x0 = window[part, 0].min(), window[part, 2].min()
            y1, x1 = window[part, 1].max(), window[part, 3].max()
            if y1 > y0 and x1 > x0:
                buffer[:k, y0:y1, x0:x1].copy_(torch.from_numpy(frames[part, y0:y1, x0:x1]))
            yield first, _warp(buffer[:k].permute(0, 3, 1, 2), grid[part])

    def _float_frames(self, count: int, height: int, width: int) -> torch.Tensor:
        """A (count, height, width, 3) float32 buffer, zeroed when made and reused by later calls of the same
        or a smaller count (per thread: a worker thread and the caller's never share one)."""
        buffer = getattr(self._buffers, "frames", None)
        if buffer is None or buffer.shape[1:3] != (height, width) or len(buffer) < count:
            buffer = self._buffers.frames = torch.zeros(count, height, width, 3)
        return buffer

    def ring(self, batch_size: int, slots: int = 3) -> Ring:
        """Shared-memory buffers for :func:`~transmodal.vision.offload.forked_pipeline`: ``slots`` batches of
        crops and of heatmaps."""
        crop = _size_hw(self.processor.size)
        return Ring.allocate(slots, batch_size, (3, *crop), self.dtype, self.heatmap_shape(crop), self.dtype)

    def heatmap_shape(self, crop: tuple[int, int]) -> tuple[int, int, int]:
        """(joints, h, w) of the heatmaps of crops of ``crop`` pixels, from the model's config: the backbone's
        patch grid upsampled by the head (the simple decoder by ``scale_factor``, the classic one's two
        stride-2 deconvolutions by 4)."""
        config = self.model.config
        patch = config.backbone_config.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        scale = config.scale_factor if config.use_simple_decoder else 4
        return config.num_labels, int(crop[0] // patch_h * scale), int(crop[1] // patch_w * scale)

    def forward(self, pixel_values: torch.Tensor):
        """The bare model call, with one ``dataset_index`` per crop (what the benchmark compares against)."""
        dataset_index = torch.full(
            (len(pixel_values),), self.dataset_index, dtype=torch.long, device=self.device
        )
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values, dataset_index=dataset_index)

    def decode(self, outputs, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps -> keypoints (n, 17, 2) frame pixels, scores (n, 17) in [0, 1]; tensors on the device."""
        with torch.no_grad():
            keypoints, scores = decode_heatmaps(
                outputs.heatmaps.float(), boxes, _size_hw(self.processor.size)
            )
        return keypoints, scores.clamp(0.0, 1.0)

    def postprocess(self, outputs, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decode` as numpy arrays."""
        keypoints, scores = self.decode(outputs, boxes)
        return keypoints.cpu().numpy(), scores.cpu().numpy()

    def postprocess_with_processor(self, outputs, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same through the processor's ``post_process_pose_estimation`` (the reference; slower)."""
        coco = xyxy_to_coco(boxes)
        # float32 on the CPU without grad: it calls .numpy() on the heatmaps; threshold=None keeps all joints
        heatmaps = SimpleNamespace(heatmaps=outputs.heatmaps.detach().float().cpu())
        with torch.no_grad():
            results = self.processor.post_process_pose_estimation(
                heatmaps, boxes=[[box.tolist()] for box in coco], threshold=None
            )
        keypoints = np.stack([image[0]["keypoints"].numpy() for image in results]).astype(np.float32)
        scores = np.stack([image[0]["scores"].numpy().reshape(-1) for image in results]).astype(np.float32)
        return keypoints, np.clip(scores, 0.0, 1.0)  # (n, J, 2), (n, J)

    def __call__(self, frames: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.postprocess(self.forward(self.preprocess(frames, boxes)), boxes)


@dataclass
class KeptLayout:
    """The kept frames of all stored videos laid end to end (the keypoints table's rows, in order)."""

    video_ids: list[str]
    bounds: np.ndarray  # (V + 1,) video v's rows are bounds[v]:bounds[v + 1]
    video_id: np.ndarray  # (N,) object
    frame_idx: np.ndarray  # (N,) int64, ascending within each video
    width: np.ndarray  # (N,) the row's video width
    height: np.ndarray  # (N,)
    keys: FrameKeys
    codes: np.ndarray  # (N,) ascending (video order, then frame)

    @classmethod
    def of(cls, videos: dict[str, VideoFrames]) -> KeptLayout:
        video_ids = list(videos)
        counts = np.array([len(info.frame_idx) for info in videos.values()], np.int64)
        frame_idx = np.concatenate([info.frame_idx for info in videos.values()] or [np.zeros(0, np.int64)])
        video_id = np.repeat(np.asarray(video_ids, dtype=object), counts)
        keys = FrameKeys.of(video_id, frame_idx)
        return cls(
            video_ids=video_ids,
            bounds=np.concatenate([[0], np.cumsum(counts)]),
            video_id=video_id,
            frame_idx=frame_idx.astype(np.int64),
            width=np.repeat([info.width for info in videos.values()], counts),
            height=np.repeat([info.height for info in videos.values()], counts),
            keys=keys,
            codes=keys.codes(video_id, frame_idx),
        )

    def rows_of(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """For a table with video_id and frame_idx: the indices of its rows that fall on a kept frame (the first
        row of each (video, frame), in table order) and the layout rows they fall on."""
        codes = self.keys.codes(table["video_id"].astype(str).to_numpy(object), table["frame_idx"].to_numpy())
        row = lookup(self.codes, codes)
        found = np.flatnonzero(row >= 0)
        _, first = np.unique(row[found], return_index=True)
        found = np.sort(found[first])
        return found, row[found]

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per-video views of an (N, ...) array."""
        return {
            v: values[a:b] for v, a, b in zip(self.video_ids, self.bounds[:-1], self.bounds[1:], strict=True)
        }


def primary_boxes(tracks: pd.DataFrame, layout: KeptLayout) -> tuple[np.ndarray, np.ndarray]:
    """The primary track's box (N, 4) per kept frame of ``layout``, clamped to the frame (NaN where it has no
    row; the first row should a frame have several), and a mask (N,) of frames whose primary box is a
    fallback full-frame box."""
    boxes = np.full((len(layout.frame_idx), 4), np.nan)
    fallback = np.zeros(len(layout.frame_idx), bool)
    primary = tracks[tracks["is_primary"].to_numpy(bool)]
    found, rows = layout.rows_of(primary)
    boxes[rows] = primary[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[found]
    fallback[rows] = primary["fallback"].to_numpy(bool)[found]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, layout.width[:, None])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, layout.height[:, None])
    return boxes, fallback


def ground_truth_keypoints(annotations: pd.DataFrame, layout: KeptLayout) -> tuple[np.ndarray, np.ndarray]:
    """The actor's (person 0) ground truth per kept frame of ``layout`` as (N, 17, 2) pixels and (N, 17)
    scores: 1 where visible (v > 0), else NaN and 0; NaN and 0 for the whole frame where the actor has no
    row (the first row counts should a frame have several)."""
    xy = np.full((len(layout.frame_idx), NUM_JOINTS, 2), np.nan)
    scores = np.zeros((len(layout.frame_idx), NUM_JOINTS))
    actor = annotations[annotations["person"].to_numpy() == 0]
    found, rows = layout.rows_of(actor)
    visible = actor[joint_columns("v")].to_numpy()[found] > 0  # (R, J)
    gt_xy = np.stack(
        [actor[joint_columns("x")].to_numpy(np.float64), actor[joint_columns("y")].to_numpy(np.float64)], -1
    )[found]
    xy[rows] = np.where(visible[..., None], gt_xy, np.nan)
    scores[rows] = visible.astype(np.float64)
    return xy, scores


def run_pose(
    store: FrameStore,
    tracks: pd.DataFrame,
    cfg: PoseConfig,
    annotations: pd.DataFrame | None,
    progress: bool = True,
    estimator: PoseEstimator | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Keypoints of every kept frame of every stored video and the pose metrics (for ``metrics/pose.json``).

    ``tracks`` is the detect stage's table (its primary rows give the boxes). ``annotations`` is the dataset's
    ground truth or None; ``source: annotations`` requires it, and whenever given it scores the keypoints
    (adds the keys of :func:`~transmodal.vision.quality.pose_quality`: PCK@0.2). Frames whose primary box
    has zero area after clamping to the frame (or no primary row at all) get NaN keypoints and score 0 and
    are counted, never sent to the model.
    ``estimator`` reuses an already loaded model (benchmarks); by default one is loaded from ``cfg``.

    On the CPU, ``pose.cpu_worker`` says where reading + cropping and decoding run while the forward runs:
    ``process`` (the default) in a forked worker process (:func:`~transmodal.vision.offload.forked_pipeline`),
    ``thread`` on a worker thread (:func:`~transmodal.vision.detect.overlapped`), each preparing batch
    k + 1 and decoding batch k - 1 while batch k runs the forward with one torch thread fewer than torch's
    setting, the core left to the worker (:func:`~transmodal.vision.detect.forward_threads`); ``none``: the
    plain loop with torch's threads. With the tiny checkpoints the forward costs about as much as the rest,
    so overlapping pays, and a process more than a thread (no shared interpreter lock). Fewer threads may
    round the forward's float sums differently (as a machine with fewer cores would), which can move a joint
    whose heatmap is nearly flat; ``process`` and ``thread`` compute the same numbers. On a GPU the device
    overlaps the host anyway (``cpu_worker`` is not used; ``metrics['cpu_worker']`` says which ran).
    """
    started = time.perf_counter()
    if cfg.source == "annotations" and annotations is None:
        raise ParamError(
            "params.yaml: pose.source is 'annotations' but the dataset has no annotations.parquet"
        )
    videos = stored_videos(store)
    layout = KeptLayout.of(videos)
    metrics: dict = {"source": cfg.source}
    # every kept frame of every video, end to end (the table's rows); xy / scores hold per-video views
    all_xy = np.full((len(layout.frame_idx), NUM_JOINTS, 2), np.nan)
    all_scores = np.zeros((len(layout.frame_idx), NUM_JOINTS))
    frames_empty_box = frames_without_track = frames_fallback_box = 0

    if cfg.source == "annotations":
        all_xy, all_scores = ground_truth_keypoints(annotations, layout)
    else:
        if estimator is None:
            estimator = PoseEstimator.from_config(cfg)
        metrics.update(
            checkpoint=cfg.checkpoint,
            device=str(estimator.device),
            dtype=str(estimator.dtype).removeprefix("torch."),
            batch_size=cfg.batch_size,
            dataset_index=cfg.dataset_index,
        )
        all_boxes, fallback = primary_boxes(tracks, layout)
        missing = np.isnan(all_boxes).any(axis=1)
        empty = ~missing & ((all_boxes[:, 2] <= all_boxes[:, 0]) | (all_boxes[:, 3] <= all_boxes[:, 1]))
        frames_without_track = int(missing.sum())
        frames_empty_box = int(empty.sum())
        frames_fallback_box = int(fallback.sum())
        on_cpu = estimator.device.type == "cpu"
        cpu_worker = cfg.cpu_worker if on_cpu else "none"
        metrics["cpu_worker"] = cpu_worker if on_cpu else "none (not on the CPU)"
        if cpu_worker == "process":  # the forked worker stores the keypoints: in memory shared with us
            all_xy, all_scores = shared_array(all_xy.shape, np.nan), shared_array(all_scores.shape, 0.0)
        usable = ~missing & ~empty
        first_row = dict(zip(layout.video_ids, layout.bounds[:-1].tolist(), strict=True))
        total = len(layout.frame_idx)

        def prepare(batch: list[FramePiece], out: torch.Tensor | None = None):
            """The usable frames of one batch: its key (first layout row, frame count), their crops on the
            model's device (None if the batch has no usable frame), written into ``out`` if given. The key is
            two ints: it travels with the batch's message to the worker, and the rest follows from it
            (:func:`batch_rows`)."""
            start = first_row[batch[0].video_id] + batch[0].start
            frames, row = [], start
            for piece in batch:
                if first_row[piece.video_id] + piece.start != row:
                    raise RuntimeError(f"pose batches skipped layout rows at video {piece.video_id!r}")
                keep = usable[row : row + len(piece.frame_idx)]
                if keep.any():
                    frames.append(piece.frames if keep.all() else piece.frames[keep])
                row += len(piece.frame_idx)
            key = (start, row - start)
            if not frames:
                return key, None
            # the pieces' frames go to the crop as they are: no copy into one array
            return key, estimator.preprocess(frames, all_boxes[batch_rows(key)], out)

        def batch_rows(key) -> np.ndarray:
            """The layout rows of a batch's usable frames, in the order of its crops."""
            start, frame_count = key
            return start + np.flatnonzero(usable[start : start + frame_count])

        def forward(prepared):
            pixel_values = prepared[1]
            return None if pixel_values is None else estimator.forward(pixel_values).heatmaps

        def decode(key, heatmaps):
            """Keypoints and scores (tensors on the device) of a batch's heatmaps, None for no heatmaps."""
            if heatmaps is None:
                return None
            return estimator.decode(SimpleNamespace(heatmaps=heatmaps), all_boxes[batch_rows(key)])

        def store_keypoints(key, decoded) -> int:
            """Store a batch's decoded keypoints; its frame count (for the progress bar)."""
            if decoded is not None:
                rows = batch_rows(key)
                all_xy[rows], all_scores[rows] = (t.cpu().numpy() for t in decoded)  # waits for the device
            return key[1]

        def finish(key, heatmaps) -> int:
            return store_keypoints(key, decode(key, heatmaps))

        def launch(batch: list[FramePiece]):
            prepared = prepare(batch)
            return prepared[0], decode(prepared[0], forward(prepared))

        # the forked worker reads on its own thread: a reading thread beside it would take the forward's core
        batches = iter_frame_batches(store, list(videos), cfg.batch_size, read_ahead=cpu_worker != "process")
        with (
            tqdm(total=total, desc="pose", unit="frame", disable=not progress) as bar,
            cpu_threads(estimator.device, overlap=cpu_worker != "none"),
        ):
            if cpu_worker == "process":
                # the forward of batch k here while a forked child finishes batch k - 1 and reads + crops k + 1
                forked_pipeline(
                    batches,
                    prepare,
                    lambda pixel_values: estimator.forward(pixel_values).heatmaps,
                    finish,
                    bar.update,
                    estimator.ring(cfg.batch_size),
                    name="pose worker",
                )
            elif cpu_worker == "thread":
                # the forward of batch k while a worker finishes batch k - 1 and reads + crops batch k + 1
                overlapped(
                    batches,
                    prepare,
                    forward,
                    lambda batch, prepared, heatmaps: bar.update(finish(prepared[0], heatmaps)),
                )
            else:
                # on a GPU the device runs batch k + 1 while the host stores batch k (on the CPU: a plain loop)
                pipelined(batches, launch, lambda batch, launched: bar.update(store_keypoints(*launched)))

    if videos:
        keypoints = keypoint_table(layout.video_id, layout.frame_idx, all_xy, all_scores)
    else:
        keypoints = empty_keypoints()
    score_values = keypoints[joint_columns("score")].to_numpy()
    seconds = time.perf_counter() - started
    metrics.update(
        videos=len(videos),
        frames=int(len(keypoints)),
        frames_empty_box=frames_empty_box,
        frames_without_track=frames_without_track,
        frames_fallback_box=frames_fallback_box,
        mean_score=float(score_values.mean()) if score_values.size else None,
        seconds=round(seconds, 3),
        frames_per_second=round(len(keypoints) / seconds, 2) if seconds > 0 else None,
    )
    if annotations is not None:  # flat keys, as in metrics/detect.json
        metrics.update(pose_quality(keypoints, annotations))
    return keypoints, metrics
