"""The stored videos' kept frames in batches, shared by the detect and pose stages.

:func:`stored_videos` lists every video of the frame store with its kept frames (from the frame table, no
pixel reads); :func:`iter_frame_batches` yields their frames in batches that may span videos, read ahead on
a thread; :func:`pipelined` runs a model over those batches one batch deep, so that on a GPU the device
computes the next batch while the host finishes the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from transmodal.background import prefetch
from transmodal.data.frames import FrameStore, usable_fps


@dataclass
class VideoFrames:
    """What a stage needs to know about one stored video besides its pixels."""

    frame_idx: np.ndarray  # (T,) kept original frame numbers, ascending
    width: int
    height: int
    frame_rate: (
        float  # frames per second as the tracker sees them (video fps / mean step between kept frames)
    )


def stored_videos(store: FrameStore) -> dict[str, VideoFrames]:
    """Every video of the store (index order) with its kept frames, from the frame table (no pixel reads);
    the tracker's rate is the kept frames' a second (the header's fps over their mean step)."""
    table = store.frames
    codes, uniques = pd.factorize(table["video_id"])
    # the rows of each video together, in table order (rows without a video_id, code -1, sort first: dropped)
    rows = np.argsort(codes, kind="stable")[np.count_nonzero(codes < 0) :]
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    ends = np.cumsum(counts)
    starts = ends - counts
    all_frames = table["frame_idx"].to_numpy(np.int64)
    fps_all, width_all, height_all = (table[c].to_numpy() for c in ("fps", "width", "height"))
    unknown_rate = getattr(store, "sampling_rate", None) or 30.0
    videos = {}
    for video_id in store.video_ids:
        k = uniques.get_loc(video_id)
        video_rows = rows[starts[k] : ends[k]]
        frame_idx = np.sort(all_frames[video_rows])
        first = video_rows[0]
        fps = float(fps_all[first])
        # source frames per kept frame on average: 2.4 for a 30 fps video sampled at 12.5 a second (steps of
        # 2 and 3, whose median, 2, would give 15), 1 for a video slower than the sampling
        stride = (frame_idx[-1] - frame_idx[0]) / (len(frame_idx) - 1) if len(frame_idx) > 1 else 1.0
        videos[video_id] = VideoFrames(
            frame_idx=frame_idx,
            width=int(width_all[first]),
            height=int(height_all[first]),
            # no usable rate (none, or a tick such as 1000 that a browser's recording states; taken as the
            # rate, it kept lost tracks 33 times too long): the store's sampling rate where it knows one
            # (predict's, sampling by timestamp), else ByteTrack's own 30
            frame_rate=fps / stride if usable_fps(fps) else unknown_rate,
        )
    return videos


@dataclass
class FramePiece:
    """A run of consecutive kept frames of one video inside a batch."""

    video_id: str
    start: int  # position of the first frame among the video's kept frames
    frame_idx: np.ndarray  # (n,) original frame numbers
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB (a view into the decoded video)


VIDEOS_PER_UNIT = 64
"""``compute.videos_per_unit``'s default: batches restart every this many videos, so that the processes of a
torchrun world, each given whole units (:func:`my_units`), batch a unit's frames exactly as one process does."""


def video_units(video_ids: list[str], per_unit: int = VIDEOS_PER_UNIT) -> list[list[str]]:
    """Consecutive runs of ``per_unit`` videos (the last may be shorter)."""
    return [video_ids[i : i + per_unit] for i in range(0, len(video_ids), per_unit)]


def my_units(video_ids: list[str], rank: int, world_size: int, per_unit: int = VIDEOS_PER_UNIT) -> list[str]:
    """The videos of one process of a torchrun world: its units (every world-size-th, by position), in order."""
    return [video for unit in video_units(video_ids, per_unit)[rank::world_size] for video in unit]


def iter_frame_batches(
    store: FrameStore, video_ids: list[str], batch_size: int, per_unit: int = VIDEOS_PER_UNIT
) -> Iterator[list[FramePiece]]:
    """Kept frames of ``video_ids`` in order, in batches of ``batch_size`` frames that may span videos of one
    unit (``per_unit`` consecutive videos of the list) but never two units: each unit's last batch may be
    short. Videos are read a stored chunk at a time and decompressed ahead on a thread
    (:func:`~transmodal.background.prefetch`: two chunks waiting, a third being read), while the caller
    works on the current batch.
    """
    ends = {unit[-1] for unit in video_units(list(video_ids), per_unit)}
    batch: list[FramePiece] = []
    filled = 0
    for video_id, offset, frame_idx, frames, last in prefetch(
        _chunks(store, video_ids), depth=2, name="frames"
    ):
        start = 0
        while start < len(frame_idx):
            take = min(batch_size - filled, len(frame_idx) - start)
            batch.append(
                FramePiece(
                    video_id, offset + start, frame_idx[start : start + take], frames[start : start + take]
                )
            )
            filled += take
            start += take
            if filled == batch_size:
                yield batch
                batch, filled = [], 0
        if last and video_id in ends and batch:
            yield batch
            batch, filled = [], 0
    if batch:
        yield batch


def _chunks(
    store: FrameStore, video_ids: list[str]
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, bool]]:
    """``(video_id, position of the chunk's first frame among the video's kept frames, frame_idx, frames,
    whether it is the video's last chunk)`` for each stored chunk of ``video_ids`` in order: a long video is
    read a chunk (:data:`~transmodal.data.frames.CHUNK_BYTES` raw) at a time, not held whole."""
    kept = store.frames["video_id"].value_counts()  # the frame table: a video's last chunk ends its count
    for video_id in video_ids:
        offset = 0
        for frame_idx, frames in store.iter_chunks(video_id):
            yield video_id, offset, frame_idx, frames, offset + len(frame_idx) == kept[video_id]
            offset += len(frame_idx)


def pipelined(batches: Iterable, launch, finish) -> None:
    """``finish(batch, launch(batch))`` for every batch, one batch deep: batch k + 1 is launched before batch
    k is finished. ``launch`` only queues device work; ``finish`` waits for it (copies to the host) and
    does the host work. On a GPU the device then computes batch k + 1 while the host finishes batch k; on the
    CPU it is the plain loop."""
    pending = None
    for batch in batches:
        launched = (batch, launch(batch))
        if pending is not None:
            finish(*pending)
        pending = launched
    if pending is not None:
        finish(*pending)


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, H, W, 3) uint8 RGB -> (n, 3, H, W) float32 0..255 on ``device`` (sent as uint8: 4x fewer bytes)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)  # (n, H, W, 3)
    return pixels.permute(0, 3, 1, 2).float()  # (n, 3, H, W)


def size_hw(size) -> tuple[int, int] | None:
    """(height, width) of an image processor's ``size`` (a dict or an object with height and width), or None
    when it names no fixed size (e.g. ``shortest_edge``)."""
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if height is None and isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
    return (int(height), int(width)) if height and width else None
