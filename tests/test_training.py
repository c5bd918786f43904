"""Training, evaluation and ablation aggregation on a small in-memory feature store."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT
from transmodal.io import write_json
from transmodal.params import ParamError, load_params, section
from transmodal.training import ablation
from transmodal.training.evaluate import classification_metrics, evaluate_model, video_level
from transmodal.training.train import load_checkpoint, train_model

G, P, D, T, J = 8, 4, 16, 16, 17
CLASSES = ["boxing", "walking", "running"]


class MemoryStore:
    """The FeatureStore interface (clips, backbone, tokens, pose) over arrays in memory."""

    def __init__(self, clips_per_split: dict[str, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        rows = []
        for split, count in clips_per_split.items():
            for n in range(count):
                label = (n // 2) % len(CLASSES)  # two clips per video
                rows.append(
                    {
                        "clip_id": f"{split}{n}#0",
                        "video_id": f"{split}{n // 2}_{label}",
                        "label": CLASSES[label],
                        "label_idx": label,
                        "split": split,
                    }
                )
        self.clips = pd.DataFrame(rows)
        labels = self.clips["label_idx"].to_numpy()
        # class-dependent signal so training has something to learn
        self._tokens = rng.normal(size=(len(rows), G, P, D)).astype(np.float16)
        self._tokens[..., 0] += (labels[:, None, None] * 2.0).astype(np.float16)
        self._xy = rng.uniform(size=(len(rows), T, J, 2)).astype(np.float32)
        self._score = np.ones((len(rows), T, J), np.float32)
        self._mask = np.ones((len(rows), T, J), bool)
        self.backbone = {
            "grid": [G, P],
            "hidden_size": D,
            "num_frames": T,
            "tubelet_size": 2,
            "image_size": 32,
            "checkpoint": "memory",
        }

    def tokens(self, rows):
        return torch.from_numpy(self._tokens[np.asarray(rows)])

    def pose(self, rows):
        rows = np.asarray(rows)
        return self._xy[rows], self._score[rows], self._mask[rows]


@pytest.fixture
def params():
    p = load_params(REPO_ROOT / "params.yaml")
    p["train"]["epochs"] = 3
    p["model"]["num_heads"] = 2
    p["selector"]["top_k_tokens"] = 2
    return p


def _train(store, params, out_dir):
    return train_model(
        store,
        section(params, "model"),
        section(params, "selector"),
        section(params, "train"),
        out_dir,
        progress=False,
    )


def test_training_is_deterministic_and_checkpoint_rebuilds_the_model(params, tmp_path):
    store = MemoryStore({"train": 24, "val": 6, "test": 6})
    metrics_a, history_a = _train(store, params, tmp_path / "a")
    metrics_b, history_b = _train(store, params, tmp_path / "b")
    pd.testing.assert_frame_equal(history_a, history_b)
    assert metrics_a == metrics_b
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert list(history_a["epoch"]) == [1, 2, 3]
    assert metrics_a["best_epoch"] in (1, 2, 3)
    assert metrics_a["val_acc"] == history_a.loc[metrics_a["best_epoch"] - 1, "val_acc"]
    assert metrics_a["val_acc"] == history_a["val_acc"].max()
    model, config = load_checkpoint(tmp_path / "a")
    assert config["classes"] == CLASSES and config["best_epoch"] == metrics_a["best_epoch"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == metrics_a["parameters"]["total"]


def test_training_learns_a_separable_signal(params, tmp_path):
    params["train"]["epochs"] = 15
    params["train"]["lr"] = 1e-3
    store = MemoryStore({"train": 30, "val": 9, "test": 9})
    metrics, history = _train(store, params, tmp_path / "m")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert metrics["val_acc"] > 0.5  # chance is 1/3


def test_selector_range_is_checked_against_the_feature_grid(params, tmp_path):
    params["selector"]["top_k_tokens"] = P + 1
    with pytest.raises(ParamError, match=r"selector\.top_k_tokens is 5; a frame has only 4 patch tokens"):
        _train(MemoryStore({"train": 4}), params, tmp_path / "m")


def test_no_validation_clips_keeps_the_last_epoch_and_says_so(params, tmp_path):
    metrics, _ = _train(MemoryStore({"train": 8, "test": 4}), params, tmp_path / "m")
    assert metrics["best_epoch"] == 3 and metrics["model_selection"] == "last epoch (no validation clips)"


def test_video_level_is_the_mean_of_clip_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 5.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    videos = video_level(logits, labels, ["a", "a", "b", "b"])
    # a: mean (1.0, 0.5) -> 0 ; b: mean (0.5, 2.5) -> 1 (a vote of clips would tie on b)
    assert videos["prediction"].tolist() == [0, 1] and videos["label"].tolist() == [0, 1]


def test_classification_metrics_by_hand():
    result = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["x", "y"])
    assert result["accuracy"] == 0.75
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert result["per_class"]["x"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert result["per_class"]["y"]["precision"] == pytest.approx(2 / 3)


def test_evaluate_reports_clip_and_video_accuracy(params, tmp_path):
    store = MemoryStore({"train": 12, "val": 3, "test": 8})
    _train(store, params, tmp_path / "m")
    metrics, videos = evaluate_model(tmp_path / "m", store, "test", 4, "cpu")
    assert metrics["clips"] == 8 and metrics["videos"] == 4 and len(videos) == 4
    assert 0.0 <= metrics["clip_accuracy"] <= 1.0
    assert metrics["video_accuracy"] == (videos["actual"] == videos["predicted"]).mean()
    assert np.array(metrics["confusion_matrix"]).sum() == 4


def test_ablation_table_reads_only_the_variants_params_name(params, tmp_path, monkeypatch):
    store = MemoryStore({"train": 12, "val": 3, "test": 4})
    params["ablation"]["variants"] = {"full": {}, "no_pose": {"model.use_pose": False}}
    params["ablation"]["latency_repeats"] = 2
    params["ablation"]["latency_warmup"] = 0
    for variant in ("full", "no_pose"):
        ablation.run_variant(params, variant, store, tmp_path / variant, progress=False)
    # a stale folder of a removed variant must not leak into the table
    stale = copy.deepcopy(json.loads((tmp_path / "full/metrics.json").read_text()))
    (tmp_path / "old").mkdir()
    write_json({**stale, "variant": "old"}, tmp_path / "old/metrics.json")
    monkeypatch.setattr(ablation, "backbone_latency", lambda *a, **k: {"median_ms": 10.0})
    table, markdown = ablation.aggregate(params, store, tmp_path)
    assert list(table) == ["full", "no_pose"] and "old" not in markdown
    assert table["full"]["delta_vs_full"] == 0.0
    no_pose = table["no_pose"]
    assert no_pose["delta_vs_full"] == pytest.approx(no_pose["accuracy"] - table["full"]["accuracy"])
    assert no_pose["e2e_latency_ms"] == pytest.approx((10.0 + no_pose["head_latency_ms"]) / 4)
    assert no_pose["overrides"] == {"model.use_pose": False}
    assert "| no_pose | model.use_pose=False |" in markdown


def test_ablation_missing_variant_results_fail_clearly(params, tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "backbone_latency", lambda *a, **k: {"median_ms": 1.0})
    params["ablation"]["variants"] = {"full": {}}
    with pytest.raises(FileNotFoundError, match="'full' has no results"):
        ablation.aggregate(params, MemoryStore({"test": 2}), tmp_path)
