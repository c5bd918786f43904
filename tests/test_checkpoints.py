"""Checkpoint resolution: local folder, then the Hugging Face cache, then the hub (never offline)."""

import shutil

import pytest
import torch
from transformers import VideoMAEModel

from transmodal.params import CheckpointError
from transmodal.vision.checkpoints import (
    load_model,
    pick_device,
    pick_dtype,
    resolve_checkpoint,
)


def test_local_folder_resolves_to_itself(tiny_checkpoints):
    assert (
        resolve_checkpoint(tiny_checkpoints["backbone"], "backbone.checkpoint")
        == tiny_checkpoints["backbone"]
    )


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"backbone\.checkpoint is .* a folder without config\.json"):
        resolve_checkpoint(str(tmp_path), "backbone.checkpoint")


def test_hub_id_is_found_in_the_local_cache_offline(tiny_checkpoints, tmp_path, monkeypatch):
    # the layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<revision>/...}
    repo = tmp_path / "hub" / "models--some-org--tiny-videomae"
    revision = "0" * 40
    shutil.copytree(tiny_checkpoints["backbone"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    folder = resolve_checkpoint("some-org/tiny-videomae", "backbone.checkpoint")
    assert folder.endswith(revision)
    model = load_model(
        VideoMAEModel, "some-org/tiny-videomae", "backbone.checkpoint", torch.device("cpu"), torch.float32
    )
    assert not model.training and model.config.hidden_size == 64


def test_missing_hub_id_offline_names_the_param_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint("MCG-NJU/videomae-base-finetuned-kinetics", "backbone.checkpoint")
    message = str(error.value)
    assert "\n" not in message
    assert "backbone.checkpoint" in message and "MCG-NJU/videomae-base-finetuned-kinetics" in message
    assert "local folder" in message and "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message


def test_device_and_precision_rules():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype("bf16", torch.device("cpu")) == torch.float32  # half precision only on CUDA
    assert pick_dtype("fp16", torch.device("cuda")) == torch.float16
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="no CUDA device"):
            pick_device("cuda")
        assert pick_device("auto").type == "cpu"
