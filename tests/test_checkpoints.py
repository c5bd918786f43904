"""Checkpoint resolution: local folder, then the Hugging Face cache, then the hub (never offline)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import VideoMAEModel

from transmodal.params import CheckpointError
from transmodal.vision.checkpoints import (
    hub_revision,
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


def _hub_cache(tmp_path, folder: str, revisions: list[str], monkeypatch) -> None:
    """``folder`` as snapshots of hub id some-org/tiny-videomae; refs/main names the last revision."""
    repo = tmp_path / "hub" / "models--some-org--tiny-videomae"
    for revision in revisions:
        shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revisions[-1])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_a_hub_snapshot_is_recorded_by_its_revision(tiny_checkpoints, tmp_path, monkeypatch):
    """Two machines with the same hub id may hold different snapshots: backbone.json (and detect.json,
    pose.json) record the commit; a folder of the user's own has none."""
    import json

    from transmodal.features.backbone import FrozenBackbone
    from transmodal.params import BackboneConfig

    revision = "1" * 40
    _hub_cache(tmp_path, tiny_checkpoints["backbone"], [revision], monkeypatch)
    assert hub_revision(resolve_checkpoint("some-org/tiny-videomae", "backbone.checkpoint")) == revision
    assert hub_revision(tiny_checkpoints["backbone"]) is None
    length = json.loads((Path(tiny_checkpoints["backbone"]) / "config.json").read_text())["num_frames"]
    hub = FrozenBackbone(BackboneConfig(checkpoint="some-org/tiny-videomae", device="cpu"), length)
    assert hub.describe()["checkpoint"] == "some-org/tiny-videomae"
    assert hub.describe()["checkpoint_revision"] == revision
    local = FrozenBackbone(BackboneConfig(checkpoint=tiny_checkpoints["backbone"], device="cpu"), length)
    assert "checkpoint_revision" not in local.describe()


def test_resuming_features_tells_two_snapshots_of_one_hub_id_apart(tiny_checkpoints, tmp_path, monkeypatch):
    """The features stage's resume key signs the snapshot's files, not the hub id: shards made with another
    snapshot are never reused."""
    from types import SimpleNamespace

    import pandas as pd

    from transmodal.features.store import _resume_key
    from transmodal.params import BackboneConfig, ClipsConfig

    old, new = "2" * 40, "3" * 40
    _hub_cache(tmp_path, tiny_checkpoints["backbone"], [old, new], monkeypatch)
    (tmp_path / "hub/models--some-org--tiny-videomae/snapshots" / new / "model.safetensors").write_bytes(b"x")
    cfg = BackboneConfig(checkpoint="some-org/tiny-videomae")
    keys = {}
    for revision in (old, new):
        (tmp_path / "hub/models--some-org--tiny-videomae/refs/main").write_text(revision)
        folder = resolve_checkpoint(cfg.checkpoint, "backbone.checkpoint")
        backbone = SimpleNamespace(device="cpu", dtype="torch.float32", folder=folder)
        keys[revision] = _resume_key(ClipsConfig(), cfg, backbone, None, pd.DataFrame())
    assert keys[old]["backbone"] == keys[new]["backbone"]  # the same params
    assert keys[old]["checkpoint"] != keys[new]["checkpoint"]


def test_a_pinned_revision_loads_that_snapshot_whatever_main_names(tiny_checkpoints, tmp_path, monkeypatch):
    """``backbone.revision`` (and ``detect.revision``, ``pose.revision``): a commit, branch or tag of the hub
    id, so that two machines, or one machine before and after a download, load the same weights."""
    import json

    from transmodal.features.backbone import FrozenBackbone
    from transmodal.params import BackboneConfig

    old, new = "4" * 40, "5" * 40
    _hub_cache(tmp_path, tiny_checkpoints["backbone"], [old, new], monkeypatch)  # main names the newer
    (tmp_path / "hub/models--some-org--tiny-videomae/refs/v1").write_text(old)  # a tag on the older
    hub = "some-org/tiny-videomae"
    assert hub_revision(resolve_checkpoint(hub, "backbone.checkpoint")) == new
    for revision in (old, "v1"):
        assert hub_revision(resolve_checkpoint(hub, "backbone.checkpoint", revision)) == old
    length = json.loads((Path(tiny_checkpoints["backbone"]) / "config.json").read_text())["num_frames"]
    described = FrozenBackbone(BackboneConfig(checkpoint=hub, revision="v1", device="cpu"), length).describe()
    assert (described["revision"], described["checkpoint_revision"]) == ("v1", old)
    assert "revision" not in FrozenBackbone(BackboneConfig(checkpoint=hub, device="cpu"), length).describe()

    missing = "6" * 40
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(hub, "backbone.checkpoint", missing)
    assert str(err.value).startswith(
        f"params.yaml: backbone.checkpoint is {hub!r} at backbone.revision {missing!r}: not in the local cache"
    )
    assert f"`hf download {hub} --revision {missing}`" in str(err.value)


def test_a_revision_of_a_folder_is_refused(tiny_checkpoints):
    from transmodal.params import BackboneConfig, DetectConfig, ParamError, PoseConfig

    with pytest.raises(CheckpointError, match=r"^params.yaml: pose.revision is 'main', but pose.checkpoint "):
        resolve_checkpoint(tiny_checkpoints["pose"], "pose.checkpoint", "main")
    # when the stage starts, before any work: a folder here, or a path that is not a hub id
    for checkpoint in (tiny_checkpoints["pose"], "models/tiny/pose", "./pose"):
        with pytest.raises(
            ParamError, match=r"^params.yaml: pose.revision is 'main', but .* is (a folder|not a hub)"
        ):
            PoseConfig(checkpoint=checkpoint, revision="main")
    for bad in (1234567, 1e10, ""):  # what YAML (or dvc exp run -S) makes of an all-digit revision
        with pytest.raises(
            ParamError, match=r"^params.yaml: detect.revision is .*; expected null or a hub"
        ) as err:
            DetectConfig(checkpoint="PekingU/rtdetr_r50vd_coco_o365", revision=bad)
        assert "quoted" in str(err.value)
    assert """-S 'detect.revision="1234567"'""" in str(
        pytest.raises(ParamError, DetectConfig, checkpoint="org/x", revision=1234567).value
    )
    for bad in ("v 1", "../../x", "/abs"):  # never a path into the cache's folders
        with pytest.raises(ParamError, match=r"^params.yaml: detect.revision is .*; expected a hub commit"):
            DetectConfig(checkpoint="PekingU/rtdetr_r50vd_coco_o365", revision=bad)
    assert BackboneConfig(checkpoint="MCG-NJU/videomae-base", revision="a" * 40).revision == "a" * 40


def test_every_loader_asks_for_its_revision_and_the_model_folder_records_them(monkeypatch):
    import yaml

    from transmodal.features import backbone
    from transmodal.params import BackboneConfig, DetectConfig, PoseConfig
    from transmodal.training.train import pipeline_record
    from transmodal.vision import checkpoints, detect, pose_estimator

    seen = []

    def stop(checkpoint, param, revision=None):
        seen.append((param, checkpoint, revision))
        raise CheckpointError("stop")

    monkeypatch.setattr(checkpoints, "resolve_checkpoint", stop)
    monkeypatch.setattr(backbone, "resolve_checkpoint", stop)
    loaders = [
        (detect.PersonDetector.from_config, DetectConfig(checkpoint="org/rtdetr", revision="r1")),
        (pose_estimator.PoseEstimator.from_config, PoseConfig(checkpoint="org/vitpose", revision="r2")),
        (lambda cfg: backbone.FrozenBackbone(cfg, 16), BackboneConfig(checkpoint="org/mae", revision="r3")),
    ]
    for load, cfg in loaders:
        with pytest.raises(CheckpointError, match="stop"):
            load(cfg)
    assert seen == [
        ("detect.checkpoint", "org/rtdetr", "r1"),
        ("pose.checkpoint", "org/vitpose", "r2"),
        ("backbone.checkpoint", "org/mae", "r3"),
    ]
    # the train stage writes the detector's and pose model's into config.json, for predict
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["detect"].update(checkpoint="org/rtdetr", revision="r1")
    params["pose"].update(checkpoint="org/vitpose", revision="r2")
    record = pipeline_record(params)
    assert (record["detect"]["revision"], record["pose"]["revision"]) == ("r1", "r2")


def test_a_backbone_whose_processor_resizes_otherwise_is_refused(tiny_checkpoints, tmp_path):
    """The crops are resized bilinearly, as VideoMAE's processors do: a checkpoint whose processor asks for
    another filter (bicubic: resample 3) would see other pixels than it was trained on, said in one line."""
    from transmodal.features.backbone import FrozenBackbone
    from transmodal.params import BackboneConfig

    folder = tmp_path / "bicubic"
    shutil.copytree(tiny_checkpoints["backbone"], folder)
    length = json.loads((folder / "config.json").read_text())["num_frames"]
    FrozenBackbone(BackboneConfig(checkpoint=str(folder), device="cpu"), length)  # bilinear: loads
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["resample"] = 3
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"resizes with filter BICUBIC \(preprocessor_config\.json resample 3\)"
    ):
        FrozenBackbone(BackboneConfig(checkpoint=str(folder), device="cpu"), length)


@pytest.mark.parametrize("stage", ["detect", "pose", "backbone"])
def test_a_damaged_weights_file_or_config_is_one_line(tiny_checkpoints, tmp_path, stage):
    """A copy of the model cache cut short (the documented way to an offline machine): safetensors' own
    error, and a config.json that is not JSON, were tracebacks; now one line naming the param."""
    from transformers import RTDetrForObjectDetection, VitPoseForPoseEstimation

    from transmodal.params import DetectConfig
    from transmodal.vision.detect import PersonDetector

    model_cls = {
        "detect": RTDetrForObjectDetection, "pose": VitPoseForPoseEstimation, "backbone": VideoMAEModel
    }[stage]  # fmt: skip
    folder = tmp_path / stage
    shutil.copytree(tiny_checkpoints["detector" if stage == "detect" else stage], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    param = f"{stage}.checkpoint"
    with pytest.raises(CheckpointError, match=rf"^params.yaml: {param} is .*: cannot load as") as error:
        load_model(model_cls, str(folder), param, torch.device("cpu"), torch.float32)
    assert "\n" not in str(error.value)
    if stage == "detect":
        (folder / "config.json").write_text('{"model_type": "rt_det')
        with pytest.raises(CheckpointError, match=r"detect.checkpoint is .*: no readable config\.json"):
            PersonDetector.from_config(DetectConfig(source="model", checkpoint=str(folder), device="cpu"))
        (folder / "config.json").write_text("[1, 2]")  # JSON, but not a model's config
        with pytest.raises(CheckpointError, match=r"detect.checkpoint is .*: model_type None is not RT-DETR"):
            PersonDetector.from_config(DetectConfig(source="model", checkpoint=str(folder), device="cpu"))


def test_a_pose_processor_that_does_not_crop_the_box_is_refused(tiny_checkpoints, tmp_path):
    """The heatmaps are mapped back through the box's crop at the processor's size: a processor that does
    not crop (do_affine_transform false) gave keypoints in the wrong place, silently."""
    from transmodal.params import PoseConfig
    from transmodal.vision.pose_estimator import PoseEstimator

    folder = tmp_path / "pose"
    shutil.copytree(tiny_checkpoints["pose"], folder)
    PoseEstimator.from_config(PoseConfig(source="model", checkpoint=str(folder), device="cpu"))  # loads
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["do_affine_transform"] = False
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"^params.yaml: pose.checkpoint is '.*pose': .*do_affine_transform: true"
    ):
        PoseEstimator.from_config(PoseConfig(source="model", checkpoint=str(folder), device="cpu"))


def test_the_resume_keys_hold_the_cpu_and_its_vector_unit(tmp_path, monkeypatch):
    """On the CPU, torch's kernels follow the vector unit (AVX2, AVX512) and the matrix libraries the processor's
    model: parts finished on one CPU type are not taken by a run on another (detect and pose units, the training state; features: tests/test_features.py)."""
    from types import SimpleNamespace

    from transmodal.io import digest
    from transmodal.params import ModelConfig, SelectorConfig, TrainConfig
    from transmodal.training.train import _resume_key
    from transmodal.vision import checkpoints
    from transmodal.vision.batches import unit_key
    from transmodal.vision.checkpoints import accelerator

    model = SimpleNamespace(device="cpu", dtype=torch.float32, folder=None)
    store = SimpleNamespace(directory=tmp_path, clips_path=tmp_path / "clips.parquet")
    cpu = torch.device("cpu")

    def keys() -> tuple[str, str]:
        unit = unit_key({"batch_size": 4}, model, store, [["a"]], [])
        train = _resume_key(
            store, ModelConfig(), SelectorConfig(), TrainConfig(), cpu, SimpleNamespace(size=1)
        )
        return digest(unit), digest(train)

    assert accelerator(cpu) == [checkpoints.cpu_model(), torch.backends.cpu.get_cpu_capability()]
    assert checkpoints.cpu_model()
    # ARM Linux has no model name: the implementer and part of each core type name the processor
    neoverse = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n" * 2
    graviton3 = neoverse.replace("0xd0c", "0xd40")
    big_little = neoverse + neoverse.replace("0xd0c", "0xd05")
    named = [checkpoints.cpu_model(text) for text in (neoverse, graviton3, big_little)]
    assert len(set(named)) == 3 and "implementer 0x41 part 0xd0c" in named[0]
    assert "part 0xd05" in named[2] and "part 0xd0c" in named[2]
    assert checkpoints.cpu_model("model name\t: AMD EPYC 7B13\n" * 2) == "AMD EPYC 7B13"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(checkpoints, "cpu_model", lambda: "AMD EPYC 7B13")
    avx2 = keys()
    assert keys() == avx2
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    avx512 = keys()
    assert avx512[0] != avx2[0] and avx512[1] != avx2[1]
    monkeypatch.setattr(checkpoints, "cpu_model", lambda: "Intel Xeon Platinum 8480+")  # same width
    assert set(keys()).isdisjoint({*avx512, *avx2})
