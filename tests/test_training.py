"""Training, evaluation and ablation aggregation on a small in-memory feature store."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT
from transmodal.features.cache import FeatureStore
from transmodal.io import write_json
from transmodal.model import attention
from transmodal.params import CheckpointError, ParamError, load_params, section
from transmodal.training import ablation, figures
from transmodal.training import table as ablation_table
from transmodal.training import train as train_module
from transmodal.training.data import SplitData
from transmodal.training.evaluate import (
    PAPER_UNIT,
    classification_metrics,
    evaluate_logits,
    evaluate_model,
    video_level,
)
from transmodal.training.figures import ablation_markdown, plot_ablation
from transmodal.training.train import deterministic_attention, load_checkpoint, pipeline_record, train_model

G, P, D, T, J = 8, 4, 16, 16, 17
CLASSES = ["boxing", "walking", "running"]


class MemoryStore:
    """The FeatureStore interface (clips, backbone, tokens, pose) over arrays in memory."""

    def __init__(self, clips_per_split: dict[str, int], seed: int = 0, patches: int = P, dim: int = D):
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
                        "sequence": n % 2,  # each video: two listed sequences of one clip
                    }
                )
        self.clips = pd.DataFrame(rows)
        self.class_names = list(CLASSES)
        labels = self.clips["label_idx"].to_numpy()
        # class-dependent signal so training has something to learn
        self._tokens = rng.normal(size=(len(rows), G, patches, dim)).astype(np.float16)
        self._tokens[..., 0] += (labels[:, None, None] * 2.0).astype(np.float16)
        self._xy = rng.uniform(size=(len(rows), T, J, 2)).astype(np.float32)
        self._score = np.ones((len(rows), T, J), np.float32)
        self._mask = np.ones((len(rows), T, J), bool)
        self.backbone = {
            "grid": [G, patches],
            "hidden_size": dim,
            "num_frames": T,
            "tubelet_size": 2,
            "image_size": 32,
            "checkpoint": "memory",
            "parameters": 1000,
            "flops_per_clip": 2_000_000,
        }

    def tokens(self, rows):
        return torch.from_numpy(self._tokens[np.asarray(rows)])

    def encode_on(self, device):  # a cache of tokens: nothing to encode
        pass

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


def _train(store, params, out_dir, resume_dir=None, progress=False):
    return train_model(
        store,
        section(params, "model"),
        section(params, "selector"),
        section(params, "train"),
        out_dir,
        progress=progress,
        resume_dir=resume_dir,
    )


def test_training_is_deterministic_and_checkpoint_rebuilds_the_model(params, tmp_path):
    store = MemoryStore({"train": 24, "val": 6, "test": 6})
    metrics_a, history_a = _train(store, params, tmp_path / "a")
    metrics_b, history_b = _train(store, params, tmp_path / "b")
    pd.testing.assert_frame_equal(history_a, history_b)
    assert metrics_a == metrics_b
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert list(history_a["epoch"]) == [1, 2, 3]
    # each row's lr is the rate that epoch trained at (cosine from train.lr), not the next epoch's
    assert history_a["lr"].tolist() == pytest.approx([1e-4, 1e-4 * (1 + np.cos(np.pi / 3)) / 2, 1e-4 * 0.25])
    assert metrics_a["best_epoch"] in (1, 2, 3)
    assert metrics_a["val_acc"] == history_a.loc[metrics_a["best_epoch"] - 1, "val_acc"]
    assert metrics_a["val_acc"] == history_a["val_acc"].max()
    model, config = load_checkpoint(tmp_path / "a")
    assert config["classes"] == CLASSES and config["best_epoch"] == metrics_a["best_epoch"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == metrics_a["parameters"]["total"]


class Interrupted(Exception):
    pass


def test_an_interrupted_training_goes_on_after_its_last_epoch_and_ends_with_the_same_bytes(
    params, tmp_path, monkeypatch, capsys
):
    """The state after each epoch (weights, AdamW's moments, the schedule, the random generators that order
    the clips and draw the dropout masks, the history and the best epoch) is kept; a run killed in epoch 3
    of 4 trains epochs 3 and 4 only and writes the weights and history of a run never interrupted."""
    store = MemoryStore({"train": 24, "val": 6, "test": 6})
    store.directory, store.clips_path = tmp_path / "features", tmp_path / "clips.parquet"
    params["train"]["epochs"] = 4
    assert params["model"]["dropout"] > 0  # the dropout masks come from the generator that is restored
    whole_metrics, whole_history = _train(store, params, tmp_path / "whole")
    validations = []
    validate = train_module.predict

    def counted(*args, **kwargs):  # one validation an epoch
        validations.append(1)
        if len(validations) == stop:
            raise Interrupted
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "predict", counted)
    resume = tmp_path / "partial" / "train"
    stop = 3
    with pytest.raises(Interrupted):
        _train(store, params, tmp_path / "killed", resume_dir=resume)
    assert not (tmp_path / "killed").exists() and len(list(resume.rglob("state.pt"))) == 1
    validations.clear()
    stop = None
    (state,) = resume.rglob("state.pt")
    kept = state.read_bytes()
    state.write_bytes(kept[: len(kept) // 2])  # cut short: one line naming the file, not a traceback
    with pytest.raises(CheckpointError, match=r"state\.pt: the training state .* remove it"):
        _train(store, params, tmp_path / "resumed", resume_dir=resume)
    state.write_bytes(kept)
    validations.clear()
    metrics, history = _train(store, params, tmp_path / "resumed", resume_dir=resume, progress=True)
    assert "train: resuming after epoch 2 of 4" in capsys.readouterr().out
    assert len(validations) == 2  # epochs 3 and 4
    pd.testing.assert_frame_equal(history, whole_history)
    assert metrics == whole_metrics
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("whole", "resumed")]
    assert weights[0] == weights[1]
    params["train"]["lr"] = 2e-4  # another param: another key, nothing taken
    validations.clear()
    _train(store, params, tmp_path / "other", resume_dir=resume)
    assert len(validations) == 4


def test_the_weights_do_not_depend_on_the_process_thread_count(params, tmp_path):
    """torch splits the head's sums (LayerNorm's gradients, matrix products) by thread: training runs on
    ``train.threads`` whatever the process had, and evaluation on the count the model was trained with."""
    store = MemoryStore({"train": 16, "val": 4, "test": 4}, patches=16, dim=64)
    params["train"]["epochs"] = 1
    before = torch.get_num_threads()
    weights, scores = {}, {}
    try:
        # (model, the process's threads before training, train.threads, the process's before evaluating)
        for name, before_train, threads, before_eval in (("a", 1, 1, 2), ("b", 2, 1, 3), ("c", 1, 2, 1)):
            params["train"]["threads"] = threads
            torch.set_num_threads(before_train)
            _train(store, params, tmp_path / name)
            assert torch.get_num_threads() == before_train  # restored for what the caller runs next
            weights[name] = (tmp_path / name / "model.safetensors").read_bytes()
            torch.set_num_threads(before_eval)
            metrics, _ = evaluate_model(tmp_path / name, store, "test", 4)
            scores[name] = metrics
            assert torch.get_num_threads() == before_eval  # restored: the stage's figures run the backbone
    finally:
        torch.set_num_threads(before)
    assert weights["a"] == weights["b"]
    assert scores["a"] == scores["b"]
    assert weights["a"] != weights["c"]  # the count matters at this size, so the first check can fail


def test_training_leaves_the_deterministic_kernel_flags_as_it_found_them(params, tmp_path):
    """Training asks torch for deterministic kernels; the caller's later work (the ablation's evaluations, a
    recomputed backbone's Conv3d on cuDNN, a notebook) runs with its own flags again."""
    store = MemoryStore({"train": 8, "val": 4, "test": 4}, patches=16, dim=64)
    params["train"]["epochs"] = 1
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        _train(store, params, tmp_path / "model")
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def test_a_damaged_or_mismatched_model_folder_is_one_line(params, tmp_path):
    """Weights cut short (a full disk, a copy stopped), weights of another model, a config.json edited into
    something else: the evaluate and ablate stages and `transmodal predict` say so in one line, naming the
    folder, where they printed safetensors' or torch's traceback."""
    from transmodal.params import CheckpointError

    store = MemoryStore({"train": 8, "val": 4, "test": 4}, patches=16, dim=64)
    params["train"]["epochs"] = 1
    _train(store, params, tmp_path / "model")
    load_checkpoint(tmp_path / "model")  # whole, it loads
    weights, config = tmp_path / "model" / "model.safetensors", tmp_path / "model" / "config.json"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:5000])
    with pytest.raises(CheckpointError, match=r"model: cannot load the model \(SafetensorError: .*damaged"):
        load_checkpoint(tmp_path / "model")
    weights.write_bytes(whole)
    other = json.loads(config.read_text())
    other["model"]["num_classes"] += 1
    config.write_text(json.dumps(other))
    with pytest.raises(
        CheckpointError, match=r"\(RuntimeError: size mismatch for .*damaged or not the model"
    ):
        load_checkpoint(tmp_path / "model")
    config.write_text("[]")
    with pytest.raises(CheckpointError, match=r"\(TypeError: .*config.json is not one the train or ablate"):
        load_checkpoint(tmp_path / "model")


def _fused_attention_enabled() -> tuple[bool, bool, bool, bool]:
    """(flash, memory-efficient, cuDNN, math) attention kernels allowed now."""
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
        cuda.math_sdp_enabled(),
    )


def test_training_attention_on_cuda_is_the_deterministic_math_kernel(params, tmp_path, monkeypatch):
    # On CUDA the fused kernels' backward is not deterministic under warn_only (docs/decisions.md 37)
    with deterministic_attention(torch.device("cuda")):
        assert _fused_attention_enabled() == (False, False, False, True)
    with deterministic_attention(torch.device("cpu")):
        assert _fused_attention_enabled() == (True, True, True, True)  # the CPU's bytes stay as they were
    # every attention call of a training step runs inside it (the device forced to "cuda" for the flags)
    seen = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        seen.append((torch.is_grad_enabled(), _fused_attention_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(
        train_module, "deterministic_attention", lambda device: deterministic_attention(torch.device("cuda"))
    )
    params["train"]["epochs"] = 1
    _train(MemoryStore({"train": 8, "val": 2}), params, tmp_path / "m")
    steps = [kernels for grad, kernels in seen if grad]
    assert len(steps) >= 2 and all(kernels == (False, False, False, True) for kernels in steps)
    assert any(not grad for grad, _ in seen)  # validation (no gradient) keeps the fused kernels
    assert all(kernels == (True, True, True, True) for grad, kernels in seen if not grad)


def test_backbone_latency_runs_the_cached_backbone_in_the_dtype_the_cache_was_made_with(monkeypatch):
    from transmodal.params import BackboneConfig

    loaded, resolved = [], []

    def load_model(cls, folder, key, device, dtype):
        loaded.append((folder, dtype))
        raise RuntimeError("stop")

    monkeypatch.setattr(ablation_table, "load_model", load_model)
    monkeypatch.setattr(
        ablation_table, "resolve_checkpoint", lambda *args: resolved.append(args) or "snapshot"
    )
    params = BackboneConfig(checkpoint="some-org/videomae", revision="v1.0")
    for made_in, expected in (("float16", torch.float16), ("float32", torch.float32), (None, torch.float32)):
        backbone = {"model_dtype": made_in} if made_in else {}  # backbone.json before the key: float32
        with pytest.raises(RuntimeError, match="stop"):
            ablation_table.backbone_latency(params, backbone, torch.device("cpu"), 1, 1)
        assert loaded[-1] == ("snapshot", expected)
    # the revision the features stage loaded (backbone.revision), not whatever the hub id resolves to today
    assert resolved[-1] == ("some-org/videomae", "backbone.checkpoint", "v1.0")


def test_missing_joints_are_zeroed_and_scored_zero():
    from transmodal.training.data import pose_input

    xy = np.full((1, 2, 3, 2), 0.5, np.float32)
    score = np.full((1, 2, 3), 0.9, np.float32)
    mask = np.array([[[True, False, True], [False, False, False]]])  # frame 1 without any joint
    plain = pose_input(xy, score, mask, pose_scores=False)
    assert plain.shape == (1, 2, 3, 2) and plain.dtype == torch.float32
    assert torch.equal(plain[0, 0, 1], torch.zeros(2)) and torch.equal(plain[0, 1], torch.zeros(3, 2))
    assert torch.equal(plain[0, 0, 0], torch.full((2,), 0.5))
    scored = pose_input(xy, score * mask, mask, pose_scores=True)  # the clip plan's scores: 0 where masked
    assert scored.shape == (1, 2, 3, 3) and scored[0, 1, :, 2].eq(0).all() and scored[0, 0, 0, 2] == 0.9
    # a masked joint holding NaN (no estimate) is zeroed too: NaN x 0 is NaN, and one NaN reaches every
    # pose token, then every RGB token through the co-attention
    xy[0, 0, 1] = np.nan
    assert torch.equal(pose_input(xy, score, mask, pose_scores=False), plain)


def test_macro_f1_averages_the_classes_present():
    # a class with no test unit (its folder missing) is not a class the model got wrong
    result = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    f1 = [result["per_class"][name]["f1"] for name in ("a", "b")]
    assert result["macro_f1"] == pytest.approx(np.mean(f1)) and result["macro_f1_classes"] == 2
    assert result["per_class"]["c"]["support"] == 0


def test_the_test_videos_left_out_of_the_accuracies_are_counted_with_their_reasons():
    from transmodal.training.evaluate import split_coverage

    index = pd.DataFrame({"video_id": ["a", "b", "c", "d", "t"], "split": ["test"] * 4 + ["train"]})
    videos = pd.DataFrame(
        {"video_id": ["a", "b", "c", "d", "t"], "status": ["ok", "skipped", "ok", "ok", "ok"],
         "reason": ["", "zero-byte file", "", "", ""]}
    )  # fmt: skip
    coverage = split_coverage(index, videos, pd.Series(["a", "d"]))
    assert coverage == {
        "test_videos_indexed": 4,
        "test_videos_scored": 2,
        "test_videos_not_scored": [
            {"video_id": "b", "reason": "skipped by the frames stage: zero-byte file"},
            {"video_id": "c", "reason": "no clip in the feature cache"},
        ],
    }


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


def test_evaluate_reports_clip_sequence_and_video_accuracy(params, tmp_path):
    store = MemoryStore({"train": 12, "val": 3, "test": 8})
    _train(store, params, tmp_path / "m")
    metrics, predictions = evaluate_model(tmp_path / "m", store, "test", 4, "cpu")
    assert (metrics["clips"], metrics["sequences"], metrics["videos"]) == (8, 8, 4)
    assert metrics["paper_unit"] == PAPER_UNIT == "sequence"
    for unit in ("clip", "sequence", "video"):
        rows = predictions[unit]
        assert metrics[f"{unit}_accuracy"] == (rows["actual"] == rows["predicted"]).mean()
        assert np.array(metrics["units"][unit]["confusion_matrix"]).sum() == len(rows)
        assert set(metrics["units"][unit]["per_class"]) == set(CLASSES)
        assert metrics["units"][unit]["description"]
    assert predictions["sequence"]["unit_id"].tolist()[:2] == ["test0_0/0", "test0_0/1"]


def test_units_aggregate_the_clip_logits_of_their_sequence_and_video():
    # Video a: sequence 0 holds clips 0 and 1, sequence 1 holds clip 2. Video b lists no sequences.
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    data = SplitData(
        store=None,
        rows=np.arange(6),
        clip_ids=[f"c{i}" for i in range(6)],
        labels=labels,
        video_ids=["a"] * 3 + ["b"] * 3,
        sequence_ids=["a/0", "a/0", "a/1", "b", "b", "b"],
        pose_channels=2,
    )
    metrics, predictions = evaluate_logits(logits, data, ["x", "y"])
    assert predictions["clip"]["predicted"].tolist() == ["x", "y", "y", "y", "y", "x"]
    assert metrics["clip_accuracy"] == 3 / 6
    # a/0: mean (1.5, 0.5) -> x (right); a/1 -> y (wrong); b: mean (5/3, 2/3) -> x (wrong).
    assert predictions["sequence"]["unit_id"].tolist() == ["a/0", "a/1", "b"]
    assert predictions["sequence"]["predicted"].tolist() == ["x", "y", "x"]
    assert metrics["sequence_accuracy"] == 1 / 3 and metrics["sequences"] == 3
    # a: mean (1, 2/3) -> x (right); b -> x (wrong).
    assert metrics["video_accuracy"] == 1 / 2 and metrics["videos"] == 2
    assert metrics["units"]["sequence"]["per_class"]["x"]["recall"] == 1 / 2
    assert metrics["units"]["sequence"]["confusion_matrix"] == [[1, 1], [1, 0]]


def _ablation_params(params: dict, variants: dict, seeds: list[int]) -> dict:
    params["ablation"].update(
        {"variants": variants, "seeds": seeds, "workers": 1, "latency_repeats": 2, "latency_warmup": 0}
    )
    return params


def test_ablation_table_reads_only_the_variants_params_name(params, tmp_path, monkeypatch):
    store = MemoryStore({"train": 12, "val": 3, "test": 8})
    variants = {"full": {}, "no_pose": {"model.use_pose": False}}
    params = _ablation_params(params, variants, [0, 1])
    for variant in variants:
        metrics = ablation.run_variant(params, variant, store, tmp_path / variant, progress=False)
        assert [run["seed"] for run in metrics["runs"]] == [0, 1]
        assert (tmp_path / variant / "seed-1/model/model.safetensors").is_file()
    # a stale folder of a removed variant must not leak into the table
    stale = copy.deepcopy(json.loads((tmp_path / "full/metrics.json").read_text()))
    (tmp_path / "old").mkdir()
    write_json({**stale, "variant": "old"}, tmp_path / "old/metrics.json")
    monkeypatch.setattr(ablation_table, "backbone_latency", lambda *a, **k: {"median_ms": 10.0})
    timed_on, measure = [], ablation_table.measure_ms

    def measure_ms(*args, **kwargs):  # the head is timed on the threads it runs on in evaluate and predict
        timed_on.append(torch.get_num_threads())
        return measure(*args, **kwargs)

    monkeypatch.setattr(ablation_table, "measure_ms", measure_ms)
    before = torch.get_num_threads()
    torch.set_num_threads(params["train"]["threads"] + 1)
    try:
        table = ablation_table.aggregate(params, store, tmp_path)
    finally:
        torch.set_num_threads(before)
    assert timed_on == [params["train"]["threads"]] * 2
    threads = params["train"]["threads"]
    assert table["full"]["device"] == f"cpu (backbone {threads + 1} threads, head {threads})"
    markdown = ablation_markdown(table, store.backbone, section(params, "ablation"))
    assert list(table) == ["full", "no_pose"] and "old" not in markdown
    full, no_pose = table["full"], table["no_pose"]
    assert full["unit"] == "sequence" and full["test_units"] == 8
    assert full["accuracy_mean"] == pytest.approx(np.mean(full["seed_accuracies"]))
    assert full["interval"][0] <= full["accuracy_mean"] <= full["interval"][1]
    assert "delta_vs_full" not in full
    assert no_pose["delta_vs_full"] == pytest.approx(no_pose["accuracy_mean"] - full["accuracy_mean"])
    assert no_pose["delta_interval"][0] <= no_pose["delta_vs_full"] <= no_pose["delta_interval"][1]
    assert no_pose["e2e_latency_ms"] == pytest.approx((10.0 + no_pose["head_latency_ms"]) / 4)
    assert no_pose["overrides"] == {"model.use_pose": False}
    assert 0 < no_pose["head_flops"] < full["head_flops"]  # no fusion, no pose encoder
    assert full["head_flops_paper_size"] > 1e9 and full["backbone_flops_paper_size"] > 3e11
    assert "| no_pose | model.use_pose=False |" in markdown and "sequence-level top-1" in markdown
    plot_ablation(table, "sequence", tmp_path / "ablation.png", 0.95)
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Seeds changed in params but not re-run: refused, naming the param.
    params["ablation"]["seeds"] = [0, 1, 2]
    with pytest.raises(ValueError, match=r"ran seeds \[0, 1\], but ablation.seeds is \[0, 1, 2\]"):
        ablation_table.aggregate(params, store, tmp_path)


def test_difference_to_full_is_printed_only_when_its_interval_excludes_zero():
    """One seed: the interval is the test set's alone (a bootstrap over whole videos, normal quantile)."""
    cfg = section({"ablation": {"variants": {"full": {}}, "bootstrap_resamples": 2000}}, "ablation")
    same = np.ones((1, 100))
    one_unit = same.copy()
    one_unit[0, 0] = 0.0
    half = np.r_[np.ones(50), np.zeros(50)][None]
    videos = [f"v{i}" for i in range(100)]  # one unit per video
    assert ablation_table.difference_interval(same, same, videos, cfg) == (0.0, 0.0)
    low, high = ablation_table.difference_interval(one_unit, same, videos, cfg)
    assert low < 0 < high  # one unit of 100: no evidence of a difference
    low, high = ablation_table.difference_interval(half, same, videos, cfg)
    assert -0.62 < low < -0.55 and -0.45 < high < -0.38  # -0.5 ± 1.96 x 0.05
    # Units of one video move together: 10 videos of 10 units each give a wider interval than 100 videos.
    clustered = ablation_table.difference_interval(half, same, [f"v{i // 10}" for i in range(100)], cfg)
    assert clustered[0] < low and clustered[1] > high
    row = {"delta_vs_full": -0.01, "delta_interval": [-0.03, 0.0], "delta_significant": False}
    assert figures._delta(row) == "no difference [-3.0, +0.0]"
    row = {"delta_vs_full": -0.5, "delta_interval": [-0.6, -0.4], "delta_significant": True}
    assert figures._delta(row) == "-50.0 [-60.0, -40.0]"
    assert ablation_table.accuracy_interval(half, videos, cfg) == ablation_table.accuracy_interval(
        half, videos, cfg
    )
    assert ablation_table.accuracy_interval(same, videos, cfg) == (1.0, 1.0)  # clipped to [0, 1]


def test_the_intervals_hold_what_the_seeds_move_as_well_as_the_test_set():
    """Three seeds of a variant at 80, 55 and 65 % against full's three at 50 %: the test set alone would
    call the 16.7 points real; with the seeds' spread (t on 2 degrees of freedom) it is no difference. The
    same mean with seeds that agree is one."""
    cfg = section({"ablation": {"variants": {"full": {}}, "bootstrap_resamples": 2000}}, "ablation")
    videos = [f"v{i}" for i in range(100)]
    full = np.zeros((3, 100))
    full[:, :50] = 1.0
    spread = np.zeros((3, 100))
    for seed, right in enumerate((80, 55, 65)):
        spread[seed, :right] = 1.0
    test_set_only = ablation_table.difference_interval(spread.mean(0, keepdims=True), full[:1], videos, cfg)
    assert test_set_only[0] > 0
    low, high = ablation_table.difference_interval(spread, full, videos, cfg)
    assert low < 0 < high and high - low > 2 * (test_set_only[1] - test_set_only[0])
    agreeing = np.repeat(spread.mean(0, keepdims=True) > 0.5, 3, axis=0).astype(float)  # 2/3 -> right
    agreeing[:, 60:67] = 1.0  # every seed at 67 %
    assert ablation_table.difference_interval(agreeing, full, videos, cfg)[0] > 0
    assert ablation_table.accuracy_interval(spread, videos, cfg)[1] - ablation_table.accuracy_interval(
        spread, videos, cfg
    )[0] > 2 * (test_set_only[1] - test_set_only[0])
    assert figures._spread({"accuracy_std": None}) == "n/a"


def test_the_difference_to_full_pairs_the_runs_of_one_seed():
    """Seed s of every variant trains from the same draw (initial weights, batch order), so its runs move
    together: a row five points above full at each seed is a difference although both rows' seeds spread
    30 points (50, 80 and 65 %); the same accuracies with the seeds' pairing broken are not."""
    cfg = section({"ablation": {"variants": {"full": {}}, "bootstrap_resamples": 2000}}, "ablation")
    videos = [f"v{i}" for i in range(100)]
    full, variant = np.zeros((3, 100)), np.zeros((3, 100))
    for seed, right in enumerate((50, 80, 65)):
        full[seed, :right] = 1.0
        variant[seed, : right + 5] = 1.0
    low, high = ablation_table.difference_interval(variant, full, videos, cfg)
    assert 0 < low < 0.05 < high < 0.1
    low, high = ablation_table.difference_interval(variant, full[[1, 2, 0]], videos, cfg)
    assert low < 0 < high
    with pytest.raises(ValueError, match="not the same seeds and units"):
        ablation_table.difference_interval(variant[:2], full, videos, cfg)


def _write_store(memory: MemoryStore, folder) -> FeatureStore:
    """The memory store as a real feature cache on disk (one shard), as the features stage writes it."""
    from safetensors.torch import save_file

    from transmodal.features.cache import BACKBONE_FILE, TOKENS_KEY, shard_name

    folder.mkdir(parents=True)
    save_file({TOKENS_KEY: torch.from_numpy(memory._tokens)}, str(folder / shard_name(0)))
    (folder / BACKBONE_FILE).write_text(json.dumps(memory.backbone))
    clips = memory.clips.assign(
        shard=0,
        offset=np.arange(len(memory.clips)),
        pose_xy=list(memory._xy.reshape(len(memory.clips), -1)),
        pose_score=list(memory._score.reshape(len(memory.clips), -1)),
        pose_mask=list(memory._mask.reshape(len(memory.clips), -1)),
    )
    clips.attrs["class_names"] = memory.class_names
    clips.to_parquet(folder / "clips.parquet")
    return FeatureStore(folder, folder / "clips.parquet")


def test_seeds_in_worker_processes_equal_seeds_in_one_process(params, tmp_path, capfd):
    # large enough that the thread count changes the weights (the workers and this process differ in it)
    memory = MemoryStore({"train": 12, "val": 3, "test": 6}, patches=16, dim=64)
    store = _write_store(memory, tmp_path / "features")
    params = _ablation_params(params, {"full": {}}, [0, 1])
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no spawned worker starts with
    try:
        serial = ablation.run_variant(params, "full", store, tmp_path / "serial", progress=False)
    finally:
        torch.set_num_threads(before)
    params["ablation"]["workers"] = 2
    resume = tmp_path / "partial"  # as the stage runs it: each seed keeps its state after every epoch
    parallel = ablation.run_variant(params, "full", store, tmp_path / "parallel", False, resume)
    assert parallel == serial
    assert sorted(p.relative_to(resume).parts[0] for p in resume.rglob("state.pt")) == ["seed-0", "seed-1"]
    capfd.readouterr()
    # run again on the states left (the stage discards them; here they stay): each worker goes on from its
    # seed's last epoch, says so under the variant's and seed's name, and ends with the same results
    again = ablation.run_variant(params, "full", store, tmp_path / "again", False, resume)
    assert again == serial
    said = capfd.readouterr().out
    epochs = params["train"]["epochs"]
    for seed in (0, 1):
        assert f"ablate@full seed {seed}: resuming after epoch {epochs - 1} of {epochs}" in said
    for seed in (0, 1):
        model = f"seed-{seed}/model/model.safetensors"
        assert (tmp_path / "serial" / model).read_bytes() == (tmp_path / "parallel" / model).read_bytes()
        # each seed's folder records the pipeline as train's does, so `transmodal predict --model` runs it
        config = json.loads((tmp_path / "serial" / f"seed-{seed}/model/config.json").read_text())
        assert config["pipeline"] == pipeline_record(params)
    assert serial["runs"][0]["predicted"] != serial["runs"][1]["predicted"] or (
        (tmp_path / "serial/seed-0" / "model/model.safetensors").read_bytes()
        != (tmp_path / "serial/seed-1" / "model/model.safetensors").read_bytes()
    )


def test_ablation_missing_variant_results_fail_clearly(params, tmp_path, monkeypatch):
    monkeypatch.setattr(ablation_table, "backbone_latency", lambda *a, **k: {"median_ms": 1.0})
    params["ablation"]["variants"] = {"full": {}}
    with pytest.raises(FileNotFoundError, match="'full' has no results"):
        ablation_table.aggregate(params, MemoryStore({"test": 2}), tmp_path)


def test_training_curves_png_is_deterministic(tmp_path):
    from transmodal.training.figures import plot_curves

    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "lr": [1e-4, 5e-5, 0.0],
            "train_loss": [1.7, 1.2, 0.9],
            "train_acc": [0.2, 0.5, 0.7],
            "val_loss": [1.6, 1.1, 1.3],
            "val_acc": [0.3, 0.6, 0.6],
        }
    )
    plot_curves(history, tmp_path / "a.png", "curves", 2)
    plot_curves(history, tmp_path / "b.png", "curves", 2)
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == (tmp_path / "b.png").read_bytes()
    plot_curves(history.drop(columns=["val_loss", "val_acc"]), tmp_path / "c.png", "no val split", 3)
    assert (tmp_path / "c.png").read_bytes() != data
    # the epoch marked is the one the checkpoint records, not one recomputed from the rounded CSV
    plot_curves(history, tmp_path / "d.png", "curves", 3)
    assert (tmp_path / "d.png").read_bytes() != data
    plot_curves(history, tmp_path / "e.png", "curves", 2, label_smoothing=0.1)  # said in the legend
    assert (tmp_path / "e.png").read_bytes() != data


@pytest.mark.parametrize(("clips", "world"), [(464, 3), (10, 4), (12, 4), (2, 3)])
def test_an_epochs_loss_and_accuracy_count_each_clip_once_under_ddp(clips, world):
    """DistributedSampler pads every rank's share to one count by repeating clips: 464 clips on 3 processes
    trained on 465, and the epoch's loss and accuracy counted the repeated clip twice. Each rank counts the
    first positions of its share that are its own; together they are every clip once."""
    from torch.utils.data import DistributedSampler

    generator = torch.Generator().manual_seed(0)
    order, counted = train_module.epoch_order(clips, 1, generator)
    assert counted == clips and sorted(order.tolist()) == list(range(clips))
    shares = []
    for rank in range(world):
        sampler = DistributedSampler(range(clips), world, rank, shuffle=True, seed=0)
        order, counted = train_module.epoch_order(clips, 3, generator, sampler)
        assert len(order) == -(-clips // world)  # padded: every rank the same count
        shares += order[:counted].tolist()
    assert sorted(shares) == list(range(clips))


def test_a_ranks_padded_last_clips_are_left_out_of_the_epochs_sums():
    """The last batch of a rank's share may end in DistributedSampler's repeats: its first ``counted`` clips
    go into the sums with their own loss; a whole batch adds its mean loss times its size, as the Python
    sums of ``loss.item() * n`` did, bit for bit."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    train_module.add_to_sums(loss_sum, correct, loss, logits, labels, 4, 0.1)
    assert float(loss_sum) == loss.item() * 4
    assert int(correct) == int((logits.argmax(-1) == labels).sum())
    train_module.add_to_sums(loss_sum, correct, loss, logits, labels, 3, 0.1)  # the 4th clip is a repeat
    own = F.cross_entropy(logits[:3], labels[:3], label_smoothing=0.1, reduction="sum")
    assert float(loss_sum) == pytest.approx(loss.item() * 4 + own.item(), rel=1e-6)
    assert int(correct) == int(
        (logits.argmax(-1) == labels).sum() + (logits[:3].argmax(-1) == labels[:3]).sum()
    )
    before = (float(loss_sum), int(correct))
    train_module.add_to_sums(loss_sum, correct, loss, logits, labels, 0, 0.1)  # a batch of repeats only
    assert (float(loss_sum), int(correct)) == before
