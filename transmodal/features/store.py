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

The stage streams: a pool of one thread per core (at most ``MAX_CROP_WORKERS``) reads and crops whole
videos (at most two per thread ahead), a background thread normalises their crops into pixel batches in clip
order while the main thread runs the backbone, and each batch of tokens goes straight to its shard file (the
shard sizes are known up front, so the safetensors header is written first). On the CPU the preprocessing
steps yield the cores the forward's threads use while it runs (:class:`CpuShare`). Peak memory is one
video's frames per crop thread, the uint8 crops of two videos per crop thread and at most three pixel
batches, whatever the number of videos; only the per-clip metadata (clip rows, crop boxes, aligned pose:
~4 KB a clip kept, ~17 KB a clip while a ``PLAN_CHUNK`` is planned) grows with the dataset. An error
anywhere stops the crop threads before it propagates.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from transmodal import distributed
from transmodal.background import prefetch
from transmodal.data.coco import NUM_JOINTS, joint_columns
from transmodal.data.frames import FrameStore
from transmodal.features.backbone import FrozenBackbone
from transmodal.features.cache import BACKBONE_FILE, CLASS_NAMES, TOKENS_KEY, class_names_of, shard_name
from transmodal.features.clips import make_clips, sequence_coverage, skipped_videos
from transmodal.features.crops import (
    CROP_COLUMNS,
    PixelNormalizer,
    align_poses,
    crop_frames,
    square_crop_boxes,
)
from transmodal.io import (
    Resumable,
    atomic_dir,
    durable_replace,
    folder_signature,
    forget_unfinished,
    register_unfinished,
    source_digest,
    write_json,
    write_parquet,
)
from transmodal.params import BackboneConfig, ClipsConfig
from transmodal.stage import StageInputError
from transmodal.vision.checkpoints import accelerator

BOX_COLUMNS = ("x1", "y1", "x2", "y2")


class ShardWriter:
    """Stream (n, G, P, D) float16 rows into safetensors shards of ``per_shard`` rows each.

    The byte layout is exactly ``safetensors.torch.save_file({"tokens": t}, metadata={"format": "pt"})``:
    a little-endian u64 header length, the compact JSON header padded with spaces to 8 bytes, then the data.
    Knowing every shard's row count up front lets the header go first, so no shard is ever held in memory.
    """

    def __init__(
        self,
        directory: Path,
        total: int,
        per_shard: int,
        item_shape: tuple[int, ...],
        start_shard: int = 0,
        shards: Sequence[int] | None = None,
    ):
        """``shards``: the shards this writer fills, in the order of the rows it is given (default: every
        one from ``start_shard`` on; one process of several writes every world-size-th)."""
        self.directory = Path(directory)
        self.total, self.per_shard, self.item_shape = total, per_shard, tuple(item_shape)
        self.item_bytes = int(np.prod(self.item_shape)) * 2  # float16
        self.shards = list(range(start_shard, self.num_shards) if shards is None else shards)
        self.expected = sum(self.shard_rows(shard) for shard in self.shards)
        self.written = 0  # rows written by this writer
        self._queue = list(self.shards)
        self._file = None
        self._tmp: Path | None = None  # the shard being written, under its temporary name
        self._shard, self._left = -1, 0

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.per_shard)

    def shard_rows(self, shard: int) -> int:
        return min(self.per_shard, self.total - shard * self.per_shard)

    def _open(self, shard: int) -> None:
        rows = self.shard_rows(shard)
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
        # written under a temporary name, renamed once complete (_close): a shard file is always whole
        self._tmp = self.directory / f".{shard_name(shard)}.tmp"
        register_unfinished(self._tmp)  # a Ctrl-C mid-shard: the stage's handler removes it
        self._file = open(self._tmp, "wb")  # closed by _close() / close()
        self._file.write(struct.pack("<Q", len(text)) + text)
        self._shard, self._left = shard, rows

    def write(self, tokens: torch.Tensor) -> None:
        """Append rows (b, G, P, D) float16 in order."""
        if tokens.dtype != torch.float16 or tuple(tokens.shape[1:]) != self.item_shape:
            raise ValueError(
                f"expected (b, {self.item_shape}) float16 tokens, got {tuple(tokens.shape)} {tokens.dtype}"
            )
        data = tokens.contiguous().numpy()  # (b, G, P, D)
        start = 0
        while start < len(data):
            if self._file is None:
                if not self._queue:
                    raise ValueError(f"more than the {self.expected} announced rows")
                self._open(self._queue.pop(0))
            take = min(len(data) - start, self._left)
            self._file.write(data[start : start + take].tobytes())
            start += take
            self.written += take
            self._left -= take
            if self._left == 0:
                self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            durable_replace(self._tmp, self.directory / shard_name(self._shard))
            forget_unfinished(self._tmp)

    def close(self) -> None:
        """Close the last shard; every announced row must have been written (else the shard being written
        is removed, never renamed: a short shard under its name would pass for a finished one)."""
        if self.written != self.expected:
            if self._file is not None:
                self._file.close()
                self._file = None
                self._tmp.unlink(missing_ok=True)
                forget_unfinished(self._tmp)
            raise ValueError(f"wrote {self.written} of {self.expected} announced rows")
        self._close()


def shard_complete(path: Path, rows: int, item_shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a whole token shard of ``rows`` rows of ``item_shape``: its header names that
    shape and the file is exactly header plus rows long (what :class:`ShardWriter` writes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            length = struct.unpack("<Q", file.read(8))[0]
            if length > size:  # a damaged length: not read
                return False
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError):
        return False
    shape = header.get(TOKENS_KEY, {}).get("shape") if isinstance(header, dict) else None
    return shape == [rows, *item_shape] and size == 8 + length + rows * int(np.prod(item_shape)) * 2


def _frame_lookup(
    table: pd.DataFrame, columns: Sequence[str], video_ids: np.ndarray, frame_idx: np.ndarray
) -> np.ndarray:
    """Rows of a per-frame table for every (clip, frame): (N, T, k) float64, NaN where the table has none.

    Args:
        table: columns video_id, frame_idx and ``columns``; on duplicate (video, frame) rows the first wins.
        video_ids: (N,) the clips' videos.
        frame_idx: (N, T) the clips' original frame numbers.

    One stable sort of the table by (video, frame) and one search for all the clips' frames, not a
    per-clip lookup: this runs over every clip of the dataset before the first frame is cropped.
    """
    out = np.full((*frame_idx.shape, len(columns)), np.nan)
    videos = pd.Index(pd.unique(video_ids))
    code = videos.get_indexer(table["video_id"])  # -1: a video without clips
    keep = np.flatnonzero(code >= 0)
    if not len(keep) or not frame_idx.size:
        return out
    frames = table["frame_idx"].to_numpy(np.int64)[keep]
    span = int(max(frames.max(), frame_idx.max())) + 1
    keys = code[keep].astype(np.int64) * span + frames
    order = np.argsort(keys, kind="stable")  # duplicates keep table order: the first one is found
    keys = keys[order]
    wanted = (videos.get_indexer(video_ids).astype(np.int64) * span)[:, None] + frame_idx  # (N, T)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[pos] == wanted
    # only the rows found: converting the whole table (UCF101's keypoints: 1.2 M rows x 51 columns) cost
    # about 0.5 GB once per chunk of clips
    out[hit] = table[list(columns)].iloc[keep[order[pos[hit]]]].to_numpy(np.float64)
    return out


def _clip_frames(clips: pd.DataFrame) -> np.ndarray:
    """(N, T) int64: the clips' original frame numbers."""
    return (
        np.stack(clips["frame_idx"].to_numpy()).astype(np.int64) if len(clips) else np.zeros((0, 0), np.int64)
    )


def crop_boxes(
    clips: pd.DataFrame, videos: pd.DataFrame, tracks: pd.DataFrame, margin: float
) -> tuple[np.ndarray, int]:
    """Each clip's square crop box around its primary-track boxes (N, 4) int64, and the number of clips
    without any primary-track box (whole-frame crop); frame sizes come from ``videos``, no pixels."""
    n = len(clips)
    video_ids = clips["video_id"].to_numpy()
    sizes = videos.set_index("video_id")[["width", "height"]].astype(np.int64).loc[video_ids].to_numpy()
    sizes = sizes.reshape(n, 2)
    primary = tracks[tracks["is_primary"].astype(bool)]
    clip_boxes = _frame_lookup(primary, BOX_COLUMNS, video_ids, _clip_frames(clips))
    without_track = int((~np.isfinite(clip_boxes).all(axis=-1).any(axis=1)).sum())
    return square_crop_boxes(clip_boxes, sizes[:, 0], sizes[:, 1], margin), without_track


def plan_clips(
    clips: pd.DataFrame, videos: pd.DataFrame, tracks: pd.DataFrame, keypoints: pd.DataFrame, margin: float
) -> tuple[pd.DataFrame, int]:
    """Add the crop box and the aligned pose to each clip row (frame sizes come from ``videos``, no pixels).

    Returns the extended table and the number of clips without any primary-track box (whole-frame crop).
    Clips are planned ``PLAN_CHUNK`` at a time (every row is independent of the others), so the float64
    look-ups never hold more than one chunk.
    """
    if len(clips) > PLAN_CHUNK:
        parts = [
            plan_clips(clips.iloc[start : start + PLAN_CHUNK], videos, tracks, keypoints, margin)
            for start in range(0, len(clips), PLAN_CHUNK)
        ]
        return pd.concat([part for part, _ in parts]), sum(count for _, count in parts)
    n = len(clips)
    video_ids = clips["video_id"].to_numpy()
    frame_idx = _clip_frames(clips)
    t = frame_idx.shape[1]
    boxes, without_track = crop_boxes(clips, videos, tracks, margin)
    pose_columns = joint_columns("x") + joint_columns("y") + joint_columns("score")
    joints = _frame_lookup(keypoints, pose_columns, video_ids, frame_idx).reshape(n, t, 3, NUM_JOINTS)
    xy, score, mask = align_poses(joints[:, :, :2].transpose(0, 1, 3, 2), joints[:, :, 2], boxes)
    planned = clips.copy()
    crop = boxes.astype(np.float32)
    for i, name in enumerate(CROP_COLUMNS):
        planned[name] = crop[:, i]
    planned["pose_xy"] = list(xy.reshape(n, t * NUM_JOINTS * 2))  # per clip, row-major (T, J, 2)
    planned["pose_score"] = list(score.reshape(n, t * NUM_JOINTS))
    planned["pose_mask"] = list(mask.reshape(n, t * NUM_JOINTS))
    return planned, without_track


def plan_kept(
    clips: pd.DataFrame, tracks: pd.DataFrame, backbone: FrozenBackbone, chunk: int = 256
) -> np.ndarray:
    """The patches each planned clip keeps before the encoder (``backbone.keep`` < 1): (N, G, K) int16.

    Boxes: the primary track's, per frame, in the clip's crop; joints: the aligned pose of :func:`plan_clips`.
    See :mod:`transmodal.features.keep`. Planned ``chunk`` clips at a time (the joint distances cost
    G * P * T / G * J floats a clip)."""
    from transmodal.features.keep import group_boxes, kept_patches, patch_centres

    n = len(clips)
    groups, count = backbone.grid
    tubelet = backbone.tubelet_size
    out = np.zeros((n, groups, count), np.int16)
    centres = patch_centres(backbone.image_size, backbone.patch_size)
    primary = tracks[tracks["is_primary"].astype(bool)]
    for start in range(0, n, chunk):
        part = clips.iloc[start : start + chunk]
        m = len(part)
        frame_idx = np.stack(part["frame_idx"].to_numpy()).astype(np.int64)
        t = frame_idx.shape[1]
        boxes = _frame_lookup(primary, BOX_COLUMNS, part["video_id"].to_numpy(), frame_idx)
        crops = part[list(CROP_COLUMNS)].to_numpy(np.float64)
        xy = np.stack(part["pose_xy"].to_numpy()).reshape(m, t // tubelet, tubelet * NUM_JOINTS, 2)
        visible = np.stack(part["pose_mask"].to_numpy()).reshape(m, t // tubelet, tubelet * NUM_JOINTS)
        out[start : start + m] = kept_patches(
            group_boxes(boxes, crops, tubelet), centres, count, backbone.keep_margin, backbone.keep_by,
            joints=xy, joints_visible=visible,
        )  # fmt: skip
    return out


KEPT_COLUMN = "kept_patches"  # clips.parquet, only with backbone.keep < 1: G*K int16, row-major (G, K)

MAX_CROP_WORKERS = 8  # crop threads at most: each holds up to two jobs' crops (~2.4 MB a 224 px clip)
MAX_CLIPS_PER_JOB = 32  # a crop job's clips (one video's, or a run of them): bounds a long video's crops
# (`transmodal predict`'s windows) at ~77 MB a job; a dataset's videos have a few clips, one job each
PLAN_CHUNK = 4096  # clips planned at once: the float64 look-ups cost ~17 KB a clip while they live


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class CpuShare:
    """How many preprocessing steps may run at once: ``cores``, or ``during_forward`` while the model runs.

    Each step (reading a video, cropping a clip, normalising a clip) holds a slot. The forward on the CPU
    takes ``torch.get_num_threads()`` cores, and an OpenMP thread that loses its core to a crop thread stalls
    every barrier of the op it is in: on 2 cores a 2-thread forward beside a busy crop thread ran several
    times slower than alone, so while it runs the crops get only the cores it leaves free (none by default)
    and take the whole machine while it waits for them. A step already running finishes (a clip's crop is
    ~1-2 ms).
    """

    def __init__(self, cores: int, during_forward: int):
        self.cores, self.during_forward = max(1, cores), max(0, min(during_forward, cores))
        self._limit, self._busy = self.cores, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Hold a slot while the block runs. Not re-entrant: a step must not start another step."""
        with self._changed:
            self._changed.wait_for(lambda: self._busy < self._limit)
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        with self._changed:
            self._limit = self.during_forward
        try:
            yield
        finally:
            with self._changed:
                self._limit = self.cores
                self._changed.notify_all()


def crop_video(
    store: FrameStore,
    video_id: str,
    clip_frames: Sequence[np.ndarray],
    boxes: np.ndarray,
    size: int,
    share: CpuShare | None = None,
) -> np.ndarray:
    """Read one video (the stored chunks that hold the clips' frames) and crop its clips: (n, T, S, S, 3)
    uint8 for ``clip_frames`` (n,) and ``boxes`` (n, 4).

    A clip's frames that the previous clip already cropped with the same box (overlapping windows, a box
    capped at the frame) are copied from it rather than resized again.
    """
    share = share or CpuShare(1, 1)
    # the stored chunks holding these clips' frames: a run of a long video's clips reads its part of it
    first = min((int(np.min(wanted)) for wanted in clip_frames if len(wanted)), default=None)
    last = max((int(np.max(wanted)) for wanted in clip_frames if len(wanted)), default=None)
    with share.step():
        frame_idx, frames = store.read(video_id, first, last)
    length = len(clip_frames[0]) if len(clip_frames) else 0
    crops = np.empty((len(clip_frames), length, size, size, 3), np.uint8)
    previous: tuple | None = None  # (box, {position: crop}) of the previous clip
    for n, (wanted, box) in enumerate(zip(clip_frames, boxes.tolist(), strict=True)):
        wanted = np.asarray(wanted, dtype=np.int64)
        positions = np.searchsorted(frame_idx, wanted)
        if len(frame_idx):
            found = frame_idx[np.minimum(positions, len(frame_idx) - 1)] == wanted
        else:
            found = np.zeros(len(wanted), bool)
        if not found.all():  # tokens of neighbouring frames beside the pose of the planned ones: refused
            raise StageInputError(
                f"video {video_id!r}: frames {wanted[~found].tolist()} of a planned clip are not among the "
                "frames the store returns for it; run `dvc repro frames`"
            )
        positions = positions.tolist()
        box = tuple(box)
        reuse = previous[1] if previous is not None and previous[0] == box else None
        with share.step():
            crop_frames(frames, box, size, positions, out=crops[n], reuse=reuse)
        previous = (box, dict(zip(positions, crops[n], strict=True)))
    return crops


def _videos_of(clips: pd.DataFrame) -> list[tuple[str, slice]]:
    """(video_id, rows) per run of one video's clips, in order (a video's clips are contiguous), a video
    with more than ``MAX_CLIPS_PER_JOB`` clips split into runs of at most that many."""
    max_clips = MAX_CLIPS_PER_JOB
    video_ids = clips["video_id"].to_numpy()
    if not len(video_ids):
        return []
    bounds = np.r_[0, np.flatnonzero(video_ids[1:] != video_ids[:-1]) + 1, len(video_ids)].tolist()
    return [
        (video_ids[s], slice(start, min(start + max_clips, e)))
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
        for start in range(s, e, max_clips)
    ]


def _ordered(function: Callable, jobs: Sequence[tuple], workers: int) -> Iterator:
    """``function(*job)`` for each job, in order; on ``workers`` threads (at most ``2 * workers`` in flight)."""
    if workers <= 1:
        yield from (function(*job) for job in jobs)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="features-crop") as pool:
        pending: deque = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(function, *job))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def crop_batches(
    store: FrameStore,
    clips: pd.DataFrame,
    size: int,
    batch_size: int,
    normalizer: PixelNormalizer | None,
    share: CpuShare | None = None,
    pin_memory: bool = False,
    breaks: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """The clips' crops in order, in batches: normalised pixel_values (b, T, 3, S, S) float32, or with
    ``normalizer`` None the uint8 crops (b, T, S, S, 3) as they are (an accelerator normalises them:
    :meth:`~transmodal.features.crops.PixelNormalizer.on_device`), in page-locked memory if ``pin_memory``.

    Videos are read and cropped by :func:`crop_video` on ``share.cores`` threads (at most
    ``MAX_CROP_WORKERS``; torch's resize, numpy and the frame decompression release the GIL), at most two
    jobs a thread ahead, a job being a video's clips (a long video's in runs of ``MAX_CLIPS_PER_JOB``); the
    crops are normalised (or copied) here, in clip order, straight into the batch.
    ``breaks``: sizes of consecutive runs of clips (the feature shards) that no batch straddles: a run's last
    batch may be short, so the batches of a shard are the same whichever shards a process encodes.
    """
    share = share or CpuShare(1, 1)
    boxes = clips[list(CROP_COLUMNS)].to_numpy(np.int64)
    clip_frames = clips["frame_idx"].to_numpy()
    length = len(clip_frames[0]) if len(clips) else 0
    if normalizer is None:
        shape, dtype = (batch_size, length, size, size, 3), torch.uint8  # (B, T, S, S, 3)
    else:
        shape, dtype = (batch_size, length, 3, size, size), torch.float32  # (B, T, 3, S, S)

    def new_batch() -> torch.Tensor:  # a new buffer each time: the consumer holds the last
        return torch.empty(shape, dtype=dtype, pin_memory=pin_memory)

    jobs = [
        (store, video_id, clip_frames[rows], boxes[rows], size, share) for video_id, rows in _videos_of(clips)
    ]
    ends = set(np.cumsum(breaks).tolist()) if breaks is not None else set()  # clip counts ending a run
    batch, filled, seen = new_batch(), 0, 0
    # closing: stopped early, the pool's pending videos are cancelled at once
    with contextlib.closing(_ordered(crop_video, jobs, min(share.cores, MAX_CROP_WORKERS))) as videos:
        for crops in videos:
            for crop in crops:
                with share.step():
                    if normalizer is None:
                        batch[filled].numpy()[...] = crop
                    else:
                        normalizer.normalize_into(crop, batch[filled].numpy())
                filled += 1
                seen += 1
                if filled == batch_size or (seen in ends and filled):
                    yield batch[:filled]
                    batch, filled = new_batch(), 0
            del crops
    if filled:
        yield batch[:filled]


def _resume_key(
    clips_cfg: ClipsConfig, backbone_cfg: BackboneConfig, backbone: FrozenBackbone, store, clips: pd.DataFrame
) -> dict:
    """Everything a token shard depends on: code, params, the device and dtype the backbone runs in (``auto``
    and ``fp16`` resolve by machine: a run resumed where there is no GPU must not finish a cache of CUDA
    shards in fp32), on CUDA the GPU model and the CUDA and cuDNN versions, on the CPU the processor and its
    vector unit, torch's, transformers' and
    OpenCV's versions, the checkpoint's files (where the hub id or folder
    resolved: a hub id's snapshot, not its name) and the frame files, the clips' frames and crop boxes (see
    :class:`~transmodal.io.Resumable`)."""
    import dataclasses
    import hashlib

    import cv2  # decodes the frames again under frames.store: source
    import transformers

    here = Path(__file__).parent
    planned = hashlib.sha256()
    for column in ("clip_id", "frame_idx", *CROP_COLUMNS, KEPT_COLUMN):
        if column not in clips:
            continue
        values = clips[column].to_numpy()
        planned.update(
            np.stack(values).tobytes()
            if column in ("frame_idx", KEPT_COLUMN) and len(values)
            else str(list(values)).encode()
        )
    return {
        "code": source_digest(
            *(here / f"{name}.py" for name in ("store", "backbone", "crops", "clips", "keep")),
            here.parent / "data" / "frames.py",  # how the frames are read (from the shards or the sources)
            here.parent / "vision" / "checkpoints.py",  # how the checkpoint is loaded
        ),
        "clips": dataclasses.asdict(clips_cfg),
        "backbone": dataclasses.asdict(backbone_cfg),
        "runs_on": [str(backbone.device), str(backbone.dtype), *accelerator(torch.device(backbone.device))],
        "versions": [torch.__version__, transformers.__version__, cv2.__version__],
        "checkpoint": folder_signature(Path(backbone.folder)),
        "frames": folder_signature(Path(getattr(store, "directory", ""))),
        "planned": planned.hexdigest(),
    }


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
    timings: dict | None = None,
    partial_dir: Path | None = None,
) -> dict:
    """Sample clips, crop them around the primary track, encode them with the frozen backbone, cache grids.

    Writes ``features_dir`` (shards + backbone.json, appearing all at once) and ``clips_path``. Finished
    shards of an interrupted run wait in ``partial_dir`` (default ``.partial/<name>`` beside
    ``features_dir``, :class:`~transmodal.io.Resumable`), which must lie outside the stage's DVC outputs:
    DVC deletes those before it runs a stage again. Returns the summary for ``metrics/features.json``. ``timings``, when given, receives the wall seconds of ``setup``
    (model load, clip sampling and planning), of the main loop's ``wait`` for pixel batches, ``forward`` and
    ``write``, and of ``finish`` (backbone.json, clips.parquet, the atomic rename).
    """
    started = time.perf_counter()
    if timings is not None:
        timings.update(setup=0.0, wait=0.0, forward=0.0, write=0.0, finish=0.0)
    backbone = FrozenBackbone(backbone_cfg, clips_cfg.length)  # fails early on a clip length mismatch
    classes = class_names_of(index, "data/index.parquet")  # the head's outputs, with clips or not
    clips = make_clips(index, store.videos, store.frames, clips_cfg)
    skipped = skipped_videos(index, store.videos)
    clips, without_track = plan_clips(clips, store.videos, tracks, keypoints, clips_cfg.crop_margin)
    kept = plan_kept(clips, tracks, backbone) if backbone.drops else None  # (N, G, K) or None
    if kept is not None:
        clips[KEPT_COLUMN] = list(kept.reshape(len(clips), kept.shape[1] * kept.shape[2]))
    total = len(clips)
    per_shard, cached = backbone_cfg.clips_per_shard, backbone_cfg.store == "tokens"
    row = np.arange(total)  # no shard, no offset when recomputed
    clips["shard"] = np.where(cached, row // per_shard, -1).astype(np.int32)
    clips["offset"] = np.where(cached, row % per_shard, -1).astype(np.int32)
    grid = (*backbone.grid, backbone.hidden_size)  # (G, P, D)
    if timings is not None:
        timings["setup"] = time.perf_counter() - started
    if not cached:  # backbone.store: recompute: training and evaluation encode the clips again
        if distributed.current().is_main:
            # an interrupted tokens run's finished shards (up to the whole cache) are not needed any more
            Resumable(features_dir, {"store": "recompute"}, base=partial_dir).discard()
            description = backbone.describe() | recompute_record(
                backbone_cfg, backbone, clips_cfg, total, store
            )
            _publish(clips, classes, description, clips_path, features_dir, lambda tmp: None)
        shards = 0
    else:
        description, shards = _encode(
            clips, kept, clips_cfg, backbone_cfg, backbone, store, features_dir, clips_path, classes,
            progress, timings, partial_dir,
        )  # fmt: skip
        if description is None:
            return {}  # another process of several: rank 0 assembles the output and reports
    seconds = time.perf_counter() - started
    return {
        "clips": total,
        "clips_per_split": {
            split: int((clips["split"] == split).sum()) for split in ("train", "val", "test")
        },
        "padded_clips": int(clips["padded"].sum()),
        **sequence_coverage(index, store.videos, store.frames),
        "clips_without_track": without_track,
        "videos": int(clips["video_id"].nunique()),
        "skipped_videos": len(skipped),
        "skipped": skipped,
        "store": backbone_cfg.store,
        "shards": shards,
        "grid": list(grid),
        "checkpoint": backbone_cfg.checkpoint,
        "device": str(backbone.device),
        "seconds": round(seconds, 3),
        "clips_per_s": round(total / seconds, 3) if seconds > 0 else 0.0,
    }


def _encode(
    clips: pd.DataFrame,
    kept: np.ndarray | None,
    clips_cfg: ClipsConfig,
    backbone_cfg: BackboneConfig,
    backbone: FrozenBackbone,
    store: FrameStore,
    features_dir: Path,
    clips_path: Path,
    classes: list[str],
    progress: bool,
    timings: dict | None,
    partial_dir: Path | None = None,
) -> tuple[dict | None, int]:
    """Encode the planned clips into token shards and publish the cache (``backbone.store: tokens``).

    Returns backbone.json's description and the number of shards; (None, 0) in a process of several other
    than rank 0."""
    total, per_shard = len(clips), backbone_cfg.clips_per_shard
    grid = (*backbone.grid, backbone.hidden_size)  # (G, P, D)
    world = distributed.current()
    key = _resume_key(clips_cfg, backbone_cfg, backbone, store, clips)
    if world.size > 1:  # every process names its shards by rank 0's key (another GPU gives another)
        key = distributed.from_rank_0(key)
    parts = Resumable(features_dir, key, clean=world.is_main, base=partial_dir)
    num_shards = -(-total // per_shard)
    # the shards an interrupted run left finished (rank 0's cleaning removes none of them), each whole (a
    # shard renamed just before a power cut may not have reached the disk); every process reads this list
    # before any writes, so all share out the same shards
    todo = [
        shard
        for shard in range(num_shards)
        if not shard_complete(parts.path(shard_name(shard)), min(per_shard, total - shard * per_shard), grid)
    ]
    if world.size > 1:
        distributed.barrier()  # rank 0 has cleaned the partial folder, everyone has its list: now write
    if len(todo) < num_shards and progress and world.is_main:
        print(
            f"features: resuming, {num_shards - len(todo)} of {num_shards} shards already done in {parts.directory}"
        )
    mine = todo[world.rank :: world.size]  # under torchrun: every world-size-th shard left, by index
    writer = ShardWriter(parts.directory, total, per_shard, grid, shards=mine)
    rows = np.concatenate([np.arange(s * per_shard, min((s + 1) * per_shard, total)) for s in mine] or [[]])
    rows = rows.astype(np.int64)
    share = _cpu_share(backbone)
    batches = crop_batches(
        store, clips.iloc[rows], backbone.image_size, backbone_cfg.batch_size,
        backbone.host_normalizer, share, pin_memory=backbone.host_normalizer is None,
        breaks=[writer.shard_rows(shard) for shard in mine],
    )  # fmt: skip
    # Closed in reverse order on the way out: the background reader first (its worker ends), then the
    # crop generator, so an error below stops the crop pool at once.
    pixels = prefetch(batches, name="features-crops")
    shown = progress and world.is_main
    with (
        contextlib.closing(batches),
        tqdm(total=len(rows), desc="features", unit="clip", disable=not shown) as bar,
        contextlib.closing(pixels),
    ):
        mark = time.perf_counter()
        done = 0  # clips of this process encoded
        for pixel_values in pixels:
            waited = time.perf_counter()
            batch_kept = None if kept is None else kept[rows[done : done + len(pixel_values)]]
            done += len(pixel_values)
            with share.forward():
                tokens = backbone.forward(pixel_values, batch_kept)  # (b, G, K, D) float16
            forwarded = time.perf_counter()
            writer.write(tokens)
            bar.update(len(pixel_values))
            del pixel_values  # free the batch before waiting for the next (peak: 3 batches, not 4)
            if timings is not None:
                timings["wait"] += waited - mark
                timings["forward"] += forwarded - waited
                timings["write"] += time.perf_counter() - forwarded
            mark = time.perf_counter()
    writer.close()
    if world.size > 1:
        distributed.barrier()  # every shard is written (a failed rank never gets here: no output)
        if not world.is_main:
            return None, 0  # rank 0 assembles the output and reports
    finishing = time.perf_counter()
    description = backbone.describe() | {
        "clip_length": clips_cfg.length,
        "num_clips": total,
        "clips_per_shard": per_shard,
        "num_shards": writer.num_shards,
    }

    def move_shards(tmp: Path) -> None:
        for shard in range(writer.num_shards):
            parts.move(shard_name(shard), tmp / shard_name(shard))

    _publish(clips, classes, description, clips_path, features_dir, move_shards)
    parts.discard()
    if timings is not None:
        timings["finish"] = time.perf_counter() - finishing
    return description, writer.num_shards


def _publish(
    clips: pd.DataFrame,
    classes: list[str],
    description: dict,
    clips_path: Path,
    features_dir: Path,
    fill: Callable[[Path], None],
) -> None:
    """Write clips.parquet and the features folder (backbone.json, and what ``fill`` puts in the folder's
    temporary).

    The writes that can fail (a full disk) come before the shards are moved, so a failure keeps every
    finished shard for the next run; the folder is in place before clips.parquet (dvc repro removes both
    first, so clips.parquet never stands beside another run's shards). The staged table of a killed run is
    overwritten by the next one's."""
    staged = clips_path.with_name(f".{clips_path.name}.staged.tmp")
    register_unfinished(staged)
    clips.attrs[CLASS_NAMES] = classes
    try:
        write_parquet(clips, staged)
        with atomic_dir(features_dir) as tmp:
            write_json(description, tmp / BACKBONE_FILE)
            fill(tmp)
        durable_replace(staged, clips_path)
    finally:
        staged.unlink(missing_ok=True)
        forget_unfinished(staged)


def recompute_record(
    backbone_cfg: BackboneConfig,
    backbone: FrozenBackbone,
    clips_cfg: ClipsConfig,
    num_clips: int,
    store: FrameStore,
) -> dict:
    """backbone.json's entries for ``backbone.store: recompute``: what :class:`~transmodal.features.cache.
    FeatureStore` needs to encode a clip again (the backbone params, the frame store's folder) and the
    SHA-256 of what the tokens are computed from (the frame store's and the checkpoint's files; the code that
    reads and encodes them is a dependency of the stages that read the cache), so that backbone.json, and through it whatever DVC runs on it, changes whenever
    the tokens would."""
    import dataclasses

    return {
        "clip_length": clips_cfg.length,
        "num_clips": num_clips,
        "clips_per_shard": backbone_cfg.clips_per_shard,
        "num_shards": 0,
        "store": "recompute",
        "backbone_params": dataclasses.asdict(backbone_cfg),
        "frames": Path(store.directory).as_posix(),
        "inputs_sha256": {
            "frames": folder_sha256(Path(store.directory)),
            "checkpoint": folder_sha256(Path(backbone.folder)),
        },
    }


def folder_sha256(folder: Path, pattern: str = "*") -> str:
    """SHA-256 of the files under ``folder`` matching ``pattern``: their relative paths and contents, in sorted
    order (a file given instead of a folder: its own)."""
    import hashlib

    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob(pattern) if p.is_file())
    total = hashlib.sha256()
    for path in files:
        total.update(path.relative_to(folder).as_posix().encode() + b"\0" if path != folder else b"")
        with open(path, "rb") as file:
            total.update(hashlib.file_digest(file, "sha256").digest())
    return total.hexdigest()


def encode_clips(
    backbone: FrozenBackbone, store: FrameStore, clips: pd.DataFrame, kept: np.ndarray | None, batch_size: int
) -> torch.Tensor:
    """The token grids (n, G, K, D) float16 of planned clip rows (crop boxes and frames from clips.parquet),
    in their order: what the features stage caches, computed on demand (``backbone.store: recompute``).

    ``kept`` (n, G, K): each clip's kept patches when ``backbone.keep`` < 1, else None."""
    out = torch.empty((len(clips), *backbone.grid, backbone.hidden_size), dtype=torch.float16)
    share = _cpu_share(backbone)
    batches = crop_batches(
        store, clips, backbone.image_size, batch_size, backbone.host_normalizer, share,
        pin_memory=backbone.host_normalizer is None,
    )  # fmt: skip
    done = 0
    with contextlib.closing(batches):
        for pixel_values in batches:
            n = len(pixel_values)
            with share.forward():
                out[done : done + n] = backbone.forward(
                    pixel_values, None if kept is None else kept[done : done + n]
                )
            done += n
    return out


def _cpu_share(backbone: FrozenBackbone) -> CpuShare:
    """The preprocessing's share of the cores: on the CPU the forward takes torch's threads; on an
    accelerator it needs about none."""
    cores = available_cores()
    during_forward = cores - torch.get_num_threads() if backbone.device.type == "cpu" else cores
    return CpuShare(cores, during_forward)
