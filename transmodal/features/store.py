"""Features stage: person-centric clips through the frozen VideoMAE, cached as fp16 token grids.

Layout:
- ``data/features/shard-NNNNN.safetensors``: one tensor ``tokens`` (n, G, P, D) float16, ``clips_per_shard``
  clips per shard (the last one holds the rest), in clips.parquet order;
- ``data/features/backbone.json``: checkpoint, num_frames, tubelet_size, image_size, patch_size, grid (G, P),
  hidden_size D, the normalisation used, dtype, and the shard layout;
- ``data/clips.parquet``: one row per clip (see :mod:`transmodal.features.clips`) plus ``shard``, ``offset``
  (row in the shard), the crop box ``crop_x1, crop_y1, crop_x2, crop_y2`` (pixels) and the pose aligned to it:
  ``pose_xy`` (T*J*2 float32, row-major (T, J, 2), in the crop's unit square), ``pose_score`` (T*J float32),
  ``pose_mask`` (T*J bool, True = joint present).

The stage streams: one video is decoded at a time, a background thread crops and normalises batches while
the main thread runs the backbone, and each batch of tokens goes straight to its shard file (the shard sizes
are known up front, so the safetensors header is written first). Peak memory is one video's frames plus at
most three pixel batches, whatever the number of videos; only the per-clip metadata (clip rows, crop boxes,
aligned pose: ~4 KB a clip) grows with the dataset.
"""

from __future__ import annotations

import json
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from tqdm import tqdm

from transmodal.data.coco import NUM_JOINTS, joint_columns
from transmodal.data.frames import FrameStore
from transmodal.features.backbone import FrozenBackbone
from transmodal.features.clips import make_clips, skipped_videos
from transmodal.features.crops import PixelNormalizer, align_pose, crop_frames, square_crop_box
from transmodal.io import atomic_dir, write_json, write_parquet
from transmodal.params import BackboneConfig, ClipsConfig

TOKENS_KEY = "tokens"
BACKBONE_FILE = "backbone.json"
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
CROP_COLUMNS = ("crop_x1", "crop_y1", "crop_x2", "crop_y2")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


class ShardWriter:
    """Stream (n, G, P, D) float16 rows into safetensors shards of ``per_shard`` rows each.

    The byte layout is exactly ``safetensors.torch.save_file({"tokens": t}, metadata={"format": "pt"})``:
    a little-endian u64 header length, the compact JSON header padded with spaces to 8 bytes, then the data.
    Knowing every shard's row count up front lets the header go first, so no shard is ever held in memory.
    """

    def __init__(self, directory: Path, total: int, per_shard: int, item_shape: tuple[int, ...]):
        self.directory = Path(directory)
        self.total, self.per_shard, self.item_shape = total, per_shard, tuple(item_shape)
        self.item_bytes = int(np.prod(self.item_shape)) * 2  # float16
        self.written = 0
        self._file = None
        self._shard = -1

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.per_shard)

    def _open(self, shard: int) -> None:
        rows = min(self.per_shard, self.total - shard * self.per_shard)
        header = {
            "__metadata__": {"format": "pt"},
            TOKENS_KEY: {
                "dtype": "F16",
                "shape": [rows, *self.item_shape],
                "data_offsets": [0, rows * self.item_bytes],
            },
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as safetensors does
        self._file = open(self.directory / shard_name(shard), "wb")  # closed by _close() / close()
        self._file.write(struct.pack("<Q", len(text)) + text)
        self._shard = shard

    def write(self, tokens: torch.Tensor) -> None:
        """Append rows (b, G, P, D) float16 in order."""
        if tokens.dtype != torch.float16 or tuple(tokens.shape[1:]) != self.item_shape:
            raise ValueError(
                f"expected (b, {self.item_shape}) float16 tokens, got {tuple(tokens.shape)} {tokens.dtype}"
            )
        data = tokens.contiguous().numpy()  # (b, G, P, D)
        start = 0
        while start < len(data):
            if self.written >= self.total:
                raise ValueError(f"more than the {self.total} announced rows")
            shard, offset = divmod(self.written, self.per_shard)
            if shard != self._shard:
                self._close()
                self._open(shard)
            take = min(len(data) - start, self.per_shard - offset, self.total - self.written)
            self._file.write(data[start : start + take].tobytes())
            start += take
            self.written += take

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the last shard; every announced row must have been written."""
        self._close()
        if self.written != self.total:
            raise ValueError(f"wrote {self.written} of {self.total} announced rows")


def _per_video(table: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{video_id: (frame_idx (n,) sorted int64, values (n, k) float64)} for a per-frame table."""
    table = table.sort_values(["video_id", "frame_idx"], kind="stable")
    video_ids = table["video_id"].to_numpy()
    frame_idx = table["frame_idx"].to_numpy(np.int64)
    values = table[list(columns)].to_numpy(np.float64)
    # One sort and slices, not a groupby: this runs over every frame of the dataset.
    bounds = np.flatnonzero(video_ids[1:] != video_ids[:-1]) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(video_ids)]
    return {video_ids[s]: (frame_idx[s:e], values[s:e]) for s, e in zip(starts, ends, strict=True) if e > s}


def _lookup(per_video: dict, video_id: str, frame_idx: np.ndarray, width: int) -> np.ndarray:
    """Rows (len(frame_idx), width) for the wanted frames; NaN where the table has no row for a frame."""
    out = np.full((len(frame_idx), width), np.nan)
    if video_id not in per_video:
        return out
    known, values = per_video[video_id]
    pos = np.clip(np.searchsorted(known, frame_idx), 0, max(len(known) - 1, 0))
    hit = (known[pos] == frame_idx) if len(known) else np.zeros(len(frame_idx), bool)
    out[hit] = values[pos[hit]]
    return out


def plan_clips(
    clips: pd.DataFrame, videos: pd.DataFrame, tracks: pd.DataFrame, keypoints: pd.DataFrame, margin: float
) -> tuple[pd.DataFrame, int]:
    """Add the crop box and the aligned pose to each clip row (frame sizes come from ``videos``, no pixels).

    Returns the extended table and the number of clips without any primary-track box (whole-frame crop).
    """
    sizes = {
        v: (int(w), int(h))
        for v, w, h in zip(videos["video_id"], videos["width"], videos["height"], strict=True)
    }
    boxes = _per_video(tracks[tracks["is_primary"].astype(bool)], BOX_COLUMNS)
    pose_columns = joint_columns("x") + joint_columns("y") + joint_columns("score")
    poses = _per_video(keypoints, pose_columns)
    crop_rows, xy_rows, score_rows, mask_rows, without_track = [], [], [], [], 0
    for video_id, frame_idx in zip(clips["video_id"], clips["frame_idx"], strict=True):
        frame_idx = np.asarray(frame_idx, dtype=np.int64)
        clip_boxes = _lookup(boxes, video_id, frame_idx, 4)  # (T, 4), NaN where no box
        without_track += int(not np.isfinite(clip_boxes).all(axis=1).any())
        box = square_crop_box(clip_boxes, *sizes[video_id], margin)
        joints = _lookup(poses, video_id, frame_idx, 3 * NUM_JOINTS).reshape(len(frame_idx), 3, NUM_JOINTS)
        xy, score, mask = align_pose(joints[:, :2].transpose(0, 2, 1), joints[:, 2], box)  # (T, J, 2), (T, J)
        crop_rows.append(box)
        xy_rows.append(xy.reshape(-1))
        score_rows.append(score.reshape(-1))
        mask_rows.append(mask.reshape(-1))
    planned = clips.copy()
    crop = np.asarray(crop_rows, dtype=np.float32).reshape(-1, 4)
    for i, name in enumerate(CROP_COLUMNS):
        planned[name] = crop[:, i]
    planned["pose_xy"] = xy_rows
    planned["pose_score"] = score_rows
    planned["pose_mask"] = mask_rows
    return planned, without_track


def crop_batches(
    store: FrameStore, clips: pd.DataFrame, size: int, batch_size: int, normalizer: PixelNormalizer
) -> Iterator[torch.Tensor]:
    """Normalised pixel_values (b, T, 3, S, S) float32 of the clips in order, decoding one video at a time."""
    boxes = clips[list(CROP_COLUMNS)].to_numpy(np.int64)
    length = len(clips["frame_idx"].iloc[0]) if len(clips) else 0
    shape = (batch_size, length, 3, size, size)  # (B, T, 3, S, S)
    batch, filled, loaded_id, frame_idx, frames = np.empty(shape, np.float32), 0, None, None, None
    for row, (video_id, clip_frames) in enumerate(zip(clips["video_id"], clips["frame_idx"], strict=True)):
        if video_id != loaded_id:  # clips of a video are contiguous: each video is read once
            frame_idx, frames = store.read(video_id)
            loaded_id = video_id
        positions = np.searchsorted(frame_idx, np.asarray(clip_frames, dtype=np.int64))
        crop = crop_frames(frames, tuple(boxes[row]), size, positions)  # (T, S, S, 3) uint8
        normalizer.normalize_into(crop, batch[filled])  # straight into the batch: no uint8 batch copy
        filled += 1
        if filled == batch_size:
            yield torch.from_numpy(batch)
            batch, filled = np.empty(shape, np.float32), 0  # a new buffer: the consumer still holds the last
    if filled:
        yield torch.from_numpy(batch[:filled])


def _in_background(items: Iterator, depth: int = 1) -> Iterator:
    """Run a generator on a worker thread (cv2 and torch release the GIL); re-raise its errors here.

    At most ``depth + 2`` items are alive (the consumer's, ``depth`` queued, one the worker is building) when
    the consumer drops each item before asking for the next: with 224 px batches of 8 clips (77 MB each), one
    queued batch keeps the backbone fed at ~230 MB.
    """
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = object()
    cancelled = threading.Event()

    def work():
        try:
            for item in items:
                if cancelled.is_set():
                    return
                out.put(item)
        except BaseException as err:
            out.put(err)
        out.put(stop)

    worker = threading.Thread(target=work, daemon=True, name="features-crops")
    worker.start()
    try:
        while True:
            item = out.get()
            if item is stop:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
            del item  # drop our reference before waiting: the consumer is done with it
    finally:
        cancelled.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def build_features(
    index: pd.DataFrame,
    store: FrameStore,
    tracks: pd.DataFrame,
    keypoints: pd.DataFrame,
    clips_cfg: ClipsConfig,
    backbone_cfg: BackboneConfig,
    features_dir: Path,
    clips_path: Path,
    progress: bool = True,
) -> dict:
    """Sample clips, crop them around the primary track, encode them with the frozen backbone, cache grids.

    Writes ``features_dir`` (shards + backbone.json, appearing all at once) and ``clips_path``. Returns the
    summary for ``metrics/features.json``.
    """
    started = time.perf_counter()
    backbone = FrozenBackbone(backbone_cfg, clips_cfg.length)  # fails early on a clip length mismatch
    clips = make_clips(index, store.videos, store.frames, clips_cfg)
    skipped = skipped_videos(index, store.videos)
    clips, without_track = plan_clips(clips, store.videos, tracks, keypoints, clips_cfg.crop_margin)
    total = len(clips)
    per_shard = backbone_cfg.clips_per_shard
    clips["shard"] = (np.arange(total) // per_shard).astype(np.int32)
    clips["offset"] = (np.arange(total) % per_shard).astype(np.int32)
    grid = (*backbone.grid, backbone.hidden_size)  # (G, P, D)
    with atomic_dir(features_dir) as tmp:
        writer = ShardWriter(tmp, total, per_shard, grid)
        batches = crop_batches(
            store, clips, backbone.image_size, backbone_cfg.batch_size, backbone.normalizer
        )
        with tqdm(total=total, desc="features", unit="clip", disable=not progress) as bar:
            for pixel_values in _in_background(batches):
                writer.write(backbone.forward(pixel_values))  # (b, G, P, D) float16
                bar.update(len(pixel_values))
                del pixel_values  # free the batch before waiting for the next (peak: 3 batches, not 4)
        writer.close()
        description = backbone.describe() | {
            "clip_length": clips_cfg.length,
            "num_clips": total,
            "clips_per_shard": per_shard,
            "num_shards": writer.num_shards,
        }
        write_json(description, tmp / BACKBONE_FILE)
        write_parquet(clips, clips_path)  # inside the block: no clips.parquet without its shards
    seconds = time.perf_counter() - started
    return {
        "clips": total,
        "clips_per_split": {
            split: int((clips["split"] == split).sum()) for split in ("train", "val", "test")
        },
        "padded_clips": int(clips["padded"].sum()),
        "clips_without_track": without_track,
        "videos": int(clips["video_id"].nunique()),
        "skipped_videos": len(skipped),
        "skipped": skipped,
        "shards": writer.num_shards,
        "grid": list(grid),
        "checkpoint": backbone_cfg.checkpoint,
        "device": str(backbone.device),
        "seconds": round(seconds, 3),
        "clips_per_s": round(total / seconds, 3) if seconds > 0 else 0.0,
    }


class FeatureStore:
    """The cache: ``.clips`` (DataFrame), ``.backbone`` (dict), ``.tokens(rows)``, ``.pose(rows)``.

    ``rows`` are positions into ``.clips``. Shards are memory-mapped by safetensors; a call reads only the
    requested rows (contiguous runs as one slice).
    """

    def __init__(self, features_dir: str | Path, clips_parquet: str | Path):
        self.directory = Path(features_dir)
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
