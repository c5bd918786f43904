"""backbone.keep: pose-guided token dropping before the frozen VideoMAE (transmodal.features.keep)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from test_features import LENGTH, backbone_cfg, world  # noqa: F401  (the module fixture)

from transmodal.data.coco import NUM_JOINTS
from transmodal.features.backbone import FrozenBackbone
from transmodal.features.cache import FeatureStore
from transmodal.features.crops import crop_frames
from transmodal.features.keep import (
    group_boxes,
    kept_patches,
    masked_positions,
    on_full_grid,
    patch_centres,
)
from transmodal.features.store import CROP_COLUMNS, KEPT_COLUMN, build_features
from transmodal.params import BackboneConfig, ParamError, kept_count, validate_stage

SIDE, PATCH = 4, 16  # the tiny backbone: 64 px crops, 16 px patches, a 4 x 4 grid a frame group
CENTRES = patch_centres(SIDE * PATCH, PATCH)


def inside_dilated(boxes: np.ndarray, margin: float) -> np.ndarray:
    """(N, G, P) whether each patch centre lies in each group's box dilated by ``margin`` x its larger side:
    written out independently of the module's ranking."""
    x1, y1, x2, y2 = (boxes[..., i][..., None] for i in range(4))
    grow = margin * np.maximum(x2 - x1, y2 - y1)
    x, y = CENTRES[:, 0], CENTRES[:, 1]
    return (x >= x1 - grow) & (x <= x2 + grow) & (y >= y1 - grow) & (y <= y2 + grow)


def test_patch_centres_are_raster_order():
    assert CENTRES.shape == (16, 2)
    assert np.allclose(CENTRES[1], [0.375, 0.125]) and np.allclose(CENTRES[4], [0.125, 0.375])


def test_every_patch_inside_the_box_is_kept_and_every_dropped_one_lies_outside():
    rng = np.random.default_rng(0)
    side = 14
    centres = patch_centres(224, 16)
    x1, y1 = rng.uniform(0.0, 0.6, (50, 8)), rng.uniform(0.0, 0.4, (50, 8))
    boxes = np.stack(
        [x1, y1, x1 + rng.uniform(0.05, 0.35, (50, 8)), y1 + rng.uniform(0.1, 0.55, (50, 8))], -1
    )
    count = kept_count(0.5, side * side)
    kept = kept_patches(boxes, centres, count, margin=0.1)
    assert kept.shape == (50, 8, count) and kept.dtype == np.int16
    assert np.all(np.diff(kept.astype(int), axis=-1) > 0)  # ascending, distinct
    grow = 0.1 * np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])[..., None]
    x, y = centres[:, 0], centres[:, 1]
    inside = (
        (x >= boxes[..., 0:1] - grow)
        & (x <= boxes[..., 2:3] + grow)
        & (y >= boxes[..., 1:2] - grow)
        & (y <= boxes[..., 3:4] + grow)
    )
    assert (inside.sum(-1) <= count).all()  # every box holds fewer patch centres than K ...
    is_kept = np.zeros_like(inside)
    np.put_along_axis(is_kept, kept.astype(np.int64), True, axis=-1)
    assert (is_kept[inside]).all()  # ... so all of them are kept
    assert not (inside & ~is_kept).any()  # and no dropped patch lies inside the box


def test_a_box_larger_than_k_keeps_its_patches_nearest_the_centre_and_drops_only_inside_ones():
    boxes = np.array([[[0.0, 0.0, 1.0, 1.0]]])  # the whole crop: 16 patches inside, K = 4
    kept = kept_patches(boxes, CENTRES, 4, margin=0.0)
    assert kept.tolist() == [[[5, 6, 9, 10]]]  # the central 2 x 2


def test_joints_rank_the_patches_inside_the_box_by_their_nearest_joint():
    boxes = np.array([[[0.0, 0.0, 1.0, 1.0]]])
    joints = np.array([[[[0.9, 0.1], [0.1, 0.9], [np.nan, np.nan]]]])  # top right, bottom left, missing
    visible = np.array([[[True, True, True]]])
    kept = kept_patches(boxes, CENTRES, 2, 0.0, "joints", joints, visible)
    assert kept.tolist() == [[[3, 12]]]  # the patches under the two joints, not the central ones
    nothing = kept_patches(boxes, CENTRES, 2, 0.0, "joints", joints, np.zeros_like(visible))
    assert nothing.tolist() == kept_patches(boxes, CENTRES, 2, 0.0).tolist()  # no joint: by the box


def test_group_boxes_fall_back_to_the_clip_then_to_the_whole_crop():
    nan = [np.nan] * 4
    boxes = np.array(
        [
            [[10, 10, 20, 30], [12, 10, 22, 30], nan, nan],  # group 1 has no box: the clip's union
            [nan, nan, nan, nan],  # no box at all: the whole crop
        ],
        dtype=np.float64,
    )
    crops = np.array([[0, 0, 40, 40], [0, 0, 40, 40]])
    out = group_boxes(boxes, crops, tubelet_size=2)
    assert np.allclose(out[0, 0], [0.25, 0.25, 0.55, 0.75]) and np.allclose(out[0, 1], out[0, 0])
    assert np.allclose(out[1], [[0, 0, 1, 1]] * 2)


def test_masked_positions_and_the_full_grid_round_trip():
    kept = np.array([[[0, 5], [3, 15]]])
    mask = masked_positions(kept, 16)
    assert mask.shape == (1, 32) and (~mask).sum() == 4
    assert np.flatnonzero(~mask[0]).tolist() == [0, 5, 16 + 3, 16 + 15]
    grid = on_full_grid(np.array([[1.0, 2.0], [3.0, 4.0]]), kept[0], 16)
    assert grid[0, 5] == 2.0 and grid[1, 15] == 4.0 and np.isnan(grid).sum() == 28


def test_keep_one_passes_no_mask_and_an_all_false_mask_changes_nothing(world):  # noqa: F811
    backbone = FrozenBackbone(backbone_cfg(world), LENGTH)
    assert not backbone.drops and backbone.grid == (8, 16)
    pixels = torch.randn(2, LENGTH, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = backbone.forward(pixels)
    with torch.inference_mode():
        unmasked = backbone.model(
            pixel_values=pixels, bool_masked_pos=torch.zeros(2, 8 * 16, dtype=torch.bool)
        ).last_hidden_state
    assert torch.equal(unmasked.reshape(2, 8, 16, -1).half(), plain)
    with pytest.raises(ValueError, match="must not be given"):
        backbone.forward(pixels, np.zeros((2, 8, 16), np.int64))


def test_the_encoder_sees_only_the_kept_patches(world):  # noqa: F811
    backbone = FrozenBackbone(backbone_cfg(world, keep=0.5), LENGTH)
    assert backbone.drops and backbone.grid == (8, 8)
    pixels = torch.randn(2, LENGTH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kept = np.stack([np.sort(np.random.default_rng(i).permutation(16)[:8]) for i in range(16)]).reshape(
        2, 8, 8
    )
    tokens = backbone.forward(pixels, kept)
    assert tokens.shape == (2, 8, 8, backbone.hidden_size)
    # A kept patch's token depends on the dropped patches' pixels only through nothing: change them, same tokens.
    changed = pixels.clone()
    dropped = masked_positions(kept, 16).reshape(2, 8, 4, 4)  # (B, G, rows, cols)
    for b, g, r, c in zip(*np.nonzero(dropped), strict=True):
        changed[b, 2 * g : 2 * g + 2, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = 5.0
    assert torch.equal(backbone.forward(changed, kept), tokens)
    with pytest.raises(ValueError, match="must be given"):
        backbone.forward(pixels)
    description = backbone.describe()
    assert description["grid"] == [8, 8] and description["full_patches_per_group"] == 16
    full = FrozenBackbone(backbone_cfg(world), LENGTH).describe()
    assert description["flops_per_clip"] < full["flops_per_clip"] and "keep" not in full


@pytest.fixture(scope="module")
def kept_build(world):  # noqa: F811
    out = world["root"] / "keep"
    cfg = backbone_cfg(world, keep=0.5, keep_margin=0.0)
    summary = build_features(
        world["index"], world["store"], world["tracks"], world["keypoints"], world["clips_cfg"], cfg,
        out / "features", out / "clips.parquet", progress=False,
    )  # fmt: skip
    return {"summary": summary, "store": FeatureStore(out / "features", out / "clips.parquet"), "cfg": cfg}


def test_the_cache_holds_the_kept_tokens_and_their_positions(world, kept_build):  # noqa: F811
    store = kept_build["store"]
    assert store.backbone["grid"] == [8, 8] and store.backbone["keep"] == 0.5
    assert store.full_patches_per_group == 16 and kept_build["summary"]["grid"][:2] == [8, 8]
    rows = np.arange(len(store))
    kept = store.kept_patches(rows)
    assert kept.shape == (len(store), 8, 8) and store.tokens(rows).shape[1:3] == (8, 8)
    # Independently: each group's box = the primary track's boxes over its two frames, in the crop.
    tracks = world["tracks"][world["tracks"]["is_primary"]].set_index(["video_id", "frame_idx"])
    clips = store.clips
    boxes = np.zeros((len(clips), 8, 4))
    for n, clip in enumerate(clips.itertuples()):
        x1, y1, x2, _ = (float(getattr(clip, c)) for c in CROP_COLUMNS)
        frame_boxes = tracks.loc[[(clip.video_id, int(f)) for f in clip.frame_idx], ["x1", "y1", "x2", "y2"]]
        frame_boxes = (frame_boxes.to_numpy(np.float64) - [x1, y1, x1, y1]) / (x2 - x1)
        pairs = frame_boxes.reshape(8, 2, 4)
        boxes[n] = np.c_[pairs[:, :, :2].min(1), pairs[:, :, 2:].max(1)]
    inside = inside_dilated(boxes, 0.0)
    assert (inside.sum(-1) <= 8).all() and inside.any(-1).all()
    is_kept = np.zeros_like(inside)
    np.put_along_axis(is_kept, kept, True, axis=-1)
    assert not (inside & ~is_kept).any(), "a patch inside the person's box was dropped"
    # The cached tokens are the backbone's on those crops with that mask, row for row across batches.
    backbone = FrozenBackbone(kept_build["cfg"], LENGTH)
    crops = []
    for clip in clips.itertuples():
        frame_idx, frames = world["store"].read(clip.video_id)
        box = tuple(int(getattr(clip, c)) for c in CROP_COLUMNS)
        crops.append(crop_frames(frames[np.searchsorted(frame_idx, clip.frame_idx)], box, 64))
    fresh = torch.cat(
        [backbone.encode(np.stack(crops[i : i + 3]), kept[i : i + 3]) for i in range(0, len(crops), 3)]
    )
    assert len(clips) > 4 and torch.equal(fresh, store.tokens(rows))  # the stage's batches are of 4


def test_a_recomputed_cache_drops_the_same_patches(world, kept_build):  # noqa: F811
    """backbone.store: recompute with keep < 1: the same kept patches, and the same tokens encoded again."""
    from test_features import build

    _, features_dir, clips_path = build(
        world, "keep-recomputed", keep=0.5, keep_margin=0.0, store="recompute"
    )
    recomputed, cached = FeatureStore(features_dir, clips_path), kept_build["store"]
    assert recomputed.recomputed and recomputed.grid == cached.grid == (8, 8, 64)
    rows = np.arange(len(cached))[::-1]
    np.testing.assert_array_equal(recomputed.kept_patches(rows), cached.kept_patches(rows))
    assert torch.equal(recomputed.tokens(rows), cached.tokens(rows))


def test_keep_one_writes_no_positions(world):  # noqa: F811
    from test_features import build

    _, features_dir, clips_path = build(world, "keep-one")
    clips = pd.read_parquet(clips_path)
    record = json.loads((features_dir / "backbone.json").read_text())
    assert KEPT_COLUMN not in clips and "keep" not in record and record["grid"] == [8, 16]
    assert FeatureStore(features_dir, clips_path).kept_patches([0]) is None


def test_keep_params_are_checked_when_the_stage_starts():
    with pytest.raises(ParamError, match=r"backbone\.keep is 0"):
        BackboneConfig(keep=0)
    with pytest.raises(ParamError, match=r"backbone\.keep_by"):
        BackboneConfig(keep_by="pose")
    assert kept_count(0.5, 196) == 98 and kept_count(0.25, 196) == 49 and kept_count(1.0, 196) == 196


def test_a_variant_may_vary_the_keep_and_its_selector_is_checked_against_its_own_grid(tmp_path, monkeypatch):
    import yaml

    params = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "params.yaml")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "features").mkdir(parents=True)
    record = {"patches_per_group": 196, "grid": [8, 196], "checkpoint": params["backbone"]["checkpoint"]}
    (tmp_path / "data" / "features" / "backbone.json").write_text(json.dumps(record))
    params["ablation"]["variants"] = {"full": {}, "keep_25": {"backbone.keep": 0.25}}
    validate_stage("ablate@keep_25", params)  # 49 patches >= top_k_tokens 12
    params["ablation"]["variants"]["keep_25"] = {"backbone.keep": 0.05}  # 10 patches < 12
    with pytest.raises(ParamError, match=r"ablation\.variants\.keep_25: selector\.top_k_tokens"):
        validate_stage("ablate@keep_25", params)
    params["ablation"]["variants"]["keep_25"] = {"backbone.batch_size": 2}
    with pytest.raises(ParamError, match=r"only model\.\*, selector\.\*, train\.\* and backbone\.keep"):
        validate_stage("ablate@keep_25", params)


def test_kept_tokens_follow_the_joints_with_keep_by_joints(world, kept_build):  # noqa: F811
    from transmodal.features.store import plan_kept

    store = kept_build["store"]
    planned = pd.read_parquet(store.clips_path)  # with the aligned pose plan_kept reads
    backbone = FrozenBackbone(backbone_cfg(world, keep=0.25, keep_by="joints", keep_margin=0.0), LENGTH)
    kept = plan_kept(planned, world["tracks"], backbone)
    box_cfg = backbone_cfg(world, keep=0.25, keep_margin=0.0)
    by_box = plan_kept(planned, world["tracks"], FrozenBackbone(box_cfg, LENGTH))
    assert kept.shape == by_box.shape == (len(store), 8, 4) and not np.array_equal(kept, by_box)
    xy, _, mask = store.pose(np.arange(len(store)))  # (n, T, J, 2) in the crop
    joints = xy.reshape(len(store), 8, 1, 2 * NUM_JOINTS, 2)
    nearest = np.linalg.norm(CENTRES[None, None, :, None, :] - joints, axis=-1)  # (n, G, P, 2J)
    nearest = np.where(mask.reshape(len(store), 8, 1, -1), nearest, np.inf).min(-1)  # (n, G, P)

    def distance(chosen):
        return np.take_along_axis(nearest, chosen.astype(np.int64), axis=-1).sum(-1)

    # Inside the box the joints' choice is the nearest to a joint: never farther than the box's choice.
    assert np.all(distance(kept) <= distance(by_box) + 1e-9)
    assert np.any(distance(kept) < distance(by_box) - 1e-9)


def test_crops_normalised_where_the_model_runs_equal_the_host_normalisation_bit_for_bit(world):  # noqa: F811
    """The accelerator path (uint8 crops, :meth:`PixelNormalizer.on_device`) run here on the CPU."""
    from transmodal.features.store import CpuShare, crop_batches

    backbone = FrozenBackbone(backbone_cfg(world), LENGTH)
    clips = FeatureStore(*_first_build(world)).clips
    host = list(crop_batches(world["store"], clips, 64, 4, backbone.normalizer, CpuShare(2, 2)))
    raw = list(crop_batches(world["store"], clips, 64, 4, None, CpuShare(2, 2)))
    assert [r.dtype for r in raw] == [torch.uint8] * len(raw) and raw[0].shape[1:] == (LENGTH, 64, 64, 3)
    for pixels, crops in zip(host, raw, strict=True):
        assert torch.equal(backbone.normalizer.on_device(crops), pixels)
        assert torch.equal(backbone.forward(crops), backbone.forward(pixels))
    assert backbone.host_normalizer is backbone.normalizer  # on the CPU the host normalises


def _first_build(world):  # noqa: F811
    from test_features import build

    _, features_dir, clips_path = build(world, "normalise")
    return features_dir, clips_path


def test_a_variant_cache_keeps_its_finished_shards_outside_its_dvc_output(monkeypatch):
    """DVC deletes ablate_features@<v>'s output before it runs the stage again: finished shards kept inside
    it (the default ``.partial`` beside ``<v>/features``) would be gone, and an interrupted run could never
    resume. The stage hands build_features a partial folder outside every output of the stage."""
    import runpy
    import sys

    import yaml

    import transmodal.data.frames as frames_module
    import transmodal.features.store as store_module
    from tests.conftest import REPO_ROOT
    from transmodal.params import load_params

    handed = {}
    monkeypatch.setattr(store_module, "build_features", lambda *args, **kwargs: handed.update(kwargs))
    monkeypatch.setattr(pd, "read_parquet", lambda path: path)
    monkeypatch.setattr(frames_module, "FrameStore", lambda path: path)
    monkeypatch.setattr(sys, "argv", ["stages/ablate_features.py", "keep_50"])
    stage = runpy.run_path(str(REPO_ROOT / "stages" / "ablate_features.py"), run_name="ablate_features")
    stage["main"](load_params(REPO_ROOT / "params.yaml"))

    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["ablate_features"]["do"]
    outs = [Path(str(out).replace("${key}", "keep_50")) for out in spec["outs"]]
    partial = Path(handed["partial_dir"])
    default = Path("data/ablation_features/keep_50/.partial/features")  # Resumable's, without partial_dir
    assert any(default.is_relative_to(out) for out in outs)  # the trap the stage avoids
    assert not any(partial.is_relative_to(out) for out in outs), partial
