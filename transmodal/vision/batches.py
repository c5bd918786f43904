"""The stored videos' kept frames in batches, shared by the detect and pose stages.

:func:`stored_videos` lists every video of the frame store with its kept frames (from the frame table, no
pixel reads); :func:`iter_frame_batches` yields their frames in batches that may span videos, read ahead on
a thread; :func:`pipelined` runs a model over those batches one batch deep, so that on a GPU the device
computes the next batch while the host finishes the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
torchrun world, each given whole units (:class:`FinishedUnits`), batch a unit's frames exactly as one process
does, and an interrupted run resumes at a unit."""


def video_units(video_ids: list[str], per_unit: int = VIDEOS_PER_UNIT) -> list[list[str]]:
    """Consecutive runs of ``per_unit`` videos (the last may be shorter)."""
    return [video_ids[i : i + per_unit] for i in range(0, len(video_ids), per_unit)]


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


class FinishedUnits:
    """The units of videos (:func:`video_units`) of a detect or pose run, and the parts of those finished.

    With ``parts_dir`` (the stages': :func:`~transmodal.io.stage_parts`) a unit's results (one table for its videos,
    in unit order; ``attrs`` hold its counts) are written as a Parquet part in a
    :class:`~transmodal.io.Resumable` folder when its last video is in (:meth:`add`). A run with the same key
    (``key()``: everything a unit's results depend on; rank 0's under torchrun) takes the parts an interrupted
    run finished and computes only the other units: batches restart at every unit, so those are the bytes
    of the whole run. Under torchrun the units left are shared out every world-size-th, and rank 0 reads
    the parts it did not compute (:meth:`others`): a part does not depend on which process wrote it, so a
    run resumed with another ``compute.nproc`` takes it too. Without ``parts_dir`` (one process: predict, the
    benchmarks) nothing is written and every unit is computed.
    """

    def __init__(self, video_ids: list[str], per_unit: int, parts_dir, key: Callable[[], dict], world):
        self.units = video_units(video_ids, per_unit)
        self._world = world
        self._parts = None
        self.done: list[int] = []
        if parts_dir is None:
            if world.size > 1:
                raise ValueError("several processes share their results through parts_dir: give one")
        else:
            from transmodal import distributed
            from transmodal.io import Resumable

            # rank 0 removes other keys' parts and this key's unfinished temporaries; every process lists
            # the finished parts (rank 0's cleaning removes none), then waits, so all share out the same
            # units and no temporary is written before the cleaning is over
            named = key() if world.size == 1 else distributed.from_rank_0(key() if world.is_main else None)
            self._parts = Resumable(parts_dir, named, clean=world.is_main, base=parts_dir)
            self.done = [i for i in range(len(self.units)) if self._parts.has(self._name(i))]
            # a damaged part is said now, not after the other units are computed; rank 0 reads the footers
            # and every process stops with its line (none waits at the barrier for one that stopped)
            damaged = self._damaged() if world.is_main else None
            if world.size > 1:
                damaged = distributed.from_rank_0(damaged)
            if damaged:
                from transmodal.params import CheckpointError

                raise CheckpointError(damaged)
            if world.size > 1:
                distributed.barrier()
        done = set(self.done)
        todo = [i for i in range(len(self.units)) if i not in done]
        self._mine = todo[world.rank :: world.size]
        self._unit_of = {video: i for i in self._mine for video in self.units[i]}
        self._pending: dict[int, dict[str, pd.DataFrame]] = {i: {} for i in self._mine}
        self.directory = None if self._parts is None else self._parts.directory

    @staticmethod
    def _name(unit: int) -> str:
        return f"unit-{unit:05d}.parquet"

    def videos(self) -> list[str]:
        """This process's videos to compute: those of its units left, in order (whole units, so batching
        them per unit gives the batches of the whole run)."""
        return [video for unit in self._mine for video in self.units[unit]]

    def add(self, video_id: str, table: pd.DataFrame) -> None:
        """One video's results, in any order; the unit's part is written once its last video is in (in
        unit order, its counts in ``attrs`` summed). Nothing is kept in memory: the caller has the values."""
        if self._parts is None:
            return
        unit = self._unit_of[video_id]
        pending = self._pending[unit]
        pending[video_id] = table
        if len(pending) < len(self.units[unit]):
            return
        tables = [pending[video] for video in self.units[unit]]
        del self._pending[unit]
        merged = pd.concat(tables, ignore_index=True)
        merged.attrs = {k: sum(t.attrs.get(k, 0) for t in tables) for k in tables[0].attrs}
        with self._parts.writing(self._name(unit)) as tmp:
            merged.to_parquet(tmp, index=False)

    def others(self) -> Iterator[pd.DataFrame] | None:
        """On rank 0, once every process has written its parts: the tables of the units it did not compute
        itself (finished by an interrupted run or by another process), read one at a time in unit order.
        None on the other processes."""
        if self._world.size > 1:
            from transmodal.distributed import barrier

            barrier()  # every process has written its parts
            if not self._world.is_main:
                return None
        mine = set(self._mine)
        return (self._read(i) for i in range(len(self.units)) if i not in mine)

    def _damaged(self) -> str | None:
        """The error line of the first finished part whose Parquet footer cannot be read, None when all can."""
        import pyarrow.parquet as pq

        for unit in self.done:
            try:
                pq.read_metadata(self._parts.path(self._name(unit)))
            except (OSError, ValueError) as err:
                return self._unreadable(unit, err)
        return None

    def _read(self, unit: int) -> pd.DataFrame:
        try:
            return pd.read_parquet(self._parts.path(self._name(unit)))
        except (OSError, ValueError) as err:  # damaged after its footer was read (a disk error)
            from transmodal.params import CheckpointError

            raise CheckpointError(self._unreadable(unit, err)) from None

    def _unreadable(self, unit: int, err: Exception) -> str:
        from transmodal.vision.checkpoints import first_line

        return (
            f"{self._parts.path(self._name(unit))}: a unit of videos the interrupted run finished cannot be "
            f"read ({first_line(err)}); remove {self._parts.directory} to compute every unit again"
        )


def unit_key(params: dict, model, store: FrameStore, units: list[list[str]], code: list, **inputs) -> dict:
    """What a unit of detect or pose results depends on (:class:`FinishedUnits`): the stage's ``code``
    with the frame reading and checkpoint loading, its ``params`` (those that change a unit's results), the
    device and dtype the model runs in (on CUDA the GPU and its libraries, on the CPU the processor and its vector unit), numpy's, torch's,
    transformers' and OpenCV's versions, the checkpoint's and the frame store's files, the units of videos,
    and the stage's other ``inputs``."""
    from pathlib import Path

    import cv2  # decodes the frames again under frames.store: source
    import transformers

    from transmodal.io import digest, folder_signature, source_digest
    from transmodal.vision.checkpoints import accelerator

    here = Path(__file__).parent
    return {
        "code": source_digest(
            *code, here / "batches.py", here / "checkpoints.py", here.parent / "data" / "frames.py"
        ),
        "params": params,
        "runs_on": [str(model.device), str(model.dtype), *accelerator(torch.device(model.device))],
        "versions": [np.__version__, torch.__version__, transformers.__version__, cv2.__version__],
        "checkpoint": folder_signature(Path(model.folder)) if model.folder else None,
        "frames": folder_signature(Path(store.directory)),
        "units": digest(units),
        **inputs,
    }
