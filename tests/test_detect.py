"""Detect stage: tracks schema, primary-track rule, gap filling, fallback, quality metrics, model path."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from transmodal.data.frames import FrameStore, extract_frames
from transmodal.data.synth import VideoSpec, render_video, write_avi
from transmodal.params import CheckpointError, DetectConfig, ParamError
from transmodal.vision.batches import iter_frame_batches, pipelined, stored_videos
from transmodal.vision.detect import PersonDetector, run_detect
from transmodal.vision.quality import box_iou, detection_quality
from transmodal.vision.track import (
    TRACK_COLUMNS,
    TRACK_DTYPES,
    best_chain,
    fill_track,
    finalize_video_tracks,
    select_primary,
    stitch_tracks,
    track_video,
)

WIDTH, HEIGHT = 160, 120
STRIDE = 2
BOX = ["x1", "y1", "x2", "y2"]

# ----------------------------------------------------------------------------------------------------------
# Test videos from the synthetic renderer (exact ground truth in annotations.parquet's schema)

SPECS = {
    "solo": VideoSpec(subject=3, action="walking", scenario="d1", num_frames=24, seed=0),
    "duo": VideoSpec(subject=1, action="boxing", scenario="d1", num_frames=24, seed=0, extra_people=1),
    # the runner is out of view in frames 0-1 and 37-44: a leading and an interior gap at stride 2
    "gap": VideoSpec(subject=2, action="running", scenario="d1", num_frames=64, seed=0),
}
GAP_ABSENT_KEPT = [0, 38, 40, 42, 44]
EMPTY_FRAMES = 12  # "empty": grey noise, nobody in view


def build_dataset(root: Path) -> tuple[FrameStore, pd.DataFrame]:
    """Frame store (stride 2) of solo, duo, gap, empty and an unreadable file, and the ground truth."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    annotations = []
    for name, spec in SPECS.items():
        frames, rows = render_video(spec)
        write_avi(frames, videos / f"{name}.avi")
        annotations.append(rows.assign(video_id=name))
    noise = np.random.default_rng(0).integers(60, 120, size=(EMPTY_FRAMES, HEIGHT, WIDTH), dtype=np.uint8)
    write_avi(noise, videos / "empty.avi")
    (videos / "broken.avi").write_bytes(b"")
    names = [*SPECS, "empty", "broken"]
    index = pd.DataFrame({"video_id": names, "path": [f"{name}.avi" for name in names]})
    extract_frames(
        index, videos, root / "frames", stride=STRIDE, clip_length=4, videos_per_shard=2, progress=False
    )
    return FrameStore(root / "frames"), pd.concat(annotations, ignore_index=True)


MIXED_SIZES = {"small": (WIDTH, HEIGHT), "large": (200, 150)}  # name: (width, height)


def build_mixed_size_dataset(root: Path) -> tuple[FrameStore, pd.DataFrame]:
    """Frame store (stride 1) of two videos of different frame sizes (the second rendered, then resized), so
    that one batch can hold frames of both sizes, and their ground truth (boxes scaled alike)."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    annotations = []
    for seed, (name, (width, height)) in enumerate(MIXED_SIZES.items()):
        spec = VideoSpec(subject=seed + 1, action="walking", scenario="d1", num_frames=10, seed=seed)
        frames, rows = render_video(spec)
        frames = np.stack([cv2.resize(frame, (width, height)) for frame in frames])
        write_avi(frames, videos / f"{name}.avi")
        sx, sy = width / WIDTH, height / HEIGHT
        annotations.append(
            rows.assign(
                video_id=name, x1=rows["x1"] * sx, x2=rows["x2"] * sx, y1=rows["y1"] * sy, y2=rows["y2"] * sy
            )
        )
    index = pd.DataFrame({"video_id": list(MIXED_SIZES), "path": [f"{name}.avi" for name in MIXED_SIZES]})
    extract_frames(
        index, videos, root / "frames", stride=1, clip_length=4, videos_per_shard=2, progress=False
    )
    return FrameStore(root / "frames"), pd.concat(annotations, ignore_index=True)


def truth_box(annotations: pd.DataFrame, video_id: str, frame_idx: int, person: int = 0) -> np.ndarray:
    row = annotations[
        (annotations["video_id"] == video_id)
        & (annotations["frame_idx"] == frame_idx)
        & (annotations["person"] == person)
    ]
    assert len(row) == 1, (video_id, frame_idx, person)
    return row[BOX].to_numpy(np.float64)[0]


def assert_tracks_contract(tracks: pd.DataFrame, store: FrameStore) -> None:
    """Columns, dtypes, one primary row per kept frame of every stored video, boxes inside the frame."""
    assert list(tracks.columns) == TRACK_COLUMNS
    for name, dtype in TRACK_DTYPES.items():
        if dtype is str:
            assert tracks[name].map(type).eq(str).all(), name
        else:
            assert tracks[name].dtype == np.dtype(dtype), (name, tracks[name].dtype)
    primary = tracks[tracks["is_primary"]]
    expected = store.frames[["video_id", "frame_idx"]].astype({"frame_idx": np.int64})
    got = primary[["video_id", "frame_idx"]].astype({"frame_idx": np.int64})
    assert not got.duplicated().any()
    pd.testing.assert_frame_equal(
        got.sort_values(["video_id", "frame_idx"], ignore_index=True),
        expected.sort_values(["video_id", "frame_idx"], ignore_index=True),
    )
    assert (primary.groupby("video_id")["track_id"].nunique() == 1).all()
    sizes = store.frames.drop_duplicates("video_id").set_index("video_id")
    width = tracks["video_id"].map(sizes["width"])
    height = tracks["video_id"].map(sizes["height"])
    assert (tracks["x1"] >= 0).all() and (tracks["y1"] >= 0).all()
    assert (tracks["x2"] <= width).all() and (tracks["y2"] <= height).all()
    assert (tracks["x2"] >= tracks["x1"]).all() and (tracks["y2"] >= tracks["y1"]).all()


# ----------------------------------------------------------------------------------------------------------
# Annotation path


def test_annotation_tracks_follow_the_contract_and_score_perfectly(dataset, gt_tracks):
    store, _ = dataset
    tracks, metrics = gt_tracks
    assert_tracks_contract(tracks, store)
    assert metrics["recall"] == 1.0 and metrics["precision"] == 1.0
    assert metrics["primary_coverage"] == 1.0 and metrics["identity_switches"] == 0
    # kept frames with the actor in view: solo 12, duo 12, gap 32 - 5
    assert metrics["actor_frames"] == 12 + 12 + 27
    assert metrics["gt_boxes"] == 12 + 2 * 12 + 27  # duo has the bystander in every frame
    assert metrics["videos"] == 4 and metrics["videos_without_frames"] == 1
    assert metrics["videos_fallback"] == 1 and metrics["fallback_examples"] == ["empty"]
    assert metrics["frames"] == 12 + 12 + 32 + 6
    json.dumps(metrics)  # serialisable as metrics/detect.json


def test_two_person_video_keeps_the_actor_as_primary(dataset, gt_tracks):
    _, annotations = dataset
    tracks, _ = gt_tracks
    duo = tracks[tracks["video_id"] == "duo"]
    primary = duo[duo["is_primary"]]
    # both people are in view in all 12 kept frames: a tie, and the actor has the lower id
    assert set(primary["track_id"]) == {0} and len(primary) == 12
    for frame_idx, box in zip(primary["frame_idx"], primary[BOX].to_numpy(), strict=True):
        np.testing.assert_array_equal(box, truth_box(annotations, "duo", frame_idx).astype(np.float32))
    other = duo[~duo["is_primary"]]
    assert set(other["track_id"]) == {1} and len(other) == 12 and not other["interpolated"].any()


def test_annotation_gaps_are_filled_exactly(dataset, gt_tracks):
    _, annotations = dataset
    tracks, _ = gt_tracks
    gap = tracks[(tracks["video_id"] == "gap") & tracks["is_primary"]].set_index("frame_idx")
    kept = np.arange(0, 64, STRIDE)
    assert gap.index.tolist() == kept.tolist()
    assert gap["interpolated"].tolist() == [f in GAP_ABSENT_KEPT for f in kept]
    assert (gap.loc[GAP_ABSENT_KEPT, "score"] == 0).all() and (gap.loc[gap["score"] > 0, "score"] == 1).all()
    # leading gap (frame 0): the first box (frame 2) held
    np.testing.assert_allclose(gap.loc[0, BOX].to_numpy(float), truth_box(annotations, "gap", 2), rtol=1e-6)
    # interior gap: linear in frame number between frames 36 and 46
    before, after = truth_box(annotations, "gap", 36), truth_box(annotations, "gap", 46)
    for frame_idx in (38, 40, 42, 44):
        expected = before + (after - before) * (frame_idx - 36) / 10
        np.testing.assert_allclose(gap.loc[frame_idx, BOX].to_numpy(float), expected, rtol=1e-6)


def test_video_without_people_gets_a_flagged_full_frame_box(gt_tracks):
    tracks, metrics = gt_tracks
    empty = tracks[tracks["video_id"] == "empty"]
    assert len(empty) == 6 and empty["fallback"].all() and empty["is_primary"].all()
    assert (empty["track_id"] == -1).all() and not empty["interpolated"].any()
    np.testing.assert_array_equal(empty[BOX].to_numpy(), [[0, 0, WIDTH, HEIGHT]] * 6)
    assert not tracks.loc[tracks["video_id"] != "empty", "fallback"].any()
    assert metrics["videos_fallback"] == 1


def test_annotation_source_without_annotations_is_a_param_error(dataset):
    store, _ = dataset
    with pytest.raises(ParamError, match="detect.source"):
        run_detect(store, DetectConfig(source="annotations"), None, progress=False)


# ----------------------------------------------------------------------------------------------------------
# Primary rule, gap filling and the tracker


def test_gap_filling_values_are_exact():
    track = pd.DataFrame(
        {
            "frame_idx": [4, 6, 12],
            "track_id": 3,
            "x1": [10.0, 20.0, 50.0],
            "y1": [5.0, 5.0, 11.0],
            "x2": [30.0, 40.0, 70.0],
            "y2": [60.0, 60.0, 90.0],
            "score": [0.9, 0.8, 0.7],
        }
    )
    kept = np.arange(0, 18, 2)  # 0 2 | 4 6 | 8 10 | 12 | 14 16
    table, used_fallback = finalize_video_tracks("v", track, kept, WIDTH, HEIGHT)
    assert not used_fallback
    boxes = table[["x1", "y1", "x2", "y2"]].to_numpy()
    np.testing.assert_allclose(boxes[:2], [[10, 5, 30, 60]] * 2)  # leading: first box held
    np.testing.assert_allclose(boxes[4], [30, 7, 50, 70])  # frame 8: 1/3 of the way from 6 to 12
    np.testing.assert_allclose(boxes[5], [40, 9, 60, 80])  # frame 10: 2/3 of the way
    np.testing.assert_allclose(boxes[7:], [[50, 11, 70, 90]] * 2)  # trailing: last box held
    assert table["interpolated"].tolist() == [True, True, False, False, True, True, False, True, True]
    np.testing.assert_allclose(table["score"], [0, 0, 0.9, 0.8, 0, 0, 0.7, 0, 0], rtol=1e-6)
    # fill_track alone, uneven spacing: frame 5 between frames 4 (x 0) and 8 (x 8) -> x 2
    filled, is_filled = fill_track(np.array([4, 8]), np.array([[0.0, 0, 1, 1], [8, 0, 9, 1]]), np.array([5]))
    np.testing.assert_allclose(filled, [[2, 0, 3, 1]]) and is_filled.tolist() == [True]


def test_primary_rule_is_frames_times_mean_score_ties_to_lower_id():
    def rows(track_id, n, score):
        return pd.DataFrame(
            {
                "frame_idx": np.arange(n) * 2,
                "track_id": track_id,
                "x1": 0.0,
                "y1": 0.0,
                "x2": 10.0,
                "y2": 10.0,
                "score": score,
            }
        )

    kept = np.arange(0, 40, 2)
    # 10 frames x 0.9 = 9.0 beats 12 frames x 0.7 = 8.4: confidence can outweigh length
    table, _ = finalize_video_tracks(
        "v", pd.concat([rows(5, 12, 0.7), rows(7, 10, 0.9)]), kept, WIDTH, HEIGHT
    )
    assert set(table.loc[table["is_primary"], "track_id"]) == {7}
    # 10 x 0.6 == 12 x 0.5: a tie goes to the lower track_id
    table, _ = finalize_video_tracks(
        "v", pd.concat([rows(9, 10, 0.6), rows(4, 12, 0.5)]), kept, WIDTH, HEIGHT
    )
    assert set(table.loc[table["is_primary"], "track_id"]) == {4}


def test_bytetrack_on_ground_truth_boxes_keeps_the_actor(dataset):
    store, annotations = dataset
    cfg = DetectConfig(source="model", minimum_consecutive_frames=1)
    kept = np.arange(0, 24, STRIDE)
    duo = annotations[annotations["video_id"] == "duo"]
    boxes, scores = [], []
    for frame_idx in kept:
        rows = duo[duo["frame_idx"] == frame_idx].sort_values("person", ascending=False)  # actor listed last
        boxes.append(rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32))
        scores.append(np.where(rows["person"] == 0, 0.9, 0.8).astype(np.float32))
    detected = track_video(boxes, scores, kept, cfg, frame_rate=12.5)
    assert detected["track_id"].nunique() == 2
    # ByteTrack withholds a new track's id in its first frame; that box is given back to the track
    assert len(detected) == sum(len(s) for s in scores)
    table, _ = finalize_video_tracks("duo", detected, kept, WIDTH, HEIGHT)
    table["video_id"] = "duo"
    quality = detection_quality(table, duo, store.frames[store.frames["video_id"] == "duo"])
    assert quality["primary_coverage"] == 1.0 and quality["identity_switches"] == 0
    assert quality["recall"] == 1.0 and quality["precision"] == 1.0
    primary = table[table["is_primary"]]
    assert not primary["interpolated"].any() and (primary["score"] == np.float32(0.9)).all()


def test_tracker_drops_the_unconfirmed_and_fills_a_missed_detection():
    cfg = DetectConfig(source="model", minimum_consecutive_frames=1)
    kept = np.arange(0, 20, 2)
    boxes = [np.array([[10.0 + t, 20, 40 + t, 100]], np.float32) for t in range(10)]
    scores = [np.array([0.9], np.float32) for _ in range(10)]
    boxes[5], scores[5] = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)  # missed in frame 10
    # a one-frame false positive in frame 14
    boxes[7] = np.concatenate([boxes[7], [[120, 10, 150, 50]]]).astype(np.float32)
    scores[7] = np.array([0.9, 0.95], np.float32)
    detected = track_video(boxes, scores, kept, cfg, frame_rate=12.5)
    assert detected["track_id"].nunique() == 1 and len(detected) == 9  # the false positive never confirmed
    table, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT)
    row = table.set_index("frame_idx").loc[10]
    assert row["interpolated"] and row["score"] == 0.0
    np.testing.assert_allclose(row[["x1", "y1", "x2", "y2"]].to_numpy(float), [15, 20, 45, 100])


def test_low_score_boxes_extend_a_track_and_start_none():
    """ByteTrack's second association: boxes scored from detect.low_score_threshold up to
    detect.score_threshold keep a track through frames where the person scores low (an occlusion, motion
    blur), and never start a track of their own."""
    cfg = DetectConfig(source="model", minimum_consecutive_frames=1)
    kept = np.arange(0, 24, 2)
    walker = [np.array([[10.0 + t, 20, 40 + t, 100]], np.float32) for t in range(12)]
    walker_scores = [np.array([0.3 if 4 <= t < 8 else 0.9], np.float32) for t in range(12)]
    still = np.array([[120, 10, 150, 50]], np.float32)  # a second object, scored low throughout
    boxes = [np.concatenate([box, still]) for box in walker]
    scores = [np.append(score, np.float32(0.3)) for score in walker_scores]
    detected = track_video(boxes, scores, kept, cfg, frame_rate=12.5)
    assert detected["track_id"].nunique() == 1 and len(detected) == 12
    assert sorted(detected.loc[detected["score"] < cfg.score_threshold, "frame_idx"]) == [8, 10, 12, 14]
    assert (detected["x1"] < 100).all()  # the still low object is in no track
    # with the low boxes held back (low_score_threshold = score_threshold) those four frames have no box
    high = [
        (b[s >= cfg.score_threshold], s[s >= cfg.score_threshold]) for b, s in zip(boxes, scores, strict=True)
    ]
    detected = track_video([b for b, _ in high], [s for _, s in high], kept, cfg, frame_rate=12.5)
    assert len(detected) == 8 and not set(detected["frame_idx"]) & {8, 10, 12, 14}


def test_the_high_box_split_and_the_track_start_are_two_params():
    """detect.score_threshold splits ByteTrack's high boxes from its low ones and detect.track_activation_threshold
    is what an unmatched high box needs to start a track: swapped, or one standing for both, the paper
    presets' values (or a user's) would do something else than they say."""
    from transmodal.vision.track import make_tracker

    cfg = DetectConfig(
        source="model", score_threshold=0.4, low_score_threshold=0.1, track_activation_threshold=0.8,
        minimum_consecutive_frames=1, minimum_matching_threshold=0.7,
    )  # fmt: skip
    tracker = make_tracker(cfg, frame_rate=12.5)
    assert (tracker.high_conf_det_threshold, tracker.track_activation_threshold) == (0.4, 0.8)
    assert tracker.minimum_iou_threshold == pytest.approx(0.3)
    kept = np.arange(0, 16, 2)
    walker = [np.array([[10.0 + 2 * t, 20, 40 + 2 * t, 100]], np.float32) for t in range(8)]
    still = np.array([[120, 10, 150, 50]], np.float32)  # high (0.6 >= 0.4) but below 0.8 throughout
    boxes = [np.concatenate([box, still]) for box in walker]
    # the walker starts at 0.9, then scores 0.6 (high, below the start's 0.8) and 0.2 (low)
    scores = [np.array([0.9 if t < 2 else 0.6 if t < 5 else 0.2, 0.6], np.float32) for t in range(8)]
    detected = track_video(boxes, scores, kept, cfg, frame_rate=12.5)
    assert detected["track_id"].nunique() == 1 and len(detected) == 8  # the walker in every frame
    assert (detected["x1"] < 100).all()  # the still box never started one
    started = track_video(boxes, scores, kept, replace(cfg, track_activation_threshold=0.5), frame_rate=12.5)
    assert started["track_id"].nunique() == 2  # at 0.5 the still box's 0.6 starts its own


def test_low_score_threshold_is_checked_against_score_threshold():
    with pytest.raises(ParamError, match=r"detect.low_score_threshold is 0.6, above detect.score_threshold"):
        DetectConfig(score_threshold=0.5, low_score_threshold=0.6)
    assert DetectConfig(score_threshold=0.5, low_score_threshold=0.5).low_score_threshold == 0.5


# ----------------------------------------------------------------------------------------------------------
# Quality metrics, perturbed by hand


def test_detection_quality_drops_by_the_hand_computed_amount(dataset, gt_tracks):
    store, annotations = dataset
    tracks, _ = gt_tracks
    perturbed = tracks.copy()
    # move the actor's box in 3 solo frames right by its own width: IoU 0 -> 3 misses, 3 false positives
    shifted = (
        (perturbed["video_id"] == "solo") & perturbed["is_primary"] & perturbed["frame_idx"].isin([0, 2, 4])
    )
    width = perturbed.loc[shifted, "x2"] - perturbed.loc[shifted, "x1"]
    perturbed.loc[shifted, "x1"] += width
    perturbed.loc[shifted, "x2"] += width
    # drop the bystander's box in 2 duo frames: 2 more misses
    dropped = (
        (perturbed["video_id"] == "duo") & (perturbed["track_id"] == 1) & perturbed["frame_idx"].isin([4, 6])
    )
    perturbed = perturbed[~dropped]
    quality = detection_quality(perturbed, annotations, store.frames)
    gt_boxes, actor_frames = 12 + 2 * 12 + 27, 12 + 12 + 27
    assert quality["gt_boxes"] == gt_boxes and quality["detected_boxes"] == gt_boxes - 2
    assert quality["recall"] == pytest.approx((gt_boxes - 5) / gt_boxes)
    assert quality["precision"] == pytest.approx((gt_boxes - 5) / (gt_boxes - 2))
    assert quality["primary_coverage"] == pytest.approx((actor_frames - 3) / actor_frames)
    assert quality["identity_switches"] == 0


def test_identity_switches_count_changes_of_the_overlapped_person(dataset, gt_tracks):
    store, annotations = dataset
    tracks, _ = gt_tracks
    switched = tracks.copy()
    duo_primary = (switched["video_id"] == "duo") & switched["is_primary"]
    # the primary box jumps onto the bystander at frames 6 and 8, then back: 0 -> 1 -> 0 = 2 switches
    for frame_idx in (6, 8):
        rows = duo_primary & (switched["frame_idx"] == frame_idx)
        switched.loc[rows, BOX] = truth_box(annotations, "duo", frame_idx, person=1)
    quality = detection_quality(switched, annotations, store.frames)
    assert quality["identity_switches"] == 2 and quality["videos_with_identity_switches"] == 1
    assert quality["primary_coverage"] == pytest.approx(49 / 51)
    assert box_iou(np.array([0, 0, 2, 2]), np.array([[1, 0, 3, 2], [5, 5, 6, 6]])).tolist() == [[1 / 3, 0.0]]


def test_stitching_joins_the_crossings_of_one_person():
    def track(track_id, frames, x0, score=0.9):
        frames = np.asarray(frames)
        return pd.DataFrame(
            {
                "frame_idx": frames,
                "track_id": track_id,
                "x1": x0 + frames,
                "y1": 20.0,
                "x2": x0 + 30 + frames,
                "y2": 100.0,
                "score": score,
            }
        )

    kept = np.arange(0, 40, 2)
    detected = pd.concat(
        [
            track(0, range(0, 14, 2), 0.0),  # first crossing, frames 0-12
            track(1, range(20, 40, 2), 100.0),  # the same person coming back, frames 20-38 (the best track)
            track(
                2, range(10, 24, 2), 60.0, score=0.5
            ),  # a bystander overlapping both in time: never stitched
        ],
        ignore_index=True,
    )
    assert stitch_tracks(detected, first_id=1) == [1, 0]
    plain, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT)
    stitched, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT, stitch=True)
    assert set(plain.loc[plain["is_primary"], "track_id"]) == {1}
    primary = stitched[stitched["is_primary"]].set_index("frame_idx")
    assert len(primary) == 20 and primary.loc[range(0, 14, 2), "track_id"].eq(0).all()
    assert not primary.loc[range(0, 14, 2), "interpolated"].any()
    # frames 14-18 lie between the crossings: interpolated, and counted under the track before them
    assert (
        primary.loc[[14, 16, 18], "interpolated"].all() and primary.loc[[14, 16, 18], "track_id"].eq(0).all()
    )
    np.testing.assert_allclose(primary.loc[16, "x1"], 12 + (120 - 12) * (16 - 12) / 8)
    assert set(stitched.loc[~stitched["is_primary"], "track_id"]) == {2}


def test_with_stitching_the_primary_track_is_the_person_seen_most_across_crossings():
    """The actor crosses twice (tracks 0 and 2, 16 kept frames each at 0.9); a bystander (track 1, 26 frames
    at 0.8, 1.6x smaller) is in view longer than either crossing and overlaps both. The single-track rule
    takes the bystander; with stitching the primary track is the chain of the two crossings (28.8 against
    20.8), and the bystander is left outside it."""

    def track(track_id, frames, height, score):
        frames = np.asarray(frames)
        boxes = {"x1": 10.0 + frames, "y1": 10.0, "x2": 40.0 + frames, "y2": 10.0 + height}
        return pd.DataFrame({"frame_idx": frames, "track_id": track_id, **boxes, "score": score})

    detected = pd.concat(
        [
            track(0, range(0, 32, 2), 80.0, 0.9),
            track(1, range(10, 62, 2), 50.0, 0.8),
            track(2, range(40, 72, 2), 80.0, 0.9),
        ],
        ignore_index=True,
    )
    assert select_primary(detected) == 1
    assert best_chain(detected) == [0, 2]  # from track 2 the same chain, [2, 0]: ties to the lower id
    kept = np.arange(0, 72, 2)
    plain, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT)
    stitched, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT, stitch=True)
    assert set(plain.loc[plain["is_primary"], "track_id"]) == {1}
    assert set(stitched.loc[stitched["is_primary"], "track_id"]) == {0, 2}
    assert (stitched.loc[~stitched["is_primary"], "track_id"] == 1).all()
    # with one crossing only, the bystander outweighs it: the chain rule is the single-track rule then
    alone = detected[detected["track_id"] != 2]
    assert best_chain(alone) == [1] and select_primary(alone) == 1


def test_stitching_refuses_a_track_of_another_height():
    """The height gate: of two tracks whose spans fall in the primary track's gaps, the one of about the
    primary's median height (80 px against 60 px, 1.33x) is stitched; the one a third of it (a false detection
    or a person far behind) is not at the default factor 2, and is at factor 3. Heights compare either way."""

    def track(track_id, frames, height, score=0.9):
        frames = np.asarray(frames)
        boxes = {"x1": 10.0 + frames, "y1": 10.0, "x2": 40.0 + frames, "y2": 10.0 + height}
        return pd.DataFrame({"frame_idx": frames, "track_id": track_id, **boxes, "score": score})

    detected = pd.concat(
        [
            track(0, range(0, 20, 2), 60.0),  # the primary (the best value)
            track(1, range(24, 30, 2), 20.0),  # 3x smaller
            track(2, range(32, 38, 2), 80.0, score=0.8),  # 1.33x larger
        ],
        ignore_index=True,
    )
    assert stitch_tracks(detected, first_id=0) == [0, 2]
    # at 3.0 the 20 px track joins; then 80 px is 4x the chain's shortest: the gate holds between any two
    assert stitch_tracks(detected, first_id=0, max_scale=3.0) == [0, 1]
    assert stitch_tracks(detected, first_id=0, max_scale=4.0) == [0, 1, 2]
    assert stitch_tracks(detected, first_id=0, max_scale=1.2) == [0]
    assert stitch_tracks(detected, first_id=0, max_scale=None) == [0, 1, 2]  # null: no gate
    # the same gate seen from the small track: the primary is 3x larger
    assert stitch_tracks(detected, first_id=1, max_scale=2.0) == [1]
    kept = np.arange(0, 40, 2)
    table, _ = finalize_video_tracks("v", detected, kept, WIDTH, HEIGHT, stitch=True)
    primary = table[table["is_primary"]].set_index("frame_idx")
    assert set(primary["track_id"]) == {0, 2} and (table.loc[~table["is_primary"], "track_id"] == 1).all()
    # no chain bridges a bystander through a track of middling height: the actor's crossings (60 px), a
    # bystander 0.42x (25 px) and a late 35 px track, which is within 2x of both; whichever track a chain
    # starts from, 25 px against 60 px stays out
    bridged = pd.concat(
        [
            track(0, range(0, 22, 2), 60.0),
            track(1, range(40, 62, 2), 60.0),
            track(2, range(24, 36, 2), 25.0),
            track(3, range(70, 76, 2), 35.0),
        ],
        ignore_index=True,
    )
    assert best_chain(bridged) == [0, 1, 3]
    assert 2 not in stitch_tracks(bridged, first_id=3)  # 25 px is within 2x of 35 px, not of the 60 px joined
    with pytest.raises(ParamError, match=r"detect\.stitch_max_scale.*is 0\.5"):
        DetectConfig(stitch_max_scale=0.5)
    assert DetectConfig(stitch_max_scale=None).stitch_max_scale is None


@pytest.mark.parametrize("stitch", [True, False])
def test_stitch_tracks_param_joins_a_re_entering_walker(dataset, stitch):
    """detect.stitch_tracks through run_detect: the runner of "gap" leaves (frames 37-44) and comes back under
    a new id, as ByteTrack reports a re-entry. Stitched, the primary track covers both crossings; not
    stitched, only the longer first one (kept frames 2-36), and the return is held from frame 36."""
    store, annotations = dataset
    re_entry = (annotations["video_id"] == "gap") & (annotations["frame_idx"] >= 46)
    relabelled = annotations.assign(person=annotations["person"].where(~re_entry, 7))
    cfg = DetectConfig(source="annotations", stitch_tracks=stitch)
    tracks, metrics = run_detect(store, cfg, relabelled, progress=False)
    assert metrics["stitch_tracks"] is stitch
    gap = tracks[tracks["video_id"] == "gap"]
    primary = gap[gap["is_primary"]].set_index("frame_idx")
    first, second = list(range(2, 38, 2)), list(range(46, 64, 2))  # kept frames of the two crossings
    assert len(primary) == 32 and not primary.loc[first, "interpolated"].any()
    assert primary.loc[first, "track_id"].eq(0).all()
    if stitch:
        assert not primary.loc[second, "interpolated"].any() and primary.loc[second, "track_id"].eq(7).all()
        np.testing.assert_array_equal(
            primary.loc[second, BOX].to_numpy(), gap.loc[gap["track_id"] == 7, BOX].to_numpy()
        )
        assert gap["is_primary"].all()  # nothing left outside the primary track
    else:
        assert primary.loc[second, "interpolated"].all() and primary.loc[second, "track_id"].eq(0).all()
        np.testing.assert_array_equal(
            primary.loc[second, BOX].to_numpy(), primary.loc[[36] * 9, BOX].to_numpy()
        )
        assert (gap.loc[~gap["is_primary"], "track_id"] == 7).sum() == len(second)
    assert metrics["primary_frames_detected"] == 12 + 12 + len(first) + (len(second) if stitch else 0)
    if stitch:
        assert metrics["stitched_tracks"] == 1 and metrics["stitch_refused_tracks"] == 0
    else:
        assert "stitched_tracks" not in metrics and "stitch_max_scale" not in metrics


def test_a_re_entry_of_another_height_is_refused_and_counted(dataset):
    """Through run_detect: the return of "gap" drawn at a quarter of the runner's height (the boxes shrunk
    about their centre) is not stitched, and metrics/detect.json counts it with the video's name."""
    store, annotations = dataset
    re_entry = (annotations["video_id"] == "gap") & (annotations["frame_idx"] >= 46)
    shrunk = annotations.assign(person=annotations["person"].where(~re_entry, 7))
    middle = (shrunk["y1"] + shrunk["y2"]) / 2
    quarter = (shrunk["y2"] - shrunk["y1"]) / 8
    shrunk.loc[re_entry, "y1"] = middle[re_entry] - quarter[re_entry]
    shrunk.loc[re_entry, "y2"] = middle[re_entry] + quarter[re_entry]
    tracks, metrics = run_detect(store, DetectConfig(source="annotations"), shrunk, progress=False)
    gap = tracks[tracks["video_id"] == "gap"]
    assert set(gap.loc[gap["is_primary"], "track_id"]) == {0}
    assert (gap.loc[~gap["is_primary"], "track_id"] == 7).all() and (~gap["is_primary"]).sum() == 9
    assert metrics["stitched_tracks"] == 0 and metrics["stitch_max_scale"] == 2.0
    assert metrics["stitch_refused_tracks"] == 1 and metrics["stitch_refused_examples"] == ["gap"]
    allowed = DetectConfig(source="annotations", stitch_max_scale=4.5)
    tracks, metrics = run_detect(store, allowed, shrunk, progress=False)
    assert metrics["stitched_tracks"] == 1 and metrics["stitch_refused_tracks"] == 0


# ----------------------------------------------------------------------------------------------------------
# Model path on the tiny random RT-DETR


def tiny_detector_favourite_label(cfg: DetectConfig, store: FrameStore, video_id: str = "duo") -> str:
    detector = PersonDetector.from_config(cfg)
    _, frames = store.read(video_id)
    logits = detector.forward(detector.preprocess(frames)).logits  # (T, Q, C)
    return detector.model.config.id2label[int(logits.amax(dim=(0, 1)).argmax())]


def test_model_path_end_to_end_on_tiny_checkpoint(dataset, tiny_checkpoints):
    store, annotations = dataset
    cfg = DetectConfig(
        source="model",
        checkpoint=tiny_checkpoints["detector"],
        score_threshold=0.0,
        low_score_threshold=0.0,
        track_activation_threshold=0.0,
        batch_size=5,
        device="cpu",
    )
    # Random weights score ~0.01 and favour one class: zero thresholds and that class as "person" let boxes
    # through and start tracks, so tracking, filling and scoring all run.
    cfg = DetectConfig(**{**cfg.__dict__, "person_label": tiny_detector_favourite_label(cfg, store)})
    tracks, metrics = run_detect(store, cfg, annotations, progress=False)
    assert_tracks_contract(tracks, store)
    assert metrics["detections"] > 0 and metrics["device"] == "cpu" and metrics["dtype"] == "float32"
    assert (
        metrics["tracks"] > 0 and metrics["primary_frames_detected"] > 0 and metrics["videos_fallback"] == 0
    )
    assert metrics["frames"] == 62 and metrics["videos_without_frames"] == 1
    for key in ("recall", "precision", "primary_coverage", "identity_switches", "gt_boxes", "detected_boxes"):
        assert key in metrics
    assert 0.0 <= metrics["recall"] <= 1.0
    json.dumps(metrics)
    # batching must not change the result (batches span videos)
    tracks_one, _ = run_detect(
        store, DetectConfig(**{**cfg.__dict__, "batch_size": 64}), None, progress=False
    )
    pd.testing.assert_frame_equal(tracks, tracks_one)


def test_batches_mixing_frame_sizes_give_the_same_tracks(tmp_path, tiny_checkpoints):
    store, _ = build_mixed_size_dataset(tmp_path)
    cfg = DetectConfig(
        source="model",
        checkpoint=tiny_checkpoints["detector"],
        score_threshold=0.0,
        low_score_threshold=0.0,
        track_activation_threshold=0.0,
        device="cpu",
    )
    label = tiny_detector_favourite_label(cfg, store, "small")
    cfg = DetectConfig(**{**cfg.__dict__, "person_label": label})
    # batch 64: one batch of both sizes, resized piece by piece; batch 4: mostly one size, one resize
    results = [
        run_detect(store, DetectConfig(**{**cfg.__dict__, "batch_size": size}), None, progress=False)
        for size in (64, 4)
    ]
    assert results[0][1]["detections"] > 0
    assert set(results[0][0]["video_id"]) == set(MIXED_SIZES)
    pd.testing.assert_frame_equal(results[0][0], results[1][0])


def test_detector_preprocessing_matches_the_checkpoints_processor(dataset, tiny_checkpoints):
    store, _ = dataset
    detector = PersonDetector.from_config(
        DetectConfig(source="model", checkpoint=tiny_checkpoints["detector"], device="cpu")
    )
    _, frames = store.read("duo")
    expected = detector.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    got = detector.preprocess(frames)
    assert got.shape == expected.shape
    assert (
        float((got - expected).abs().max()) <= 1 / 255 + 1e-6
    )  # PIL and torch differ by uint8 rounding only


def test_no_detections_fall_back_to_the_full_frame(dataset, tiny_checkpoints):
    store, _ = dataset
    cfg = DetectConfig(
        source="model", checkpoint=tiny_checkpoints["detector"], score_threshold=1.0, device="cpu"
    )
    tracks, metrics = run_detect(store, cfg, None, progress=False)
    assert tracks["fallback"].all() and metrics["videos_fallback"] == 4 and metrics["detections"] == 0
    assert "recall" not in metrics and "primary_coverage" not in metrics  # no ground truth given


def test_missing_checkpoint_names_the_param(dataset, monkeypatch):
    store, _ = dataset
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DetectConfig(source="model", checkpoint="no-such-org/no-such-detector", device="cpu")
    with pytest.raises(CheckpointError, match="detect.checkpoint") as error:
        run_detect(store, cfg, None, progress=False)
    assert "no-such-org/no-such-detector" in str(error.value) and "\n" not in str(error.value)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_unknown_person_label_names_the_param(dataset, tiny_checkpoints):
    store, _ = dataset
    cfg = DetectConfig(
        source="model", checkpoint=tiny_checkpoints["detector"], person_label="pedestrian", device="cpu"
    )
    with pytest.raises(ParamError, match="detect.person_label"):
        run_detect(store, cfg, None, progress=False)


# ----------------------------------------------------------------------------------------------------------
# Frame batches shared with the pose stage


def test_the_tracker_runs_at_the_rate_of_the_kept_frames():
    """ByteTrack's lost_track_buffer scales with the rate of the frames it sees: 12.5 a second for a 25 fps
    video at stride 2 and for a 30 fps one sampled by time (steps of 2 and 3, 2.4 on average), the video's
    own rate for one slower than the sampling. A header rate that is a tick (1000, a browser's recording) or
    none gives ByteTrack's own 30, not 416 (lost tracks kept 33 times too long)."""
    from types import SimpleNamespace

    from transmodal.data.frames import sample_numbers, sample_step

    rows = []
    for video_id, fps in (("pal", 25.0), ("ntsc", 30.0), ("slow", 10.0), ("tick", 1000.0), ("none", 0.0)):
        frames = int(4 * fps) if 0 < fps < 1000 else 120  # no usable rate: one frame in 2 kept
        kept = np.unique(sample_numbers(frames, sample_step(fps, 2, 25.0)))
        rows.append(
            pd.DataFrame({"video_id": video_id, "frame_idx": kept, "fps": fps, "width": 8, "height": 8})
        )
    ids = ["pal", "ntsc", "slow", "tick", "none"]
    store = SimpleNamespace(frames=pd.concat(rows, ignore_index=True), video_ids=ids)
    rates = {video_id: video.frame_rate for video_id, video in stored_videos(store).items()}
    assert rates["pal"] == 12.5 and rates["slow"] == 10.0
    assert rates["tick"] == rates["none"] == 30.0
    # predict samples by timestamp and knows its rate: a tick header's kept frames come 12.5 a second
    store.sampling_rate = 12.5
    rates = {video_id: video.frame_rate for video_id, video in stored_videos(store).items()}
    assert rates["tick"] == rates["none"] == 12.5 and rates["pal"] == 12.5 and rates["slow"] == 10.0
    assert rates["ntsc"] == pytest.approx(12.5, abs=0.1)


def test_frame_batches_span_videos_in_order_and_every_batch_but_the_last_is_full(dataset):
    store, _ = dataset
    videos = stored_videos(store)
    assert list(videos) == store.video_ids and "broken" not in videos
    batches = list(iter_frame_batches(store, list(videos), 5))
    assert [sum(len(piece.frame_idx) for piece in batch) for batch in batches][:-1] == [5] * (
        len(batches) - 1
    )
    pieces = [piece for batch in batches for piece in batch]
    for video_id, info in videos.items():
        mine = [piece for piece in pieces if piece.video_id == video_id]
        assert [piece.start for piece in mine] == np.cumsum([0] + [len(p.frame_idx) for p in mine])[
            :-1
        ].tolist()
        np.testing.assert_array_equal(np.concatenate([piece.frame_idx for piece in mine]), info.frame_idx)
        np.testing.assert_array_equal(np.concatenate([p.frames for p in mine]), store.read(video_id)[1])
    assert any(len({piece.video_id for piece in batch}) > 1 for batch in batches)  # a batch spans videos


@pytest.mark.parametrize("per_unit", [1, 2, 64])
def test_frame_batches_of_videos_stored_in_chunks_are_the_same_batches(
    dataset, tmp_path, monkeypatch, per_unit
):
    """Videos are read a stored chunk at a time: with chunks of 3 frames every batch holds the same frames
    (video, position, pixels) as with each video in one chunk, and units still end their batches."""
    import transmodal.data.frames as frames_module

    store, _ = dataset
    index = pd.DataFrame(
        {"video_id": [*SPECS, "empty"], "path": [f"{name}.avi" for name in [*SPECS, "empty"]]}
    )
    monkeypatch.setattr(frames_module, "CHUNK_BYTES", 3 * HEIGHT * WIDTH * 3)
    extract_frames(
        index, store.directory.parent / "videos", tmp_path / "chunked", stride=STRIDE, clip_length=4,
        videos_per_shard=2, progress=False,
    )  # fmt: skip
    chunked = FrameStore(tmp_path / "chunked")
    assert len(list(chunked.iter_chunks("solo"))) > 2

    def frames_of(batch):
        rows = [(p.video_id, p.start + k, p.frame_idx[k]) for p in batch for k in range(len(p.frame_idx))]
        return rows, np.concatenate([p.frames for p in batch])

    ids = store.video_ids
    whole = list(iter_frame_batches(store, ids, 5, per_unit))
    pieces = list(iter_frame_batches(chunked, ids, 5, per_unit))
    assert len(pieces) == len(whole)
    for ours, theirs in zip(pieces, whole, strict=True):
        (rows, pixels), (expected_rows, expected) = frames_of(ours), frames_of(theirs)
        assert rows == expected_rows
        np.testing.assert_array_equal(pixels, expected)


def test_pipelined_launches_the_next_batch_before_finishing_one():
    events = []
    pipelined(
        iter(range(3)),
        lambda b: events.append(("launch", b)) or b * 10,
        lambda b, out: events.append(("finish", b, out)),
    )
    assert events == [
        ("launch", 0),
        ("launch", 1),
        ("finish", 0, 0),
        ("launch", 2),
        ("finish", 1, 10),
        ("finish", 2, 20),
    ]
    pipelined(iter([]), None, None)  # no batches: nothing called


class Interrupted(Exception):
    pass


def count_forwards(model, stop: int | None = None) -> list[int]:
    """Count ``model``'s forward calls (the batch sizes), and fail the ``stop``-th as a killed run would."""
    calls: list[int] = []
    forward = type(model).forward

    def counted(pixel_values):
        calls.append(len(pixel_values))
        if len(calls) == stop:
            raise Interrupted
        return forward(model, pixel_values)

    model.forward = counted
    return calls


def test_an_interrupted_run_resumes_from_its_finished_units(dataset, tiny_checkpoints, tmp_path, capsys):
    """The units of videos an interrupted detect finished are read back, only the others are detected, and the
    tracks and counts are those of a run that was never interrupted."""
    store, _ = dataset
    cfg = DetectConfig(
        source="model", checkpoint=tiny_checkpoints["detector"], score_threshold=0.0, low_score_threshold=0.0,
        track_activation_threshold=0.0, batch_size=4, device="cpu",
    )  # fmt: skip
    cfg = replace(cfg, person_label=tiny_detector_favourite_label(cfg, store))
    detector = PersonDetector.from_config(cfg)
    whole_calls = count_forwards(detector)
    whole, whole_metrics = run_detect(store, cfg, None, progress=False, detector=detector, videos_per_unit=1)
    parts = tmp_path / "partial" / "detect"
    count_forwards(detector, stop=len(whole_calls))  # killed in its last batch
    with pytest.raises(Interrupted):
        run_detect(store, cfg, None, progress=False, detector=detector, parts_dir=parts, videos_per_unit=1)
    finished = list(parts.rglob("unit-*.parquet"))
    assert 0 < len(finished) < whole_metrics["videos"]  # one unit a video
    calls = count_forwards(detector)
    tracks, metrics = run_detect(
        store, cfg, None, progress=True, detector=detector, parts_dir=parts, videos_per_unit=1
    )
    assert f"detect: resuming, {len(finished)} of" in capsys.readouterr().out
    assert 0 < sum(calls) < sum(whole_calls)  # only the frames of the units left
    pd.testing.assert_frame_equal(tracks, whole)
    assert metrics["detections"] == whole_metrics["detections"] > 0
    # a unit in the middle missing (under torchrun: a killed process's): only its videos are detected again
    (parts_folder,) = {path.parent for path in parts.rglob("unit-*.parquet")}
    (parts_folder / "unit-00001.parquet").unlink()
    calls = count_forwards(detector)
    tracks, _ = run_detect(
        store, cfg, None, progress=False, detector=detector, parts_dir=parts, videos_per_unit=1
    )
    assert 0 < sum(calls) < sum(whole_calls)
    pd.testing.assert_frame_equal(tracks, whole)
    # a finished part damaged since (a copy cut short): one line naming it, before any frame is detected
    damaged = parts_folder / "unit-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    (parts_folder / "unit-00001.parquet").unlink()  # a unit left to detect: it is not detected first
    calls = count_forwards(detector)
    with pytest.raises(CheckpointError, match=r"unit-00002\.parquet: a unit of videos the interrupted run "):
        run_detect(store, cfg, None, progress=False, detector=detector, parts_dir=parts, videos_per_unit=1)
    assert sum(calls) == 0
    # another param is another key: nothing of the other run's is taken
    calls = count_forwards(detector)
    run_detect(store, replace(cfg, batch_size=5), None, progress=False, detector=detector, parts_dir=parts,
               videos_per_unit=1)  # fmt: skip
    assert sum(calls) == sum(whole_calls)
