"""Batches of cached VideoMAE token grids and aligned pose tensors for the fusion head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transmodal.features.cache import FeatureStore


@dataclass
class SplitData:
    """The clips of one split: rows into the feature store, labels and video ids; tokens and pose per batch.

    Tokens and pose are read per batch (tokens from the memory-mapped shards), never held for the whole split:
    the page cache keeps the hot tokens, so memory stays flat as the dataset grows (``tests/test_memory.py``)
    and an epoch over the demo's cache costs ~0.3 ms a batch more than tokens held in memory.
    """

    store: FeatureStore
    rows: np.ndarray  # (N,) row numbers into store.clips
    clip_ids: list[str]
    labels: torch.Tensor  # (N,) int64
    video_ids: list[str]
    sequence_ids: list[
        str
    ]  # "<video_id>/<n>": the listed sequence holding the clip; the video id without one
    pose_channels: int  # C: 3 with model.pose_scores, else 2

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, G, P, D) float32, pose (B, T, J, C) float32, labels (B,) for positions into this split."""
        rows = self.rows[positions]
        pose = pose_input(*self.store.pose(rows), pose_scores=self.pose_channels == 3)
        return self.store.tokens(rows).float(), pose, self.labels[positions]


def pose_input(xy: np.ndarray, score: np.ndarray, mask: np.ndarray, pose_scores: bool) -> torch.Tensor:
    """The head's pose input (N, T, J, C) float32 from aligned keypoints: xy (N, T, J, 2) zeroed where
    ``mask`` (N, T, J) is False, then the score (N, T, J) as a third channel when ``pose_scores``."""
    xy = torch.as_tensor(xy)
    xy = torch.where(
        torch.as_tensor(mask).bool()[..., None], xy, torch.zeros((), dtype=xy.dtype)
    )  # NaN x 0 = NaN
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
    return SplitData(store, rows, clip_ids, labels, video_ids, sequence_ids, channels)
