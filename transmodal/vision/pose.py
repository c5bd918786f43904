"""Pose stage (paper 3.1 step 2): ViTPose++ COCO-17 keypoints on the primary track's box in every kept frame.

``run_pose`` returns the keypoints table (``data/keypoints.parquet``: one row per kept frame of every stored
video; video_id, frame_idx, then ``{joint}_x`` for the 17 COCO joints, ``{joint}_y``, ``{joint}_score``;
contract in docs/data-contracts.md) and the metrics written to ``metrics/pose.json``. With
``pose.source: annotations`` the keypoints are the ground truth of the actor (person 0).
"""

from __future__ import annotations

import time
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
    _size_hw,
    frames_to_tensor,
    iter_frame_batches,
    pipelined,
    stored_videos,
)
from transmodal.vision.quality import pose_quality

KEYPOINT_COLUMNS = [
    "video_id",
    "frame_idx",
    *joint_columns("x"),
    *joint_columns("y"),
    *joint_columns("score"),
]
PADDING = 1.25  # ViTPose's box padding (box_to_center_and_scale)


def empty_keypoints() -> pd.DataFrame:
    """A keypoints table with no rows and the contract's columns and dtypes."""
    columns = {"video_id": pd.Series(dtype=str), "frame_idx": pd.Series(dtype=np.int32)}
    columns.update({name: pd.Series(dtype=np.float32) for name in KEYPOINT_COLUMNS[2:]})
    return pd.DataFrame(columns)


def keypoint_table(video_id: str, frame_idx: np.ndarray, xy: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Rows of one video: ``frame_idx`` (T,), ``xy`` (T, J, 2) frame pixels, ``scores`` (T, J) in [0, 1]."""
    columns = {
        "video_id": np.full(len(frame_idx), video_id, dtype=object),
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
    taps = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-0.5 * taps.double() ** 2 / 0.8**2)
    kernel = kernel / kernel.sum()  # (K,) float64
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

    def preprocess(self, frames: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """Crops (n, 3, S_h, S_w) on the model's device and dtype, one per frame and box (x1, y1, x2, y2)."""
        if self._fast is None:
            coco = xyxy_to_coco(boxes)
            pixel_values = self.processor(
                images=list(frames), boxes=[[box.tolist()] for box in coco], return_tensors="pt"
            )["pixel_values"]
            return pixel_values.to(self.device, self.dtype)
        spec = self._fast
        out_h, out_w = spec["size"]
        x = frames_to_tensor(frames, self.device)  # (n, 3, H, W) 0..255
        n, _, in_h, in_w = x.shape
        center, roi = crop_geometry(boxes, (out_h, out_w), spec["normalize_factor"])  # (n, 2) each, pixels
        center = torch.as_tensor(center, device=self.device)
        roi = torch.as_tensor(roi, device=self.device)
        # get_warp_matrix (unbiased): output pixel u samples input x = u * roi_w / (out_w - 1) + cx - roi_w/2
        u = torch.arange(out_w, device=self.device, dtype=torch.float64)
        v = torch.arange(out_h, device=self.device, dtype=torch.float64)
        src_x = u * (roi[:, :1] / (out_w - 1)) + (center[:, :1] - roi[:, :1] / 2)  # (n, S_w) input pixels
        src_y = v * (roi[:, 1:] / (out_h - 1)) + (center[:, 1:] - roi[:, 1:] / 2)  # (n, S_h)
        # scipy's mode="constant" gives 0 to a sample outside [0, size - 1] (no blending with the border):
        # such samples are moved far outside, where grid_sample's zero padding gives 0 too
        grid_x = torch.where((src_x >= 0) & (src_x <= in_w - 1), 2 * src_x / (in_w - 1) - 1, 3.0)  # (n, S_w)
        grid_y = torch.where((src_y >= 0) & (src_y <= in_h - 1), 2 * src_y / (in_h - 1) - 1, 3.0)  # (n, S_h)
        grid = torch.empty(n, out_h, out_w, 2, device=self.device)  # align_corners=True convention
        grid[..., 0] = grid_x[:, None, :]
        grid[..., 1] = grid_y[:, :, None]
        crops = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )  # (n, 3, S_h, S_w)
        crops = crops.round_()  # the processor warps uint8 images
        return torch.addcmul(spec["bias"].to(crops.device), crops, spec["weight"].to(crops.device)).to(
            self.dtype
        )

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


def primary_boxes(
    tracks: pd.DataFrame | None, frame_idx: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """The primary track's box (T, 4) per kept frame, clamped to the frame (NaN where it has no row),
    and a mask (T,) of frames whose primary box is a fallback full-frame box."""
    boxes = np.full((len(frame_idx), 4), np.nan)
    fallback = np.zeros(len(frame_idx), bool)
    if tracks is None or tracks.empty:
        return boxes, fallback
    rows = tracks.drop_duplicates("frame_idx")
    pos = np.searchsorted(frame_idx, rows["frame_idx"].to_numpy(np.int64))
    ok = (pos < len(frame_idx)) & (
        frame_idx[np.minimum(pos, len(frame_idx) - 1)] == rows["frame_idx"].to_numpy()
    )
    boxes[pos[ok]] = rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[ok]
    fallback[pos[ok]] = rows["fallback"].to_numpy(bool)[ok]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes, fallback


def ground_truth_keypoints(annotations: pd.DataFrame, frame_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actor's (person 0) ground truth as (T, 17, 2) pixels and (T, 17) scores: 1 where visible (v > 0),
    else NaN and 0; NaN and 0 for the whole frame where the actor has no row."""
    xy = np.full((len(frame_idx), NUM_JOINTS, 2), np.nan)
    scores = np.zeros((len(frame_idx), NUM_JOINTS))
    rows = annotations.drop_duplicates("frame_idx")
    rows = rows[rows["frame_idx"].isin(frame_idx)]
    pos = np.searchsorted(frame_idx, rows["frame_idx"].to_numpy(np.int64))
    visible = rows[joint_columns("v")].to_numpy() > 0  # (R, J)
    gt_xy = np.stack(
        [rows[joint_columns("x")].to_numpy(np.float64), rows[joint_columns("y")].to_numpy(np.float64)], -1
    )
    xy[pos] = np.where(visible[..., None], gt_xy, np.nan)
    scores[pos] = visible.astype(np.float64)
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
    """
    started = time.perf_counter()
    if cfg.source == "annotations" and annotations is None:
        raise ParamError(
            "params.yaml: pose.source is 'annotations' but the dataset has no annotations.parquet"
        )
    videos = stored_videos(store)
    metrics: dict = {"source": cfg.source}
    xy = {v: np.full((len(info.frame_idx), NUM_JOINTS, 2), np.nan) for v, info in videos.items()}
    scores = {v: np.zeros((len(info.frame_idx), NUM_JOINTS)) for v, info in videos.items()}
    frames_empty_box = frames_without_track = frames_fallback_box = 0

    if cfg.source == "annotations":
        actor = annotations[annotations["person"] == 0].astype({"video_id": str})
        actor_by_video = dict(tuple(actor.groupby("video_id", sort=False)))
        for video_id, info in videos.items():
            if video_id in actor_by_video:
                xy[video_id], scores[video_id] = ground_truth_keypoints(
                    actor_by_video[video_id], info.frame_idx
                )
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
        primary = tracks[tracks["is_primary"]].astype({"video_id": str})
        primary_by_video = dict(tuple(primary.groupby("video_id", sort=False)))
        boxes, usable = {}, {}
        for video_id, info in videos.items():
            video_boxes, fallback = primary_boxes(
                primary_by_video.get(video_id), info.frame_idx, info.width, info.height
            )
            missing = np.isnan(video_boxes).any(axis=1)
            empty = ~missing & (
                (video_boxes[:, 2] <= video_boxes[:, 0]) | (video_boxes[:, 3] <= video_boxes[:, 1])
            )
            boxes[video_id], usable[video_id] = video_boxes, ~missing & ~empty
            frames_without_track += int(missing.sum())
            frames_empty_box += int(empty.sum())
            frames_fallback_box += int(fallback.sum())
        total = sum(len(info.frame_idx) for info in videos.values())

        def launch(batch: list[FramePiece]):
            """Queue one batch's crops, forward and decoding on the device; returns what finish needs."""
            crops, targets, crop_boxes = [], [], []
            for piece in batch:
                positions = np.arange(piece.start, piece.start + len(piece.frame_idx))
                keep = usable[piece.video_id][positions]
                if keep.any():
                    piece_boxes = boxes[piece.video_id][positions[keep]]
                    crops.append(estimator.preprocess(piece.frames[keep], piece_boxes))
                    crop_boxes.append(piece_boxes)
                    targets.append((piece.video_id, positions[keep]))
            if not crops:
                return targets, None
            outputs = estimator.forward(torch.cat(crops))
            return targets, estimator.decode(outputs, np.concatenate(crop_boxes))

        def finish(batch: list[FramePiece], launched) -> None:
            targets, decoded = launched
            if decoded is not None:
                keypoints, keypoint_scores = (t.cpu().numpy() for t in decoded)  # waits for the device
                row = 0
                for video_id, positions in targets:
                    xy[video_id][positions] = keypoints[row : row + len(positions)]
                    scores[video_id][positions] = keypoint_scores[row : row + len(positions)]
                    row += len(positions)
            bar.update(sum(len(piece.frame_idx) for piece in batch))

        with tqdm(total=total, desc="pose", unit="frame", disable=not progress) as bar:
            pipelined(iter_frame_batches(store, list(videos), cfg.batch_size), launch, finish)

    tables = [keypoint_table(v, info.frame_idx, xy[v], scores[v]) for v, info in videos.items()]
    keypoints = pd.concat(tables, ignore_index=True) if tables else empty_keypoints()
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
