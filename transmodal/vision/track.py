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
only. Stitching then adds to the primary track, best value first, every other track whose time span (first
to last kept frame) overlaps none of the spans already chosen; the stitched rows keep their own track_id and
gaps are filled across all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    ``frame_rate`` is the rate of the frames the tracker sees (video fps / frames stride), so that
    ``lost_track_buffer`` (counted in 30 fps frames, as in ByteTrack) spans the same time at any stride.
    ``minimum_matching_threshold`` keeps ByteTrack's original meaning (``match_thresh``, a bound on the
    matching cost 1 - IoU), so the IoU a match needs is ``1 - minimum_matching_threshold``. Detections at or
    above ``track_activation_threshold`` are the first-stage (high-confidence) boxes that may start tracks;
    the rest only extend existing tracks (ByteTrack's second stage).
    """
    from trackers import ByteTrackTracker

    return ByteTrackTracker(
        lost_track_buffer=cfg.lost_track_buffer,
        frame_rate=frame_rate if frame_rate > 0 else 30.0,
        track_activation_threshold=cfg.track_activation_threshold,
        minimum_consecutive_frames=cfg.minimum_consecutive_frames,
        minimum_iou_threshold=1.0 - cfg.minimum_matching_threshold,
        high_conf_det_threshold=cfg.track_activation_threshold,
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


def select_primary(tracks: pd.DataFrame) -> int | None:
    """The primary track of one video: max (frames covered) x (mean score), ties to the lower track_id.

    ``tracks`` holds one video's detected rows (track_id, score); None when it has none. Frames covered x
    mean score is the sum of the track's scores; it favours a person seen long and confidently over a
    briefly visible or uncertain one.
    """
    if tracks.empty:
        return None
    stats = tracks.groupby("track_id")["score"].agg(["size", "mean"])
    value = stats["size"] * stats["mean"]
    best = value.max()
    # Compare with a tolerance: the product of a count and a float mean may differ in the last bit.
    return int(value.index[np.isclose(value.to_numpy(), best, rtol=1e-9, atol=0.0)].min())


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


def stitch_tracks(tracks: pd.DataFrame, primary_id: int) -> list[int]:
    """The primary track followed by the tracks stitched to it (disjoint time spans, best value first).

    ``tracks`` holds one video's detected rows (frame_idx, track_id, score).
    """
    stats = tracks.groupby("track_id").agg(
        first=("frame_idx", "min"), last=("frame_idx", "max"), size=("score", "size"), mean=("score", "mean")
    )
    stats["value"] = stats["size"] * stats["mean"]
    order = stats.reset_index().sort_values(["value", "track_id"], ascending=[False, True], kind="stable")
    chain, spans = [primary_id], [(stats.at[primary_id, "first"], stats.at[primary_id, "last"])]
    for track_id, first, last in zip(order["track_id"], order["first"], order["last"], strict=True):
        if track_id != primary_id and all(last < a or first > b for a, b in spans):
            chain.append(int(track_id))
            spans.append((first, last))
    return chain


def finalize_video_tracks(
    video_id: str,
    tracks: pd.DataFrame,
    kept_frame_idx: np.ndarray,
    width: int,
    height: int,
    stitch: bool = False,
) -> tuple[pd.DataFrame, bool]:
    """One video's rows of the tracks table, from its detected rows.

    ``tracks`` (frame_idx, track_id, x1, y1, x2, y2, score) may have several tracks; ``kept_frame_idx`` (T,)
    are the video's kept frames and (width, height) its size in pixels. Boxes are clamped to the frame. The
    primary track (stitched when ``stitch``) gets one row per kept frame (gaps filled); other tracks keep
    their detected rows only. Returns the table rows and whether the full-frame fallback was used.
    """
    kept_frame_idx = np.sort(np.asarray(kept_frame_idx, np.int64))
    tracks = tracks[tracks["frame_idx"].isin(kept_frame_idx)].copy()
    tracks[["x1", "x2"]] = tracks[["x1", "x2"]].clip(0, width)
    tracks[["y1", "y2"]] = tracks[["y1", "y2"]].clip(0, height)
    primary_id = select_primary(tracks)
    if primary_id is None:
        n = len(kept_frame_idx)
        table = pd.DataFrame(
            {
                "video_id": video_id,
                "frame_idx": kept_frame_idx,
                "track_id": FALLBACK_TRACK_ID,
                "x1": 0.0,
                "y1": 0.0,
                "x2": float(width),
                "y2": float(height),
                "score": 0.0,
                "is_primary": np.ones(n, bool),
                "interpolated": np.zeros(n, bool),
                "fallback": np.ones(n, bool),
            }
        )
        return table.astype(TRACK_DTYPES)[TRACK_COLUMNS], True

    chain = stitch_tracks(tracks, primary_id) if stitch else [primary_id]
    in_chain = tracks["track_id"].isin(chain)
    others = tracks[~in_chain].assign(is_primary=False, interpolated=False)
    # A track has at most one box per frame; keep the best-scoring one should a detector repeat a box.
    primary = tracks[in_chain].sort_values(["frame_idx", "score"], ascending=[True, False])
    primary = primary.drop_duplicates("frame_idx")
    detected_frames = primary["frame_idx"].to_numpy()
    boxes, is_filled = fill_track(detected_frames, primary[BOX_COLUMNS].to_numpy(), kept_frame_idx)
    scores = np.zeros(len(kept_frame_idx))
    scores[np.searchsorted(kept_frame_idx, detected_frames)] = primary["score"].to_numpy()
    # a filled row belongs to the track of the detection before it (the first one for a leading gap)
    source_row = np.clip(np.searchsorted(detected_frames, kept_frame_idx, side="right") - 1, 0, None)
    primary_rows = pd.DataFrame(
        {
            "frame_idx": kept_frame_idx,
            "track_id": primary["track_id"].to_numpy()[source_row],
            "x1": boxes[:, 0],
            "y1": boxes[:, 1],
            "x2": boxes[:, 2],
            "y2": boxes[:, 3],
            "score": scores,
            "is_primary": True,
            "interpolated": is_filled,
        }
    )
    table = pd.concat([primary_rows, others], ignore_index=True).assign(video_id=video_id, fallback=False)
    table = table.sort_values(["frame_idx", "track_id"], kind="stable", ignore_index=True)
    return table.astype(TRACK_DTYPES)[TRACK_COLUMNS], False
