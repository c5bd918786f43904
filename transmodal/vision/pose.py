"""Pose stage (paper 3.1 step 2): ViTPose++ COCO-17 keypoints on the primary track's box in every kept frame.

``run_pose`` returns the keypoints table (``data/keypoints.parquet``: one row per kept frame of every stored
video; video_id, frame_idx, then ``{joint}_x`` for the 17 COCO joints, ``{joint}_y``, ``{joint}_score``;
contract in docs/data-contracts.md) and the metrics written to ``metrics/pose.json``. With
``pose.source: annotations`` the keypoints are the ground truth of the actor (person 0). The model
(:class:`~transmodal.vision.pose_estimator.PoseEstimator`) crops, runs and decodes one batch at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from transmodal import distributed
from transmodal.data.coco import NUM_JOINTS, joint_columns
from transmodal.data.frames import FrameStore
from transmodal.params import ParamError, PoseConfig
from transmodal.vision.batches import (
    VIDEOS_PER_UNIT,
    FinishedUnits,
    FramePiece,
    VideoFrames,
    iter_frame_batches,
    pipelined,
    stored_videos,
    unit_key,
    video_units,
)
from transmodal.vision.pose_estimator import PoseEstimator
from transmodal.vision.quality import FrameKeys, lookup, pose_quality

KEYPOINT_COLUMNS = [
    "video_id",
    "frame_idx",
    *joint_columns("x"),
    *joint_columns("y"),
    *joint_columns("score"),
]


def empty_keypoints() -> pd.DataFrame:
    """A keypoints table with no rows and the contract's columns and dtypes."""
    columns = {"video_id": pd.Series(dtype=str), "frame_idx": pd.Series(dtype=np.int32)}
    columns.update({name: pd.Series(dtype=np.float32) for name in KEYPOINT_COLUMNS[2:]})
    return pd.DataFrame(columns)


def keypoint_table(video_id, frame_idx: np.ndarray, xy: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Rows ``frame_idx`` (T,), ``xy`` (T, J, 2) frame pixels, ``scores`` (T, J) in [0, 1] of one video
    (``video_id`` a str) or of several (``video_id`` (T,), one per row)."""
    if isinstance(video_id, str):
        video_id = np.full(len(frame_idx), video_id, dtype=object)
    columns = {
        "video_id": np.asarray(video_id, dtype=object),
        "frame_idx": frame_idx.astype(np.int32),
    }
    columns.update(zip(joint_columns("x"), xy[:, :, 0].astype(np.float32).T, strict=True))
    columns.update(zip(joint_columns("y"), xy[:, :, 1].astype(np.float32).T, strict=True))
    columns.update(zip(joint_columns("score"), scores.astype(np.float32).T, strict=True))
    return pd.DataFrame(columns)[KEYPOINT_COLUMNS]


@dataclass
class KeptLayout:
    """The kept frames of all stored videos laid end to end (the keypoints table's rows, in order)."""

    video_ids: list[str]
    bounds: np.ndarray  # (V + 1,) video v's rows are bounds[v]:bounds[v + 1]
    video_id: np.ndarray  # (N,) object
    frame_idx: np.ndarray  # (N,) int64, ascending within each video
    width: np.ndarray  # (N,) the row's video width
    height: np.ndarray  # (N,)
    keys: FrameKeys
    codes: np.ndarray  # (N,) ascending (video order, then frame)

    @classmethod
    def of(cls, videos: dict[str, VideoFrames]) -> KeptLayout:
        video_ids = list(videos)
        counts = np.array([len(info.frame_idx) for info in videos.values()], np.int64)
        frame_idx = np.concatenate([info.frame_idx for info in videos.values()] or [np.zeros(0, np.int64)])
        video_id = np.repeat(np.asarray(video_ids, dtype=object), counts)
        keys = FrameKeys.of(video_id, frame_idx)
        return cls(
            video_ids=video_ids,
            bounds=np.concatenate([[0], np.cumsum(counts)]),
            video_id=video_id,
            frame_idx=frame_idx.astype(np.int64),
            width=np.repeat([info.width for info in videos.values()], counts),
            height=np.repeat([info.height for info in videos.values()], counts),
            keys=keys,
            codes=keys.codes(video_id, frame_idx),
        )

    def rows_of(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """For a table with video_id and frame_idx: the indices of its rows that fall on a kept frame (the first
        row of each (video, frame), in table order) and the layout rows they fall on."""
        codes = self.keys.codes(table["video_id"].astype(str).to_numpy(object), table["frame_idx"].to_numpy())
        row = lookup(self.codes, codes)
        found = np.flatnonzero(row >= 0)
        _, first = np.unique(row[found], return_index=True)
        found = np.sort(found[first])
        return found, row[found]


def primary_boxes(tracks: pd.DataFrame, layout: KeptLayout) -> tuple[np.ndarray, np.ndarray]:
    """The primary track's box (N, 4) per kept frame of ``layout``, clamped to the frame (NaN where it has no
    row; the first row should a frame have several), and a mask (N,) of frames whose primary box is a
    fallback full-frame box."""
    boxes = np.full((len(layout.frame_idx), 4), np.nan)
    fallback = np.zeros(len(layout.frame_idx), bool)
    primary = tracks[tracks["is_primary"].to_numpy(bool)]
    found, rows = layout.rows_of(primary)
    boxes[rows] = primary[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[found]
    fallback[rows] = primary["fallback"].to_numpy(bool)[found]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, layout.width[:, None])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, layout.height[:, None])
    return boxes, fallback


def ground_truth_keypoints(annotations: pd.DataFrame, layout: KeptLayout) -> tuple[np.ndarray, np.ndarray]:
    """The actor's (person 0) ground truth per kept frame of ``layout`` as (N, 17, 2) pixels and (N, 17)
    scores: 1 where visible (v > 0), else NaN and 0; NaN and 0 for the whole frame where the actor has no
    row (the first row counts should a frame have several)."""
    xy = np.full((len(layout.frame_idx), NUM_JOINTS, 2), np.nan)
    scores = np.zeros((len(layout.frame_idx), NUM_JOINTS))
    actor = annotations[annotations["person"].to_numpy() == 0]
    found, rows = layout.rows_of(actor)
    visible = actor[joint_columns("v")].to_numpy()[found] > 0  # (R, J)
    gt_xy = np.stack(
        [actor[joint_columns("x")].to_numpy(np.float64), actor[joint_columns("y")].to_numpy(np.float64)], -1
    )[found]
    xy[rows] = np.where(visible[..., None], gt_xy, np.nan)
    scores[rows] = visible.astype(np.float64)
    return xy, scores


def _resume_key(cfg: PoseConfig, estimator, store, videos: dict, per_unit: int, tracks: pd.DataFrame) -> dict:
    """What a unit of keypoints depends on (see :func:`~transmodal.vision.batches.unit_key`), with the
    detect stage's tracks (their primary boxes are the crops). Not ``source`` or ``device`` (the device the
    model resolved to is in the key)."""
    import hashlib

    here = Path(__file__).parent
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("source", "device")}
    code = [here / f"{name}.py" for name in ("pose", "pose_crop", "pose_decode", "pose_estimator")]
    hashed = pd.util.hash_pandas_object(tracks, index=False).to_numpy()
    tracks_digest = hashlib.sha256(hashed.tobytes() + str(list(tracks.columns)).encode()).hexdigest()
    units = video_units(list(videos), per_unit)
    return unit_key(params, estimator, store, units, code, tracks=tracks_digest)


def run_pose(
    store: FrameStore,
    tracks: pd.DataFrame,
    cfg: PoseConfig,
    annotations: pd.DataFrame | None,
    progress: bool = True,
    estimator: PoseEstimator | None = None,
    parts_dir: str | Path | None = None,
    videos_per_unit: int = VIDEOS_PER_UNIT,
) -> tuple[pd.DataFrame, dict]:
    """Keypoints of every kept frame of every stored video and the pose metrics (for ``metrics/pose.json``).

    With source ``model`` the videos are estimated by units of ``videos_per_unit``
    (:class:`~transmodal.vision.batches.FinishedUnits`). Each finished unit's keypoints are kept in
    ``parts_dir`` (the stage's: ``data/.partial/pose``; None keeps them in memory), so an interrupted run
    starts at its first unfinished unit and gives the same bytes. Under torchrun (``compute.nproc`` x
    ``compute.nnodes`` > 1, which needs ``parts_dir``) each process takes every world-size-th unit left, and
    rank 0 merges the parts and returns the result; the other ranks return (None, None).

    ``tracks`` is the detect stage's table (its primary rows give the boxes). ``annotations`` is the dataset's
    ground truth or None; ``source: annotations`` requires it, and whenever given it scores the keypoints
    (adds the keys of :func:`~transmodal.vision.quality.pose_quality`: PCK@0.2). Frames whose primary box
    has zero area after clamping to the frame (or no primary row at all) get NaN keypoints and score 0 and
    are counted, never sent to the model.
    ``estimator`` reuses an already loaded model (benchmarks); by default one is loaded from ``cfg``.

    One loop over batches of ``pose.batch_size`` frames (which may span videos), read ahead on a thread:
    crop, forward, decode. On a GPU the device runs batch k + 1 while the host stores batch k.
    """
    started = time.perf_counter()
    if cfg.source == "annotations" and annotations is None:
        raise ParamError(
            "params.yaml: pose.source is 'annotations' but the dataset has no annotations.parquet"
        )
    videos = stored_videos(store)
    layout = KeptLayout.of(videos)
    metrics: dict = {"source": cfg.source}
    frames_empty_box = frames_without_track = frames_fallback_box = 0

    if cfg.source == "annotations":
        all_xy, all_scores = ground_truth_keypoints(annotations, layout)
    else:
        if estimator is None:
            estimator = PoseEstimator.from_config(cfg)
        revision = estimator.revision
        metrics.update(
            checkpoint=cfg.checkpoint,
            **({"checkpoint_revision": revision} if revision else {}),
            device=str(estimator.device),
            dtype=str(estimator.dtype).removeprefix("torch."),
            batch_size=cfg.batch_size,
            dataset_index=cfg.dataset_index,
        )
        all_boxes, fallback = primary_boxes(tracks, layout)
        missing = np.isnan(all_boxes).any(axis=1)
        empty = ~missing & ((all_boxes[:, 2] <= all_boxes[:, 0]) | (all_boxes[:, 3] <= all_boxes[:, 1]))
        frames_without_track = int(missing.sum())
        frames_empty_box = int(empty.sum())
        frames_fallback_box = int(fallback.sum())
        usable = ~missing & ~empty
        # every kept frame of every video, end to end (the table's rows)
        all_xy = np.full((len(layout.frame_idx), NUM_JOINTS, 2), np.nan)
        all_scores = np.zeros((len(layout.frame_idx), NUM_JOINTS))
        first_row = dict(zip(layout.video_ids, layout.bounds[:-1].tolist(), strict=True))

        def launch(batch: list[FramePiece]):
            """The layout rows of the batch's usable frames and their keypoints and scores (tensors on the
            model's device), or None for a batch without a usable frame."""
            rows, frames = [], []
            for piece in batch:
                start = first_row[piece.video_id] + piece.start
                keep = usable[start : start + len(piece.frame_idx)]
                if keep.any():
                    rows.append(start + np.flatnonzero(keep))
                    frames.append(piece.frames if keep.all() else piece.frames[keep])
            if not frames:
                return None
            rows = np.concatenate(rows)
            boxes = all_boxes[rows]
            # the pieces' frames go to the crop as they are: no copy into one array
            outputs = estimator.forward(estimator.preprocess(frames, boxes))
            return rows, estimator.decode(outputs, boxes)

        world = distributed.current()
        key = functools.partial(_resume_key, cfg, estimator, store, videos, videos_per_unit, tracks)
        units = FinishedUnits(list(videos), videos_per_unit, parts_dir, key, world)
        shown = progress and world.is_main
        if units.done and shown:
            print(
                f"pose: resuming, {len(units.done)} of {len(units.units)} units of videos already done "
                f"in {units.directory}"
            )
        mine = units.videos()
        left = {v: len(videos[v].frame_idx) for v in mine}  # frames not yet finished, per video

        def finish(batch: list[FramePiece], launched) -> None:
            if launched is not None:
                rows, decoded = launched
                all_xy[rows], all_scores[rows] = (t.cpu().numpy() for t in decoded)  # waits for the device
            for piece in batch:
                left[piece.video_id] -= len(piece.frame_idx)
                if left[piece.video_id] == 0 and units.directory is not None:  # its keypoints are all in
                    units.add(piece.video_id, rows_table(piece.video_id))
            bar.update(sum(len(piece.frame_idx) for piece in batch))

        def rows_table(video_id: str) -> pd.DataFrame:
            """A video's layout rows and their keypoints and scores (``row``, then J x 2 + J values)."""
            rows = np.arange(first_row[video_id], first_row[video_id] + len(videos[video_id].frame_idx))
            table = pd.DataFrame(
                np.concatenate([all_xy[rows].reshape(len(rows), -1), all_scores[rows]], axis=1)
            )
            table.columns = [str(c) for c in table.columns]
            table.insert(0, "row", rows.astype(np.int64))
            return table

        with tqdm(total=sum(left.values()), desc="pose", unit="frame", disable=not shown) as bar:
            pipelined(iter_frame_batches(store, mine, cfg.batch_size, videos_per_unit), launch, finish)
        others = units.others()  # on rank 0: the units it did not compute, read back
        if others is None:
            return None, None  # not rank 0: rank 0 finishes the stage
        for table in others:
            rows = table["row"].to_numpy(np.int64)
            values = table.drop(columns="row").to_numpy(np.float64)
            all_xy[rows] = values[:, : NUM_JOINTS * 2].reshape(len(rows), NUM_JOINTS, 2)
            all_scores[rows] = values[:, NUM_JOINTS * 2 :]

    if videos:
        keypoints = keypoint_table(layout.video_id, layout.frame_idx, all_xy, all_scores)
    else:
        keypoints = empty_keypoints()
    score_values = keypoints[joint_columns("score")].to_numpy()
    seconds = time.perf_counter() - started
    metrics.update(
        videos=len(videos),
        frames=int(len(keypoints)),
        frames_empty_box=frames_empty_box,
        frames_without_track=frames_without_track,
        frames_fallback_box=frames_fallback_box,
        mean_score=float(score_values.mean()) if score_values.size else None,
        seconds=round(seconds, 3),
        frames_per_second=round(len(keypoints) / seconds, 2) if seconds > 0 else None,
    )
    if annotations is not None:  # flat keys, as in metrics/detect.json
        metrics.update(pose_quality(keypoints, annotations))
    return keypoints, metrics
