"""Detection, tracking and pose quality against ground truth (pure functions, used by detect and pose).

Ground truth is the dataset's ``annotations.parquet``: one row per (video_id, frame_idx, person) with the
person's box ``x1, y1, x2, y2`` and COCO-17 ``{joint}_x, {joint}_y, {joint}_v`` (v > 0 = visible); person 0
is the actor. Only frames that the frame store kept are scored (``kept``: columns video_id, frame_idx).

Definitions (docs/data-contracts.md and docs/decisions.md repeat them):

- person recall / precision at IoU 0.5: in every kept frame, the detected boxes (track rows that are neither
  interpolated nor fallback) are matched one-to-one to the ground-truth persons, maximising the number of
  pairs with IoU >= 0.5 (Hungarian; ties broken by larger IoU). recall = matched / ground-truth boxes,
  precision = matched / detected boxes.
- primary coverage: over kept frames in which the actor (person 0) is in view, the fraction whose primary
  track box has IoU >= 0.5 with the actor's box.
- identity switches: along each video, the ground-truth person that the primary box overlaps best (IoU >=
  0.5; none otherwise); every change from one person to a different person is a switch (frames with none in
  between do not break or create a switch). Summed over videos.
- PCK@t: a visible ground-truth joint counts as correct when the predicted joint lies within
  ``t * max(w, h)`` pixels of it, (w, h) being the actor's ground-truth box size in that frame; a missing
  (NaN) prediction is wrong. Per joint and over all joints, over kept frames with the actor in view.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from transmodal.data.coco import COCO_JOINTS

BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
ACTOR = 0


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a[..., :4]`` and ``b[..., :4]`` (float64, broadcast against each other); empty gives 0."""
    ix1 = np.maximum(a[..., 0], b[..., 0])
    iy1 = np.maximum(a[..., 1], b[..., 1])
    ix2 = np.minimum(a[..., 2], b[..., 2])
    iy2 = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M); empty boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    return _iou(a[:, None, :], b[None, :, :])


def paired_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of row i of (K, 4) ``boxes_a`` with row i of (K, 4) ``boxes_b`` -> (K,) (the same values as
    :func:`box_iou` gives for those pairs)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    return _iou(a, b)


def count_matches(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> int:
    """Largest number of one-to-one (prediction, ground truth) pairs with IoU >= ``iou_threshold``."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(pred_boxes, gt_boxes)
    hit = iou >= iou_threshold
    # Maximise the number of hits first; IoU (< 1) only breaks ties between equally many hits.
    rows, cols = linear_sum_assignment(hit + iou * 1e-3, maximize=True)
    return int(hit[rows, cols].sum())


# ----------------------------------------------------------------------------------------------------------
# (video, frame) keys as integers, to group and look up rows with numpy instead of per-frame DataFrames


class FrameKeys:
    """Integer codes of (video_id, frame_idx) pairs: video position in ``videos`` x span + frame offset.

    Pairs whose video is not in ``videos`` or whose frame lies outside [``low``, ``high``] get -1 (they
    cannot be any of the reference pairs the keys were made for). Codes sort as (video position, frame).
    """

    def __init__(self, videos, low: int, high: int):
        self.videos = pd.Index(pd.unique(np.asarray(videos, dtype=object)))
        self.low, self.span = int(low), int(high) - int(low) + 1

    @classmethod
    def of(cls, video_id, frame_idx) -> FrameKeys:
        """Keys able to code every one of these pairs (videos in order of first appearance)."""
        frame_idx = np.asarray(frame_idx, np.int64)
        if len(frame_idx) == 0:
            return cls([], 0, 0)
        return cls(video_id, frame_idx.min(), frame_idx.max())

    def codes(self, video_id, frame_idx) -> np.ndarray:
        """(N,) int64 codes of N pairs (-1: outside the keys' videos or frame range)."""
        video = self.videos.get_indexer(np.asarray(video_id, dtype=object)).astype(np.int64)
        frame = np.asarray(frame_idx, np.int64) - self.low
        inside = (video >= 0) & (frame >= 0) & (frame < self.span)
        return np.where(inside, video * self.span + frame, -1)

    def video_of(self, codes: np.ndarray) -> np.ndarray:
        """Video positions of (valid) codes."""
        return np.asarray(codes, np.int64) // self.span


def lookup(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Position of each code in ascending ``sorted_codes`` (the first, should it repeat); -1 if absent."""
    codes = np.asarray(codes, np.int64)
    if len(sorted_codes) == 0:
        return np.full(len(codes), -1, np.int64)
    pos = np.searchsorted(sorted_codes, codes)
    found = (codes >= 0) & (pos < len(sorted_codes))
    found &= sorted_codes[np.minimum(pos, len(sorted_codes) - 1)] == codes
    return np.where(found, pos, -1)


def _column_str(table: pd.DataFrame, name: str) -> np.ndarray:
    return table[name].astype(str).to_numpy(dtype=object)


def _kept_frame_of(table: pd.DataFrame, keys: FrameKeys, kept_codes: np.ndarray) -> np.ndarray:
    """Per row of ``table``: position of its (video_id, frame_idx) among ``kept_codes``, -1 if not kept."""
    codes = keys.codes(_column_str(table, "video_id"), table["frame_idx"].to_numpy(np.int64))
    return lookup(kept_codes, codes)


def _group_by_frame(frame: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with a frame (>= 0) ordered by frame, stably: (row order, count per frame, start per frame)."""
    rows = np.flatnonzero(frame >= 0)
    rows = rows[np.argsort(frame[rows], kind="stable")]
    count = np.bincount(frame[rows], minlength=n_frames)
    return rows, count, np.cumsum(count) - count


def _expand_pairs(frame: np.ndarray, count: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j): i indexes ``frame`` (the frame of some rows), j the rows of that frame's group
    (``count``/``start`` from :func:`_group_by_frame`), grouped by i in order, j ascending."""
    reps = count[frame]
    first = np.repeat(np.arange(len(frame)), reps)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    return first, start[frame][first] + within


def _ratio(numerator: float, denominator: float) -> float | None:
    # None (JSON null) rather than NaN: NaN is not valid JSON and breaks `dvc metrics diff`.
    return float(numerator) / float(denominator) if denominator else None


def detection_quality(
    tracks: pd.DataFrame, annotations: pd.DataFrame, kept: pd.DataFrame, iou_threshold: float = 0.5
) -> dict:
    """Person recall/precision, primary-track coverage and identity switches (definitions in the module doc).

    ``tracks`` follows the tracks.parquet contract; ``kept`` lists the scored frames (video_id, frame_idx).
    Rows are grouped per frame with numpy (integer keys, one stable sort); the Hungarian matching runs only
    for frames with several boxes on both sides (with one box on either side, the most pairs is 1 if any
    pair reaches the threshold).
    """
    keys = FrameKeys.of(_column_str(kept, "video_id"), kept["frame_idx"].to_numpy(np.int64))
    kept_codes = np.unique(keys.codes(_column_str(kept, "video_id"), kept["frame_idx"].to_numpy(np.int64)))
    n_frames = len(kept_codes)

    # ground truth of kept frames, grouped by frame (position among kept_codes)
    gt_frame = _kept_frame_of(annotations, keys, kept_codes)  # (A,) -1 = not scored
    gt_rows, gt_count, gt_start = _group_by_frame(gt_frame, n_frames)
    gt_boxes = annotations[BOX_COLUMNS].to_numpy(np.float64)[gt_rows]  # (G, 4), grouped by frame
    gt_person = annotations["person"].to_numpy()[gt_rows]  # (G,)

    track_frame = _kept_frame_of(tracks, keys, kept_codes)  # (R,)
    track_boxes = tracks[BOX_COLUMNS].to_numpy()
    is_detected = ~tracks["interpolated"].to_numpy(bool) & ~tracks["fallback"].to_numpy(bool)
    det_rows, det_count, det_start = _group_by_frame(np.where(is_detected, track_frame, -1), n_frames)
    det_boxes = track_boxes[det_rows]

    # matched boxes: frames with one box on either side need no assignment
    single = (det_count > 0) & (gt_count > 0) & ((det_count == 1) | (gt_count == 1))
    det_frame = np.repeat(np.arange(n_frames), det_count)  # (D,) frame of each grouped detection
    pick = np.flatnonzero(single[det_frame])
    first, gt_index = _expand_pairs(det_frame[pick], gt_count, gt_start)
    hit = paired_iou(det_boxes[pick][first], gt_boxes[gt_index]) >= iou_threshold
    matched = int(np.count_nonzero(np.bincount(det_frame[pick][first][hit], minlength=n_frames)))
    for f in np.flatnonzero((det_count > 1) & (gt_count > 1)):
        matched += count_matches(
            det_boxes[det_start[f] : det_start[f] + det_count[f]],
            gt_boxes[gt_start[f] : gt_start[f] + gt_count[f]],
            iou_threshold,
        )

    # primary rows of frames with ground truth, by video then frame (stable for repeated frames)
    primary = np.flatnonzero(tracks["is_primary"].to_numpy(bool) & (track_frame >= 0))
    primary = primary[np.argsort(track_frame[primary], kind="stable")]
    primary = primary[gt_count[track_frame[primary]] > 0]
    covered = actor_frames = switches = videos_with_switches = 0
    if len(primary):
        frame = track_frame[primary]
        row, gt_index = _expand_pairs(frame, gt_count, gt_start)  # (Q,) pairs grouped by primary row
        iou = paired_iou(track_boxes[primary][row], gt_boxes[gt_index])  # (Q,)
        starts = np.cumsum(gt_count[frame]) - gt_count[frame]
        best_iou = np.maximum.reduceat(iou, starts)  # (P,)
        at_best = iou == np.repeat(best_iou, gt_count[frame])
        best = np.minimum.reduceat(np.where(at_best, np.arange(len(iou)), len(iou)), starts)  # first argmax
        is_actor = gt_person[gt_index] == ACTOR
        with_actor = np.logical_or.reduceat(is_actor, starts)
        actor_iou = np.maximum.reduceat(np.where(is_actor, iou, -np.inf), starts)
        actor_frames = int(with_actor.sum())
        covered = int((with_actor & (actor_iou >= iou_threshold)).sum())
        # the overlapped person of each primary row (where one is), in video and frame order
        overlapped = best_iou >= iou_threshold
        person = gt_person[gt_index[best]][overlapped]
        video = keys.video_of(kept_codes[frame])[overlapped]
        switch = (video[1:] == video[:-1]) & (person[1:] != person[:-1])
        switches = int(switch.sum())
        videos_with_switches = len(np.unique(video[1:][switch]))

    n_gt, n_detected = len(gt_rows), len(det_rows)
    return {
        "iou_threshold": iou_threshold,
        "gt_boxes": int(n_gt),
        "detected_boxes": int(n_detected),
        "matched_boxes": int(matched),
        "recall": _ratio(matched, n_gt),
        "precision": _ratio(matched, n_detected),
        "actor_frames": int(actor_frames),
        "primary_coverage": _ratio(covered, actor_frames),
        "identity_switches": int(switches),
        "videos_with_identity_switches": int(videos_with_switches),
    }


def pose_quality(keypoints: pd.DataFrame, annotations: pd.DataFrame, threshold: float = 0.2) -> dict:
    """PCK@``threshold`` of the actor's ground-truth box size, per joint and overall (module doc).

    ``keypoints`` follows the keypoints.parquet contract; only its frames are scored.
    """
    actor = annotations[annotations["person"] == ACTOR].astype({"video_id": str, "frame_idx": np.int64})
    pred = keypoints.astype({"video_id": str, "frame_idx": np.int64})
    both = pred.merge(actor, on=["video_id", "frame_idx"], how="inner", suffixes=("_pred", ""))
    size = np.maximum(both["x2"] - both["x1"], both["y2"] - both["y1"]).to_numpy(np.float64)  # (F,)
    per_joint, correct_total, visible_total = {}, 0, 0
    for joint in COCO_JOINTS:
        visible = both[f"{joint}_v"].to_numpy() > 0  # (F,)
        dx = both[f"{joint}_x_pred"].to_numpy(np.float64) - both[f"{joint}_x"].to_numpy(np.float64)
        dy = both[f"{joint}_y_pred"].to_numpy(np.float64) - both[f"{joint}_y"].to_numpy(np.float64)
        distance = np.hypot(dx, dy)  # NaN where the prediction is missing -> the comparison is False
        correct = visible & (distance <= threshold * size)
        per_joint[joint] = _ratio(correct.sum(), visible.sum())
        correct_total += int(correct.sum())
        visible_total += int(visible.sum())
    return {
        "pck_threshold": threshold,
        "pck": _ratio(correct_total, visible_total),
        "pck_per_joint": per_joint,
        "joints_evaluated": visible_total,
        "frames_evaluated": int(len(both)),
    }
