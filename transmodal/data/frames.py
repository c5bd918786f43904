"""Frames stage: decode every video once with OpenCV, keep every ``stride``-th frame, store compactly.

Layout of ``data/frames/``:
- ``shard-NNNNN.parquet``: one row per video (one row group each, so a video reads alone):
  ``video_id``, ``frame_idx`` (list of original 0-based frame numbers kept), ``height``, ``width``,
  ``codec``, ``pixels`` (RGB uint8 T x H x W x 3, compressed with ``codec`` (LZ4 frame): lossless, and
  compressed by the decode workers in parallel rather than by the single Parquet writer).
- ``videos.parquet``: one row per indexed video: ``video_id``, ``status`` (``ok`` | ``skipped``),
  ``reason``, ``frames_decoded``, ``frames_reported`` (container header), ``frames_kept``, ``width``,
  ``height``, ``fps``, ``short`` (fewer kept frames than one clip), ``shard``, ``row_group``.
- ``frames.parquet``: the frame table, one row per kept frame: ``video_id``, ``frame_idx``, ``width``,
  ``height``, ``fps``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from transmodal.io import atomic_dir, write_parquet

SHARD_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame_idx", pa.list_(pa.int32())),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("codec", pa.string()),
        ("pixels", pa.large_binary()),
    ]
)


@dataclass
class DecodedVideo:
    """One decoded video, or the reason it could not be decoded (``frames`` is None then)."""

    video_id: str
    frames: np.ndarray | None  # (T, H, W, 3) uint8 RGB, only the kept frames
    frame_idx: np.ndarray  # (T,) original 0-based frame numbers
    frames_decoded: int
    frames_reported: int
    fps: float
    reason: str = ""


def decode_video(path: Path, video_id: str, stride: int, max_side: int | None = None) -> DecodedVideo:
    """Decode all frames of ``path`` and keep every ``stride``-th (0, stride, 2*stride, ...).

    ``max_side`` (``transmodal predict`` only; the frames stage keeps the source size): kept frames whose
    longer side exceeds it are shrunk to it (area resampling, aspect kept) as they are decoded, so a 4K video
    holds a quarter of the memory.

    Zero-byte, unreadable, non-video and truncated files come back with ``frames=None`` and a reason.
    A file is called truncated when it decodes fewer frames than its container header announces.
    """
    empty = np.zeros(0, dtype=np.int32)
    if not path.is_file():
        return DecodedVideo(video_id, None, empty, 0, 0, 0.0, "file not found")
    if path.stat().st_size == 0:
        return DecodedVideo(video_id, None, empty, 0, 0, 0.0, "zero-byte file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return DecodedVideo(
                video_id, None, empty, 0, 0, 0.0, "not a readable video (OpenCV cannot open it)"
            )
        reported = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        kept, kept_idx, decoded = [], [], 0
        while True:
            ok = capture.grab()
            if not ok:
                break
            if decoded % stride == 0:
                ok, frame = capture.retrieve()
                if not ok:
                    break
                if max_side is not None and max(frame.shape[:2]) > max_side:
                    scale = max_side / max(frame.shape[:2])
                    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                kept.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                kept_idx.append(decoded)
            decoded += 1
    finally:
        capture.release()
    if decoded == 0:
        return DecodedVideo(video_id, None, empty, 0, reported, fps, "no frame could be decoded")
    if reported and decoded < reported:
        return DecodedVideo(
            video_id,
            None,
            empty,
            decoded,
            reported,
            fps,
            f"truncated: header has {reported} frames, decoded {decoded}",
        )
    return DecodedVideo(video_id, np.stack(kept), np.asarray(kept_idx, np.int32), decoded, reported, fps)


PIXEL_CODEC = "lz4"  # LZ4 frame: ~2.5x smaller than raw on KTH-like frames, several times faster than zstd


def _decode_and_compress(path: Path, video_id: str, stride: int) -> tuple[DecodedVideo, pa.Buffer | None]:
    """Decode one video and compress its kept frames (both release the GIL, so workers run in parallel)."""
    video = decode_video(path, video_id, stride)
    if video.frames is None:
        return video, None
    return video, pa.Codec(PIXEL_CODEC).compress(np.ascontiguousarray(video.frames))


def _decoded_in_order(jobs: list[tuple[Path, str]], stride: int, workers: int) -> Iterator:
    """``_decode_and_compress`` over ``jobs`` on a thread pool, results in job order, few videos in flight."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for path, video_id in jobs:
            pending.append(pool.submit(_decode_and_compress, path, video_id, stride))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def extract_frames(
    index: pd.DataFrame,
    root: Path,
    out_dir: Path,
    stride: int,
    clip_length: int,
    videos_per_shard: int,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Decode every video of ``index`` (columns video_id, path) under ``root`` into ``out_dir``.

    ``workers`` decode-and-compress threads (default: one per CPU core). Returns the summary written to
    ``metrics/frames.json``.
    """
    jobs = [(Path(root) / rel, vid) for vid, rel in zip(index["video_id"], index["path"], strict=True)]
    workers = workers or max(1, os.cpu_count() or 1)
    video_rows, frame_tables = [], []
    with atomic_dir(out_dir) as tmp:
        writer, shard, rows_in_shard = None, -1, 0
        try:
            decoded = _decoded_in_order(jobs, stride, workers)
            for video, pixels in tqdm(
                decoded, total=len(jobs), desc="frames", unit="video", disable=not progress
            ):
                row = {
                    "video_id": video.video_id,
                    "status": "ok" if video.frames is not None else "skipped",
                    "reason": video.reason,
                    "frames_decoded": video.frames_decoded,
                    "frames_reported": video.frames_reported,
                    "frames_kept": 0,
                    "width": 0,
                    "height": 0,
                    "fps": video.fps,
                    "short": False,
                    "shard": -1,
                    "row_group": -1,
                }
                if video.frames is not None:
                    if writer is None or rows_in_shard == videos_per_shard:
                        if writer is not None:
                            writer.close()
                        shard, rows_in_shard = shard + 1, 0
                        # pixels arrive compressed; Parquet compresses only the small columns
                        writer = pq.ParquetWriter(
                            tmp / f"shard-{shard:05d}.parquet",
                            SHARD_SCHEMA,
                            compression={name: "zstd" for name in SHARD_SCHEMA.names} | {"pixels": "none"},
                            use_dictionary=False,
                            write_statistics=False,
                        )
                    t, h, w, _ = video.frames.shape
                    table = pa.table(
                        {
                            "video_id": [video.video_id],
                            "frame_idx": [video.frame_idx.tolist()],
                            "height": [h],
                            "width": [w],
                            "codec": [PIXEL_CODEC],
                            "pixels": _blob(pixels),
                        },
                        schema=SHARD_SCHEMA,
                    )
                    writer.write_table(table)  # one call -> one row group per video
                    row.update(
                        frames_kept=t,
                        width=w,
                        height=h,
                        short=t < clip_length,
                        shard=shard,
                        row_group=rows_in_shard,
                    )
                    rows_in_shard += 1
                    frame_tables.append(
                        pd.DataFrame(
                            {
                                "video_id": video.video_id,
                                "frame_idx": video.frame_idx,
                                "width": np.int32(w),
                                "height": np.int32(h),
                                "fps": np.float32(video.fps),
                            }
                        )
                    )
                video_rows.append(row)
        finally:
            if writer is not None:
                writer.close()
        videos = pd.DataFrame(video_rows)
        frames = (
            pd.concat(frame_tables, ignore_index=True)
            if frame_tables
            else pd.DataFrame(columns=["video_id", "frame_idx", "width", "height", "fps"])
        )
        write_parquet(videos, tmp / "videos.parquet")
        write_parquet(frames, tmp / "frames.parquet")
    skipped = videos[videos["status"] == "skipped"]
    return {
        "videos": int(len(videos)),
        "videos_ok": int((videos["status"] == "ok").sum()),
        "videos_skipped": int(len(skipped)),
        "videos_short": int(videos["short"].sum()),
        "frames_kept": int(videos["frames_kept"].sum()),
        "stride": stride,
        "skipped": [
            {"video_id": v, "reason": r} for v, r in zip(skipped["video_id"], skipped["reason"], strict=True)
        ],
    }


def _blob(data: pa.Buffer) -> pa.LargeBinaryArray:
    """One large-binary value viewing ``data`` (no copy of the pixels)."""
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, data])


class FrameStore:
    """Read access to ``data/frames/``: ``store.read(video_id) -> (frame_idx (T,), frames (T, H, W, 3) uint8 RGB)``.

    ``read`` may be called from several threads: the shared Parquet readers are used under a lock, the
    decompression (most of the cost, GIL released) runs outside it, in parallel.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.videos = pd.read_parquet(self.directory / "videos.parquet")
        self.frames = pd.read_parquet(self.directory / "frames.parquet")
        ok = self.videos[self.videos["status"] == "ok"]
        self._where = {
            v: (int(s), int(g)) for v, s, g in zip(ok["video_id"], ok["shard"], ok["row_group"], strict=True)
        }
        self._files: dict[int, pq.ParquetFile] = {}
        self._lock = threading.Lock()  # guards _files and the ParquetFile readers

    @property
    def video_ids(self) -> list[str]:
        """Videos that decoded, in index order."""
        return list(self._where)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._where

    def read(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """All kept frames of one video: original frame numbers (T,) and pixels (T, H, W, 3) uint8 RGB."""
        if video_id not in self._where:
            raise KeyError(
                f"video {video_id!r} has no decoded frames (see {self.directory / 'videos.parquet'})"
            )
        shard, group = self._where[video_id]
        with self._lock:
            if shard not in self._files:
                self._files[shard] = pq.ParquetFile(self.directory / f"shard-{shard:05d}.parquet")
            table = self._files[shard].read_row_group(group)
        frame_idx = np.asarray(table.column("frame_idx")[0].as_py(), dtype=np.int64)
        h, w = table.column("height")[0].as_py(), table.column("width")[0].as_py()
        shape = (len(frame_idx), h, w, 3)
        codec = pa.Codec(table.column("codec")[0].as_py())
        pixels = codec.decompress(
            table.column("pixels")[0].as_buffer(), decompressed_size=int(np.prod(shape))
        )
        return frame_idx, np.frombuffer(pixels, dtype=np.uint8).reshape(shape)

    def iter_videos(self, video_ids: list[str] | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(video_id, frame_idx, frames)`` one video at a time (memory stays at one video)."""
        for video_id in video_ids if video_ids is not None else self.video_ids:
            frame_idx, frames = self.read(video_id)
            yield video_id, frame_idx, frames
