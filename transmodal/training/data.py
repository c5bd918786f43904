"""Batches of cached VideoMAE token grids and aligned pose tensors for the fusion head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transmodal.features.cache import FeatureStore

# Keep a split in memory when its fp16 tokens fit in this budget; stream from the memory-mapped shards otherwise.
PRELOAD_BYTES = 2 * 1024**3


@dataclass
class SplitData:
    """The clips of one split: rows into the feature store, labels and video ids, with lazy token access."""

    store: FeatureStore
    rows: np.ndarray  # (N,) row numbers into store.clips
    clip_ids: list[str]
    labels: torch.Tensor  # (N,) int64
    video_ids: list[str]
    sequence_ids: list[
        str
    ]  # "<video_id>/<n>": the listed sequence holding the clip; the video id without one
    pose_channels: int
    _tokens: torch.Tensor | None = None  # (N, G, P, D) fp16 when preloaded
    _pose: torch.Tensor | None = None  # (N, T, J, C) float32

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, G, P, D) float32, pose (B, T, J, C) float32, labels (B,) for positions into this split."""
        if self._tokens is not None:
            tokens = self._tokens[positions]
        else:
            tokens = self.store.tokens(self.rows[positions].tolist())
        return tokens.float(), self._pose[positions], self.labels[positions]


def pose_input(xy: np.ndarray, score: np.ndarray, mask: np.ndarray, pose_scores: bool) -> torch.Tensor:
    """The head's pose input (N, T, J, C) float32 from aligned keypoints: xy (N, T, J, 2) zeroed where
    ``mask`` (N, T, J) is False, then the score (N, T, J) as a third channel when ``pose_scores``."""
    xy = torch.as_tensor(xy) * torch.as_tensor(mask)[..., None]
    pose = torch.cat([xy, torch.as_tensor(score)[..., None]], dim=-1) if pose_scores else xy
    return pose.float().contiguous()


def load_split(store: FeatureStore, split: str, pose_scores: bool) -> SplitData:
    """All clips of ``split`` (train | val | test) in clips.parquet order."""
    clips = store.clips
    rows = np.flatnonzero((clips["split"] == split).to_numpy())
    labels = torch.as_tensor(clips["label_idx"].to_numpy()[rows], dtype=torch.long)
    video_ids = clips["video_id"].to_numpy()[rows].tolist()
    sequences = clips["sequence"].to_numpy()[rows].tolist()
    sequence_ids = [video if n < 0 else f"{video}/{n}" for video, n in zip(video_ids, sequences, strict=True)]
    channels = 3 if pose_scores else 2
    clip_ids = clips["clip_id"].to_numpy()[rows].tolist()
    data = SplitData(store, rows, clip_ids, labels, video_ids, sequence_ids, channels)
    if len(rows):
        data._pose = pose_input(*store.pose(rows.tolist()), pose_scores)
        grid = store.backbone["grid"]
        nbytes = len(rows) * grid[0] * grid[1] * store.backbone["hidden_size"] * 2
        if nbytes <= PRELOAD_BYTES:
            data._tokens = store.tokens(rows.tolist())
    return data
