"""ViTPose / ViTPose++ through transformers, top-down on one person box per frame (the pose stage's model)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch

from transmodal.data.coco import NUM_JOINTS
from transmodal.params import CheckpointError, ParamError, PoseConfig
from transmodal.vision import checkpoints
from transmodal.vision.batches import frames_to_tensor, size_hw
from transmodal.vision.pose_crop import crop_grid, warp, xyxy_to_coco
from transmodal.vision.pose_decode import decode_heatmaps


class PoseEstimator:
    """ViTPose / ViTPose++ through transformers, top-down on one box per frame.

    ``estimator(frames (n, H, W, 3) uint8 RGB, boxes (n, 4) x1, y1, x2, y2 pixels) -> (keypoints (n, 17, 2)
    float32 frame pixels, scores (n, 17) float32 in [0, 1])``. Boxes must have positive width and height.

    Every crop is sent with ``dataset_index`` (ViTPose++ picks its expert head by it; 0 = COCO). The crop
    follows the checkpoint's own image processor: box -> center and scale (padding 1.25, the crop's aspect
    ratio), then an affine warp. For the standard configuration it runs as one batched ``grid_sample`` on the
    model's device (:mod:`transmodal.vision.pose_crop`), equal to the processor's scipy warp up to uint8
    rounding (tested); other configurations go through the processor. Heatmaps are decoded on the model's
    device by :func:`~transmodal.vision.pose_decode.decode_heatmaps`, a batched equivalent of the
    processor's ``post_process_pose_estimation`` (``postprocess_with_processor`` keeps that one as the
    reference). Keypoints are always mapped back with our boxes. A joint's score is its heatmap maximum,
    clipped to [0, 1].
    """

    def __init__(self, model, processor, dataset_index: int, device: torch.device):
        self.model = model
        self.processor = processor
        self.dataset_index = dataset_index
        self.device = device
        self.revision: str | None = None  # from_config: the hub commit of a hub id
        self.folder: str | None = None  # from_config: where the checkpoint's files are
        self.dtype = next(model.parameters()).dtype
        self._fast = self._fast_preprocess_spec(processor)
        if self._fast is None:  # the heatmaps are mapped back through a crop of the box at a fixed size
            raise CheckpointError(
                f"params.yaml: pose.checkpoint is {model.name_or_path!r}: its preprocessor_config.json must "
                "crop each person's box (do_affine_transform: true) to a fixed size (size with height and "
                "width), as ViTPose's do"
            )

    @classmethod
    def from_config(cls, cfg: PoseConfig) -> PoseEstimator:
        """Load ``pose.checkpoint`` (hub id or folder) on ``pose.device`` in ``pose.precision``."""
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        folder = checkpoints.resolve_checkpoint(cfg.checkpoint, "pose.checkpoint", cfg.revision)
        device = checkpoints.pick_device(cfg.device)
        dtype = checkpoints.pick_dtype(cfg.precision, device)
        model = checkpoints.load_model(VitPoseForPoseEstimation, folder, "pose.checkpoint", device, dtype)
        if model.config.num_labels != NUM_JOINTS:
            raise CheckpointError(
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
        estimator = cls(model, processor, cfg.dataset_index, device)
        estimator.revision = checkpoints.hub_revision(folder)  # the hub commit; None for a local folder
        estimator.folder = folder
        return estimator

    @staticmethod
    def _fast_preprocess_spec(processor) -> dict | None:
        size = size_hw(getattr(processor, "size", None))
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

    def preprocess(self, frames: np.ndarray | Sequence[np.ndarray], boxes: np.ndarray) -> torch.Tensor:
        """Crops (n, 3, S_h, S_w) on the model's device and dtype, one per frame and box (x1, y1, x2, y2).

        ``frames`` is (n, H, W, 3) uint8 RGB, or a list of such pieces (their frames in order; sizes may
        differ between pieces) so that a batch spanning videos needs no copy into one array. Each crop
        depends only on its own frame and box, never on the batch.
        """
        pieces = [frames] if isinstance(frames, np.ndarray) else list(frames)
        count = sum(len(piece) for piece in pieces)
        if count != len(boxes):
            raise ValueError(f"{count} frames but {len(boxes)} boxes: one box per frame")
        spec = self._fast
        out = torch.empty((count, 3, *spec["size"]), dtype=self.dtype, device=self.device)
        weight, bias = spec["weight"].to(self.device), spec["bias"].to(self.device)
        row = 0
        for piece in pieces:
            piece_boxes = boxes[row : row + len(piece)]
            grid = crop_grid(piece_boxes, *piece.shape[1:3], spec["size"], spec["normalize_factor"])
            crops = warp(frames_to_tensor(piece, self.device), torch.from_numpy(grid).to(self.device))
            # the processor warps uint8 images: round, then rescale and normalise in one multiply-add
            torch.addcmul(bias, crops.round_(), weight, out=out[row : row + len(piece)])
            row += len(piece)
        return out

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
            keypoints, scores = decode_heatmaps(outputs.heatmaps.float(), boxes, size_hw(self.processor.size))
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
