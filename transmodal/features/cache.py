"""The feature cache the features stage writes (layout in :mod:`transmodal.features.store`), read back by
training, evaluation and the ablations: :class:`FeatureStore`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from transmodal.data.coco import NUM_JOINTS

TOKENS_KEY = "tokens"
BACKBONE_FILE = "backbone.json"

TOKEN_TOLERANCE = {"rtol": 1e-2, "atol": 1e-2}
"""How closely two feature caches of the same inputs must agree when they were not computed with the same
float kernels (another CPU's vector unit, a GPU): ``|a - b| <= atol + rtol * |b|`` for every fp16 token
value (``numpy.allclose``). On one machine with the same library versions the tokens are identical, bit for
bit, whatever the thread count; a different kernel moved them by one fp16 step (2e-3 at |x| ~ 4) here
(docs/decisions.md "What reproduces bit for bit"). Checked by :func:`tokens_close`."""


def tokens_close(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> bool:
    """Whether two token arrays of the same clips agree within :data:`TOKEN_TOLERANCE`."""
    a, b = (np.asarray(x, dtype=np.float32) for x in (a, b))
    return a.shape == b.shape and bool(np.allclose(a, b, **TOKEN_TOLERANCE))


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


class FeatureStore:
    """The cache: ``.clips`` (DataFrame), ``.backbone`` (dict), ``.tokens(rows)``, ``.pose(rows)``.

    ``rows`` are positions into ``.clips``. Shards are memory-mapped by safetensors; a call reads only the
    requested rows (contiguous runs as one slice).
    """

    def __init__(self, features_dir: str | Path, clips_parquet: str | Path):
        self.directory = Path(features_dir)
        self.clips_path = Path(clips_parquet)
        self.clips = pd.read_parquet(clips_parquet)
        self.backbone = json.loads((self.directory / BACKBONE_FILE).read_text())
        self.grid = (*self.backbone["grid"], self.backbone["hidden_size"])  # (G, P, D)
        self._shard = self.clips["shard"].to_numpy(np.int64) if len(self.clips) else np.zeros(0, np.int64)
        self._offset = self.clips["offset"].to_numpy(np.int64) if len(self.clips) else np.zeros(0, np.int64)
        self._handles: dict[int, object] = {}
        self._pose: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.clips)

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.directory / shard_name(shard)), framework="pt")
        return self._handles[shard]

    def tokens(self, rows: Sequence[int]) -> torch.Tensor:
        """Token grids (n, G, P, D) float16 of the given clip rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = torch.empty((len(rows), *self.grid), dtype=torch.float16)
        if not len(rows):
            return out
        shards, offsets = self._shard[rows], self._offset[rows]
        order = np.lexsort((offsets, shards))  # read each shard front to back
        # Split into runs of one shard and consecutive offsets; each run is one slice read.
        breaks = np.flatnonzero((np.diff(shards[order]) != 0) | (np.diff(offsets[order]) != 1)) + 1
        for run in np.split(order, breaks):
            shard, first = int(shards[run[0]]), int(offsets[run[0]])
            out[torch.from_numpy(run)] = self._handle(shard).get_slice(TOKENS_KEY)[first : first + len(run)]
        return out

    @property
    def full_patches_per_group(self) -> int:
        """P, the backbone's whole patch grid per frame group (the cache holds K of them when it drops)."""
        return int(self.backbone.get("full_patches_per_group", self.backbone["patches_per_group"]))

    def kept_patches(self, rows: Sequence[int]) -> np.ndarray | None:
        """(n, G, K) int64: which patch of the whole grid each cached token is (``backbone.keep`` < 1), or
        None when the cache holds every patch."""
        if "full_patches_per_group" not in self.backbone:
            return None
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        column = self.clips["kept_patches"].to_numpy()[rows]
        groups, count = self.backbone["grid"]
        if not len(rows):
            return np.zeros((0, groups, count), np.int64)
        return np.stack(column).astype(np.int64).reshape(len(rows), groups, count)

    def pose(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pose in each clip's crop: xy (n, T, J, 2) float32, score (n, T, J) float32, mask (n, T, J) bool."""
        if self._pose is None:
            t = self.backbone["num_frames"]
            n = len(self.clips)

            def stack(column: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
                if not n:
                    return np.zeros((0, *shape), dtype)
                return np.stack(self.clips[column].to_numpy()).astype(dtype).reshape(n, *shape)

            self._pose = (
                stack("pose_xy", np.float32, (t, NUM_JOINTS, 2)),
                stack("pose_score", np.float32, (t, NUM_JOINTS)),
                stack("pose_mask", bool, (t, NUM_JOINTS)),
            )
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        xy, score, mask = self._pose
        return xy[rows], score[rows], mask[rows]
