"""The feature cache the features stage writes (layout in :mod:`transmodal.features.store`), read back by
training, evaluation and the ablations: :class:`FeatureStore`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from transmodal.data.coco import NUM_JOINTS
from transmodal.stage import StageInputError

TOKENS_KEY = "tokens"
BACKBONE_FILE = "backbone.json"
DENSE_COLUMNS = ("pose_xy", "pose_score", "pose_mask", "kept_patches")
"""List columns of clips.parquet that :class:`FeatureStore` holds as one dense array each, not in ``.clips``:
as pandas objects (one numpy array a clip) they took about three times the memory."""

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


# ``DataFrame.attrs`` key of the dataset's class names by label_idx, set by the dataset index
# (transmodal/data/index.py) and carried into clips.parquet: pandas writes a frame's attrs into its Parquet
# file and reads them back, so a class with no clip (its videos missing or undecodable) keeps its output.
CLASS_NAMES = "class_names"


def class_names_of(table: pd.DataFrame, source: object) -> list[str]:
    """The class names ``table`` carries (``attrs[CLASS_NAMES]``), checked against its labels.

    ``source`` names the file in the error: a table written before the names were recorded, or whose
    ``label``/``label_idx`` disagree with them, stops the stage in one line."""
    names = table.attrs.get(CLASS_NAMES)
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise StageInputError(
            f"{source} records no class names (written by an older version); run `dvc repro` to rebuild it"
        )
    names = list(names)
    if len(set(names)) != len(names):
        raise StageInputError(f"{source}: its class names repeat: {names}")
    pairs = table[["label_idx", "label"]].drop_duplicates()
    wrong = [
        f"{label!r} as {idx}"
        for idx, label in zip(pairs["label_idx"], pairs["label"], strict=True)
        if not 0 <= idx < len(names) or names[idx] != label
    ]
    if wrong:
        raise StageInputError(
            f"{source}: labels {', '.join(sorted(wrong)[:5])} disagree with its {len(names)} class names; "
            "run `dvc repro` to rebuild it"
        )
    return names


class FeatureStore:
    """The cache: ``.clips`` (DataFrame), ``.backbone`` (dict), ``.tokens(rows)``, ``.pose(rows)``.

    ``.clips`` is clips.parquet without its :data:`DENSE_COLUMNS`: those are held as one array each and read
    with ``.pose(rows)`` and ``.kept_patches(rows)``.

    ``rows`` are positions into ``.clips``. Shards are memory-mapped by safetensors; a call reads only the
    requested rows (contiguous runs as one slice).
    """

    def __init__(
        self, features_dir: str | Path, clips_parquet: str | Path, backbone_threads: int | None = None
    ):
        self.directory = Path(features_dir)
        self.clips_path = Path(clips_parquet)
        table = pq.read_table(clips_parquet)
        dense = [c for c in DENSE_COLUMNS if c in table.column_names]
        self._dense = {c: _flat(table.column(c)) for c in dense}
        self.clips = table.drop_columns(dense).to_pandas()
        del table
        self.class_names = class_names_of(self.clips, self.clips_path)  # by label_idx: the head's outputs
        self.backbone = json.loads((self.directory / BACKBONE_FILE).read_text())
        listed = self.backbone.get("num_clips", len(self.clips))
        if listed != len(self.clips):  # tokens read by row would belong to other clips
            raise StageInputError(
                f"{self.directory / BACKBONE_FILE} lists {listed} clips but {self.clips_path} has "
                f"{len(self.clips)}: they come from different runs; run `dvc repro features`"
            )
        self.grid = (*self.backbone["grid"], self.backbone["hidden_size"])  # (G, P, D)
        self._shard = self.clips["shard"].to_numpy(np.int64) if len(self.clips) else np.zeros(0, np.int64)
        self._offset = self.clips["offset"].to_numpy(np.int64) if len(self.clips) else np.zeros(0, np.int64)
        self._handles: dict[int, object] = {}
        self.recomputed = self.backbone.get("store") == "recompute"  # backbone.store: no shards
        self._encoder = None  # (FrozenBackbone, FrameStore) once a recomputed cache is read (not thread-safe)
        self._device: str | None = None  # where a recomputed cache's backbone runs: the head's device
        # a recomputed cache's backbone runs on the process's CPU threads (as the features stage), not on
        # the head's ``train.threads`` that training and evaluation set around it
        self.backbone_threads = backbone_threads or torch.get_num_threads()

    def encode_on(self, device: str) -> None:
        """Run the backbone of a recomputed cache on ``device`` (cpu | cuda: the device the head trains or is
        evaluated on) rather than the features stage's ``backbone.device``; nothing for a cache of tokens."""
        if self._encoder is not None and str(self._encoder[0].device.type) != device:
            self._encoder = None
        self._device = device

    def _encode(self, rows: np.ndarray) -> torch.Tensor:
        """The rows' token grids encoded again from their frames (``backbone.store: recompute``)."""
        import dataclasses

        from transmodal.data.frames import FrameStore
        from transmodal.features.backbone import FrozenBackbone
        from transmodal.features.store import encode_clips, folder_sha256
        from transmodal.params import BackboneConfig, ParamError

        if self._encoder is None:
            source = self.directory / BACKBONE_FILE
            try:
                cfg = BackboneConfig(**self.backbone["backbone_params"])
            except (ParamError, TypeError) as error:
                # the value is backbone.json's, not params.yaml's
                said = str(error).removeprefix("params.yaml: ")
                raise StageInputError(f"{source}: {said}; run `dvc repro features`") from None
            if self._device is not None:
                cfg = dataclasses.replace(cfg, device=self._device)
            backbone = FrozenBackbone(cfg, self.backbone["clip_length"])
            recorded = self.backbone["inputs_sha256"]["checkpoint"]
            if folder_sha256(Path(backbone.folder)) != recorded:
                raise StageInputError(
                    f"{source}: backbone.checkpoint {cfg.checkpoint!r} is not the model the features stage "
                    "planned these clips with (its files changed); run `dvc repro features`"
                )
            self._encoder = backbone, FrameStore(self.backbone["frames"])
        backbone, frames = self._encoder
        head_threads = torch.get_num_threads()
        torch.set_num_threads(self.backbone_threads)
        try:
            return encode_clips(
                backbone,
                frames,
                self.clips.iloc[rows],
                self.kept_patches(rows),
                self.backbone["backbone_params"]["batch_size"],
            )
        finally:
            torch.set_num_threads(head_threads)

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
        if self.recomputed:
            return self._encode(rows)
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
        return self._rows("kept_patches", rows, tuple(self.backbone["grid"])).astype(np.int64)

    def pose(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pose in each clip's crop: xy (n, T, J, 2) float32, score (n, T, J) float32, mask (n, T, J) bool."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        t = self.backbone["num_frames"]
        return (
            self._rows("pose_xy", rows, (t, NUM_JOINTS, 2)).astype(np.float32, copy=False),
            self._rows("pose_score", rows, (t, NUM_JOINTS)).astype(np.float32, copy=False),
            self._rows("pose_mask", rows, (t, NUM_JOINTS)).astype(bool, copy=False),
        )

    def _rows(self, column: str, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Rows of one dense list column, each reshaped to ``shape`` (a copy)."""
        return self._dense[column].reshape(len(self.clips), *shape)[rows]


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    """A list column whose rows all have one length, as one flat numpy array of its values (empty when the
    cache holds no clips: the column's type is then not always a list)."""
    if not len(column):
        return np.zeros(0)
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
