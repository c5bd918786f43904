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


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M); empty boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)  # (N, M)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def count_matches(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> int:
    """Largest number of one-to-one (prediction, ground truth) pairs with IoU >= ``iou_threshold``."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(pred_boxes, gt_boxes)
    hit = iou >= iou_threshold
    # Maximise the number of hits first; IoU (< 1) only breaks ties between equally many hits.
    rows, cols = linear_sum_assignment(hit + iou * 1e-3, maximize=True)
    return int(hit[rows, cols].sum())


def _restrict_to_kept(frame: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    keys = kept[["video_id", "frame_idx"]].drop_duplicates()
    keys = keys.astype({"video_id": str, "frame_idx": np.int64})
    frame = frame.astype({"video_id": str, "frame_idx": np.int64})
    return frame.merge(keys, on=["video_id", "frame_idx"], how="inner")


def _ratio(numerator: float, denominator: float) -> float | None:
    # None (JSON null) rather than NaN: NaN is not valid JSON and breaks `dvc metrics diff`.
    return float(numerator) / float(denominator) if denominator else None


def detection_quality(
    tracks: pd.DataFrame, annotations: pd.DataFrame, kept: pd.DataFrame, iou_threshold: float = 0.5
) -> dict:
    """Person recall/precision, primary-track coverage and identity switches (definitions in the module doc).

    ``tracks`` follows the tracks.parquet contract; ``kept`` lists the scored frames (video_id, frame_idx).
    """
    gt = _restrict_to_kept(annotations, kept)
    tracks = _restrict_to_kept(tracks, kept)
    detected = tracks[~tracks["interpolated"] & ~tracks["fallback"]]

    # (video_id, frame_idx) -> boxes (P, 4) and person ids (P,) of that frame
    gt_groups = {
        key: (group[BOX_COLUMNS].to_numpy(np.float64), group["person"].to_numpy())
        for key, group in gt.groupby(["video_id", "frame_idx"])
    }
    det_groups = {
        key: group[BOX_COLUMNS].to_numpy() for key, group in detected.groupby(["video_id", "frame_idx"])
    }
    matched = sum(
        count_matches(det_groups[key], gt_groups[key][0], iou_threshold)
        for key in gt_groups.keys() & det_groups.keys()
    )

    primary = tracks[tracks["is_primary"]].sort_values(["video_id", "frame_idx"])
    covered = actor_frames = switches = videos_with_switches = 0
    for video_id, video_primary in primary.groupby("video_id", sort=False):
        last_person, video_switches = None, 0
        for frame_idx, box in zip(
            video_primary["frame_idx"], video_primary[BOX_COLUMNS].to_numpy(), strict=True
        ):
            if (video_id, frame_idx) not in gt_groups:
                continue
            gt_boxes, persons = gt_groups[(video_id, frame_idx)]
            iou = box_iou(box, gt_boxes)[0]  # (P,)
            is_actor = persons == ACTOR
            if is_actor.any():
                actor_frames += 1
                covered += int(iou[is_actor].max() >= iou_threshold)
            best = int(np.argmax(iou))
            if iou[best] < iou_threshold:
                continue
            if last_person is not None and persons[best] != last_person:
                video_switches += 1
            last_person = persons[best]
        switches += video_switches
        videos_with_switches += int(video_switches > 0)

    return {
        "iou_threshold": iou_threshold,
        "gt_boxes": int(len(gt)),
        "detected_boxes": int(len(detected)),
        "matched_boxes": int(matched),
        "recall": _ratio(matched, len(gt)),
        "precision": _ratio(matched, len(detected)),
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
