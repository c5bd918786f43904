"""Features stage: clip sampling, person-centric crops, normalisation, frozen VideoMAE grids, the cache."""

from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import transmodal.features.crops as crops_module
import transmodal.features.store as store_module
from transmodal.data.coco import COCO_JOINTS, NUM_JOINTS
from transmodal.data.frames import FrameStore, extract_frames
from transmodal.features.backbone import FrozenBackbone, processor_class
from transmodal.features.cache import DENSE_COLUMNS, FeatureStore, shard_name
from transmodal.features.clips import clip_positions, make_clips, sequence_coverage, skipped_videos, spread
from transmodal.features.crops import (
    PixelNormalizer,
    align_pose,
    crop_frames,
    square_crop_box,
    square_crop_boxes,
)
from transmodal.features.store import (
    CROP_COLUMNS,
    CpuShare,
    ShardWriter,
    build_features,
    crop_batches,
    plan_clips,
)
from transmodal.params import KTH_ACTIONS, BackboneConfig, ClipsConfig, ParamError
from transmodal.stage import StageInputError
from transmodal.vision.checkpoints import load_processor
from transmodal.vision.tiny import write_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WIDTH, HEIGHT = 160, 120
STRIDE, LENGTH = 2, 16
NOSE, LEFT_WRIST, RIGHT_ANKLE = (COCO_JOINTS.index(name) for name in ("nose", "left_wrist", "right_ankle"))

# video_id -> (frames in the file, split, KTH-style 1-based sequences); "broken" is a zero-byte file.
VIDEOS = {
    "walker_train": (60, "train", [[1, 20], [25, 60]]),
    "walker_test": (80, "test", []),
    "walker_short": (20, "val", []),
    "broken": (0, "train", []),
}


def person_box(frame: int) -> tuple[float, float, float, float]:
    """Ground-truth box of the moving 'person' at an original 0-based frame number."""
    return 40.0 + frame, 20.0 + frame // 4, 70.0 + frame, 100.0 + frame // 4


def joint_xy(frame: int) -> np.ndarray:
    """(J, 2) ground-truth joints: joint j on the box diagonal at (j + 1) / 18 of the way."""
    x1, y1, x2, y2 = person_box(frame)
    steps = (np.arange(NUM_JOINTS) + 1) / 18
    return np.stack([x1 + steps * (x2 - x1), y1 + steps * (y2 - y1)], axis=1)


def write_video(path: Path, num_frames: int) -> None:
    if num_frames == 0:
        path.write_bytes(b"")
        return
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (WIDTH, HEIGHT))
    for frame in range(num_frames):
        image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        x1, y1, x2, y2 = (int(v) for v in person_box(frame))
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (30, 200, 240), thickness=-1)
        writer.write(image)
    writer.release()


def tracks_and_keypoints(frame_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Primary track = the ground-truth boxes; a bystander track (not primary) covers the whole frame.

    Keypoints: every joint present (score 0.9) except the left wrist on frames divisible by 6 (NaN, score 0)
    and the right ankle on frames divisible by 8 (NaN x with a positive score: still missing).
    """
    track_rows, keypoint_rows = [], []
    for video_id, frame in zip(frame_table["video_id"], frame_table["frame_idx"], strict=True):
        frame = int(frame)
        x1, y1, x2, y2 = person_box(frame)
        common = {"video_id": video_id, "frame_idx": np.int32(frame), "score": 0.9, "interpolated": False}
        track_rows.append(
            common | {"track_id": 1, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "is_primary": True}
        )
        track_rows.append(
            common | {"track_id": 2, "x1": 0.0, "y1": 0.0, "x2": 160.0, "y2": 120.0, "is_primary": False}
        )
        xy = joint_xy(frame)
        score = np.full(NUM_JOINTS, 0.9)
        if frame % 6 == 0:
            xy[LEFT_WRIST] = np.nan
            score[LEFT_WRIST] = 0.0
        if frame % 8 == 0:
            xy[RIGHT_ANKLE, 0] = np.nan
        row = {"video_id": video_id, "frame_idx": np.int32(frame)}
        for j, name in enumerate(COCO_JOINTS):
            row |= {f"{name}_x": xy[j, 0], f"{name}_y": xy[j, 1], f"{name}_score": score[j]}
        keypoint_rows.append(row)
    tracks = pd.DataFrame(track_rows).astype({c: np.float32 for c in ("x1", "y1", "x2", "y2", "score")})
    tracks["fallback"] = False
    return tracks, pd.DataFrame(keypoint_rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Tiny videos -> frames store, tracks, keypoints, index and a tiny VideoMAE checkpoint."""
    root = tmp_path_factory.mktemp("features")
    (root / "videos").mkdir()
    rows = []
    for n, (video_id, (num_frames, split, sequences)) in enumerate(VIDEOS.items()):
        write_video(root / "videos" / f"{video_id}.avi", num_frames)
        rows.append(
            {
                "video_id": video_id,
                "path": f"videos/{video_id}.avi",
                "label": "walking",
                "label_idx": 5,
                "group": n,
                "scenario": "d1",
                "split": split,
                "sequences": sequences,
            }
        )
    index = pd.DataFrame(rows)
    index.attrs["class_names"] = list(KTH_ACTIONS)  # as the dataset index carries them
    extract_frames(
        index, root, root / "frames", stride=STRIDE, clip_length=LENGTH, videos_per_shard=2, progress=False
    )
    store = FrameStore(root / "frames")
    tracks, keypoints = tracks_and_keypoints(store.frames)
    write_backbone(root / "backbone", seed=2)
    return {
        "root": root,
        "index": index,
        "store": store,
        "tracks": tracks,
        "keypoints": keypoints,
        "checkpoint": str(root / "backbone"),
        "clips_cfg": ClipsConfig(length=LENGTH, per_video_train=4, per_video_test=2, crop_margin=0.1),
    }


def backbone_cfg(world: dict, **overrides) -> BackboneConfig:
    settings = {"checkpoint": world["checkpoint"], "batch_size": 4, "device": "cpu", "clips_per_shard": 4}
    return BackboneConfig(**(settings | overrides))


def build(world: dict, name: str, **overrides) -> tuple[dict, Path, Path]:
    features_dir, clips_path = world["root"] / name / "features", world["root"] / name / "clips.parquet"
    summary = build_features(
        world["index"],
        world["store"],
        world["tracks"],
        world["keypoints"],
        world["clips_cfg"],
        backbone_cfg(world, **overrides),
        features_dir,
        clips_path,
        progress=False,
    )
    return summary, features_dir, clips_path


@pytest.fixture(scope="module")
def built(world) -> dict:
    summary, features_dir, clips_path = build(world, "first")
    return {
        "summary": summary,
        "dir": features_dir,
        "clips": clips_path,
        "store": FeatureStore(features_dir, clips_path),
    }


# --- clip sampling -------------------------------------------------------------------------------------------


def test_spread_is_even_distinct_and_central():
    assert spread(25, 2).tolist() == [6, 18]
    assert spread(3, 4).tolist() == [0, 1, 2]  # fewer starts than asked: all of them, once
    assert spread(9, 1).tolist() == [4]  # one clip: the middle window
    picked = spread(1000, 7)
    assert len(set(picked.tolist())) == 7 and picked.min() >= 0 and picked.max() < 1000


def test_clip_positions_stay_inside_one_sequence():
    frame_idx = np.arange(0, 400, 2)  # kept frames of a 400-frame video at stride 2
    sequences = [(1, 95), (96, 185), (186, 245), (246, 360)]  # person01_boxing_d1 of KTH's 00sequences.txt
    clips = clip_positions(frame_idx, sequences, LENGTH, count=4)
    assert len(clips) == 4
    for positions, padded, sequence in clips:
        numbers = frame_idx[positions] + 1  # 1-based, as in the sequence file
        assert not padded and np.all(np.diff(positions) == 1)
        start, end = sequences[sequence]  # the sequence recorded for the clip holds all of it
        assert np.all((numbers >= start) & (numbers <= end)), numbers
    assert [sequence for _, _, sequence in clips] == [0, 1, 2, 3]  # here one clip lands in each sequence
    short = clip_positions(frame_idx, [(1, 20), (41, 70), (101, 110)], LENGTH, count=4, per_sequence=1)
    assert [(padded, sequence) for _, padded, sequence in short] == [(True, 0), (True, 1), (True, 2)]
    # No sequence holds 16 kept frames (KTH running clips are this short): the longest one, padded.
    (positions, padded, sequence), *rest = clip_positions(
        frame_idx, [(1, 20), (41, 70), (101, 110)], LENGTH, count=4
    )
    assert padded and not rest and sequence == 1
    # No sequences listed: the whole video is the one segment.
    assert {sequence for _, _, sequence in clip_positions(frame_idx, [], LENGTH, count=3)} == {-1}
    # Per sequence (val/test): every sequence holding a window gets its clips, spread inside it.
    uneven = [
        (1, 200),
        (201, 240),
        (241, 400),
        (1, 100),
    ]  # 100, 20, 80 kept frames; the last overlaps the first
    clips = clip_positions(frame_idx, uneven, LENGTH, count=2, per_sequence=2)
    assert [sequence for _, _, sequence in clips] == [0, 0, 1, 1, 2, 2, 3, 3]
    for window, _, sequence in clips:
        numbers = frame_idx[window] + 1
        assert uneven[sequence][0] <= numbers.min() and numbers.max() <= uneven[sequence][1]
    spread_over_video = clip_positions(frame_idx, uneven, LENGTH, count=3)
    assert 1 not in [sequence for _, _, sequence in spread_over_video]  # the short sequence is missed
    # Overlapping sequences: a window inside both belongs to the first listed.
    ((_, _, sequence),) = clip_positions(frame_idx, [(1, 60), (1, 40)], LENGTH, count=1)
    assert sequence == 0
    assert (frame_idx[positions] + 1).tolist() == list(range(41, 70, 2)) + [69]


def test_make_clips_sampling(world):
    store = world["store"]
    clips = make_clips(world["index"], store.videos, store.frames, world["clips_cfg"])
    assert skipped_videos(world["index"], store.videos) == ["broken"]
    assert "broken" not in set(clips["video_id"])
    assert clips["clip_id"].is_unique
    by_video = {v: group for v, group in clips.groupby("video_id")}

    # Train: only the second sequence (frames 25-60, 1-based) holds 16 kept frames: 3 windows, 3 clips (not 4).
    train = by_video["walker_train"]
    assert train["clip_id"].tolist() == ["walker_train#0", "walker_train#1", "walker_train#2"]
    assert [f[0] for f in train["frame_idx"]] == [24, 26, 28]
    for frames in train["frame_idx"]:
        assert len(frames) == LENGTH and np.all(np.diff(frames) == STRIDE)
        assert frames.min() + 1 >= 25 and frames.max() + 1 <= 60

    # Test: no sequences, 40 kept frames -> 25 windows; 2 clips at the centres of two equal bins.
    test = by_video["walker_test"]
    assert [f[0] for f in test["frame_idx"]] == [6 * STRIDE, 18 * STRIDE]
    assert not test["padded"].any() and set(test["split"]) == {"test"}

    # Short: 10 kept frames -> one clip, the last kept frame repeated.
    (short,) = by_video["walker_short"]["frame_idx"]
    assert by_video["walker_short"]["padded"].tolist() == [True]
    assert short.tolist() == list(range(0, 20, 2)) + [18] * 6
    assert not by_video["walker_train"]["padded"].any()


# --- crops ---------------------------------------------------------------------------------------------------


def test_square_crop_box_geometry():
    # Union (40, 30, 70, 80): larger side 50, +10% each side -> 60, centred on (55, 55).
    boxes = np.array([[40, 30, 60, 70], [50, 35, 70, 80], [np.nan] * 4])
    assert square_crop_box(boxes, WIDTH, HEIGHT, 0.1) == (25, 25, 85, 85)
    # Near the left edge: shifted right to stay inside the frame, size kept.
    assert square_crop_box(np.array([[0, 10, 20, 50]]), WIDTH, HEIGHT, 0.1) == (0, 6, 48, 54)
    # Taller than the frame after the margin: side 143 > 120, so it covers the frame's height, near the person.
    assert square_crop_box(np.array([[60, 5, 100, 115]]), WIDTH, HEIGHT, 0.15) == (9, -11, 152, 132)
    # Whole-frame union or no box at all: capped at the frame's larger side, centred vertically.
    assert square_crop_box(np.array([[0, 0, 160, 120]]), WIDTH, HEIGHT, 0.15) == (0, -20, 160, 140)
    assert square_crop_box(np.full((3, 4), np.nan), WIDTH, HEIGHT, 0.15) == (0, -20, 160, 140)


def test_crop_frames_cuts_resizes_and_pads_black():
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, (3, HEIGHT, WIDTH, 3), dtype=np.uint8)  # no zero pixel inside the frame
    inside = crop_frames(frames, (25, 25, 85, 85), 60)
    assert np.array_equal(inside, frames[:, 25:85, 25:85])
    chosen = crop_frames(frames, (25, 25, 85, 85), 60, positions=[2, 0, 0])  # a padded clip repeats frames
    assert np.array_equal(chosen, frames[[2, 0, 0], 25:85, 25:85])
    # shrinking and enlarging: the processor's resampling (PIL bilinear, antialiased), within one level
    for box, size in (((25, 25, 85, 85), 30), ((20, 10, 130, 120), 64), ((25, 25, 65, 65), 64)):
        resized = crop_frames(frames, box, size)
        x1, y1, x2, y2 = box
        for frame, crop in zip(frames, resized, strict=True):
            reference = np.asarray(Image.fromarray(frame[y1:y2, x1:x2]).resize((size, size), Image.BILINEAR))
            assert np.abs(crop.astype(int) - reference).max() <= 1
        assert np.array_equal(resized, crop_frames(frames, box, size))  # the same pixels every time
    padded = crop_frames(frames, (9, -11, 152, 132), 143)
    assert np.all(padded[:, :11] == 0) and np.all(padded[:, 11 + HEIGHT :] == 0)  # black above and below
    assert np.array_equal(padded[:, 11 : 11 + HEIGHT], frames[:, :, 9:152])


def test_square_crop_boxes_rows_equal_the_one_clip_result():
    rng = np.random.default_rng(3)
    x1, y1 = rng.uniform(-10, 150, (2, 6, 5))
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 90, (6, 5)), y1 + rng.uniform(5, 130, (6, 5))], axis=-1)
    boxes[0, 1:] = np.nan  # one box only
    boxes[1] = np.nan  # no box at all: the whole frame
    boxes[2, ::2, 1] = np.nan  # some frames without a box
    sizes = np.array([(160, 120), (160, 120), (120, 160), (320, 240), (160, 120), (64, 64)])
    batched = square_crop_boxes(boxes, sizes[:, 0], sizes[:, 1], 0.15)
    assert batched.shape == (6, 4) and batched.dtype == np.int64
    for row, (w, h) in enumerate(sizes):
        assert tuple(batched[row]) == square_crop_box(boxes[row], int(w), int(h), 0.15)


def test_crop_frames_reuses_given_crops_and_resizes_a_repeat_once(monkeypatch):
    rng = np.random.default_rng(4)
    frames = rng.integers(1, 256, (5, HEIGHT, WIDTH, 3), dtype=np.uint8)
    box = (9, -11, 152, 132)  # leaves the frame: the black-canvas path
    fresh = crop_frames(frames, box, 64, positions=[0, 1, 2, 2, 2])
    resized = []
    original = crops_module.resize_squares
    monkeypatch.setattr(
        crops_module,
        "resize_squares",
        lambda squares, size: resized.append(len(squares)) or original(squares, size),
    )
    out = np.zeros((5, 64, 64, 3), np.uint8)
    again = crop_frames(frames, box, 64, positions=[0, 1, 2, 2, 2], out=out, reuse={0: fresh[0], 1: fresh[1]})
    assert again is out and np.array_equal(again, fresh)
    assert resized == [1]  # frames 0 and 1 were copied from ``reuse``, frame 2 resized once for 3 slots
    marker = np.full((64, 64, 3), 7, np.uint8)  # reuse is trusted: it must hold the same box's crops
    assert np.all(crop_frames(frames, box, 64, positions=[3], reuse={3: marker}) == 7)


def test_normalize_into_is_the_exact_table_lookup():
    normalizer = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD, 1 / 255)
    for size in (8, 64):
        clip = np.random.default_rng(size).integers(0, 256, (LENGTH, size, size, 3), dtype=np.uint8)
        out = np.full((LENGTH, 3, size, size), np.nan, np.float32)
        normalizer.normalize_into(clip, out)
        for channel in range(3):
            expected = normalizer.table[channel, 0][clip[..., channel]]  # (T, S, S)
            assert np.array_equal(out[:, channel].view(np.uint32), expected.view(np.uint32))
    with pytest.raises(ValueError, match="contiguous"):
        normalizer.normalize_into(clip, np.empty((LENGTH, 3, 64, 64), np.float32)[:, :, ::-1])


def test_normalisation_matches_the_checkpoints_processor(world):
    processor = load_processor(processor_class(), world["checkpoint"], "backbone.checkpoint")
    normalizer = PixelNormalizer.from_processor(processor)
    assert normalizer.image_mean == pytest.approx(IMAGENET_MEAN) and normalizer.image_std == pytest.approx(
        IMAGENET_STD
    )
    assert normalizer.image_mean != pytest.approx((0.5, 0.5, 0.5))  # not a default-constructed processor
    crops = np.random.default_rng(1).integers(0, 256, (2, LENGTH, 64, 64, 3), dtype=np.uint8)
    expected = processor([list(video) for video in crops], return_tensors="pt")[
        "pixel_values"
    ]  # (B, T, 3, S, S)
    mine = normalizer(crops)
    assert mine.shape == expected.shape == (2, LENGTH, 3, 64, 64)
    torch.testing.assert_close(mine, expected.float(), atol=1e-5, rtol=0)


def test_align_pose_normalises_to_the_crop_and_masks_missing():
    xy = np.array([[[40.0, 50.0], [np.nan, 60.0], [100.0, 140.0]]])  # (T=1, J=3, 2)
    score = np.array([[0.8, 0.7, 0.0]])
    unit, kept_score, mask = align_pose(xy, score, (20, 30, 120, 130))
    assert mask.tolist() == [[True, False, False]]
    np.testing.assert_allclose(unit[0, 0], [0.2, 0.2])
    assert np.all(unit[0, 1:] == 0) and kept_score[0].tolist() == pytest.approx([0.8, 0.0, 0.0])


# --- backbone ------------------------------------------------------------------------------------------------


def test_backbone_grid_is_time_major_and_matches_config(world):
    backbone = FrozenBackbone(backbone_cfg(world), LENGTH)
    config = backbone.model.config
    grid = (config.num_frames // config.tubelet_size, (config.image_size // config.patch_size) ** 2)
    assert backbone.grid == grid == (8, 16) and backbone.hidden_size == config.hidden_size == 64
    crops = np.random.default_rng(2).integers(0, 256, (2, LENGTH, 64, 64, 3), dtype=np.uint8)
    tokens = backbone.encode(crops)
    assert tokens.shape == (2, *grid, 64) and tokens.dtype == torch.float16
    with torch.inference_mode():
        hidden = backbone.model(pixel_values=backbone.pixel_values(crops)).last_hidden_state  # (B, G * P, D)
    assert torch.equal(tokens, hidden.reshape(2, *grid, 64).half())  # group-major rows, no transpose
    # Time-major: changing only the first tubelet (frames 0-1) changes only group 0 of the patch embeddings.
    captured = []
    hook = backbone.model.embeddings.register_forward_hook(lambda module, args, out: captured.append(out))
    changed = crops.copy()
    changed[:, :2] = 255 - changed[:, :2]
    backbone.encode(crops), backbone.encode(changed)
    hook.remove()
    delta = (captured[1] - captured[0]).abs().reshape(2, *grid, 64).amax(dim=(0, 2, 3))  # (G,)
    assert delta[0] > 0 and torch.all(delta[1:] == 0)


def test_clip_length_must_match_the_checkpoint(world):
    with pytest.raises(ParamError, match=r"clips\.length is 8.*num_frames=16"):
        FrozenBackbone(backbone_cfg(world), 8)


# --- the stage and its cache ---------------------------------------------------------------------------------


def test_build_features_summary_and_layout(built):
    summary, store = built["summary"], built["store"]
    assert summary["clips"] == 6 and summary["clips_per_split"] == {"train": 3, "val": 1, "test": 2}
    assert (
        summary["padded_clips"] == 1 and summary["skipped_videos"] == 1 and summary["skipped"] == ["broken"]
    )
    assert summary["grid"] == [8, 16, 64] and summary["shards"] == 2 and summary["clips_without_track"] == 0
    assert sorted(p.name for p in built["dir"].iterdir()) == ["backbone.json", shard_name(0), shard_name(1)]
    meta = store.backbone
    assert meta["grid"] == [8, 16] and meta["patches_per_group"] == 16 and meta["hidden_size"] == 64
    assert meta["num_frames"] == 16 and meta["tubelet_size"] == 2 and meta["image_size"] == 64
    assert meta["image_mean"] == pytest.approx(IMAGENET_MEAN) and meta["dtype"] == "float16"
    clips = store.clips
    assert clips["shard"].tolist() == [0, 0, 0, 0, 1, 1] and clips["offset"].tolist() == [0, 1, 2, 3, 0, 1]
    written = pd.read_parquet(store.clips_path)  # the store holds these list columns as dense arrays
    assert len(written["pose_xy"].iloc[0]) == LENGTH * NUM_JOINTS * 2
    assert len(written["pose_mask"].iloc[0]) == LENGTH * NUM_JOINTS
    assert not set(DENSE_COLUMNS) & set(clips.columns)
    assert not list(built["dir"].parent.glob(".*tmp"))  # no temporary folder left behind


def half_up(value: float) -> int:
    return math.floor(value + 0.5)


def test_crop_boxes_follow_the_primary_track(built):
    clips = built["store"].clips
    for frames, *box in zip(clips["frame_idx"], *(clips[c] for c in CROP_COLUMNS), strict=True):
        truth = np.array([person_box(int(f)) for f in frames])  # the bystander box must not widen the crop
        x1, y1, x2, y2 = truth[:, 0].min(), truth[:, 1].min(), truth[:, 2].max(), truth[:, 3].max()
        side = half_up(max(x2 - x1, y2 - y1) * 1.2)  # union + 10% of its larger side on each side, square
        assert side <= HEIGHT  # this fixture never needs padding: the square must lie inside the frame
        left = min(max(half_up((x1 + x2) / 2 - side / 2), 0), WIDTH - side)  # centred, then shifted inside
        top = min(max(half_up((y1 + y2) / 2 - side / 2), 0), HEIGHT - side)
        assert box == [left, top, left + side, top + side]


def test_pose_is_aligned_frame_by_frame(built):
    store = built["store"]
    xy, score, mask = store.pose(list(range(len(store.clips))))
    assert xy.shape == (6, LENGTH, NUM_JOINTS, 2) and xy.dtype == np.float32 and mask.dtype == bool
    for row, clip in enumerate(store.clips.itertuples()):
        side = clip.crop_x2 - clip.crop_x1
        for t, frame in enumerate(clip.frame_idx):
            nose = joint_xy(int(frame))[NOSE]
            expected = [(nose[0] - clip.crop_x1) / side, (nose[1] - clip.crop_y1) / side]
            np.testing.assert_allclose(xy[row, t, NOSE], expected, atol=1e-6)
            assert mask[row, t, LEFT_WRIST] == (frame % 6 != 0)
            assert mask[row, t, RIGHT_ANKLE] == (frame % 8 != 0)  # NaN x with a positive score is missing
            assert score[row, t, NOSE] == pytest.approx(0.9)
    assert np.all(xy[~mask] == 0) and np.all(score[~mask] == 0)
    assert not mask.all() and np.all((xy[mask] >= 0) & (xy[mask] <= 1))  # every joint lies inside its crop


def test_cached_tokens_equal_a_fresh_forward(world, built):
    store = built["store"]
    clips = store.clips
    backbone = FrozenBackbone(backbone_cfg(world), LENGTH)
    crops = []
    for clip in clips.itertuples():
        frame_idx, frames = world["store"].read(clip.video_id)
        box = tuple(int(getattr(clip, c)) for c in CROP_COLUMNS)
        crops.append(crop_frames(frames[np.searchsorted(frame_idx, clip.frame_idx)], box, 64))
    crops = np.stack(crops)  # (6, T, S, S, 3)
    fresh = torch.cat(
        [backbone.encode(crops[i : i + 4]) for i in range(0, len(crops), 4)]
    )  # the stage's batches
    cached = store.tokens(list(range(len(clips))))
    assert cached.dtype == torch.float16 and torch.equal(cached, fresh)
    # Person-centred: mid-clip, the crop's centre pixel has the person's colour (R=240 in RGB), not background (90).
    assert np.all(np.abs(crops[:, LENGTH // 2, 32, 32, 0].astype(int) - 240) < 30)


def test_plan_clips_matches_a_per_clip_lookup(world):
    store = world["store"]
    clips = make_clips(world["index"], store.videos, store.frames, world["clips_cfg"])
    tracks, keypoints = world["tracks"].copy(), world["keypoints"].copy()
    first_train = clips.loc[clips["video_id"] == "walker_train", "frame_idx"].iloc[0]
    gone = (tracks["video_id"] == "walker_train") & tracks["frame_idx"].isin(first_train[::3])
    tracks = tracks[~gone]  # some frames without a primary box
    tracks = tracks[tracks["video_id"] != "walker_short"]  # a video without any track: whole-frame crop
    first_test = clips.loc[clips["video_id"] == "walker_test", "frame_idx"].iloc[0]
    doubled = tracks[(tracks["video_id"] == "walker_test") & tracks["is_primary"]]
    doubled = doubled[doubled["frame_idx"].isin(first_test[:3])].copy()
    assert len(doubled) == 3
    doubled[["x1", "x2"]] -= 9.0  # a second primary row on a frame: the first row wins
    tracks = pd.concat([tracks, doubled], ignore_index=True)
    keypoints = keypoints[~keypoints["frame_idx"].isin(first_train[::5])]  # frames without pose
    planned, without_track = plan_clips(clips, store.videos, tracks, keypoints, 0.1)

    sizes = store.videos.set_index("video_id")
    primary = tracks[tracks["is_primary"]]
    assert without_track == int((clips["video_id"] == "walker_short").sum()) == 1
    for row, clip in enumerate(clips.itertuples()):
        boxes, joints = np.full((LENGTH, 4), np.nan), np.full((LENGTH, 3, NUM_JOINTS), np.nan)
        for t, frame in enumerate(clip.frame_idx):
            hits = primary[(primary["video_id"] == clip.video_id) & (primary["frame_idx"] == frame)]
            if len(hits):
                boxes[t] = hits[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)[0]
            pose = keypoints[(keypoints["video_id"] == clip.video_id) & (keypoints["frame_idx"] == frame)]
            for k, part in enumerate(("x", "y", "score")):
                if len(pose):
                    joints[t, k] = pose[[f"{name}_{part}" for name in COCO_JOINTS]].to_numpy(np.float64)[0]
        size = sizes.loc[clip.video_id]
        box = square_crop_box(boxes, int(size["width"]), int(size["height"]), 0.1)
        xy, score, mask = align_pose(joints[:, :2].transpose(0, 2, 1), joints[:, 2], box)
        got = planned.iloc[row]
        assert [got[c] for c in CROP_COLUMNS] == list(box)
        assert np.array_equal(got["pose_xy"], xy.reshape(-1)) and np.array_equal(
            got["pose_mask"], mask.reshape(-1)
        )
        assert np.array_equal(got["pose_score"], score.reshape(-1))
    assert not planned["pose_mask"].map(np.all).all()  # the dropped pose frames are masked


def test_parallel_crop_batches_equal_serial_ones(world):
    store = world["store"]
    clips = make_clips(world["index"], store.videos, store.frames, world["clips_cfg"])
    clips, _ = plan_clips(clips, store.videos, world["tracks"], world["keypoints"], 0.1)
    clips = pd.concat([clips, clips], ignore_index=True)  # two runs of each video: several batches
    normalizer = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD, 1 / 255)
    serial = list(crop_batches(store, clips, 64, 5, normalizer, CpuShare(1, 1)))
    parallel = list(crop_batches(store, clips, 64, 5, normalizer, CpuShare(3, 0)))
    assert [len(b) for b in serial] == [len(b) for b in parallel] == [5, 5, 2]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    lost = clips.assign(video_id=clips["video_id"].where(clips.index < 8, "broken"))  # no decoded frames
    with pytest.raises(KeyError, match="broken"):  # a crop worker's error reaches the consumer
        list(crop_batches(store, lost, 64, 5, normalizer, CpuShare(3, 0)))


def test_listed_sequences_without_a_kept_frame_are_counted():
    # KTH lists some sequences past the end of the decoded video: they get no clip, and a video none of whose
    # sequences holds a kept frame is scored whole; features.json counts both, whatever clips are sampled
    ids = ["past", "beyond", "fine", "train", "plain", "gone"]
    index = pd.DataFrame(
        {
            "video_id": ids,
            "split": ["test", "test", "val", "train", "test", "test"],
            "sequences": [[[1, 20], [200, 260]], [[500, 600]], [[1, 20]], [[900, 990]], None, [[300, 400]]],
        }
    )
    videos = pd.DataFrame({"video_id": ids, "status": ["ok"] * 5 + ["skipped"]})
    frames = pd.DataFrame(  # 100 kept frames (0, 2, ..., 198) a video; "gone" was skipped
        {"video_id": np.repeat(ids[:5], 100), "frame_idx": np.tile(np.arange(0, 200, 2), 5)}
    )
    assert sequence_coverage(index, videos, frames) == {
        "sequences_without_frames": 2,  # past's second (frames 200-260) and beyond's only one
        "sequences_without_frames_ids": ["past:1", "beyond:0"],
        "videos_scored_whole": 1,
        "videos_scored_whole_ids": ["beyond"],
    }


def test_a_long_video_is_cropped_in_runs_of_clips_with_the_same_crops(world, monkeypatch):
    # predict's windows of one long video: cropped MAX_CLIPS_PER_JOB at a time, not all at once
    from transmodal.features import store as store_module

    store = world["store"]
    clips = make_clips(world["index"], store.videos, store.frames, world["clips_cfg"])
    clips, _ = plan_clips(clips, store.videos, world["tracks"], world["keypoints"], 0.1)
    one = clips[clips["video_id"] == clips["video_id"].iloc[0]]
    clips = pd.concat([one] * 5, ignore_index=True)  # one video with 5 x its clips, in order
    whole = list(crop_batches(store, clips, 64, 4, None, CpuShare(2, 0)))
    cropped = []
    real = store_module.crop_video
    monkeypatch.setattr(store_module, "crop_video", lambda *job: cropped.append(len(job[2])) or real(*job))
    monkeypatch.setattr(store_module, "MAX_CLIPS_PER_JOB", 3)
    runs = list(crop_batches(store, clips, 64, 4, None, CpuShare(2, 0)))
    assert cropped == [3] * (len(clips) // 3) + ([len(clips) % 3] if len(clips) % 3 else [])
    assert [len(b) for b in runs] == [len(b) for b in whole]
    assert all(torch.equal(a, b) for a, b in zip(whole, runs, strict=True))


def test_cpu_share_holds_steps_while_the_forward_runs():
    share, started, done = CpuShare(2, 0), threading.Event(), threading.Event()

    def step():
        started.set()
        with share.step():
            done.set()

    with share.forward():
        worker = threading.Thread(target=step)
        worker.start()
        assert started.wait(5) and not done.wait(0.2)  # no core left for preprocessing while it runs
    assert done.wait(5)  # released when the forward ends
    worker.join(5)
    with share.step(), share.step():  # two steps at once on two cores
        pass


def test_two_builds_are_byte_identical(world, built):
    _, features_dir, clips_path = build(world, "second")
    for name in ("backbone.json", shard_name(0), shard_name(1)):
        assert (features_dir / name).read_bytes() == (built["dir"] / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(clips_path), pd.read_parquet(built["clips"]))


def test_reader_tokens_for_arbitrary_rows_across_shards(built):
    store = built["store"]
    everything = torch.cat(
        [load_file(built["dir"] / shard_name(s))["tokens"] for s in (0, 1)]
    )  # (6, G, P, D)
    rows = [5, 0, 3, 4, 4, 1]  # out of order, repeated, across both shards
    tokens = store.tokens(rows)
    assert tokens.shape == (6, 8, 16, 64) and torch.equal(tokens, everything[rows])
    assert store.tokens([]).shape == (0, 8, 16, 64)
    assert not torch.equal(everything[0], everything[1])  # distinct clips give distinct grids


def test_recomputed_tokens_equal_the_cached_ones(world, built):
    """backbone.store: recompute keeps no grid on disk and encodes the rows asked for again, giving the
    cached tokens: the clip table is the cached run's but for the shard and offset columns (-1)."""
    summary, features_dir, clips_path = build(world, "recomputed", store="recompute")
    assert [p.name for p in features_dir.iterdir()] == ["backbone.json"]
    assert (summary["store"], summary["shards"], summary["clips"]) == (
        "recompute",
        0,
        built["summary"]["clips"],
    )
    cached, recomputed = built["store"], FeatureStore(features_dir, clips_path)
    assert recomputed.recomputed and not cached.recomputed
    assert recomputed.grid == cached.grid and recomputed.class_names == cached.class_names
    same = [c for c in cached.clips.columns if c not in ("shard", "offset")]
    pd.testing.assert_frame_equal(recomputed.clips[same], cached.clips[same])
    assert (recomputed.clips[["shard", "offset"]] == -1).all().all()
    rows = [5, 0, 3, 4, 4, 1]  # out of order, repeated, more than a backbone batch (4)
    assert torch.equal(recomputed.tokens(rows), cached.tokens(rows))
    for mine, theirs in zip(recomputed.pose(rows), cached.pose(rows), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert recomputed.tokens([]).shape == (0, *cached.grid)
    # the backbone runs on its own thread count, not on the head's (train.threads, set around it)
    import transmodal.features.store as store_module

    seen, encode = [], store_module.encode_clips

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return encode(*args, **kwargs)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        threaded = FeatureStore(features_dir, clips_path, backbone_threads=2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store_module, "encode_clips", counting)
            assert torch.equal(threaded.tokens(rows), cached.tokens(rows))
        assert seen == [2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_training_on_a_recomputed_cache_gives_the_cached_caches_model(world, built, tmp_path):
    from transmodal.params import load_params, section
    from transmodal.training.train import train_model

    _, features_dir, clips_path = build(world, "recomputed-train", store="recompute")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["train"] |= {"epochs": 2, "batch_size": 2}
    params["model"]["num_heads"] = 2
    params["selector"]["top_k_tokens"] = 2
    results = {}
    for name, store in (("cached", built["store"]), ("recomputed", FeatureStore(features_dir, clips_path))):
        results[name] = train_model(
            store, section(params, "model"), section(params, "selector"), section(params, "train"),
            tmp_path / name, progress=False,
        )  # fmt: skip
    pd.testing.assert_frame_equal(results["cached"][1], results["recomputed"][1])  # the curves
    assert results["cached"][0] == results["recomputed"][0]
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in results]
    assert weights[0] == weights[1]


def test_a_recomputed_cache_records_its_inputs_and_refuses_a_changed_checkpoint(world, tmp_path):
    """backbone.json holds the SHA-256 of the frames and the checkpoint (so DVC re-runs what reads it when they
    change), and a checkpoint whose files changed since is refused in one line."""
    import shutil

    checkpoint = tmp_path / "backbone"
    shutil.copytree(world["checkpoint"], checkpoint)
    _, features_dir, clips_path = build(
        world, "recomputed-moved", store="recompute", checkpoint=str(checkpoint)
    )
    first = json.loads((features_dir / "backbone.json").read_text())
    assert set(first["inputs_sha256"]) == {"frames", "checkpoint"}
    write_backbone(checkpoint, seed=3)  # the same architecture, other weights
    _, again_dir, _ = build(world, "recomputed-moved-again", store="recompute", checkpoint=str(checkpoint))
    second = json.loads((again_dir / "backbone.json").read_text())
    assert second["inputs_sha256"]["checkpoint"] != first["inputs_sha256"]["checkpoint"]
    assert second["inputs_sha256"]["frames"] == first["inputs_sha256"]["frames"]
    with pytest.raises(StageInputError, match=r"backbone.json: backbone.checkpoint .* \(its files changed\)"):
        FeatureStore(features_dir, clips_path).tokens([0])


def test_a_recomputed_cache_runs_its_backbone_where_the_head_runs(world, built, tmp_path):
    """The features stage's backbone.device (here cuda, on a machine without one) does not decide where a
    recomputed cache is encoded: train and evaluate say (``encode_on``); a bad recorded param is one line."""
    _, features_dir, clips_path = build(world, "recomputed-device", store="recompute")
    description = json.loads((features_dir / "backbone.json").read_text())
    description["backbone_params"]["device"] = "cuda"
    (features_dir / "backbone.json").write_text(json.dumps(description))
    store = FeatureStore(features_dir, clips_path)
    store.encode_on("cpu")
    assert torch.equal(store.tokens([2, 0]), built["store"].tokens([2, 0]))
    description["backbone_params"]["batch_size"] = 0
    (features_dir / "backbone.json").write_text(json.dumps(description))
    with pytest.raises(StageInputError, match=r"backbone.json: backbone.batch_size is 0.*dvc repro features"):
        FeatureStore(features_dir, clips_path).tokens([0])


def test_a_recomputed_cache_removes_an_interrupted_runs_shards(world):
    """Switching to recompute after a tokens run was interrupted: its finished shards are not kept."""
    _, features_dir, _ = build(world, "recomputed-after-partial")  # a tokens run, complete
    leftover = features_dir.parent / ".partial" / "features" / "0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / shard_name(0)).write_bytes(b"a finished shard of an interrupted run")
    build(world, "recomputed-after-partial", store="recompute")
    assert not (features_dir.parent / ".partial").exists()
    assert [p.name for p in features_dir.iterdir()] == ["backbone.json"]


def test_shard_writer_bytes_equal_save_file(tmp_path):
    tokens = torch.randn(7, 2, 3, 5).to(torch.float16)
    writer = ShardWriter(tmp_path, total=7, per_shard=3, item_shape=(2, 3, 5))
    writer.write(tokens[:2]), writer.write(tokens[2:6]), writer.write(tokens[6:])  # batches straddle shards
    writer.close()
    for shard, part in enumerate((tokens[0:3], tokens[3:6], tokens[6:7])):
        save_file(
            {"tokens": part.contiguous()}, tmp_path / "reference.safetensors", metadata={"format": "pt"}
        )
        assert (tmp_path / shard_name(shard)).read_bytes() == (
            tmp_path / "reference.safetensors"
        ).read_bytes()
    with pytest.raises(ValueError, match="wrote 1 of 2"):
        (tmp_path / "short").mkdir()
        short = ShardWriter(tmp_path / "short", total=2, per_shard=2, item_shape=(2, 3, 5))
        short.write(tokens[:1])
        short.close()
    assert list((tmp_path / "short").iterdir()) == []  # no short shard under the name of a finished one


def test_a_shard_being_written_is_removed_on_ctrl_c(tmp_path):
    """The features stage's Ctrl-C handler (``remove_unfinished``) removes the shard half written; the
    finished ones stay, for the next run to resume from."""
    from transmodal import io

    tokens = torch.randn(5, 2, 3, 5).to(torch.float16)
    writer = ShardWriter(tmp_path, total=5, per_shard=3, item_shape=(2, 3, 5))
    writer.write(tokens[:4])  # shard 0 finished, shard 1 a row in
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{shard_name(1)}.tmp", shard_name(0)]
    io.remove_unfinished()
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(0)]
    assert io._UNFINISHED == set()


def test_failed_build_leaves_no_features(world):
    features_dir = world["root"] / "failed" / "features"
    with pytest.raises(ParamError, match=r"clips\.length"):
        build_features(
            world["index"],
            world["store"],
            world["tracks"],
            world["keypoints"],
            ClipsConfig(length=8),
            backbone_cfg(world),
            features_dir,
            world["root"] / "failed" / "clips.parquet",
            progress=False,
        )
    assert not features_dir.exists() and not (world["root"] / "failed" / "clips.parquet").exists()


def test_no_decodable_video_gives_an_empty_cache(world):
    out = world["root"] / "empty"
    index = world["index"][world["index"]["video_id"] == "broken"]
    summary = build_features(
        index,
        world["store"],
        world["tracks"],
        world["keypoints"],
        world["clips_cfg"],
        backbone_cfg(world),
        out / "features",
        out / "clips.parquet",
        progress=False,
    )
    assert summary["clips"] == 0 and summary["skipped_videos"] == 1 and summary["shards"] == 0
    store = FeatureStore(out / "features", out / "clips.parquet")
    assert len(store) == 0 and store.tokens([]).shape == (0, 8, 16, 64)
    assert store.pose([])[0].shape == (0, LENGTH, NUM_JOINTS, 2)


def test_planning_in_chunks_equals_planning_at_once(world, monkeypatch):
    store = world["store"]
    clips = make_clips(world["index"], store.videos, store.frames, world["clips_cfg"])
    assert len(clips) > 2
    whole, without_whole = plan_clips(clips, store.videos, world["tracks"], world["keypoints"], 0.1)
    monkeypatch.setattr(store_module, "PLAN_CHUNK", 2)
    chunked, without_chunked = plan_clips(clips, store.videos, world["tracks"], world["keypoints"], 0.1)
    assert without_whole == without_chunked
    assert list(whole.columns) == list(chunked.columns) and whole.index.equals(chunked.index)
    for column in whole.columns:
        for a, b in zip(whole[column], chunked[column], strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_frame_store_reads_from_several_threads_equal_serial_reads(world):
    fresh = FrameStore(world["store"].directory)  # no Parquet reader opened yet: the threads race to open
    video_ids = fresh.video_ids * 6
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(fresh.read, video_ids))
    for video_id, (frame_idx, frames) in zip(video_ids, results, strict=True):
        expected_idx, expected = world["store"].read(video_id)
        assert np.array_equal(frame_idx, expected_idx) and np.array_equal(frames, expected)


def test_an_error_in_the_forward_stops_the_crop_threads_at_once(world, monkeypatch):
    def failing_forward(self, pixel_values, kept=None):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(FrozenBackbone, "forward", failing_forward)
    monkeypatch.setattr(store_module, "available_cores", lambda: 3)  # a crop pool whatever the machine
    out = world["root"] / "forward-error"
    with pytest.raises(RuntimeError, match="forward failed") as caught:
        build_features(
            world["index"],
            world["store"],
            world["tracks"],
            world["keypoints"],
            world["clips_cfg"],
            backbone_cfg(world, batch_size=1),  # the crops are still being made when the first forward fails
            out / "features",
            out / "clips.parquet",
            progress=False,
        )
    # the traceback still holds build_features' frame (and so its generators): the pool must be shut anyway
    assert caught.traceback
    alive = [thread.name for thread in threading.enumerate() if thread.name.startswith("features-crop")]
    assert alive == []
    assert not (out / "features").exists()


def _interrupted_at_shard_1(world, name: str, monkeypatch) -> tuple[Path, Path]:
    """A build interrupted (Ctrl-C) as it opens shard 1: (its output folder, its partial folder)."""
    real_open = ShardWriter._open

    def interrupt_at_shard_1(self, shard):
        if shard == 1:
            raise KeyboardInterrupt
        real_open(self, shard)

    with monkeypatch.context() as patched:
        patched.setattr(ShardWriter, "_open", interrupt_at_shard_1)
        with pytest.raises(KeyboardInterrupt):
            build(world, name)
    out = world["root"] / name
    (partial,) = (out / ".partial" / "features").iterdir()
    return out, partial


def test_an_interrupted_build_resumes_from_its_finished_shards(world, built, monkeypatch):
    """Shard 0 finished before the interruption is not encoded again; the output is the same bytes."""
    import transmodal.features.store as store_module

    real_forward = store_module.FrozenBackbone.forward
    out, partial = _interrupted_at_shard_1(world, "resumed", monkeypatch)
    assert not (out / "features").exists() and not (out / "clips.parquet").exists()
    assert sorted(p.name for p in partial.iterdir()) == [shard_name(0)]  # no half-written shard 1
    encoded = []
    monkeypatch.setattr(
        store_module.FrozenBackbone,
        "forward",
        lambda self, px, kept=None: encoded.append(len(px)) or real_forward(self, px, kept),
    )
    build(world, "resumed")
    per_shard = backbone_cfg(world).clips_per_shard
    assert sum(encoded) == built["summary"]["clips"] - per_shard  # only the clips of shard 1 and later
    for name in ("backbone.json", shard_name(0), shard_name(1)):
        assert (out / "features" / name).read_bytes() == (built["dir"] / name).read_bytes(), name
    assert (out / "clips.parquet").read_bytes() == built["clips"].read_bytes()
    assert not (out / ".partial").exists()


def test_a_finished_shard_cut_short_is_encoded_again(world, built, monkeypatch):
    """A shard renamed before it reached the disk (a power cut) is redone on resume, not moved into the
    cache: only whole shards (the header's shape, the file's length) count as finished."""
    out, partial = _interrupted_at_shard_1(world, "cut", monkeypatch)
    finished = partial / shard_name(0)
    grid = tuple(built["store"].grid)
    per_shard = backbone_cfg(world).clips_per_shard
    assert store_module.shard_complete(finished, per_shard, grid)
    assert not store_module.shard_complete(finished, per_shard - 1, grid)  # another shape
    whole = finished.read_bytes()
    finished.write_bytes(b"\xff" * 8 + whole[8:])  # a damaged header length: refused, not read
    assert not store_module.shard_complete(finished, per_shard, grid)
    finished.write_bytes(whole[:-100])  # the last rows never reached the disk
    assert not store_module.shard_complete(finished, per_shard, grid)
    build(world, "cut")
    for name in ("backbone.json", shard_name(0), shard_name(1)):
        assert (out / "features" / name).read_bytes() == (built["dir"] / name).read_bytes(), name


def test_the_resume_key_holds_the_device_and_dtype_the_backbone_runs_in(world, monkeypatch):
    """backbone.device auto and precision fp16 resolve by machine: shards made on CUDA in fp16 must not be
    finished on a CPU in fp32 under the same key."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")  # none here

    from transmodal.io import digest

    cfg = backbone_cfg(world)
    clips = pd.DataFrame({"clip_id": ["a"], "frame_idx": [np.arange(LENGTH)]})
    keys = {
        digest(store_module._resume_key(world["clips_cfg"], cfg, SimpleNamespace(device=device, dtype=dtype,
               folder=world["checkpoint"]), world["store"], clips))
        for device, dtype in (("cpu", torch.float32), ("cuda:0", torch.float16), ("cuda:0", torch.float32))
    }  # fmt: skip
    assert len(keys) == 3


def test_the_resume_key_holds_the_gpu_and_its_libraries_and_opencv(world, monkeypatch):
    """A run resumed on another GPU model, CUDA or cuDNN version, or with another OpenCV (it decodes the frames
    again from the sources) computes other bits: its key differs; on the CPU the GPU is not asked about."""
    from types import SimpleNamespace

    import cv2

    from transmodal.io import digest
    from transmodal.vision import checkpoints

    clips = pd.DataFrame({"clip_id": ["a"], "frame_idx": [np.arange(LENGTH)]})

    def key(device: str) -> str:
        backbone = SimpleNamespace(device=device, dtype=torch.float16, folder=world["checkpoint"])
        return digest(
            store_module._resume_key(world["clips_cfg"], backbone_cfg(world), backbone, world["store"], clips)
        )

    gpu = {"name": "NVIDIA H100", "cuda": "12.8", "cudnn": 91000}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    monkeypatch.setattr(torch.version, "cuda", gpu["cuda"])
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: gpu["cudnn"])
    seen = {key("cuda:0")}
    for field, other in (("name", "NVIDIA A100"), ("cuda", "12.4"), ("cudnn", 90100)):
        gpu[field] = other
        monkeypatch.setattr(torch.version, "cuda", gpu["cuda"])
        seen.add(key("cuda:0"))
    assert len(seen) == 4
    cpu = key("cpu")
    gpu["name"] = "changed"  # the CPU's key does not depend on a GPU
    assert key("cpu") == cpu
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "another width")
    assert key("cpu") != cpu  # another vector unit or processor: other kernels, other last bits
    cpu = key("cpu")
    monkeypatch.setattr(checkpoints, "cpu_model", lambda: "another processor")
    assert key("cpu") != cpu
    cpu = key("cpu")
    monkeypatch.setattr(cv2, "__version__", "0.0.0")
    assert key("cpu") != cpu


def test_a_cache_whose_clip_table_is_another_runs_is_refused(built, tmp_path):
    import json
    import shutil

    folder = tmp_path / "features"
    shutil.copytree(built["dir"], folder)
    record = json.loads((folder / "backbone.json").read_text())
    (folder / "backbone.json").write_text(json.dumps(record | {"num_clips": record["num_clips"] + 1}))
    with pytest.raises(StageInputError, match=r"lists \d+ clips but .*clips.parquet has \d+: they come from"):
        FeatureStore(folder, built["clips"])


def test_the_cache_names_every_class_of_the_index_even_those_without_clips(world, built, tmp_path):
    # every clip here is "walking", KTH's last class: the head still gets all six outputs, by name
    store = built["store"]
    assert set(store.clips["label"]) == {"walking"}
    assert store.class_names == list(KTH_ACTIONS)
    clips = pd.read_parquet(built["clips"])
    for table, why in (
        (
            clips.drop(columns="label").assign(label="boxing"),
            r"labels 'boxing' as 5 disagree with its 6 class",
        ),
        (clips, "records no class names"),
    ):
        if why == "records no class names":
            table.attrs.clear()
        path = tmp_path / "clips.parquet"
        table.to_parquet(path)
        with pytest.raises(StageInputError, match=why) as error:
            FeatureStore(built["dir"], path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    unnamed = world["index"].copy()
    unnamed.attrs.clear()
    with pytest.raises(StageInputError, match="data/index.parquet records no class names"):
        build(world | {"index": unnamed}, "unnamed")  # before any clip is encoded
    assert not (world["root"] / "unnamed").exists()


def test_a_clip_frame_the_store_does_not_return_is_refused(world):
    video_id = world["store"].video_ids[0]
    frame_idx, _ = world["store"].read(video_id)
    wanted = np.array([frame_idx[:LENGTH]])
    boxes = np.array([[0, 0, 40, 40]])  # whole pixels, as planned
    assert store_module.crop_video(world["store"], video_id, wanted, boxes, 32).shape[:2] == (1, LENGTH)
    wanted[0, 3] += 1  # a frame between two kept ones (stride 2): its neighbour would have been cropped
    with pytest.raises(
        StageInputError, match=rf"video '{video_id}': frames \[{wanted[0, 3]}\] of a planned clip"
    ):
        store_module.crop_video(world["store"], video_id, wanted, boxes, 32)


def test_tokens_beyond_float16_are_refused(world, monkeypatch):
    backbone = FrozenBackbone(backbone_cfg(world), LENGTH)
    crops = np.zeros((1, LENGTH, backbone.image_size, backbone.image_size, 3), np.uint8)
    assert torch.isfinite(backbone.encode(crops)).all()
    real = backbone.model

    def huge(**kwargs):
        out = real(**kwargs)
        out.last_hidden_state = out.last_hidden_state * 0 + 1e5
        return out

    monkeypatch.setattr(backbone, "model", huge)
    with pytest.raises(StageInputError, match=r"beyond float16's range"):
        backbone.encode(crops)


def test_a_full_disk_while_finishing_keeps_every_finished_shard(world, built, monkeypatch):
    """backbone.json and clips.parquet are written before the shards move into the output: a write that
    fails there leaves the shards for the next run, which encodes nothing again."""
    import errno

    import transmodal.features.store as store_module

    real_write_json = store_module.write_json

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build(world, "full")
    out = world["root"] / "full"
    assert not (out / "features").exists() and not (out / "clips.parquet").exists()
    assert not list(out.glob(".*.tmp"))  # the staged clip table went with the failure
    monkeypatch.setattr(store_module, "write_json", real_write_json)
    encoded = []
    real_forward = store_module.FrozenBackbone.forward
    monkeypatch.setattr(
        store_module.FrozenBackbone,
        "forward",
        lambda self, px, kept=None: encoded.append(len(px)) or real_forward(self, px, kept),
    )
    build(world, "full")
    assert encoded == []
    for name in ("backbone.json", shard_name(0), shard_name(1)):
        assert (out / "features" / name).read_bytes() == (built["dir"] / name).read_bytes(), name
    assert (out / "clips.parquet").read_bytes() == built["clips"].read_bytes()
