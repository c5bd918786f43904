"""Frames stage: decode every video once with OpenCV, keep its time samples, store them compactly.

Sampling. Kept frames sample time every ``frames.stride / frames.reference_fps`` seconds (the paper's 16
frames at stride 2 of 25 fps): a 25 fps video keeps frames 0, 2, 4, ...; a 30 fps video 0, 2, 5, 7, 10, ...;
a 10 fps video every frame (:func:`sample_step`, :func:`sample_numbers`; docs/decisions.md "Frame rates").
With ``frames.by_time`` the samples are matched to frames by their timestamps instead (:class:`_ByTime`),
for variable-frame-rate files; a constant-rate file keeps the same frames.

Layout of ``data/frames/``:
- ``shard-NNNNN.parquet``: the decodable videos of index rows ``N * frames.videos_per_shard`` onwards, one
  row group per video (so a video reads alone), one row per chunk of its frames (:data:`CHUNK_BYTES` raw, in
  order; one row for any video under it): ``video_id``, ``frame_idx`` (list of the chunk's original 0-based
  frame numbers), ``height``, ``width``, ``codec``, ``pixels`` (the chunk's RGB uint8 frames x H x W x 3,
  compressed with ``codec`` (LZ4 frame): lossless, compressed by the decode workers in parallel rather than
  by the single Parquet writer; rows, not one value, since Parquet refuses a value, and a data page, of 2 GiB
  or more). A shard whose videos all failed has no file.
- ``videos.parquet``: one row per indexed video: ``video_id``, ``status`` (``ok`` | ``skipped``),
  ``reason`` (why it was skipped, or what is odd about a kept video: truncated, no frame rate),
  ``frames_decoded``, ``frames_reported`` (container header), ``frames_kept``, ``samples`` (time samples,
  ``frames_kept`` plus repeats when the video is slower than the sampling), ``step`` (source frames per
  sample), ``truncated`` (decoded fewer frames than the header announces; the decoded ones are kept),
  ``width``, ``height``, ``fps``, ``short`` (fewer samples than one clip), ``shard``, ``row_group``,
  ``shrunk`` (kept smaller than the source: its longer side was over ``frames.max_side``); with
  ``frames.by_time`` also ``sample_idx`` (the frame number of each time sample).
- ``frames.parquet``: the frame table, one row per kept frame: ``video_id``, ``frame_idx``, ``width``,
  ``height``, ``fps``.

``frames.store: source`` writes the two tables but no shard: ``sources.parquet`` (``video_id``, ``path`` of
the source file under ``data.root`` as params.yaml names it, ``size_bytes``, ``sha256``, ``stride``,
``reference_fps``, and ``by_time`` with ``frames.by_time``) takes their place, and :class:`FrameStore` decodes a video again from its source file
each time a stage reads it, with the same :func:`decode_video` call, so it returns the same pixels as the
shards would (the derived data of a dataset then holds no pixels: README "Disk at dataset scale"). A source
file whose size, content (SHA-256) or decoded frames differ from what the frames stage recorded is an
error, never silently other frames.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
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

from transmodal.io import Resumable, atomic_dir, file_signature, source_digest, write_parquet
from transmodal.params import FRAME_STORES
from transmodal.stage import StageInputError

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
CHUNK_BYTES = 256 * 2**20
"""Raw bytes of the frames compressed together into one shard row: Parquet refuses a value, or a data page,
of 2 GiB or more, which one compressed buffer (or one row) per video reached at a minute or so of 1080p."""


def frames_per_chunk(height: int, width: int) -> int:
    """Frames of ``height`` x ``width`` RGB compressed into one chunk (:data:`CHUNK_BYTES`, at least one)."""
    return max(1, CHUNK_BYTES // (height * width * 3))


# a header frame rate at or above this (or <= 0, NaN) is taken as missing: 1000 is the millisecond tick a
# WebM/Matroska or WMV header gives when it states no rate (a browser's or a webcam's recording at 30 fps)
MAX_FPS = 1000.0


def _rate(fps: float) -> str:
    """A header's frame rate as a note says it: 29.97, 23.98, 1000, 90000."""
    return f"{fps:.4g}" if fps < MAX_FPS else f"{fps:.0f}"


def usable_fps(fps: float) -> bool:
    """Whether a header's frame rate can be sampled by (:data:`MAX_FPS`)."""
    return 0.0 < fps < MAX_FPS


def sample_step(fps: float, stride: int, reference_fps: float | None) -> float:
    """Source frames per kept frame: ``stride`` at ``reference_fps`` (25, the paper's), scaled to ``fps``.

    Kept frames sample TIME every ``stride / reference_fps`` seconds, so a 30 fps video keeps every 2.4th
    frame and a 10 fps video every frame (some twice, see :func:`sample_numbers`). ``reference_fps`` None, or
    a header rate that is missing or absurd, keeps every ``stride``-th frame whatever the rate.
    """
    if reference_fps is None or not usable_fps(fps):
        return float(stride)
    return stride * fps / reference_fps


def sample_numbers(frames_decoded: int, step: float) -> np.ndarray:
    """The original frame number of each time sample, ``floor(k * step + 1/2)`` for k = 0, 1, ... (int64).

    Nondecreasing; with ``step < 1`` (a video slower than the sampling) a frame repeats for the samples it
    is the nearest to. ``step == stride`` gives exactly 0, stride, 2 * stride, ...: the frames the stage kept
    before resampling by time existed, so 25 fps datasets are unchanged.
    """
    if frames_decoded <= 0:
        return np.zeros(0, np.int64)
    count = int(np.ceil((frames_decoded - 0.5) / step))
    numbers = np.floor(np.arange(count) * step + 0.5).astype(np.int64)
    return numbers[numbers < frames_decoded]


@dataclass
class DecodedVideo:
    """One decoded video, or the reason it could not be decoded (``frames`` is None then)."""

    video_id: str
    frames: np.ndarray | None  # (T, H, W, 3) uint8 RGB, only the kept frames
    frame_idx: np.ndarray  # (T,) original 0-based frame numbers, distinct and increasing
    frames_decoded: int
    frames_reported: int
    fps: float
    reason: str = ""  # why the video was skipped, or what is odd about a kept one (truncated, no fps)
    step: float = 0.0  # source frames per time sample (sample_step)
    truncated: bool = False  # fewer frames decoded than the container header announces
    samples: np.ndarray | None = None  # frame number per time sample when sampled by timestamp (by_time)
    shrunk: bool = False  # kept smaller than the source: its longer side was over max_side
    pixels: list[pa.Buffer] | None = None  # decode_video(pixels="lz4"): the kept frames' compressed chunks

    def sample_frames(self) -> np.ndarray:
        """The original frame number of each time sample (int64, nondecreasing)."""
        if self.samples is not None:
            return self.samples
        return sample_numbers(self.frames_decoded, self.step)


class _SizeChanged(Exception):
    """A frame of another size than the first kept one: the video is skipped with this reason."""


class _KeptFrames:
    """The kept frames, held once: each is converted straight into an array sized from the header's frame
    count (trusted up to :data:`FIRST_ALLOCATION`), grown by doubling past it, never stacked from a list."""

    def __init__(self, expected: int):
        self.expected = expected
        self.array: np.ndarray | None = None
        self.numbers: list[int] = []

    def add(self, frame: np.ndarray, number: int) -> None:
        """Keep ``frame`` (BGR, as OpenCV gives it) as source frame ``number``."""
        n = len(self.numbers)
        if self.array is None:  # a bogus header count reserves at most FIRST_ALLOCATION
            self.expected = min(self.expected, max(1, FIRST_ALLOCATION // frame.nbytes))
        self.array = _room_for(self.array, n, frame.shape, self.expected)
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=self.array[n])
        self.numbers.append(number)

    def finish(self) -> tuple[np.ndarray, None]:
        """The kept frames (T, H, W, 3) RGB (a header that announced more frames: its tail is never
        touched), and no compressed pixels."""
        return self.array[: len(self.numbers)], None


class _ChunkedFrames:
    """The kept frames for the frames stage, held a chunk at a time: every :func:`frames_per_chunk` frames
    are compressed (``compress``; LZ4 frame, one buffer a chunk) as soon as they are decoded, so a worker
    holds one chunk of raw frames (:data:`CHUNK_BYTES`), not the whole video. Without ``compress``
    (``frames.store: source``) only their numbers and size are kept."""

    def __init__(self, expected: int, compress: bool):
        self.expected = expected
        self.codec = pa.Codec(PIXEL_CODEC) if compress else None
        self.shape: tuple[int, ...] | None = None  # a frame's
        self.array: np.ndarray | None = None
        self.numbers: list[int] = []
        self.held = 0  # frames of ``array`` not yet compressed
        self.pixels: list[pa.Buffer] = []

    def add(self, frame: np.ndarray, number: int) -> None:
        """Keep ``frame`` (BGR, as OpenCV gives it) as source frame ``number``."""
        self.numbers.append(number)
        self.shape = frame.shape
        if self.codec is None:
            return
        if self.array is None:
            self.per_chunk = frames_per_chunk(*frame.shape[:2])
            self.array = np.empty((min(max(self.expected, 1), self.per_chunk), *frame.shape), np.uint8)
        elif self.held == self.per_chunk:
            self._flush()
        elif self.held == len(self.array):  # the header announced fewer frames: grown, up to one chunk
            grown = np.empty((min(2 * self.held, self.per_chunk), *frame.shape), np.uint8)
            grown[: self.held] = self.array
            self.array = grown
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=self.array[self.held])
        self.held += 1

    def _flush(self) -> None:
        if self.held:
            self.pixels.append(self.codec.compress(self.array[: self.held]))
        self.held = 0

    def finish(self) -> tuple[np.ndarray, list[pa.Buffer] | None]:
        """A read-only view of one zero byte in the kept frames' shape (the tables need the shape, not the
        pixels), and the compressed chunks, the last one included (None without ``compress``)."""
        if self.codec is not None:
            self._flush()
        self.array = None
        frames = np.broadcast_to(np.uint8(0), (len(self.numbers), *(self.shape or (0, 0, 3))))
        return frames, self.pixels if self.codec is not None else None


TIME_SNAP = 0.25  # frames: a timestamp this close to its frame's place on the header's grid is taken as on it
TIME_CUT = 2.0  # seconds: a longer jump between two frames' timestamps (forwards, or any backwards) is a cut
UNUSABLE_STEP = 1.0  # header frames: where a frame without a usable timestamp goes after the one before
MIN_STEP = 1e-3  # header frames: the least two frames' places differ by (places only increase)


class _ByTime:
    """Time samples matched to frames by each frame's timestamp, for variable-frame-rate files (phones).

    A frame's place is its time in frames of the header's (average) rate, from the first frame's timestamp.
    Sample k, at ``k * step``, takes the frame nearest to it, so each frame can be assigned only once the
    next frame's timestamp is known. A frame whose place lies within :data:`TIME_SNAP` of its number is
    placed at its number, so a constant-rate file gets exactly the samples of :func:`sample_numbers` (the
    same floating-point comparisons).

    Timestamps that cannot be a frame rate do not take the sampling with them: a repeated one (or none: a
    raw stream reads 0 throughout) puts the frame one header frame after the one before, and the next
    frames are timed again from the last good timestamp; a jump backwards, or forwards by more than
    :data:`TIME_CUT` s (a pause in a motion-triggered recording, joined files, a garbage value), is a cut:
    the frame goes one header frame after the one before and the clock restarts from it. So one bad value
    costs at most one frame's worth of time, and a video's samples stay within what its frames can span.
    Under a tick (a header rate of :data:`MAX_FPS` or more, read in milliseconds) one frame is ``frame``,
    a frame at the reference rate: a millisecond would give a file without timestamps one sample.
    """

    def __init__(
        self, step: float, fps: float, header_fps: float | None = None, frame: float = UNUSABLE_STEP
    ):
        self.step, self.fps = step, fps
        self.header_fps = fps if header_fps is None else header_fps  # as the note says it
        self.frame = (
            frame  # "one frame on", in places: a header frame, or a tick's frame at the reference rate
        )
        self.anchor: tuple[float, float] | None = None  # (place, timestamp in ms) the clock runs from
        self.last_ms: float | None = None  # the last usable timestamp
        self.places: list[float] = []  # place of each frame seen, in header frames, increasing
        self.samples: list[int] = []  # frame number of each sample assigned so far
        self.off_grid = self.repeated = self.cuts = 0
        self.regular = True  # False past skipped packets: a frame off its number is then no sign of a rate

    def place(self, number: int, msec: float) -> None:
        """Place frame ``number``, read at ``msec`` (its timestamp), in header frames after the first."""
        if not self.places:  # the first frame: time 0
            place = 0.0
            if math.isfinite(msec):
                self.anchor, self.last_ms = (0.0, msec), msec
        else:
            last = self.places[-1]
            since = msec - self.last_ms if self.last_ms is not None else math.nan
            if not math.isfinite(since) or since == 0.0:  # repeated, or none: one frame on, same clock
                self.repeated += 1
                place = last + self.frame
                if self.anchor is None and math.isfinite(msec):
                    self.anchor, self.last_ms = (place, msec), msec
            elif since < 0.0 or since > TIME_CUT * 1000.0:  # a cut: one frame on, the clock restarts here
                self.cuts += 1
                place = last + self.frame
                self.anchor, self.last_ms = (place, msec), msec
            else:
                anchor_place, anchor_ms = self.anchor
                place = anchor_place + (msec - anchor_ms) * self.fps / 1000.0
                self.last_ms = msec
            if abs(place - number) <= TIME_SNAP and number > last:
                place = float(number)
            elif place <= last:  # a repeated frame's guess overshot the next one's time
                place = last + MIN_STEP
        if place != number and self.regular:
            self.off_grid += 1
        self.places.append(place)

    def span(self) -> float:
        """Header frames from the first frame to the end of the last (its gap to the one before, or 1)."""
        gap = self.places[-1] - self.places[-2] if len(self.places) > 1 else 1.0
        return self.places[-1] + max(1.0, gap)

    def assign(self, number: int, limit: float) -> int:
        """Give frame ``number`` every sample not yet assigned whose time is before ``limit`` - 1/2 (in
        header frames; the midpoint to the next frame); how many it got."""
        count = 0
        while len(self.samples) * self.step + 0.5 < limit:
            self.samples.append(number)
            count += 1
        return count

    def limit_after(self, number: int) -> float:
        """``limit`` for frame ``number`` when the next frame has been placed (the midpoint, + 1/2)."""
        return (self.places[number] + self.places[number + 1]) / 2 + 0.5

    def limit_of_last(self) -> float:
        """``limit`` for the last frame: half its gap to the frame before past it (half a frame if alone)."""
        gap = self.places[-1] - self.places[-2] if len(self.places) > 1 else 1.0
        return self.places[-1] + gap / 2 + 0.5

    def note(self, decoded: int) -> str:
        parts = []
        if self.off_grid:
            parts.append(
                f"variable frame rate: {self.off_grid} of {decoded} frames are off the header's {_rate(self.header_fps)} "
                "fps grid (a varying or mislabelled rate); sampled by each frame's timestamp"
            )
        if self.repeated:
            parts.append(
                f"{self.repeated} frame(s) repeat the timestamp before (or have none): placed one frame on"
            )
        if self.cuts:
            parts.append(
                f"{self.cuts} timestamp jump(s) backwards or of more than {TIME_CUT:g} s taken as cuts (the "
                "video goes on one frame later)"
            )
        return "; ".join(parts)


MAX_BAD_PACKETS = 30  # grab() failures in a row taken as the end of a stream; fewer are corrupt packets


def _grab(capture) -> int | None:
    """Grab the next frame that decodes: how many grabs failed before it, or None at the end of the stream.

    OpenCV's ``grab()`` is False at the end and also on a packet that does not decode (a damaged file), and
    the stream goes on after such a packet; at the end it stays False, so up to :data:`MAX_BAD_PACKETS`
    failures in a row are skipped before the stream is taken as ended."""
    for failed in range(MAX_BAD_PACKETS + 1):
        if capture.grab():
            return failed
    return None


def _retrieve(capture, max_side: int | None, aspect: float = 1.0) -> np.ndarray | None:
    """The grabbed frame (BGR), shrunk to ``max_side`` (:func:`_shrink`); None if it fails."""
    ok, frame = capture.retrieve()
    return _shrink(frame, max_side, aspect) if ok else None


def shrunk_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) of a frame of that size once its longer side is shrunk to ``max_side`` (aspect kept,
    each side rounded, at least 1); the size itself when it is not larger."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sample_aspect(capture) -> float:
    """The pixel aspect ratio of the frames ``capture`` gives, width over height of one pixel; 1 when unset.

    The stream's ratio is that of its stored axes; a frame OpenCV turns by 90 or 270 degrees (a phone's
    display rotation) has them swapped, so it gets the inverse."""
    num, den = capture.get(cv2.CAP_PROP_SAR_NUM), capture.get(cv2.CAP_PROP_SAR_DEN)
    ratio = num / den if num > 0 and den > 0 else 1.0
    if not math.isfinite(ratio):
        return 1.0
    turned = capture.get(cv2.CAP_PROP_ORIENTATION_AUTO) > 0 and (
        round(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 180 == 90
    )
    return 1.0 / ratio if turned else ratio


def display_size(width: int, height: int, aspect: float) -> tuple[int, int]:
    """(width, height) a player shows a stored ``width`` x ``height`` picture of pixel aspect ``aspect`` at:
    the narrower side stretched, so no stored pixel is lost."""
    if aspect > 1.0:
        return max(1, round(width * aspect)), height
    if aspect < 1.0:
        return width, max(1, round(height / aspect))
    return width, height


def _shrink(frame: np.ndarray, max_side: int | None, aspect: float = 1.0) -> np.ndarray:
    """``frame`` at its display size (pixel ``aspect``), its longer side shrunk to ``max_side`` if larger
    (area resampling; a stretch, linear)."""
    height, width = frame.shape[:2]
    size = shrunk_size(*display_size(width, height, aspect), max_side)
    if size != (width, height):
        grows = size[0] > width or size[1] > height
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR if grows else cv2.INTER_AREA)
    return frame


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be a video file, said before anything tries to decode it; None when it can be read.

    OpenCV says only that it cannot open a file; a missing file, a folder named like a video, a broken link
    and a file without read permission each need a different fix, so each is named."""
    try:
        if path.is_symlink() and not path.exists():
            return f"broken symbolic link (to {os.readlink(path)})"
        if not path.exists():
            return "no such file"
        if path.is_dir():
            return "is a folder, not a video file"
        if not path.is_file():
            return "not a regular file"
        with open(path, "rb") as file:
            if not file.read(1):
                return "zero-byte file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


class VideoStream:
    """A video's kept frames as they are decoded, for a caller that holds only some at a time (``transmodal
    predict`` on a long video); :func:`decode_video` keeps them all. The parameters are decode_video's.

    ``open()`` reads the header (False: OpenCV cannot open the file); iterating gives ``(frame number, frame,
    time samples it fills)`` for each kept frame in order, the frame BGR as OpenCV gives it, shrunk to
    ``max_side``; the counts are those of :func:`sample_numbers` (or of the timestamps, :class:`_ByTime`).
    Raises :class:`_SizeChanged` at a frame of another size than the first kept one, and lets OpenCV's
    ``cv2.error`` through (:meth:`failure`). After the last frame, :meth:`notes` says what was odd."""

    def __init__(
        self,
        path: Path,
        stride: int,
        max_side: int | None = None,
        reference_fps: float | None = None,
        by_time: bool = False,
        display_aspect: bool = False,
    ):
        self.path, self.stride, self.max_side = Path(path), stride, max_side
        self.reference_fps, self.by_time, self.display_aspect = reference_fps, by_time, display_aspect
        self.reported, self.fps, self.decoded = 0, 0.0, 0
        self.source_side = 0  # the header's longer side, before max_side
        self.step, self.aspect = float(stride), 1.0
        # grab() failures the stream went on after, and where the first was (frames decoded before it)
        self.skipped, self.first_skip = 0, None
        self.shape: tuple[int, ...] | None = None  # the first kept frame's
        self.timed: _ByTime | None = None
        # without frames.by_time, the frames' timestamps only place the end of the stream, so that a count
        # the header estimated (Matroska/WebM: duration x average rate) is not taken for a cut file
        self.clock: _ByTime | None = None
        self.capture = None

    def open(self) -> bool:
        # one decoding thread: FFmpeg's threaded decoders conceal a damaged packet differently from run to
        # run (two pixel sums in eight runs of one file), on one thread the same every time; clean files
        # decode to the same pixels either way, and the frames stage decodes several videos at once
        self.capture = cv2.VideoCapture(str(self.path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if not self.capture.isOpened():
            return False
        self.reported = max(int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.source_side = int(
            max(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH), self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        )
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) else 0.0
        self.step = sample_step(self.fps, self.stride, self.reference_fps)
        self.aspect = sample_aspect(self.capture) if self.display_aspect else 1.0
        if self.fps >= MAX_FPS:  # a tick, not a rate: the count derived from it is none either
            self.reported = 0
        if self.by_time and self.reference_fps is not None and self.fps > 0.0:
            # the timestamps give the times, so a millisecond tick (1000) is a unit they can be read in; a
            # finer tick (an MPEG-TS header's 90000) is read in milliseconds too
            unit = min(self.fps, MAX_FPS)
            frame = UNUSABLE_STEP if unit < MAX_FPS else MAX_FPS / self.reference_fps
            self.timed = _ByTime(self.stride * unit / self.reference_fps, unit, self.fps, frame)
        elif self.reported > 0 and usable_fps(self.fps):
            self.clock = _ByTime(self.step, self.fps)
        return True

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()

    @property
    def expected(self) -> int:
        """Kept frames if the header is right: the samples of :func:`sample_numbers`, distinct frames."""
        reported = self.reported
        return min(reported, math.ceil((reported - 0.5) / self.step)) if reported > 0 else 0

    def _checked(self, number: int, frame: np.ndarray) -> np.ndarray:
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            (h0, w0), (h, w) = self.shape[:2], frame.shape[:2]
            raise _SizeChanged(f"the frame size changes at frame {number} ({w0}x{h0}, then {w}x{h})")
        return frame

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        capture, timed, step, clock = self.capture, self.timed, self.step, self.clock
        max_side, aspect = self.max_side, self.aspect
        sample, pending = 0, None  # pending: the last frame while ``timed`` waits for the next timestamp
        while (failed := _grab(capture)) is not None:
            decoded = self.decoded
            if failed:
                self.skipped += failed
                self.first_skip = decoded if self.first_skip is None else self.first_skip
                if timed is not None and decoded:
                    timed.regular = False  # past a gap the frames are off their numbers: no sign of a rate
            if timed is not None:
                timed.place(decoded, capture.get(cv2.CAP_PROP_POS_MSEC))
                if pending is not None and (
                    count := timed.assign(decoded - 1, timed.limit_after(decoded - 1))
                ):
                    yield decoded - 1, self._checked(decoded - 1, _shrink(pending, max_side, aspect)), count
                pending = _retrieve(capture, None)  # shrunk only if kept: most frames are not
                if pending is None:
                    timed.places.pop()
                    break
                self.decoded += 1
                continue
            if clock is not None:
                clock.place(decoded, capture.get(cv2.CAP_PROP_POS_MSEC))
            if decoded == int(np.floor(sample * step + 0.5)):
                frame = _retrieve(capture, max_side, aspect)
                if frame is None:
                    if clock is not None:
                        clock.places.pop()  # not a decoded frame
                    break
                count = 0
                while int(np.floor(sample * step + 0.5)) <= decoded:  # samples this frame is nearest to
                    sample += 1
                    count += 1
                yield decoded, self._checked(decoded, frame), count
            self.decoded += 1
        decoded = self.decoded
        if pending is not None and (count := timed.assign(decoded - 1, timed.limit_of_last())):
            yield decoded - 1, self._checked(decoded - 1, _shrink(pending, max_side, aspect)), count

    def failure(self, err: cv2.error) -> str:
        """The reason a video OpenCV gave up on is skipped."""
        return f"OpenCV failed at frame {self.decoded}: {str(err).strip().splitlines()[-1]}"

    def nothing_decoded(self) -> str:
        why = f" (grab failed {self.skipped} times)" if self.skipped else ""
        return f"no frame could be decoded{why}"

    def notes(self) -> tuple[str, bool]:
        """What is odd about the decoded video (the reason of :class:`DecodedVideo`), and whether it is
        truncated; read after the last frame."""
        timed, decoded, reported, skipped = self.timed, self.decoded, self.reported, self.skipped
        notes = []
        if skipped:
            where = "at the start" if self.first_skip == 0 else f"from frame {self.first_skip} on"  # decoded
            notes.append(
                f"grab failed {skipped} time(s) {where} and the stream went on (packets that do not decode, or "
                "a long run of other streams' packets); the frames after are numbered as decoded"
                + (", sampled by their timestamps" if timed is not None else "")
            )
        # by timestamp, frames that reach the header's count are not a cut file though fewer decoded (skipped
        # packets; a Matroska/WebM count is the duration times an average rate): the span only clears the flag
        clock = timed if timed is not None else self.clock
        truncated = bool(
            reported
            and decoded < reported
            and (clock is None or not clock.places or clock.span() < reported - TIME_SNAP)
        )
        if truncated:
            notes.append(
                f"truncated: decoded {decoded} of the {reported} frames the header announces "
                f"({'the skipped packets, or ' if skipped else ''}a cut file or a wrong header); kept the "
                "decoded frames"
            )
        if self.aspect != 1.0 and self.shape is not None:
            height, width = self.shape[:2]
            notes.append(
                f"pixels not square (sample aspect ratio {self.aspect:.4g}): frames stretched to "
                f"{width}x{height}, as a player shows them"
            )
        if self.reference_fps is not None and not usable_fps(self.fps) and timed is None:
            notes.append(
                f"no usable frame rate in the header ({self.fps:g}); kept one frame in {self.stride}"
            )
        if timed is not None and (note := timed.note(decoded)):
            notes.append(note)
        if not reported:
            notes.append("the header gives no frame count: a cut file cannot be told from a whole one")
        return "; ".join(notes), truncated


def decode_video(
    path: Path,
    video_id: str,
    stride: int,
    max_side: int | None = None,
    reference_fps: float | None = None,
    by_time: bool = False,
    display_aspect: bool = False,
    pixels: str = "frames",
) -> DecodedVideo:
    """Decode all frames of ``path`` and keep the time samples of :func:`sample_numbers`.

    ``reference_fps`` None keeps every ``stride``-th frame (0, stride, 2*stride, ...); a number resamples by
    time (:func:`sample_step`). ``by_time`` (predict, and the frames stage with ``frames.by_time``): match the time samples to frames by
    each frame's timestamp (:class:`_ByTime`), not by its number at the header's rate, so a
    variable-frame-rate file is sampled evenly in time; the same frames for a constant-rate one. Every frame
    is then converted (the choice waits for the next frame's timestamp). ``max_side`` (``frames.max_side``,
    predict's ``--max-side``): kept frames whose longer side exceeds it are shrunk to it (area resampling,
    aspect kept) as they are decoded, so a 4K video holds a ninth of the memory at 1280 (``shrunk``). The
    kept
    frames are held once (:class:`_KeptFrames`); predict, which holds a segment at a time, iterates
    :class:`VideoStream` with the same arguments. ``pixels`` (the frames stage): ``"lz4"`` compresses the
    kept frames a chunk at a time as they are decoded into ``DecodedVideo.pixels`` and ``"none"`` drops them
    (:class:`_ChunkedFrames`); ``frames`` is then a view of one zero byte in their shape. ``display_aspect`` (predict only; the frames stage keeps the stored pixels): a
    stream whose pixels are not square (anamorphic: a sample aspect ratio other than 1) is stretched to the
    size a player shows (:func:`display_size`) before ``max_side`` applies, so a person is not squeezed.

    Zero-byte, unreadable and non-video files, and files of which no frame decodes, come back with
    ``frames=None`` and a reason. A file that decodes fewer frames than its container header announces
    (cut short, corrupt from some point on) keeps the frames it decoded and is flagged ``truncated``; by
    timestamp, only when its frames end before the header's count (Matroska's count is its duration times
    an average rate). Packets that do not decode are skipped (:func:`_grab`) and said in the reason; the
    frames after them are numbered as decoded (by timestamp, sampled by their timestamps).
    """
    empty = np.zeros(0, dtype=np.int32)
    if reason := unreadable(path):
        return DecodedVideo(video_id, None, empty, 0, 0, 0.0, reason)
    stream = VideoStream(path, stride, max_side, reference_fps, by_time, display_aspect)
    try:
        if not stream.open():
            return DecodedVideo(
                video_id, None, empty, 0, 0, 0.0, "not a readable video (OpenCV cannot open it)"
            )
        if pixels == "frames":
            kept = _KeptFrames(stream.expected)
        else:
            kept = _ChunkedFrames(stream.expected, compress=pixels == PIXEL_CODEC)
        for number, frame, _ in stream:
            kept.add(frame, number)
    except _SizeChanged as err:
        return DecodedVideo(video_id, None, empty, stream.decoded, stream.reported, stream.fps, str(err))
    except cv2.error as err:  # a stream OpenCV gives up on: this video is skipped, the stage goes on
        reason = stream.failure(err)
        return DecodedVideo(video_id, None, empty, stream.decoded, stream.reported, stream.fps, reason)
    finally:
        stream.close()
    decoded, reported, fps = stream.decoded, stream.reported, stream.fps
    if decoded == 0 or not kept.numbers:
        return DecodedVideo(video_id, None, empty, decoded, reported, fps, stream.nothing_decoded())
    reason, truncated = stream.notes()
    frame_idx = np.asarray(kept.numbers, np.int32)
    frames, stored = kept.finish()
    shrunk = max_side is not None and max(frames.shape[1:3]) < stream.source_side
    samples = np.asarray(stream.timed.samples, np.int64) if stream.timed is not None else None
    return DecodedVideo(
        video_id,
        frames,
        frame_idx,
        decoded,
        reported,
        fps,
        reason,
        stream.step,
        truncated,
        samples,
        shrunk,
        stored,
    )


FIRST_ALLOCATION = 2**30  # bytes: the most a header's frame count may reserve before any frame is decoded


def _room_for(kept: np.ndarray | None, n: int, shape: tuple[int, ...], expected: int) -> np.ndarray:
    """``kept`` (frames, H, W, 3) with room for frame ``n`` of ``shape`` (the first frame's): created for
    ``expected`` frames, or doubled when the header announced fewer (none, or a wrong count)."""
    if kept is None:
        return np.empty((max(expected, 1), *shape), np.uint8)
    if n < len(kept):
        return kept
    grown = np.empty((2 * len(kept), *shape), np.uint8)
    grown[:n] = kept
    return grown


PIXEL_CODEC = "lz4"  # LZ4 frame: ~2.5x smaller than raw on KTH-like frames, several times faster than zstd


def _decoded_in_order(
    jobs: list[tuple[Path, str]],
    stride: int,
    reference_fps: float | None,
    workers: int,
    compress: bool = True,
    by_time: bool = False,
    max_side: int | None = None,
) -> Iterator:
    """:func:`decode_video` over ``jobs`` on a thread pool, results in job order, few videos in flight: the
    kept frames compressed a chunk at a time as they are decoded (both release the GIL, so workers run in
    parallel); without ``compress`` (``frames.store: source``) only the decoding, for the tables.
    ``by_time``, ``max_side``: ``frames.by_time``, ``frames.max_side``."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for path, video_id in jobs:
                pending.append(
                    pool.submit(
                        decode_video,
                        path,
                        video_id,
                        stride,
                        max_side,
                        reference_fps=reference_fps,
                        by_time=by_time,
                        pixels=PIXEL_CODEC if compress else "none",
                    )
                )
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (an error, Ctrl-C): do not decode the queued videos
            for future in pending:
                future.cancel()


VIDEO_COLUMNS = (
    "video_id", "status", "reason", "frames_decoded", "frames_reported", "frames_kept", "samples", "step",
    "truncated", "width", "height", "fps", "short", "shard", "row_group", "shrunk",
)  # fmt: skip
FRAME_COLUMNS = ("video_id", "frame_idx", "width", "height", "fps")


@contextlib.contextmanager
def _shard_writer(path: Path) -> Iterator[pq.ParquetWriter]:
    """The Parquet writer of one shard: one row group per decoded video (the pixels arrive compressed)."""
    with pq.ParquetWriter(
        path,
        SHARD_SCHEMA,
        compression={name: "zstd" for name in SHARD_SCHEMA.names} | {"pixels": "none"},
        use_dictionary=False,
        write_statistics=False,
    ) as writer:
        yield writer


def _write_video(writer: pq.ParquetWriter, video: DecodedVideo, pixels: list[pa.Buffer]) -> None:
    """One decoded video as one row group of its shard, a row per compressed chunk of :class:`_ChunkedFrames`."""
    _, h, w, _ = video.frames.shape
    step, n = frames_per_chunk(h, w), len(pixels)
    table = pa.table(
        {
            "video_id": [video.video_id] * n,
            "frame_idx": [video.frame_idx[k * step : (k + 1) * step].tolist() for k in range(n)],
            "height": [h] * n,
            "width": [w] * n,
            "codec": [PIXEL_CODEC] * n,
            "pixels": pa.chunked_array([_blob(data) for data in pixels], pa.large_binary()),
        },
        schema=SHARD_SCHEMA,
    )
    writer.write_table(table, row_group_size=n)  # one call, one row group a video


def _video_row(video: DecodedVideo, shard: int, row_group: int, clip_length: int) -> dict:
    ok = video.frames is not None
    t, h, w = video.frames.shape[:3] if ok else (0, 0, 0)
    samples = video.sample_frames() if ok else np.zeros(0, np.int64)
    return {
        "video_id": video.video_id,
        "status": "ok" if ok else "skipped",
        "reason": video.reason,
        "frames_decoded": video.frames_decoded,
        "frames_reported": video.frames_reported,
        "frames_kept": t,
        "samples": len(samples),
        "step": float(video.step),
        "truncated": video.truncated,
        "shrunk": video.shrunk,
        "width": w,
        "height": h,
        "fps": video.fps,
        "short": ok and len(samples) < clip_length,
        "shard": shard if ok else -1,
        "row_group": row_group if ok else -1,
        "frame_idx": video.frame_idx.tolist(),
        "sample_idx": samples.tolist(),  # videos.parquet keeps it with frames.by_time only
    }


def extract_frames(
    index: pd.DataFrame,
    root: Path,
    out_dir: Path,
    stride: int,
    clip_length: int,
    videos_per_shard: int,
    progress: bool = True,
    workers: int | None = None,
    reference_fps: float | None = None,
    store: str = "pixels",
    by_time: bool = False,
    max_side: int | None = None,
) -> dict:
    """Decode every video of ``index`` (columns video_id, path) under ``root`` into ``out_dir``.

    Shard ``n`` holds the decodable videos among index rows ``n * videos_per_shard`` to
    ``(n + 1) * videos_per_shard - 1`` (no file when there are none). Finished shards are kept in
    ``.partial/`` beside ``out_dir`` (:class:`~transmodal.io.Resumable`) until the whole output is written, so
    a run interrupted after some shards resumes from the first unfinished one and writes the same bytes.
    ``workers`` decode-and-compress threads (default: one per CPU core). ``reference_fps``: see
    :func:`sample_step`. ``store``: ``pixels`` writes the shards, ``source`` writes ``sources.parquet``
    instead (module docstring). ``by_time`` (``frames.by_time``): the time samples are matched to frames by
    their timestamps (:class:`_ByTime`), so a variable-frame-rate file is sampled evenly in time, and
    ``videos.parquet`` gets each video's ``sample_idx`` (the frame number of each sample); a constant-rate
    file keeps the same frames either way. ``max_side`` (``frames.max_side``): frames whose longer side
    exceeds it are kept shrunk to it (None: at the source's size). Returns the summary written to
    ``metrics/frames.json``.
    """
    if store not in FRAME_STORES:
        raise ValueError(f"frames.store must be one of {FRAME_STORES}, not {store!r}")
    keep_pixels = store == "pixels"
    jobs = [(Path(root) / rel, vid) for vid, rel in zip(index["video_id"], index["path"], strict=True)]
    workers = workers or max(1, os.cpu_count() or 1)
    chunks = [jobs[start : start + videos_per_shard] for start in range(0, len(jobs), videos_per_shard)]
    parts = Resumable(
        out_dir,
        {
            "code": source_digest(__file__),
            "stride": stride,
            "reference_fps": reference_fps,
            "clip_length": clip_length,
            "videos_per_shard": videos_per_shard,
            "store": store,
            **({"by_time": True} if by_time else {}),
            **({"max_side": max_side} if max_side is not None else {}),
            "videos": [(vid, str(path), file_signature(path)) for path, vid in jobs],
        },
    )
    todo = [n for n in range(len(chunks)) if not parts.has(_rows_name(n))]
    parts.resumed = len(chunks) - len(todo)
    if parts.resumed and progress:
        print(f"frames: resuming, {parts.resumed} of {len(chunks)} shards already done in {parts.directory}")
    decoded = _decoded_in_order(
        [job for n in todo for job in chunks[n]],
        stride,
        reference_fps,
        workers,
        compress=keep_pixels,
        by_time=by_time,
        max_side=max_side,
    )
    with (
        contextlib.closing(decoded),
        tqdm(total=len(jobs), desc="frames", unit="video", disable=not progress) as bar,
    ):
        bar.update(sum(len(chunks[n]) for n in range(len(chunks)) if n not in set(todo)))
        for n in todo:
            # each video goes into its shard as it arrives (one row group), so the stage holds the few
            # videos in flight, not a whole shard; the shard's file appears with its first decodable video
            rows, group = [], 0
            with contextlib.ExitStack() as shard:
                writer = None
                for _ in chunks[n]:
                    video = next(decoded)
                    if video.frames is not None and keep_pixels:
                        if writer is None:
                            writer = shard.enter_context(
                                _shard_writer(shard.enter_context(parts.writing(_shard_name(n))))
                            )
                        _write_video(writer, video, video.pixels)
                        video.pixels = None
                    rows.append(_video_row(video, n, group, clip_length))
                    group += video.frames is not None
                    bar.update(1)
            write_parquet(pd.DataFrame(rows), parts.path(_rows_name(n)))  # last: marks the shard done
    rows = [pd.read_parquet(parts.path(_rows_name(n))) for n in range(len(chunks))]
    table = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=[*VIDEO_COLUMNS, "frame_idx", "sample_idx"])
    )
    columns = [*VIDEO_COLUMNS, "sample_idx"] if by_time else list(VIDEO_COLUMNS)
    videos = table[columns].astype({"truncated": bool, "short": bool, "shrunk": bool})
    ok = table[table["status"] == "ok"]
    frames = pd.DataFrame(
        {
            "video_id": np.repeat(ok["video_id"].to_numpy(), ok["frames_kept"].to_numpy(np.int64)),
            "frame_idx": np.concatenate([np.asarray(f, np.int32) for f in ok["frame_idx"]] or [[]]).astype(
                np.int32
            ),
            "width": np.repeat(ok["width"].to_numpy(np.int32), ok["frames_kept"].to_numpy(np.int64)),
            "height": np.repeat(ok["height"].to_numpy(np.int32), ok["frames_kept"].to_numpy(np.int64)),
            "fps": np.repeat(ok["fps"].to_numpy(np.float32), ok["frames_kept"].to_numpy(np.int64)),
        },
        columns=list(FRAME_COLUMNS),
    )
    with atomic_dir(out_dir) as tmp:
        for n in sorted(set(ok["shard"].astype(int))) if keep_pixels else []:
            parts.move(_shard_name(n), tmp / _shard_name(n))
        write_parquet(videos, tmp / "videos.parquet")
        write_parquet(frames, tmp / "frames.parquet")
        if not keep_pixels:
            write_parquet(
                _sources(jobs, ok["video_id"], stride, reference_fps, by_time, max_side), tmp / SOURCES_FILE
            )
    parts.discard()
    skipped = videos[videos["status"] == "skipped"]
    flagged = videos[(videos["status"] == "ok") & (videos["reason"] != "")]
    return {
        "videos": int(len(videos)),
        "videos_ok": int((videos["status"] == "ok").sum()),
        "videos_skipped": int(len(skipped)),
        "videos_short": int(videos["short"].sum()),
        "videos_truncated": int(videos["truncated"].sum()),
        "videos_shrunk": int(videos["shrunk"].sum()),
        "videos_resampled": int(((videos["status"] == "ok") & (videos["step"] != float(stride))).sum()),
        "frames_kept": int(videos["frames_kept"].sum()),
        "stride": stride,
        "reference_fps": reference_fps,
        "store": store,
        **({"by_time": True} if by_time else {}),
        "max_side": max_side,
        "skipped": [
            {"video_id": v, "reason": r} for v, r in zip(skipped["video_id"], skipped["reason"], strict=True)
        ],
        "flagged": [
            {"video_id": v, "reason": r} for v, r in zip(flagged["video_id"], flagged["reason"], strict=True)
        ],
    }


SOURCES_FILE = "sources.parquet"


def _sources(
    jobs: list[tuple[Path, str]],
    decoded,
    stride: int,
    reference_fps: float | None,
    by_time: bool = False,
    max_side: int | None = None,
) -> pd.DataFrame:
    """``sources.parquet`` of ``frames.store: source``: where each decoded video is read from again (and,
    with ``frames.by_time`` or ``frames.max_side``, a ``by_time`` or ``max_side`` column: how)."""
    path_of = {video_id: path for path, video_id in jobs}
    paths = [path_of[video_id] for video_id in decoded]
    table = pd.DataFrame(
        {
            "video_id": list(decoded),
            "path": [path.as_posix() for path in paths],
            "size_bytes": [path.stat().st_size for path in paths],
            "sha256": [_sha256(path) for path in paths],
            "stride": stride,
            "reference_fps": np.nan if reference_fps is None else float(reference_fps),
        },
        columns=["video_id", "path", "size_bytes", "sha256", "stride", "reference_fps"],
    )
    if by_time:
        table["by_time"] = True
    if max_side is not None:
        table["max_side"] = max_side
    return table


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


READ_BUFFER = 2**20  # bytes: FrameStore reads a shard through a buffer of this size, a row at a time


def _shard_name(n: int) -> str:
    return f"shard-{n:05d}.parquet"


def _rows_name(n: int) -> str:
    return f"shard-{n:05d}.videos.parquet"


def _blob(data: pa.Buffer) -> pa.LargeBinaryArray:
    """One large-binary value viewing ``data`` (no copy of the pixels)."""
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, data])


class FrameStore:
    """Read access to ``data/frames/``: ``store.read(video_id) -> (frame_idx (T,), frames (T, H, W, 3) uint8 RGB)``.

    ``read`` may be called from several threads: each call opens the shard, streams its video's rows and
    closes it, so nothing of a video read stays in memory after the call (a reader kept open per shard holds
    on to its last row group: memory then grows with the number of shards). The decompression (most of the
    cost, GIL released) runs in parallel. :meth:`iter_chunks` gives a video a stored chunk at a time, for a
    caller that need not hold it whole (the detect and pose stages). A store written with
    ``frames.store: source`` decodes the video from its source file instead (module docstring).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.videos = pd.read_parquet(self.directory / "videos.parquet")
        self.frames = pd.read_parquet(self.directory / "frames.parquet")
        ok = self.videos[self.videos["status"] == "ok"]
        self._where = {
            v: (int(s), int(g)) for v, s, g in zip(ok["video_id"], ok["shard"], ok["row_group"], strict=True)
        }
        self._shape = {
            v: (int(t), int(h), int(w), 3)
            for v, t, h, w in zip(ok["video_id"], ok["frames_kept"], ok["height"], ok["width"], strict=True)
        }
        self.sources: pd.DataFrame | None = None
        if (self.directory / SOURCES_FILE).exists():
            self.sources = pd.read_parquet(self.directory / SOURCES_FILE).set_index("video_id")
            by_video = self.frames.groupby("video_id", sort=False)["frame_idx"]
            self._frame_idx = {v: idx.to_numpy(np.int64) for v, idx in by_video}

    @property
    def video_ids(self) -> list[str]:
        """Videos that decoded, in index order."""
        return list(self._where)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._where

    def read(
        self, video_id: str, first: int | None = None, last: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Kept frames of one video: original frame numbers (T,) and pixels (T, H, W, 3) uint8 RGB; all of
        them, or with ``first``/``last`` (original frame numbers) only the stored chunks that hold frames
        between the two (more frames than asked for, never fewer): a run of a long video's clips reads its
        part of the video, not the whole."""
        shape = self._shape[video_id]
        numbers, parts, frames, start = [], [], None, 0
        for frame_idx, part in self.iter_chunks(video_id, first, last):
            if len(part) == shape[0]:  # the whole video in one chunk: as decompressed, no copy
                return frame_idx, part
            numbers.append(frame_idx)
            if first is None and last is None:  # the whole video: each chunk copied into place, let go
                frames = np.empty(shape, np.uint8) if frames is None else frames
                frames[start : start + len(part)] = part
                start += len(part)
            else:  # a range: its few chunks, joined below
                parts.append(part)
        if frames is None:
            frames = np.concatenate(parts) if parts else np.empty((0, *shape[1:]), np.uint8)
        return (np.concatenate(numbers) if numbers else np.zeros(0, np.int64)), frames

    def iter_chunks(
        self, video_id: str, first: int | None = None, last: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One video's kept frames a stored chunk (:data:`CHUNK_BYTES` raw) at a time, in order, as
        ``(frame_idx (n,), frames (n, H, W, 3))``; with ``first``/``last`` only the chunks holding frames
        between the two (the chunks before them are read off the disk but not decompressed). The shard is streamed a row at a time (Parquet's buffered reads): a long video is
        never in memory whole, raw or compressed (reading a row group holds it compressed, and more). A
        ``frames.store: source`` store decodes the whole video once and yields it as one chunk."""
        if video_id not in self._where:
            raise KeyError(
                f"video {video_id!r} has no decoded frames (see {self.directory / 'videos.parquet'})"
            )
        if self.sources is not None:
            yield self._decode_source(video_id)
            return
        shard, group = self._where[video_id]
        with pq.ParquetFile(
            self.directory / _shard_name(shard), pre_buffer=False, buffer_size=READ_BUFFER
        ) as file:
            for row in file.iter_batches(batch_size=1, row_groups=[group], use_threads=False):
                frame_idx = row.column("frame_idx").flatten().to_numpy().astype(np.int64)
                if last is not None and frame_idx[0] > last:
                    break  # the chunks hold increasing frame numbers: none after this one is wanted
                if first is not None and frame_idx[-1] < first:
                    continue  # read off the disk (a row at a time), not decompressed
                h, w = row.column("height")[0].as_py(), row.column("width")[0].as_py()
                shape = (len(frame_idx), h, w, 3)
                pixels = pa.Codec(row.column("codec")[0].as_py()).decompress(
                    row.column("pixels")[0].as_buffer(), decompressed_size=math.prod(shape)
                )
                yield frame_idx, np.frombuffer(pixels, dtype=np.uint8).reshape(shape)

    def _decode_source(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        source = self.sources.loc[video_id]
        path = Path(source["path"])
        same = (
            path.is_file()
            and path.stat().st_size == int(source["size_bytes"])
            and _sha256(path) == source["sha256"]
        )
        reference_fps = None if pd.isna(source["reference_fps"]) else float(source["reference_fps"])
        video = None
        if same:
            by_time = bool(source.get("by_time", False))
            max_side = source.get("max_side")
            video = decode_video(
                path,
                video_id,
                int(source["stride"]),
                None if max_side is None or pd.isna(max_side) else int(max_side),
                reference_fps=reference_fps,
                by_time=by_time,
            )
        if (
            video is None
            or video.frames is None
            or video.frames.shape != self._shape[video_id]
            or not np.array_equal(video.frame_idx, self._frame_idx[video_id])
        ):
            raise StageInputError(
                f"{path}: the source video of {video_id!r} is missing or changed, or decodes to other frames "
                f"than the frames stage recorded (another OpenCV or FFmpeg build?; frames.store: source reads "
                f"it again); re-run `dvc repro frames`"
            )
        return video.frame_idx.astype(np.int64), video.frames
