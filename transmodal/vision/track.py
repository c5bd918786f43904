"""Link per-frame person boxes into tracks (ByteTrack), pick each video's primary track and fill its gaps.

The tracks table (``data/tracks.parquet``, documented in docs/data-contracts.md) has one row per
(video, kept frame, track): video_id, frame_idx, track_id, x1, y1, x2, y2 (frame pixels), score,
is_primary, interpolated, fallback.

Primary track rule: the track with the largest (frames covered) x (mean score), i.e. the largest sum of its
detection scores; ties go to the lower track_id. Its gaps are filled so that it has exactly one row per kept
frame: interior gaps by linear interpolation of the box in frame number, leading and trailing gaps by holding
the nearest box (both ``interpolated=True``, score 0). A video without any track gets a full-frame box in
every kept frame (``fallback=True``, track_id -1, score 0).

Optional stitching (``stitch=True``): a person who leaves the view and comes back (KTH's locomotion videos
cross the frame several times) gets a new ByteTrack id at every entry, and the rule above keeps one crossing
only. Stitching then adds to a track, best value first, every other track whose time span (first to last
kept frame) overlaps none of the spans already chosen and whose median box height is within a factor
``max_scale`` of every track already in it (a bystander much nearer or farther than the actor, or a small
false detection, is not the actor coming back; None: no such gate). The rule above then applies to these chains,
not to single tracks: the primary track is the chain whose tracks sum the most value, so that an actor seen
in three crossings outweighs a bystander seen longer than any one of them. The stitched rows keep their own
track_id and gaps are filled across all of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from transmodal.params import DetectConfig
from transmodal.vision.quality import box_iou

TRACK_COLUMNS = [
    "video_id",
    "frame_idx",
    "track_id",
    "x1",
    "y1",
    "x2",
    "y2",
    "score",
    "is_primary",
    "interpolated",
    "fallback",
]
TRACK_DTYPES = {
    "video_id": str,
    "frame_idx": np.int32,
    "track_id": np.int32,
    "x1": np.float32,
    "y1": np.float32,
    "x2": np.float32,
    "y2": np.float32,
    "score": np.float32,
    "is_primary": bool,
    "interpolated": bool,
    "fallback": bool,
}
FALLBACK_TRACK_ID = -1
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


def empty_tracks() -> pd.DataFrame:
    """A tracks table with no rows and the contract's columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in TRACK_DTYPES.items()})[TRACK_COLUMNS]


def make_tracker(cfg: DetectConfig, frame_rate: float):
    """A fresh ``trackers.ByteTrackTracker`` configured from ``detect.*`` params.

    ``frame_rate`` is the rate of the frames the tracker sees (video fps / mean step between kept frames), so that
    ``lost_track_buffer`` (counted in 30 fps frames, as in ByteTrack) spans the same time at any stride.
    ``minimum_matching_threshold`` keeps ByteTrack's original meaning (``match_thresh``, a bound on the
    matching cost 1 - IoU), so the IoU a match needs is ``1 - minimum_matching_threshold``. The detector
    passes every person box scored above ``detect.low_score_threshold``: those at or above
    ``detect.score_threshold`` are ByteTrack's high boxes, matched first and, unmatched, starting a track if
    they also reach ``track_activation_threshold``; the low ones are then matched to the tracks left over and
    never start one (ByteTrack's second association, which keeps a track through an occlusion or a blurred
    frame).
    """
    from trackers import ByteTrackTracker

    return ByteTrackTracker(
        lost_track_buffer=cfg.lost_track_buffer,
        frame_rate=frame_rate if frame_rate > 0 else 30.0,
        track_activation_threshold=cfg.track_activation_threshold,
        minimum_consecutive_frames=cfg.minimum_consecutive_frames,
        minimum_iou_threshold=1.0 - cfg.minimum_matching_threshold,
        high_conf_det_threshold=cfg.score_threshold,
    )


def track_video(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    frame_idx: np.ndarray,
    cfg: DetectConfig,
    frame_rate: float,
) -> pd.DataFrame:
    """Run one fresh ByteTrack over one video's detections, frames in order.

    ``boxes[t]`` (N_t, 4) x1, y1, x2, y2 pixels and ``scores[t]`` (N_t,) are the person detections of kept
    frame t, whose original frame number is ``frame_idx[t]``. Returns the rows of confirmed tracks: frame_idx,
    track_id, x1, y1, x2, y2, score (no video_id). Detections that never become part of a confirmed track
    are dropped.

    ByteTrack withholds the id of a new track until it is confirmed (``minimum_consecutive_frames``, and at
    least the frame after its first), and reports those first boxes with id -1. They are the same object, so
    they are given back to the track: going back from its first frame, the unclaimed id -1 box of the
    previous kept frame that overlaps best (IoU >= the matching IoU) is added, for as many frames as were
    withheld.
    """
    import supervision as sv

    tracker = make_tracker(cfg, frame_rate)
    frame_pos, track_ids, det_index = [], [], []
    for t, (frame_boxes, frame_scores) in enumerate(zip(boxes, scores, strict=True)):
        detections = sv.Detections(
            xyxy=np.asarray(frame_boxes, np.float32).reshape(-1, 4),
            confidence=np.asarray(frame_scores, np.float32).reshape(-1),
            data={"det_index": np.arange(len(frame_scores))},
        )
        result = tracker.update(detections)  # rows come back re-ordered; det_index says which input each is
        frame_pos.extend([t] * len(result))
        track_ids.extend(np.asarray(result.tracker_id, np.int64).tolist())
        det_index.extend(np.asarray(result.data.get("det_index", []), np.int64).tolist())

    # Per kept frame: det_index -> track id (-1 = unconfirmed), to give withheld boxes back to their track.
    assigned = [dict() for _ in boxes]
    for t, tid, d in zip(frame_pos, track_ids, det_index, strict=True):
        assigned[t][d] = tid
    withheld = max(1, cfg.minimum_consecutive_frames - 1)
    min_iou = 1.0 - cfg.minimum_matching_threshold
    first_seen: dict[int, int] = {}
    for t, frame_assigned in enumerate(assigned):
        for tid in frame_assigned.values():
            if tid >= 0 and tid not in first_seen:
                first_seen[tid] = t
    for tid, t0 in sorted(first_seen.items()):
        (d0,) = [d for d, i in assigned[t0].items() if i == tid]
        box = np.asarray(boxes[t0][d0], np.float64)
        for t in range(t0 - 1, max(t0 - 1 - withheld, -1), -1):
            free = [d for d, i in assigned[t].items() if i == -1]
            if not free:
                break
            iou = box_iou(box, np.asarray(boxes[t], np.float64)[free])[0]
            best = int(np.argmax(iou))
            if iou[best] < min_iou:
                break
            assigned[t][free[best]] = tid
            box = np.asarray(boxes[t][free[best]], np.float64)

    rows = [
        (int(frame_idx[t]), tid, *np.asarray(boxes[t][d], np.float64).tolist(), float(scores[t][d]))
        for t, frame_assigned in enumerate(assigned)
        for d, tid in frame_assigned.items()
        if tid >= 0
    ]
    return pd.DataFrame(rows, columns=["frame_idx", "track_id", *BOX_COLUMNS, "score"])


@dataclass
class DetectedRows:
    """One video's detected rows as arrays: frame_idx (K,) int64, track_id (K,) int64, boxes (K, 4) float64
    x1, y1, x2, y2 pixels, score (K,) float (what :func:`track_video` returns, without pandas)."""

    frame_idx: np.ndarray
    track_id: np.ndarray
    boxes: np.ndarray
    score: np.ndarray

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> DetectedRows:
        """From a table with columns frame_idx, track_id, x1, y1, x2, y2, score (the score keeps its float
        dtype: the primary rule averages it in that dtype)."""
        score = table["score"].to_numpy()
        return cls(
            table["frame_idx"].to_numpy(np.int64),
            table["track_id"].to_numpy(np.int64),
            table[BOX_COLUMNS].to_numpy(np.float64).reshape(-1, 4),
            score if score.dtype.kind == "f" else score.astype(np.float64),
        )

    @classmethod
    def empty(cls) -> DetectedRows:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))

    def __len__(self) -> int:
        return len(self.frame_idx)

    def take(self, index) -> DetectedRows:
        """The rows selected by a boolean mask, an integer index or a slice."""
        return DetectedRows(self.frame_idx[index], self.track_id[index], self.boxes[index], self.score[index])


@dataclass
class TrackStats:
    """Per track of one video, ascending track_id: ids, value = frames covered x mean score, first and last
    frame, median box height."""

    ids: np.ndarray
    value: np.ndarray
    first: np.ndarray
    last: np.ndarray
    height: np.ndarray


def track_stats(
    video: np.ndarray, frame_idx: np.ndarray, track_id: np.ndarray, score: np.ndarray, height: np.ndarray
) -> list[TrackStats]:
    """:class:`TrackStats` of videos 0..max(video) (``video`` (K,) int: the video of each row; a video without
    rows gets empty stats; ``height`` (K,) the rows' box heights), from one groupby over all rows. The mean is
    pandas' (compensated summation, in the score's dtype), so values and their ties are exactly those the rule
    has always compared."""
    table = pd.DataFrame(
        {"video": video, "track_id": track_id, "frame_idx": frame_idx, "score": score, "height": height}
    )
    stats = table.groupby(["video", "track_id"], sort=True).agg(
        first=("frame_idx", "min"),
        last=("frame_idx", "max"),
        size=("score", "size"),
        mean=("score", "mean"),
        height=("height", "median"),
    )
    value = (stats["size"] * stats["mean"]).to_numpy()
    of_video = stats.index.get_level_values("video").to_numpy()
    ids = stats.index.get_level_values("track_id").to_numpy(np.int64)
    first, last = stats["first"].to_numpy(np.int64), stats["last"].to_numpy(np.int64)
    height = stats["height"].to_numpy(np.float64)
    n_videos = int(of_video.max()) + 1 if len(of_video) else 0
    bounds = np.searchsorted(of_video, np.arange(n_videos + 1))
    return [
        TrackStats(ids[a:b], value[a:b], first[a:b], last[a:b], height[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _stats_of(tracks: pd.DataFrame) -> TrackStats:
    """:class:`TrackStats` of one video's detected rows (frame_idx and y1, y2 optional, track_id, score)."""
    n = len(tracks)
    frame_idx = tracks["frame_idx"].to_numpy(np.int64) if "frame_idx" in tracks else np.zeros(n, np.int64)
    height = (tracks["y2"] - tracks["y1"]).to_numpy(np.float64) if "y1" in tracks else np.zeros(n)
    video = np.zeros(n, np.int64)
    return track_stats(video, frame_idx, tracks["track_id"].to_numpy(), tracks["score"].to_numpy(), height)[0]


def _pick_primary(stats: TrackStats) -> int:
    # Compare with a tolerance: the product of a count and a float mean may differ in the last bit.
    best = np.nanmax(stats.value)
    return int(stats.ids[np.isclose(stats.value, best, rtol=1e-9, atol=0.0)].min())


def select_primary(tracks: pd.DataFrame) -> int | None:
    """The primary track of one video without stitching (with it, :func:`best_chain`): max (frames covered)
    x (mean score), ties to the lower track_id.

    ``tracks`` holds one video's detected rows (track_id, score); None when it has none. Frames covered x
    mean score is the sum of the track's scores; it favours a person seen long and confidently over a
    briefly visible or uncertain one.
    """
    if tracks.empty:
        return None
    return _pick_primary(_stats_of(tracks))


def fill_track(
    frame_idx: np.ndarray, boxes: np.ndarray, kept_frame_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One box per kept frame from a track's boxes.

    ``frame_idx`` (K,) sorted original frame numbers of the track's rows and ``boxes`` (K, 4); returns boxes
    (T, 4) for ``kept_frame_idx`` (T,) and a mask (T,) of filled frames. Interior gaps: linear interpolation
    in frame number; leading/trailing gaps: the first/last box held.
    """
    kept = np.asarray(kept_frame_idx, np.float64)
    filled = np.stack(
        [
            np.interp(kept, np.asarray(frame_idx, np.float64), np.asarray(boxes, np.float64)[:, c])
            for c in range(4)
        ],
        axis=1,
    )  # np.interp holds the end values outside the track's span: exactly the leading/trailing rule
    is_filled = ~np.isin(kept_frame_idx, frame_idx)
    return filled, is_filled


def _stitch_chain(
    stats: TrackStats, first_id: int, max_scale: float | None, order: np.ndarray | None = None
) -> tuple[list[int], int]:
    """The chain of :func:`stitch_tracks` from track ``first_id`` and how many tracks of disjoint span its
    height gate refused (``order``: the tracks best value first, ties to the lower track_id, when already
    sorted). The gate holds between every two tracks of the chain: a track joins only if its median height is
    within ``max_scale`` of the chain's tallest and of its shortest, so that a track of middling height
    cannot bridge two that differ by more."""
    at = int(np.searchsorted(stats.ids, first_id))
    chain = [first_id]
    starts, ends = [int(stats.first[at])], [int(stats.last[at])]  # the chosen spans, disjoint, by start
    shortest = tallest = stats.height[at]
    refused = 0
    for k in np.lexsort((stats.ids, -stats.value)) if order is None else order:
        first, last = int(stats.first[k]), int(stats.last[k])
        # disjoint: ends before the next span by start, starts after the one before it ends
        place = bisect.bisect_left(starts, first)
        disjoint = (place == len(starts) or last < starts[place]) and (place == 0 or first > ends[place - 1])
        if stats.ids[k] == first_id or not disjoint:
            continue
        height = stats.height[k]
        if max_scale is None or tallest / max_scale <= height <= shortest * max_scale:
            chain.append(int(stats.ids[k]))
            starts.insert(place, first)
            ends.insert(place, last)
            shortest, tallest = min(shortest, height), max(tallest, height)
        else:
            refused += 1
    return chain, refused


def _best_chain(stats: TrackStats, max_scale: float | None) -> tuple[list[int], int]:
    """With stitching, the person rather than the track: the chain (:func:`_stitch_chain`) of largest total
    value over every track taken as its first, ties to the lower first track_id; and its refused count."""
    order = np.lexsort((stats.ids, -stats.value))
    chains = [_stitch_chain(stats, int(first), max_scale, order) for first in stats.ids]
    totals = np.array([stats.value[np.searchsorted(stats.ids, chain)].sum() for chain, _ in chains])
    # compare with a tolerance, as the primary rule does: sums in another order differ in the last bits
    best = np.flatnonzero(np.isclose(totals, np.nanmax(totals), rtol=1e-9, atol=0.0))
    return chains[int(best[0])]  # ids ascend: the first of the best is the lower track_id


def best_chain(tracks: pd.DataFrame, max_scale: float | None = DetectConfig.stitch_max_scale) -> list[int]:
    """The tracks the primary track is made of when stitching: of the chains :func:`stitch_tracks` makes
    from each track, the one whose tracks sum the most value (frames covered x mean score), first track
    first. ``tracks`` holds one video's detected rows (frame_idx, track_id, y1, y2, score)."""
    return _best_chain(_stats_of(tracks), max_scale)[0]


def stitch_tracks(
    tracks: pd.DataFrame, first_id: int, max_scale: float | None = DetectConfig.stitch_max_scale
) -> list[int]:
    """The chain that starts at track ``first_id``: it, then the tracks stitched to it, best value first,
    each with a time span disjoint from those before it and a median box height within ``max_scale`` of
    every one of theirs, either way (None: any height). :func:`best_chain` picks the primary one.

    ``tracks`` holds one video's detected rows (frame_idx, track_id, y1, y2, score).
    """
    return _stitch_chain(_stats_of(tracks), first_id, max_scale)[0]


def _finalize_video(
    rows: DetectedRows,
    stats: TrackStats | None,
    kept_frame_idx: np.ndarray,
    width: int,
    height: int,
    stitch: bool,
    max_scale: float | None,
) -> tuple[dict[str, np.ndarray], bool, int]:
    """One video's table columns (all but video_id) in table order, from its kept and clamped rows and their
    track statistics; whether the full-frame fallback was used; how many tracks stitching refused for their
    height."""
    n = len(kept_frame_idx)
    if len(rows) == 0:
        full_frame = np.array([0.0, 0.0, float(width), float(height)])
        return (
            {
                "frame_idx": kept_frame_idx,
                "track_id": np.full(n, FALLBACK_TRACK_ID, np.int64),
                "boxes": np.broadcast_to(full_frame, (n, 4)),
                "score": np.zeros(n),
                "is_primary": np.ones(n, bool),
                "interpolated": np.zeros(n, bool),
                "fallback": np.ones(n, bool),
            },
            True,
            0,
        )

    chain, refused = _best_chain(stats, max_scale) if stitch else ([_pick_primary(stats)], 0)
    in_chain = np.isin(rows.track_id, chain)
    others = rows.take(~in_chain)
    # A track has at most one box per frame; keep the best-scoring one should a detector repeat a box.
    primary = rows.take(np.flatnonzero(in_chain))
    primary = primary.take(np.lexsort((-primary.score, primary.frame_idx)))  # stable
    primary = primary.take(np.r_[True, primary.frame_idx[1:] != primary.frame_idx[:-1]])
    boxes, is_filled = fill_track(primary.frame_idx, primary.boxes, kept_frame_idx)
    scores = np.zeros(n)
    scores[np.searchsorted(kept_frame_idx, primary.frame_idx)] = primary.score
    # a filled row belongs to the track of the detection before it (the first one for a leading gap)
    source_row = np.clip(np.searchsorted(primary.frame_idx, kept_frame_idx, side="right") - 1, 0, None)
    k = len(others)
    columns = {
        "frame_idx": np.concatenate([kept_frame_idx, others.frame_idx]),
        "track_id": np.concatenate([primary.track_id[source_row], others.track_id]),
        "boxes": np.concatenate([boxes, others.boxes]),
        "score": np.concatenate([scores, others.score]),
        "is_primary": np.r_[np.ones(n, bool), np.zeros(k, bool)],
        "interpolated": np.r_[is_filled, np.zeros(k, bool)],
        "fallback": np.zeros(n + k, bool),
    }
    order = np.lexsort((columns["track_id"], columns["frame_idx"]))  # stable: by frame, then track
    return {name: values[order] for name, values in columns.items()}, False, refused


def _tracks_table(video_ids: Sequence[str], parts: Sequence[dict[str, np.ndarray]]) -> pd.DataFrame:
    if not parts:
        return empty_tracks()
    counts = [len(part["frame_idx"]) for part in parts]
    boxes = np.concatenate([part["boxes"] for part in parts])
    columns = {
        "video_id": np.repeat(np.asarray(video_ids, dtype=object), counts),
        "frame_idx": np.concatenate([part["frame_idx"] for part in parts]),
        "track_id": np.concatenate([part["track_id"] for part in parts]),
        **{name: boxes[:, c] for c, name in enumerate(BOX_COLUMNS)},
        **{
            name: np.concatenate([part[name] for part in parts])
            for name in ("score", "is_primary", "interpolated", "fallback")
        },
    }
    return pd.DataFrame(columns).astype(TRACK_DTYPES)[TRACK_COLUMNS]


@dataclass
class VideoDetections:
    """What :func:`finalize_tracks` needs of one video."""

    video_id: str
    rows: DetectedRows
    kept_frame_idx: np.ndarray  # (T,) the video's kept frames
    width: int
    height: int


@dataclass
class Finalized:
    """What :func:`finalize_tracks` returns: the tracks table, the ids of the videos that used the full-frame
    fallback, and per video the number of tracks of disjoint span that stitching refused for their height
    (videos with none left out)."""

    tracks: pd.DataFrame
    fallback: list[str]
    stitch_refused: dict[str, int]


def finalize_tracks(
    videos: Sequence[VideoDetections],
    stitch: bool = False,
    max_scale: float | None = DetectConfig.stitch_max_scale,
) -> Finalized:
    """The tracks table of ``videos`` (in that order), with the videos that used the full-frame fallback and
    those where stitching refused a track.

    Per video as :func:`finalize_video_tracks`, with numpy; the per-track statistics of the primary rule
    come from one groupby over all videos.
    """
    kept_rows, kept_frames = [], []
    for video in videos:
        kept = np.sort(np.asarray(video.kept_frame_idx, np.int64))
        rows = video.rows.take(np.isin(video.rows.frame_idx, kept))
        boxes = rows.boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, video.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, video.height)
        kept_rows.append(DetectedRows(rows.frame_idx, rows.track_id, boxes, rows.score))
        kept_frames.append(kept)
    stats: list[TrackStats] = []
    with_rows = [rows for rows in kept_rows if len(rows)]
    if with_rows:
        stats = track_stats(
            np.repeat(np.arange(len(kept_rows)), [len(rows) for rows in kept_rows]),
            np.concatenate([rows.frame_idx for rows in with_rows]),
            np.concatenate([rows.track_id for rows in with_rows]),
            np.concatenate([rows.score for rows in with_rows]),
            np.concatenate([rows.boxes[:, 3] - rows.boxes[:, 1] for rows in with_rows]),
        )
    parts, fallback, refused = [], [], {}
    for i, (video, rows, kept) in enumerate(zip(videos, kept_rows, kept_frames, strict=True)):
        columns, used_fallback, n_refused = _finalize_video(
            rows, stats[i] if len(rows) else None, kept, video.width, video.height, stitch, max_scale
        )
        parts.append(columns)
        if used_fallback:
            fallback.append(video.video_id)
        if n_refused:
            refused[video.video_id] = n_refused
    return Finalized(_tracks_table([video.video_id for video in videos], parts), fallback, refused)


def finalize_video_tracks(
    video_id: str,
    tracks: pd.DataFrame,
    kept_frame_idx: np.ndarray,
    width: int,
    height: int,
    stitch: bool = False,
    max_scale: float | None = DetectConfig.stitch_max_scale,
) -> tuple[pd.DataFrame, bool]:
    """One video's rows of the tracks table, from its detected rows.

    ``tracks`` (frame_idx, track_id, x1, y1, x2, y2, score) may have several tracks; ``kept_frame_idx`` (T,)
    are the video's kept frames and (width, height) its size in pixels. Boxes are clamped to the frame. The
    primary track (when ``stitch``, the chain of :func:`best_chain` with its ``max_scale``) gets one row per kept
    frame (gaps filled); other tracks keep their detected rows only. Returns the table rows and whether the
    full-frame fallback was used.
    """
    video = VideoDetections(video_id, DetectedRows.from_table(tracks), kept_frame_idx, width, height)
    finalized = finalize_tracks([video], stitch=stitch, max_scale=max_scale)
    return finalized.tracks, bool(finalized.fallback)
