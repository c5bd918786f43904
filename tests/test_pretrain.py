"""Masked-autoencoder pretraining of the backbone (stage pretrain, docs/decisions.md 38)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from transmodal.params import (
    PRETRAINED_BACKBONE,
    BackboneConfig,
    CheckpointError,
    ClipsConfig,
    ParamError,
    PretrainConfig,
    is_pretrained,
    load_params,
    validate_stage,
)
from transmodal.pretrain import learning_rate, pretrain, training_clips, tube_masks


def test_tube_masks_hide_the_same_patches_in_every_frame_group():
    masks = tube_masks(5, groups=8, patches=16, masked=14, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (5, 8 * 16) and masks.dtype == torch.bool
    grid = masks.view(5, 8, 16)  # time-major, as VideoMAE's tokens
    assert (grid.sum(dim=2) == 14).all()  # the same count in every group, so batches stay rectangular
    assert (grid == grid[:, :1]).all()  # tubes: group g hides the patches group 0 hides
    assert len({tuple(clip[0].tolist()) for clip in grid}) > 1  # each clip draws its own
    again = tube_masks(5, groups=8, patches=16, masked=14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = PretrainConfig(lr=1e-3, warmup=0.1)
    rates = [learning_rate(step, 100, cfg) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)  # 10 warm-up steps
    assert all(a < b for a, b in zip(rates[:10], rates[1:10], strict=False))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False)) and rates[-1] < 1e-6
    assert learning_rate(0, 10, PretrainConfig(lr=1e-3, warmup=0.0)) == pytest.approx(1e-3)


def _crops(count: int = 6, seed: int = 0) -> np.ndarray:
    """(count, 16, 64, 64, 3) uint8: a bright square moving over noise, the tiny backbone's clip shape."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 60, size=(count, 16, 64, 64, 3), dtype=np.uint8)
    for clip in range(count):
        for t in range(16):
            x = (clip * 7 + t * 2) % 48
            crops[clip, t, 20:36, x : x + 16] = 230
    return crops


def test_pretraining_is_deterministic_and_writes_a_backbone_the_features_stage_loads(
    tiny_checkpoints, tmp_path
):
    from transmodal.features.backbone import FrozenBackbone

    cfg = PretrainConfig(init=tiny_checkpoints["backbone"], epochs=2, batch_size=4, threads=1)
    crops = _crops()
    found = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    try:
        first = pretrain(crops, cfg, tmp_path / "a", device=torch.device("cpu"))
        # the thread count and the deterministic-kernel flag it set are handed back as it found them
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (2, False)
        with pytest.raises(ParamError):  # and so they are when it fails
            pretrain(crops, PretrainConfig(**{**cfg.__dict__, "mask_ratio": 0.98}), tmp_path / "x")
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (2, False)
    finally:
        torch.set_num_threads(found[0])
        torch.use_deterministic_algorithms(found[1], warn_only=found[2])
    second = pretrain(crops, cfg, tmp_path / "b", device=torch.device("cpu"))
    weights = (tmp_path / "a/model.safetensors").read_bytes()
    assert weights == (tmp_path / "b/model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(first.curve, second.curve)
    assert list(first.curve["step"]) == [0, 1, 2, 3] and list(first.curve["epoch"]) == [0, 0, 1, 1]
    assert first.summary["masked_patches_per_group"] == 14 and first.summary["steps"] == 4
    # another seed: other masks and another decoder, so other weights
    pretrain(crops, PretrainConfig(**{**cfg.__dict__, "seed": 1}), tmp_path / "c", device=torch.device("cpu"))
    assert (tmp_path / "c/model.safetensors").read_bytes() != weights
    # the features stage loads it as any VideoMAE, with the init's pixel normalisation, and its tokens are
    # not those of the init (the encoder was trained)
    trained = FrozenBackbone(BackboneConfig(checkpoint=str(tmp_path / "a"), device="cpu"), 16)
    init = FrozenBackbone(BackboneConfig(checkpoint=tiny_checkpoints["backbone"], device="cpu"), 16)
    assert trained.normalizer == init.normalizer
    tokens = trained.encode(crops[:2])
    assert tokens.shape == (2, 8, 16, 64) and not torch.equal(tokens, init.encode(crops[:2]))


def test_a_mask_ratio_that_hides_every_patch_or_none_is_refused(tiny_checkpoints, tmp_path):
    for ratio in (0.98, 0.02):  # 16 patches a group: 16 masked, 0 masked
        cfg = PretrainConfig(init=tiny_checkpoints["backbone"], mask_ratio=ratio, epochs=1)
        with pytest.raises(ParamError, match=r"pretrain\.mask_ratio"):
            pretrain(_crops(2), cfg, tmp_path / "out", device=torch.device("cpu"))
    assert not (tmp_path / "out").exists()


def test_training_clips_come_from_the_training_split_only(dataset):
    store, _ = dataset
    index = pd.DataFrame(
        {
            "video_id": store.video_ids,
            "label": "a",
            "label_idx": 0,
            "split": ["train", "test"] * (len(store.video_ids) // 2) + ["train"] * (len(store.video_ids) % 2),
            "sequences": [[]] * len(store.video_ids),
        }
    )
    frames = store.frames
    tracks = frames[["video_id", "frame_idx"]].assign(x1=1.0, y1=2.0, x2=11.0, y2=30.0, is_primary=True)
    table, without_track = training_clips(index, store, tracks, ClipsConfig(), per_video=3)
    train = set(index.loc[index["split"] == "train", "video_id"])
    assert set(table["video_id"]) == train  # every training video, no other
    assert table.groupby("video_id").size().max() == 3  # up to per_video clips (a short video holds fewer)
    # each crop holds the primary track's box with its margin, as the features stage crops
    assert without_track == 0
    assert (table["crop_x1"] <= 1).all() and (table["crop_y1"] <= 2).all()
    assert (table["crop_x2"] >= 11).all() and (table["crop_y2"] >= 30).all()


def _stage(tmp_path: Path, params: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    script = REPO_ROOT / "stages/pretrain.py"
    return subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_the_stage_notes_why_it_is_skipped_with_another_backbone(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    params["backbone"]["checkpoint"] = "models/tiny/backbone"  # the random one, as with a preset's real one
    result = _stage(tmp_path, params)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "models/pretrain").iterdir()] == ["skipped.json"]
    note = json.loads((tmp_path / "models/pretrain/skipped.json").read_text())["skipped"]
    assert "backbone.checkpoint is 'models/tiny/backbone'" in note and PRETRAINED_BACKBONE in note
    assert json.loads((tmp_path / "metrics/pretrain.json").read_text()) == {"skipped": note}
    assert (tmp_path / "metrics/pretrain_curve.csv").read_text() == "step,epoch,loss,lr\n"


@pytest.mark.parametrize("written", [PRETRAINED_BACKBONE, "./" + PRETRAINED_BACKBONE + "/"])
def test_pretrain_s_params_are_checked_whenever_the_stage_runs(tiny_checkpoints, written):
    """However ``backbone.checkpoint`` spells the stage's folder, the stage runs and so its init is checked
    when the stage starts; with another backbone the stage is skipped and its init is not read."""
    params = load_params(REPO_ROOT / "params.yaml")
    params["pretrain"]["init"] = tiny_checkpoints["pose"]
    params["backbone"]["checkpoint"] = written
    assert is_pretrained(written)
    with pytest.raises(CheckpointError, match=r"pretrain\.init is .*a vitpose checkpoint"):
        validate_stage("pretrain", params)
    params["backbone"]["checkpoint"] = tiny_checkpoints["backbone"]
    assert not is_pretrained(tiny_checkpoints["backbone"])
    validate_stage("pretrain", params)


def test_a_pretrain_init_that_is_no_videomae_fails_before_any_work(tiny_checkpoints, tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    params["backbone"]["checkpoint"] = PRETRAINED_BACKBONE
    params["pretrain"]["init"] = tiny_checkpoints["pose"]
    result = _stage(tmp_path, params)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("pretrain: error: params.yaml: pretrain.init is ") and "vitpose" in lines[0]
    assert not (tmp_path / "models").exists()


def test_a_pretraining_checkpoint_s_encoder_is_loaded_and_its_decoder_drawn_anew(tiny_checkpoints, tmp_path):
    """A VideoMAEForPreTraining checkpoint with a decoder of its own width (MCG-NJU/videomae-base's is 384
    wide on a 768-wide encoder) starts the same way: its encoder weights exactly, a new decoder."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

    from transmodal.pretrain import _load

    config = VideoMAEConfig.from_pretrained(tiny_checkpoints["backbone"])
    config.decoder_hidden_size, config.decoder_num_attention_heads = 32, 2
    config.decoder_intermediate_size, config.decoder_num_hidden_layers = 64, 2
    torch.manual_seed(5)
    VideoMAEForPreTraining(config).save_pretrained(tmp_path / "mae")
    processor = tmp_path / "mae/preprocessor_config.json"
    processor.write_bytes((Path(tiny_checkpoints["backbone"]) / "preprocessor_config.json").read_bytes())
    cfg = PretrainConfig(init=str(tmp_path / "mae"), epochs=1, batch_size=4, threads=1)
    model = _load(VideoMAEForPreTraining, str(tmp_path / "mae"), cfg)
    encoder = VideoMAEModel.from_pretrained(tmp_path / "mae").state_dict()
    loaded = model.videomae.state_dict()
    assert set(loaded) == set(encoder) and all(torch.equal(loaded[k], encoder[k]) for k in encoder)
    assert model.decoder.head.in_features == config.hidden_size  # as wide as the encoder, not 32
    assert torch.isfinite(model.mask_token).all() and model.mask_token.abs().max() < 1
    pretrain(_crops(4), cfg, tmp_path / "out", device=torch.device("cpu"))  # and it trains
    assert (tmp_path / "out/model.safetensors").is_file()


def test_a_bad_mask_ratio_is_refused_before_any_crop_is_read(tiny_checkpoints, tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    params["backbone"]["checkpoint"] = "./" + PRETRAINED_BACKBONE + "/"  # the same folder, written otherwise
    params["pretrain"]["init"] = tiny_checkpoints["backbone"]
    params["pretrain"]["mask_ratio"] = 0.98  # all 16 patches of a frame group
    result = _stage(tmp_path, params)  # no data/ here: reading a crop would fail otherwise
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "pretrain.mask_ratio 0.98 masks 16 of the 16 patches" in lines[0]
