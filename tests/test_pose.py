"""Pose stage: keypoints schema, ground-truth path, PCK, empty crops, ViTPose++ dataset_index, model path."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.test_detect import (
    GAP_ABSENT_KEPT,
    MIXED_SIZES,
    Interrupted,
    build_mixed_size_dataset,
    count_forwards,
)
from transmodal.data.coco import joint_columns
from transmodal.data.frames import FrameStore
from transmodal.params import CheckpointError, DetectConfig, ParamError, PoseConfig
from transmodal.vision.detect import run_detect
from transmodal.vision.pose import KEYPOINT_COLUMNS, run_pose
from transmodal.vision.pose_crop import crop_geometry, crop_grid
from transmodal.vision.pose_estimator import PoseEstimator
from transmodal.vision.quality import pose_quality


def write_pose_checkpoint(out: Path, num_labels: int, like: str, num_experts: int | None = None) -> str:
    """A tiny ViTPose++ like ``like`` but predicting ``num_labels`` keypoints (and with ``num_experts``)."""
    from transformers import VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    config = VitPoseConfig.from_pretrained(like)
    config.num_labels = num_labels
    if num_experts is not None:
        config.backbone_config.num_experts = num_experts
    torch.manual_seed(1)
    VitPoseForPoseEstimation(config).eval().save_pretrained(out)
    VitPoseImageProcessor.from_pretrained(like).save_pretrained(out)
    return str(out)


def assert_keypoints_contract(keypoints: pd.DataFrame, store: FrameStore) -> None:
    assert list(keypoints.columns) == KEYPOINT_COLUMNS
    assert keypoints["video_id"].map(type).eq(str).all() and keypoints["frame_idx"].dtype == np.int32
    for name in KEYPOINT_COLUMNS[2:]:
        assert keypoints[name].dtype == np.float32, name
    got = (
        keypoints[["video_id", "frame_idx"]]
        .astype({"frame_idx": np.int64})
        .sort_values(["video_id", "frame_idx"])
    )
    expected = store.frames[["video_id", "frame_idx"]].astype({"frame_idx": np.int64})
    expected = expected.sort_values(["video_id", "frame_idx"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    scores = keypoints[joint_columns("score")].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()


# ----------------------------------------------------------------------------------------------------------
# Annotation path and PCK


@pytest.fixture(scope="module")
def gt_keypoints(dataset, gt_tracks) -> tuple[pd.DataFrame, dict]:
    store, annotations = dataset
    return run_pose(store, gt_tracks[0], PoseConfig(source="annotations"), annotations, progress=False)


def kept_actor_truth(annotations: pd.DataFrame, store: FrameStore) -> pd.DataFrame:
    """The actor's ground-truth rows at the kept frames."""
    kept = store.frames[["video_id", "frame_idx"]].astype({"frame_idx": np.int64})
    actor = annotations[annotations["person"] == 0].astype({"frame_idx": np.int64})
    return actor.merge(kept, on=["video_id", "frame_idx"])


def test_annotation_keypoints_follow_the_contract_and_pck_is_one(dataset, gt_keypoints):
    store, annotations = dataset
    keypoints, metrics = gt_keypoints
    assert_keypoints_contract(keypoints, store)
    truth = kept_actor_truth(annotations, store)
    assert metrics["pck"] == 1.0 and metrics["frames_evaluated"] == len(truth) == 51
    assert metrics["joints_evaluated"] == int((truth[joint_columns("v")] > 0).to_numpy().sum())
    assert all(v in (1.0, None) for v in metrics["pck_per_joint"].values())
    json.dumps(metrics)
    # the ground truth copied exactly where visible, NaN and score 0 where not (the runner entering the frame)
    merged = truth.merge(keypoints, on=["video_id", "frame_idx"], suffixes=("", "_pred"))
    visible = merged[joint_columns("v")].to_numpy() > 0  # (F, J)
    assert (~visible).any() and visible.any()
    for axis in ("x", "y"):
        pred = merged[[f"{c}_pred" for c in joint_columns(axis)]].to_numpy()
        np.testing.assert_array_equal(
            pred[visible], merged[joint_columns(axis)].to_numpy(np.float32)[visible]
        )
        assert np.isnan(pred[~visible]).all()
    scores = merged[joint_columns("score")].to_numpy()
    assert (scores[visible] == 1).all() and (scores[~visible] == 0).all()


def test_frames_without_the_actor_get_nan_and_zero(gt_keypoints):
    keypoints, _ = gt_keypoints
    gap_absent = (keypoints["video_id"] == "gap") & keypoints["frame_idx"].isin(GAP_ABSENT_KEPT)
    out_of_view = keypoints[gap_absent | (keypoints["video_id"] == "empty")]
    assert len(out_of_view) == 5 + 6
    assert out_of_view[joint_columns("x") + joint_columns("y")].isna().all().all()
    assert (out_of_view[joint_columns("score")] == 0).all().all()


def test_pck_drops_by_the_hand_computed_amount(dataset, gt_keypoints):
    store, annotations = dataset
    keypoints, _ = gt_keypoints
    truth = kept_actor_truth(annotations, store).set_index(["video_id", "frame_idx"])
    visible = int((truth[joint_columns("v")] > 0).to_numpy().sum())
    nose_visible = int((truth["nose_v"] > 0).sum())
    perturbed = keypoints.set_index(["video_id", "frame_idx"])
    frames = [("solo", 0), ("solo", 2), ("solo", 4)]
    assert (truth.loc[frames, ["nose_v", "left_wrist_v", "right_knee_v"]] > 0).all().all()
    size = np.maximum(truth["x2"] - truth["x1"], truth["y2"] - truth["y1"])  # the actor's box size per frame
    perturbed.loc[frames, "nose_x"] += (0.3 * size.loc[frames]).to_numpy()  # beyond 0.2 * size: 3 misses
    perturbed.loc[frames, "left_wrist_y"] += (0.1 * size.loc[frames]).to_numpy()  # within 0.2 * size
    perturbed.loc[("solo", 6), "right_knee_x"] = np.nan  # a missing prediction is a miss
    quality = pose_quality(perturbed.reset_index(), annotations)
    assert quality["joints_evaluated"] == visible
    assert quality["pck"] == pytest.approx((visible - 4) / visible)
    assert quality["pck_per_joint"]["nose"] == pytest.approx((nose_visible - 3) / nose_visible)
    assert quality["pck_per_joint"]["left_wrist"] == 1.0
    # at PCK@0.05 the 0.1 * size wrist shift misses too: 3 more
    assert pose_quality(perturbed.reset_index(), annotations, threshold=0.05)["pck"] == pytest.approx(
        (visible - 7) / visible
    )


def test_annotation_source_without_annotations_is_a_param_error(dataset, gt_tracks):
    store, _ = dataset
    with pytest.raises(ParamError, match="pose.source"):
        run_pose(store, gt_tracks[0], PoseConfig(source="annotations"), None, progress=False)


# ----------------------------------------------------------------------------------------------------------
# Model path on the tiny random ViTPose++


def test_model_path_end_to_end_passes_dataset_index_per_crop(
    dataset, gt_tracks, tiny_checkpoints, monkeypatch
):
    from transformers import VitPoseForPoseEstimation

    store, annotations = dataset
    seen = []
    forward = VitPoseForPoseEstimation.forward

    def recording_forward(self, pixel_values, dataset_index=None, **kwargs):
        seen.append((len(pixel_values), None if dataset_index is None else dataset_index.tolist()))
        return forward(self, pixel_values, dataset_index=dataset_index, **kwargs)

    monkeypatch.setattr(VitPoseForPoseEstimation, "forward", recording_forward)
    cfg = PoseConfig(
        source="model", checkpoint=tiny_checkpoints["pose"], dataset_index=3, batch_size=8, device="cpu"
    )
    keypoints, metrics = run_pose(store, gt_tracks[0], cfg, annotations, progress=False)

    assert seen and all(index == [3] * n for n, index in seen)  # one index per crop, the configured expert
    assert sum(n for n, _ in seen) == 62 and max(n for n, _ in seen) == 8
    assert_keypoints_contract(keypoints, store)
    assert not keypoints[joint_columns("x")].isna().any().any()  # every frame has a usable box here
    assert metrics["frames_empty_box"] == 0 and metrics["frames_fallback_box"] == 6  # the "empty" video
    assert metrics["dataset_index"] == 3 and metrics["device"] == "cpu"
    assert {"pck", "pck_per_joint", "joints_evaluated"} <= set(metrics)
    assert 0.0 <= metrics["pck"] <= 1.0
    json.dumps(metrics)


def test_empty_crops_give_nan_keypoints_and_are_counted(dataset, gt_tracks, tiny_checkpoints):
    store, _ = dataset
    tracks = gt_tracks[0].copy()
    solo = (tracks["video_id"] == "solo") & tracks["is_primary"]
    degenerate = solo & tracks["frame_idx"].isin([2, 4])
    tracks.loc[degenerate, "x2"] = tracks.loc[degenerate, "x1"]  # zero width
    outside = solo & (tracks["frame_idx"] == 6)
    tracks.loc[outside, ["x1", "x2"]] = [300.0, 340.0]  # right of the 160 px frame: zero width once clamped
    cfg = PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], batch_size=4, device="cpu")
    keypoints, metrics = run_pose(store, tracks, cfg, None, progress=False)
    assert metrics["frames_empty_box"] == 3 and "pck" not in metrics  # no ground truth given
    rows = keypoints[(keypoints["video_id"] == "solo")].set_index("frame_idx")
    assert rows.loc[[2, 4, 6], joint_columns("x") + joint_columns("y")].isna().all().all()
    assert (rows.loc[[2, 4, 6], joint_columns("score")] == 0).all().all()
    assert not rows.loc[[0, 8], joint_columns("x")].isna().any().any()


def test_results_do_not_depend_on_the_batch_size(dataset, gt_tracks, tiny_checkpoints):
    store, _ = dataset
    estimator = PoseEstimator.from_config(
        PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu")
    )
    # Random heatmaps are nearly flat: in float32 the batch shape's different BLAS sums can flip an argmax.
    # In float64 they cannot, so any difference left would be crops routed to the wrong frames.
    estimator.model.double()
    estimator.dtype = torch.float64
    results = [
        run_pose(
            store,
            gt_tracks[0],
            PoseConfig(
                source="model", checkpoint=tiny_checkpoints["pose"], batch_size=batch_size, device="cpu"
            ),
            None,
            progress=False,
            estimator=estimator,
        )[0]
        for batch_size in (5, 64)
    ]
    pd.testing.assert_frame_equal(results[0], results[1], atol=1e-3, rtol=0)


def test_crops_match_the_checkpoints_processor(dataset, tiny_checkpoints):
    store, _ = dataset
    estimator = PoseEstimator.from_config(
        PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu")
    )
    _, frames = store.read("duo")
    frames = frames[:4]
    # inside, full frame, wide, and reaching out of the frame (the warp pads with black there)
    boxes = np.array(
        [[10, 20, 40, 100], [0, 0, 160, 120], [50.5, 60.25, 150.0, 80.0], [120, -10, 175, 130]], float
    )
    coco = [[[x1, y1, x2 - x1, y2 - y1]] for x1, y1, x2, y2 in boxes]
    expected = estimator.processor(images=list(frames), boxes=coco, return_tensors="pt")["pixel_values"]
    got = estimator.preprocess(frames, boxes)
    assert got.shape == expected.shape
    std = min(estimator.processor.image_std)
    assert float((got - expected).abs().max()) <= 1 / 255 / std + 1e-5  # uint8 rounding only


def test_crops_do_not_depend_on_pieces(dataset, tiny_checkpoints):
    """A batch may come as pieces of different frame sizes (one per video): each crop is the same, bit for
    bit, as the warp of its whole frame converted to float."""
    store, _ = dataset
    estimator = PoseEstimator.from_config(
        PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu")
    )
    _, frames = store.read("duo")
    frames = frames[:7]
    rng = np.random.default_rng(3)
    x1, y1 = rng.uniform(-20, 120, 7), rng.uniform(-20, 90, 7)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 80, 7), y1 + rng.uniform(10, 100, 7)], 1)
    large = np.stack([cv2.resize(frame, (200, 150)) for frame in frames[:3]])  # another frame size
    large_boxes = boxes[:3] * 1.25
    expected = estimator.preprocess(frames, boxes)
    spec = estimator._fast
    grid = torch.from_numpy(crop_grid(boxes, *frames.shape[1:3], spec["size"]))
    whole = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    warped = F.grid_sample(whole, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.equal(expected, torch.addcmul(spec["bias"], warped.round(), spec["weight"]))
    expected_large = estimator.preprocess(large, large_boxes)
    pieces = [frames[:2], large, frames[2:]]  # sizes mixed in one batch
    got = estimator.preprocess(pieces, np.concatenate([boxes[:2], large_boxes, boxes[2:]]))
    assert torch.equal(got, torch.cat([expected[:2], expected_large, expected[2:]]))
    assert torch.equal(estimator.preprocess([frames[:3], frames[3:]], boxes), expected)
    with pytest.raises(ValueError, match="7 frames but 6 boxes"):
        estimator.preprocess(frames, boxes[:6])


def test_heatmap_decoding_matches_the_processors_post_processing(dataset, tiny_checkpoints):
    store, _ = dataset
    estimator = PoseEstimator.from_config(
        PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu")
    )
    rng = np.random.default_rng(0)
    n, joints, h, w = 6, 17, 16, 12
    boxes = np.stack(
        [rng.uniform(0, 60, n), rng.uniform(0, 40, n), rng.uniform(80, 160, n), rng.uniform(70, 120, n)], 1
    )
    # trained-model-like heatmaps: a gaussian peak (some at the border) over low noise
    yy, xx = np.mgrid[0:h, 0:w]
    peaks = np.stack([rng.uniform(-0.5, w - 0.5, (n, joints)), rng.uniform(-0.5, h - 0.5, (n, joints))], -1)
    blob = np.exp(
        -((xx - peaks[..., 0, None, None]) ** 2 + (yy - peaks[..., 1, None, None]) ** 2) / (2 * 1.5**2)
    )
    heatmaps = torch.tensor(0.9 * blob + rng.uniform(0, 0.02, (n, joints, h, w)), dtype=torch.float32)
    outputs = SimpleNamespace(heatmaps=heatmaps)
    keypoints, scores = estimator.postprocess(outputs, boxes)
    expected_keypoints, expected_scores = estimator.postprocess_with_processor(outputs, boxes)
    assert keypoints.shape == (n, joints, 2) and scores.shape == (n, joints)
    np.testing.assert_allclose(keypoints, expected_keypoints, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(scores, expected_scores)
    # The tiny model's random heatmaps are flat, where DARK's Newton step is ill-conditioned: a relative
    # match. A heatmap without a positive value has no peak; the processor "refines" its -1 placeholder
    # with pixels of the next heatmap, we do not (its score is 0 either way).
    _, frames = store.read("duo")
    outputs = estimator.forward(estimator.preprocess(frames[:n], boxes))
    keypoints, scores = estimator.postprocess(outputs, boxes)
    expected_keypoints, expected_scores = estimator.postprocess_with_processor(outputs, boxes)
    peaked = outputs.heatmaps.amax(dim=(-2, -1)).numpy() > 0  # (n, J)
    assert peaked.mean() > 0.9
    np.testing.assert_allclose(keypoints[peaked], expected_keypoints[peaked], rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(scores, expected_scores)


def test_crop_grid_samples_the_padded_box(tiny_checkpoints):
    """grid_sample's grid (align_corners) maps output pixel u to input x = u * roi_w / (S_w - 1) + x0."""
    boxes = np.array([[10, 20, 40, 100], [0, 0, 160, 120], [120, -10, 175, 130]], float)
    crop = (64, 48)
    grid = crop_grid(boxes, 120, 160, crop)
    assert grid.shape == (3, 64, 48, 2) and grid.dtype == np.float32
    center, region = crop_geometry(boxes, crop)
    x = center[:, :1] - region[:, :1] / 2 + np.arange(48) * region[:, :1] / 47  # (n, S_w) input pixels
    y = center[:, 1:] - region[:, 1:] / 2 + np.arange(64) * region[:, 1:] / 63
    inside_x, inside_y = (x >= 0) & (x <= 159), (y >= 0) & (y <= 119)
    assert inside_x.any() and (~inside_x).any() and (~inside_y).any()  # the last box reaches out
    np.testing.assert_allclose((grid[:, 0, :, 0][inside_x] + 1) / 2 * 159, x[inside_x], atol=1e-4)
    np.testing.assert_allclose((grid[:, :, 0, 1][inside_y] + 1) / 2 * 119, y[inside_y], atol=1e-4)
    # samples outside the frame are sent far outside (zero padding), whole columns and rows at a time
    assert (grid[:, :, :, 0][np.broadcast_to(~inside_x[:, None, :], (3, 64, 48))] == 3).all()
    assert (grid[:, :, :, 1][np.broadcast_to(~inside_y[:, :, None], (3, 64, 48))] == 3).all()


GOLDEN = Path(__file__).parent / "data" / "pose_keypoints_golden.json"
KEYPOINT_TOLERANCE = 0.05  # px: other CPUs' rounding (see the test); a heatmap cell is a pixel or more
SCORE_TOLERANCE = 1e-4
FLIPPED = (
    0.005  # share of the tiny checkpoint's coordinates another CPU may move by an argmax flip (the test)
)


def golden_array(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["float32_base64"]), "<f4").reshape(entry["shape"])


def real_size_pose_estimator() -> PoseEstimator:
    """ViTPose++-B (the library's default ViTPose backbone, 6 experts, 256 x 192) with seeded random weights."""
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    torch.manual_seed(0)
    backbone = VitPoseBackboneConfig(num_experts=6, part_features=192, out_indices=[12])
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    model = VitPoseForPoseEstimation(config).eval()
    return PoseEstimator(model, VitPoseImageProcessor(), 0, torch.device("cpu"))


def test_keypoints_equal_those_of_the_forked_worker_version(dataset, gt_tracks, tiny_checkpoints):
    """The pose stage gives the keypoints of the version with a forked CPU worker, a numpy decoder and a
    chunked crop (recorded in tests/data by the commit named there, one torch thread): with the tiny
    checkpoint through ``run_pose``, and with a real-size ViTPose++-B (random weights) through the estimator
    on frames of two videos, one box reaching out of the frame. Bit for bit on the CPU that recorded them;
    on another CPU the float kernels round differently (an AVX-512 one: 0.025 px at most with the tiny
    checkpoint, whose flat heatmaps magnify a rounding, 0.0012 px and 2e-6 in score at real size), so the
    check is to KEYPOINT_TOLERANCE px and SCORE_TOLERANCE: a decoder or crop off by a heatmap cell moves a
    joint by pixels. The tiny checkpoint's flat heatmaps hold near-equal peaks, whose argmax another CPU's
    rounding can flip: on an AMD EPYC (2026-12-06) 3 of its 2108 coordinates moved (two joints of one frame
    by a heatmap cell, 10 px, one by 0.052 px), so up to FLIPPED of them may; a decoder or crop defect
    moves nearly all. The real-size model's sharp heatmaps are held to the tolerance everywhere."""
    golden = json.loads(GOLDEN.read_text())
    assert torch.get_num_threads() == 1  # as recorded (conftest); more threads may round sums differently
    store, annotations = dataset
    cfg = PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], batch_size=5, device="cpu")
    keypoints, _ = run_pose(store, gt_tracks[0], cfg, annotations, progress=False)
    tiny = golden["tiny"]
    assert keypoints["video_id"].tolist() == tiny["video_id"]
    assert keypoints["frame_idx"].tolist() == tiny["frame_idx"]
    xy_columns = [c for c in tiny["columns"] if c.endswith(("_x", "_y"))]
    ours = keypoints[tiny["columns"]].astype(np.float32)
    recorded = pd.DataFrame(golden_array(tiny["values"]), columns=tiny["columns"])
    off = np.abs(ours[xy_columns].to_numpy() - recorded[xy_columns].to_numpy()) > KEYPOINT_TOLERANCE
    assert off.mean() <= FLIPPED, (
        f"{off.sum()} of {off.size} coordinates off by more than {KEYPOINT_TOLERANCE} px"
    )
    score_columns = [c for c in tiny["columns"] if c not in xy_columns]
    np.testing.assert_allclose(ours[score_columns], recorded[score_columns], rtol=0, atol=SCORE_TOLERANCE)

    real = golden["real"]
    frames = []
    for video_id, frame_idx in real["frames"]:
        kept, video = store.read(video_id)
        frames.extend(video[list(kept).index(i)] for i in frame_idx)
    xy, scores = real_size_pose_estimator()(np.stack(frames), np.array(real["boxes"]))
    np.testing.assert_allclose(xy, golden_array(real["keypoints"]), rtol=0, atol=KEYPOINT_TOLERANCE)
    np.testing.assert_allclose(scores, golden_array(real["scores"]), rtol=0, atol=SCORE_TOLERANCE)


def test_batches_mixing_frame_sizes_give_the_same_keypoints(tmp_path, tiny_checkpoints):
    store, annotations = build_mixed_size_dataset(tmp_path)
    tracks, _ = run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
    estimator = PoseEstimator.from_config(
        PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu")
    )
    estimator.model.double()  # float64: the batch shape cannot flip an argmax (see the batch size test)
    estimator.dtype = torch.float64
    # batch 64: both frame sizes in one batch, cropped piece by piece; batch 4: mostly one size, one warp
    results = [
        run_pose(
            store,
            tracks,
            PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], batch_size=size, device="cpu"),
            None,
            progress=False,
            estimator=estimator,
        )[0]
        for size in (64, 4)
    ]
    assert set(results[0]["video_id"]) == set(MIXED_SIZES)
    assert not results[0][joint_columns("x")].isna().any().any()
    pd.testing.assert_frame_equal(results[0], results[1], atol=1e-3, rtol=0)


def test_missing_checkpoint_names_the_param(dataset, gt_tracks, monkeypatch):
    store, _ = dataset
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = PoseConfig(source="model", checkpoint="no-such-org/no-such-pose", device="cpu")
    with pytest.raises(CheckpointError, match="pose.checkpoint") as error:
        run_pose(store, gt_tracks[0], cfg, None, progress=False)
    assert "no-such-org/no-such-pose" in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_without_17_keypoints_is_refused(tiny_checkpoints, tmp_path):
    folder = write_pose_checkpoint(tmp_path / "pose2", 2, tiny_checkpoints["pose"])
    with pytest.raises(CheckpointError, match=r"pose.checkpoint.*predicts 2 keypoints"):
        PoseEstimator.from_config(PoseConfig(source="model", checkpoint=folder, device="cpu"))


def test_dataset_index_beyond_the_experts_names_the_param(tiny_checkpoints, tmp_path):
    folder = write_pose_checkpoint(tmp_path / "pose-2-experts", 17, tiny_checkpoints["pose"], num_experts=2)
    PoseEstimator.from_config(PoseConfig(source="model", checkpoint=folder, dataset_index=1, device="cpu"))
    with pytest.raises(ParamError, match="pose.dataset_index is 3.*2 expert"):
        PoseEstimator.from_config(
            PoseConfig(source="model", checkpoint=folder, dataset_index=3, device="cpu")
        )


def test_an_interrupted_run_resumes_from_its_finished_units(
    dataset, gt_tracks, tiny_checkpoints, tmp_path, capsys
):
    """The units of videos an interrupted pose run finished are read back, only the others are estimated,
    and the keypoints are those of a run that was never interrupted; other tracks are another key."""
    store, _ = dataset
    cfg = PoseConfig(source="model", checkpoint=tiny_checkpoints["pose"], batch_size=4, device="cpu")
    estimator = PoseEstimator.from_config(cfg)
    tracks = gt_tracks[0]
    whole_calls = count_forwards(estimator)
    whole, _ = run_pose(store, tracks, cfg, None, progress=False, estimator=estimator, videos_per_unit=1)
    parts = tmp_path / "partial" / "pose"
    count_forwards(estimator, stop=len(whole_calls))  # killed in its last batch
    with pytest.raises(Interrupted):
        run_pose(store, tracks, cfg, None, False, estimator, parts_dir=parts, videos_per_unit=1)
    finished = list(parts.rglob("unit-*.parquet"))
    assert 0 < len(finished) < tracks["video_id"].nunique()  # one unit a video
    calls = count_forwards(estimator)
    keypoints, _ = run_pose(store, tracks, cfg, None, True, estimator, parts_dir=parts, videos_per_unit=1)
    assert f"pose: resuming, {len(finished)} of" in capsys.readouterr().out
    assert 0 < sum(calls) < sum(whole_calls)
    pd.testing.assert_frame_equal(keypoints, whole)
    moved = tracks.copy()
    moved["x1"] += 1.0  # other crops
    calls = count_forwards(estimator)
    run_pose(store, moved, cfg, None, False, estimator, parts_dir=parts, videos_per_unit=1)
    assert sum(calls) == sum(whole_calls)
