"""A bad- and odd-input video corpus in the KTH layout, generated on the fly (a test helper: no binaries).

:func:`build_corpus` writes ``<root>/<action>/personNN_<action>_dS_uncomp.avi`` files that are broken or odd
(see :data:`ODD`), a ``00sequences.txt`` in KTH's format and an ``annotations.parquet`` with the synthetic
renderer's ground truth of the rendered ones. :func:`build_mixed_tree` adds ordinary synthetic videos of two
actions on subjects of every part of the KTH ``paper`` split (train 1-16, val 17, test 18-25), so that
``index_kth(root, "paper")`` gives a dataset a pipeline can learn from, with the odd files mixed in.

Every usable video shows a person from :func:`transmodal.data.synth.render_video` (160x120 grey, 25 fps,
seeded, so the corpus is identical on every run); the odd ones are written in colour (a slight tint makes
the channels differ) except the ``grey`` one, and resized / cropped / resampled for the size and frame-rate
cases. Only the ordinary (``good``) videos use scenario ``d1``; the odd ones use d2-d4, so the two never
share a (subject, action, scenario) file name.

The manifest, ``{relative POSIX path: entry}``, has one entry per file written (good videos included,
``kind == "good"``). Every entry has ``kind``, ``expect`` (``"usable"``: decodes to at least one frame and
is indexed; ``"unusable"``: no frame decodes, or the indexer does not index it) and ``why``; video entries
also have ``frames`` (frames written, the true count), ``fps``, ``size`` ([width, height]), ``people`` (0, 1
or 2), ``listed`` (in 00sequences.txt) and, where the header disagrees with what decodes,
``header_frames`` (the count ``CAP_PROP_FRAME_COUNT`` reports).

What OpenCV 4.x with its FFmpeg backend reports here (checked by tests/test_corpus.py):

- ``truncated``: a 60-frame MJPG AVI cut at half its bytes (no ``idx1`` index left). The count comes from
  the header at the start of the file, so CAP_PROP_FRAME_COUNT still says 60; 30 frames decode.
- ``wrong_header``: FFmpeg's AVI demuxer takes the stream's frame count from the video ``strh`` dwLength
  (``AVStream.nb_frames``), not from ``avih`` dwTotalFrames nor from the ``idx1`` entries: patching avih
  alone leaves the reported count at the real one; patching strh makes it report the patched number. Both
  (and an OpenDML ``dmlh``, if there were one) are patched to 3x the real count; all frames still decode.
- ``grey``: written with ``VideoWriter(..., isColor=False)`` through the FFmpeg backend. That backend still
  encodes MJPG as 3-component yuvj420p (CAP_PROP_CODEC_PIXEL_FORMAT reports ``I420``) with neutral chroma,
  so frames decode with three equal channels. OpenCV's built-in writer (``cv2.CAP_OPENCV_MJPEG``) writes
  true 1-component JPEGs (``Y800``), but FFmpeg decodes those with errors here (mean error ~120 grey
  levels), so it is not used.
- Zero-byte, random-bytes and text ``.avi`` files: ``VideoCapture`` does not open them.
"""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from transmodal.data.coco import joint_columns
from transmodal.data.synth import (
    ANNOTATION_COLUMNS,
    ANNOTATIONS_FILE,
    FPS,
    HEIGHT,
    SEQUENCES_FILE,
    WIDTH,
    VideoSpec,
    _render,
    format_sequences,
    render_video,
    sequence_ranges,
    write_avi,
)
from transmodal.io import write_parquet
from transmodal.params import KTH_ACTIONS

SEED = 0
GOOD_SUBJECTS = (1, 2, 3, 17, 18, 19)  # paper split: 1-3 train, 17 val, 18-19 test
GOOD_ACTIONS = ("boxing", "walking")
GOOD_SCENARIO = "d1"
GOOD_FRAMES = 80
ODD_FRAMES = 60

# kind -> (subject, action, scenario) of its KTH file name. Subjects 1-3 are paper-split train, 18-19 test.
ODD: dict[str, tuple[int, str, str]] = {
    "zero_byte": (1, "boxing", "d2"),
    "text": (1, "walking", "d2"),
    "wrong_header": (2, "boxing", "d2"),
    "short_clip": (2, "walking", "d2"),
    "portrait": (3, "boxing", "d2"),
    "fps_10": (3, "walking", "d2"),
    "two_people": (1, "boxing", "d3"),
    "truncated": (18, "boxing", "d2"),
    "random_bytes": (18, "walking", "d2"),
    "hd_1080p": (19, "boxing", "d2"),
    "one_frame": (19, "walking", "d2"),
    "grey": (18, "boxing", "d3"),
    "fps_30": (18, "walking", "d3"),
    "no_person": (19, "boxing", "d3"),
}
# Odd usable videos listed in 00sequences.txt; the others are left for the indexer's "unlisted" path.
LISTED = ("truncated", "wrong_header", "portrait", "grey", "fps_10", "two_people")
# Named like KTH videos, but with an action KTH does not have: in a known folder, and in a folder of its own.
UNKNOWN_ACTION_FILES = {
    "unknown_action": "boxing/person05_kicking_d1_uncomp.avi",
    "unknown_action_folder": "kicking/person05_kicking_d1_uncomp.avi",
}
HEADER_FACTOR = 3  # the wrong header claims this many times the real frame count

_KTH_PATH = re.compile(
    r"(?P<action>[a-z]+)/person(?P<subject>\d{2})_(?P=action)_(?P<scenario>d[1-4])_uncomp\.avi"
)
_TINT = np.array([0.86, 1.0, 1.12])  # BGR gains: a slight colour cast, so the channels differ
_NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    "<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n"
)


def kth_path(subject: int, action: str, scenario: str) -> str:
    """``<action>/personNN_<action>_dS_uncomp.avi``, relative to the dataset root."""
    return f"{action}/person{subject:02d}_{action}_{scenario}_uncomp.avi"


@dataclass
class _Video:
    """A rendered video to write: frames, ground truth, 00sequences ranges (None: not listed)."""

    spec: VideoSpec
    frames: np.ndarray  # (T, H, W) grey or (T, H, W, 3) BGR uint8
    rows: pd.DataFrame | None
    ranges: list[tuple[int, int]] | None
    entry: dict = field(default_factory=dict)
    fps: float = float(FPS)


# ------------------------------------------------------------------------------------------ public API


def build_corpus(root: Path, good: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """Write the odd files (and ``good``, {KTH relative path: (T, H, W[, 3]) uint8 frames}) under ``root``.

    ``root`` may hold spaces and non-ASCII characters. Good videos are written with the project's
    :func:`~transmodal.data.synth.write_avi` at 25 fps and listed in 00sequences.txt as one range covering
    every frame; they have no ground truth. Returns the manifest (see the module docstring).
    """
    videos = []
    for rel, frames in (good or {}).items():
        match = _KTH_PATH.fullmatch(rel)
        if match is None or match["action"] not in KTH_ACTIONS:
            raise ValueError(f"good video {rel!r} is not named <action>/personNN_<action>_dS_uncomp.avi")
        frames = np.asarray(frames)
        spec = VideoSpec(int(match["subject"]), match["action"], match["scenario"], len(frames), SEED)
        videos.append(_Video(spec, frames, None, [(1, len(frames))]))
    return _build(Path(root), videos)


def build_mixed_tree(
    root: Path,
    subjects: Iterable[int] = GOOD_SUBJECTS,
    actions: Iterable[str] = GOOD_ACTIONS,
    frames: int = GOOD_FRAMES,
) -> dict[str, dict]:
    """The odd corpus plus ordinary synthetic videos (scenario d1) of ``actions`` x ``subjects``.

    The default subjects put both actions in every part of the paper split (1-3 train, 17 val, 18-19
    test). The good videos are listed in 00sequences.txt with the renderer's own ranges (as
    ``transmodal.data.synth.generate`` writes them) and have ground truth in annotations.parquet.
    """
    videos = []
    for subject in subjects:
        for action in actions:
            spec = VideoSpec(subject, action, GOOD_SCENARIO, frames, SEED)
            grey, rows = render_video(spec)
            videos.append(_Video(spec, grey[..., 0], rows, sequence_ranges(spec, rows) or None))
    return _build(Path(root), videos)


def avi_header_counts(path: Path) -> dict[str, int]:
    """The frame counts an AVI header claims: ``avih`` dwTotalFrames, video ``strh`` dwLength, ``dmlh``."""
    data = Path(path).read_bytes()
    return {name: struct.unpack_from("<I", data, offset)[0] for name, offset in _count_fields(data)}


def patch_avi_frame_count(path: Path, count: int, only: Iterable[str] | None = None) -> list[str]:
    """Overwrite the frame counts of an AVI header (all, or those named in ``only``, e.g.
    ``["strh.dwLength"]``) with ``count``; returns the fields patched."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    fields = _count_fields(bytes(data))
    if only is not None:
        fields = [(name, offset) for name, offset in fields if name in set(only)]
    for _, offset in fields:
        struct.pack_into("<I", data, offset, count)
    path.write_bytes(bytes(data))
    return [name for name, _ in fields]


# ------------------------------------------------------------------------------------------- building


def _build(root: Path, good: list[_Video]) -> dict[str, dict]:
    good_paths = [kth_path(v.spec.subject, v.spec.action, v.spec.scenario) for v in good]
    if len(set(good_paths)) < len(good_paths):
        raise ValueError(f"a good video is given twice: {sorted(good_paths)}")
    for kind, name in ODD.items():
        if kth_path(*name) in good_paths:
            raise ValueError(
                f"{kth_path(*name)} ({kind}) collides with a good video; good videos use scenario d1"
            )
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict] = {}
    rendered: list[_Video] = []

    for video, rel in zip(good, good_paths, strict=True):
        write_avi(video.frames, root / rel)
        manifest[rel] = {
            "kind": "good",
            "expect": "usable",
            "why": "an ordinary synthetic video",
            **_video_facts(video, people=None if video.rows is None else 1),
        }
        rendered.append(video)

    for kind, (subject, action, scenario) in ODD.items():
        rel = kth_path(subject, action, scenario)
        spec = VideoSpec(subject, action, scenario, ODD_FRAMES, SEED)
        entry, video = _ODD_WRITERS[kind](root / rel, spec)
        manifest[rel] = {"kind": kind, **entry}
        if video is None:
            manifest[rel]["listed"] = False
        else:
            if kind in LISTED:
                ranges = (
                    [(1, video.spec.num_frames)]
                    if video.rows is None
                    else sequence_ranges(video.spec, video.rows)
                )
                video.ranges = ranges or None
            manifest[rel].update(_video_facts(video, people=entry.get("people", 1)), **video.entry)
            rendered.append(video)

    # The unknown-action files hold a proper video: only their names keep them out of the index.
    frames, _ = render_video(VideoSpec(5, "boxing", "d1", 40, SEED))
    source = None
    for kind, rel in UNKNOWN_ACTION_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            write_avi(frames, target)
            source = target
        else:
            shutil.copyfile(source, target)
        manifest[rel] = {
            "kind": kind,
            "expect": "unusable",
            "why": "named like a KTH video but 'kicking' is no KTH action: index_kth does not index it",
            "frames": 40,
            "fps": float(FPS),
            "size": [WIDTH, HEIGHT],
            "people": 1,
            "listed": False,
        }

    listed = sorted(
        (v for v in rendered if v.ranges), key=lambda v: (v.spec.subject, v.spec.action, v.spec.scenario)
    )
    text = format_sequences((v.spec, v.ranges) for v in listed)
    (root / SEQUENCES_FILE).write_bytes(text.encode("ascii"))
    tables = [v.rows for v in rendered if v.rows is not None and len(v.rows)]
    annotations = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ANNOTATION_COLUMNS)
    annotations = annotations.sort_values(["video_id", "frame_idx", "person"], ignore_index=True)
    write_parquet(annotations[list(ANNOTATION_COLUMNS)], root / ANNOTATIONS_FILE)
    return manifest


def _video_facts(video: _Video, people: int | None) -> dict:
    """The manifest facts of a written video (``people`` None: unknown, frames given by the caller)."""
    frames = video.frames
    return {
        "frames": len(frames),
        "fps": video.fps,
        "size": [int(frames.shape[2]), int(frames.shape[1])],
        "people": people,
        "listed": video.ranges is not None,
    }


def _write(
    path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: float, is_color: bool
) -> None:
    """Stream frames into an MJPG .avi (so a 1080p video never sits in memory whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), size, is_color)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()


def _tint(grey: np.ndarray) -> np.ndarray:
    """(..., H, W) grey -> (..., H, W, 3) BGR with a slight colour cast."""
    return np.clip(np.round(grey[..., None] * _TINT), 0, 255).astype(np.uint8)


def _render_tinted(path: Path, spec: VideoSpec, fps: float = float(FPS)) -> _Video:
    grey, rows = render_video(spec)
    video = _Video(spec, _tint(grey[..., 0]), rows, None, fps=fps)
    _write(path, video.frames, (WIDTH, HEIGHT), fps, True)
    return video


# ------------------------------------------------------------------------------------ the odd files
# Each writer: (path, spec of the file's name with ODD_FRAMES frames) -> (manifest entry, rendered video or
# None). The entry's "people" overrides the default of 1.


def _zero_byte(path: Path, spec: VideoSpec) -> tuple[dict, None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return {"expect": "unusable", "why": "an empty file", "frames": 0}, None


def _random_bytes(path: Path, spec: VideoSpec) -> tuple[dict, None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng([SEED, 0xBAD]).integers(0, 256, 65536, dtype=np.uint8).tobytes())
    return {"expect": "unusable", "why": "64 KiB of random bytes: no container", "frames": 0}, None


def _text(path: Path, spec: VideoSpec) -> tuple[dict, None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_NOT_FOUND_PAGE * 8, encoding="ascii")
    return {
        "expect": "unusable",
        "why": "an HTML 404 page saved as .avi (a failed download)",
        "frames": 0,
    }, None


def _truncated(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    video = _render_tinted(path, spec)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header (with the counts) is at the start: it survives
    video.entry = {"header_frames": spec.num_frames}
    why = (
        f"a {spec.num_frames}-frame MJPG AVI cut at half its bytes: about half the frames decode (its "
        "00sequences.txt ranges run past them)"
    )
    return {"expect": "usable", "why": why}, video


def _wrong_header(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    spec = replace(spec, num_frames=40)
    video = _render_tinted(path, spec)
    claimed = HEADER_FACTOR * spec.num_frames
    fields = patch_avi_frame_count(path, claimed)
    video.entry = {"header_frames": claimed}
    why = f"header ({', '.join(fields)}) claims {claimed} frames; all {spec.num_frames} real frames decode"
    return {"expect": "usable", "why": why}, video


def _one_frame(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    video = _render_tinted(path, replace(spec, num_frames=1))
    return {"expect": "usable", "why": "a single frame: far shorter than one clip"}, video


def _short_clip(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    video = _render_tinted(path, replace(spec, num_frames=10))
    why = "10 frames at 25 fps: shorter than one clip (16 kept frames at stride 2 = 32 source frames)"
    return {"expect": "usable", "why": why}, video


def _hd_1080p(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    # 160x120 scaled 9x to 1440x1080, centred on 1920x1080 with the edge columns repeated (pillarbox).
    spec = replace(spec, num_frames=40)
    grey, rows = render_video(spec)
    scale, pad = 1080 / HEIGHT, (1920 - round(WIDTH * 1080 / HEIGHT)) // 2

    def frames() -> Iterator[np.ndarray]:
        for frame in _tint(grey[..., 0]):
            big = cv2.resize(frame, (1920 - 2 * pad, 1080), interpolation=cv2.INTER_LINEAR)
            yield cv2.copyMakeBorder(big, 0, 0, pad, pad, cv2.BORDER_REPLICATE)

    _write(path, frames(), (1920, 1080), FPS, True)
    rows = _transform(rows, scale=scale, dx=pad, dy=0, size=(1920, 1080))
    # The frames were streamed to disk; a zero-channel stand-in keeps their shape for the manifest.
    video = _Video(spec, np.empty((spec.num_frames, 1080, 1920, 0), np.uint8), rows, None)
    return {"expect": "usable", "why": "1920x1080 (a 160x120 render scaled up and pillarboxed)"}, video


def _portrait(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    # The centre 90x120 of the render (the in-place actor stands near the middle) scaled 4/3 to 120x160.
    grey, rows = render_video(spec)
    x0 = (WIDTH - 90) // 2
    frames = np.stack([cv2.resize(f[:, x0 : x0 + 90], (120, 160)) for f in _tint(grey[..., 0])])
    _write(path, frames, (120, 160), FPS, True)
    rows = _transform(rows, scale=4 / 3, dx=-x0 * 4 / 3, dy=0, size=(120, 160))
    return {"expect": "usable", "why": "portrait 120x160 (width 120, height 160)"}, _Video(
        spec, frames, rows, None
    )


def _grey(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    grey, rows = render_video(spec)
    video = _Video(spec, grey[..., 0], rows, None)
    _write(path, video.frames, (WIDTH, HEIGHT), FPS, False)
    why = "written with VideoWriter(isColor=False); decodes to three equal channels"
    return {"expect": "usable", "why": why}, video


def _resampled(path: Path, spec: VideoSpec, fps: float) -> tuple[dict, _Video]:
    # 3 s of real time: render 75 frames at 25 fps and keep the nearest one for each frame at ``fps``.
    source = replace(spec, num_frames=3 * FPS)
    grey, rows = render_video(source)
    out = int(3 * fps)
    frame_map = np.minimum(np.round(np.arange(out) * FPS / fps).astype(int), source.num_frames - 1)
    rows = _transform(rows, frame_map=frame_map)
    video = _Video(replace(spec, num_frames=out), _tint(grey[frame_map, ..., 0]), rows, None, fps=fps)
    _write(path, video.frames, (WIDTH, HEIGHT), fps, True)
    why = f"{fps:g} fps header, 3 s ({out} frames; motion at real speed)"
    return {"expect": "usable", "why": why}, video


def _fps_10(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    return _resampled(path, spec, 10.0)


def _fps_30(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    return _resampled(path, spec, 30.0)


def _two_people(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    # The renderer's own bystander (person 1): the actor stands in one half, the bystander in the other.
    video = _render_tinted(path, replace(spec, extra_people=1))
    both = int((video.rows.groupby("frame_idx")["person"].nunique() == 2).sum())
    why = f"the actor and a bystander (the renderer's extra_people=1); both in view in {both} frames"
    return {"expect": "usable", "why": why, "people": 2}, video


def _no_person(path: Path, spec: VideoSpec) -> tuple[dict, _Video]:
    grey, _ = _render(spec, people=False)  # the same background, camera jitter and noise, nobody drawn
    video = _Video(spec, _tint(grey), None, None)
    _write(path, video.frames, (WIDTH, HEIGHT), FPS, True)
    return {"expect": "usable", "why": "background only: nobody to detect", "people": 0}, video


_ODD_WRITERS = {
    "zero_byte": _zero_byte,
    "random_bytes": _random_bytes,
    "text": _text,
    "truncated": _truncated,
    "wrong_header": _wrong_header,
    "one_frame": _one_frame,
    "short_clip": _short_clip,
    "hd_1080p": _hd_1080p,
    "portrait": _portrait,
    "grey": _grey,
    "fps_10": _fps_10,
    "fps_30": _fps_30,
    "two_people": _two_people,
    "no_person": _no_person,
}
assert set(_ODD_WRITERS) == set(ODD) and set(LISTED) <= set(ODD)


# ------------------------------------------------------------------------------------------- helpers


def _transform(
    rows: pd.DataFrame,
    *,
    scale: float = 1.0,
    dx: float = 0.0,
    dy: float = 0.0,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    frame_map: np.ndarray | None = None,
) -> pd.DataFrame:
    """Annotation rows of a render carried through ``x' = scale * x + dx`` (continuous pixel coordinates)
    into a ``size`` frame, boxes clamped to it, joints outside marked ``v = 0``; ``frame_map[k]`` is the
    render frame shown as frame k. Boxes stay the scaled render boxes (not re-measured on the new pixels)."""
    rows = rows.copy()
    if frame_map is not None:
        remap = pd.DataFrame({"frame_idx": np.asarray(frame_map, np.int32), "new": np.arange(len(frame_map))})
        rows = (
            rows.merge(remap, on="frame_idx").drop(columns="frame_idx").rename(columns={"new": "frame_idx"})
        )
        rows["frame_idx"] = rows["frame_idx"].astype(np.int32)
    width, height = size
    xs, ys = ["x1", "x2", *joint_columns("x")], ["y1", "y2", *joint_columns("y")]
    rows[xs] = (rows[xs].astype(np.float64) * scale + dx).astype(np.float32)
    rows[ys] = (rows[ys].astype(np.float64) * scale + dy).astype(np.float32)
    rows[["x1", "x2"]] = rows[["x1", "x2"]].clip(0, width)
    rows[["y1", "y2"]] = rows[["y1", "y2"]].clip(0, height)
    for x, y, v in zip(joint_columns("x"), joint_columns("y"), joint_columns("v"), strict=True):
        inside = (rows[x] >= 0) & (rows[x] < width) & (rows[y] >= 0) & (rows[y] < height)
        rows[v] = np.where(inside & (rows[v] == 2), 2, 0).astype(np.int8)
    rows = rows[(rows["x2"] > rows["x1"]) & (rows["y2"] > rows["y1"])]
    return rows[list(ANNOTATION_COLUMNS)].sort_values(
        ["frame_idx", "person"], kind="stable", ignore_index=True
    )


def _chunks(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, bytes, int, int]]:
    """RIFF chunks in data[start:end], recursing into lists but not ``movi``: (id, list type, data offset,
    size)."""
    offset = start
    while offset + 8 <= end:
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk_id in (b"RIFF", b"LIST"):
            list_type = data[offset + 8 : offset + 12]
            yield chunk_id, list_type, offset + 12, size - 4
            if list_type != b"movi":
                yield from _chunks(data, offset + 12, min(offset + 8 + size, end))
        else:
            yield chunk_id, b"", offset + 8, size
        offset += 8 + size + (size & 1)


def _count_fields(data: bytes) -> list[tuple[str, int]]:
    """(name, byte offset) of the frame counts in an AVI header: AVIMAINHEADER.dwTotalFrames (offset 16),
    the video AVISTREAMHEADER.dwLength (offset 32, after fccType 'vids'), ODMLExtendedHeader.dwTotalFrames."""
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not a RIFF AVI file")
    fields = []
    for chunk_id, _, offset, _ in _chunks(data, 12, len(data)):
        if chunk_id == b"avih":
            fields.append(("avih.dwTotalFrames", offset + 16))
        elif chunk_id == b"strh" and data[offset : offset + 4] == b"vids":
            fields.append(("strh.dwLength", offset + 32))
        elif chunk_id == b"dmlh":
            fields.append(("dmlh.dwTotalFrames", offset))
    return fields
