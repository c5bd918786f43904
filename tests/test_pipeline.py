"""End to end: a throwaway DVC project on a tiny config; repro, no-op repro, an experiment, metrics diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dvc_project import dvc, make_project, run

TINY = {
    "synth": {"subjects": 25, "scenarios": ["d1"], "actions": ["boxing", "walking"], "frames_per_video": 40},
    "clips": {"per_video_train": 1, "per_video_test": 1},
    "backbone": {"batch_size": 16},
    "train": {"epochs": 2},
    "ablation": {
        "variants": {
            "full": {},
            "no_selector": {"selector.enabled": False},
            "keep_50": {"backbone.keep": 0.5, "selector.top_k_tokens": 6},
        },
        "seeds": [0, 1],  # workers auto: two seed processes on a 2-core machine
        "latency_warmup": 1,
        "latency_repeats": 3,
    },
}


def _run(args: list[str], cwd: Path) -> str:
    result = run(args, cwd)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), TINY, variants=TINY["ablation"]["variants"])


def test_repro_produces_every_output_and_a_second_repro_does_nothing(project):
    # what an interrupted run of a variant since removed from params.yaml kept: the ablation stage removes it
    removed = (
        "data/.partial/ablate/removed/seed-0/k1/state.pt",
        "data/.partial/ablation_features/removed/k1/a",
    )
    for part in removed:
        (project / part).parent.mkdir(parents=True)
        (project / part).write_bytes(b"x")
    dvc(project, "repro")
    assert not (project / "data/.partial").exists()  # and every stage removed its own once complete
    for path in (
        "data/index.parquet",
        "data/frames/videos.parquet",
        "data/tracks.parquet",
        "data/keypoints.parquet",
        "data/clips.parquet",
        "data/features/backbone.json",
        "models/transmodal/model.safetensors",
        "models/transmodal/config.json",
        "metrics/eval.json",
        "metrics/confusion.png",
        "metrics/ablation.md",
        "metrics/ablation.png",
        "data/ablation/full/seed-1/model/model.safetensors",
    ):
        assert (project / path).exists(), path
    assert json.loads((project / "metrics/detect.json").read_text())["recall"] == 1.0
    # the demo's backbone is the one pretrain wrote, on the training split's crops
    import pandas as pd

    summary = json.loads((project / "metrics/pretrain.json").read_text())
    index = pd.read_parquet(project / "data/index.parquet")
    assert summary["videos"] == (index["split"] == "train").sum() and summary["epochs"] == 1
    curve = pd.read_csv(project / "metrics/pretrain_curve.csv")
    assert len(curve) == summary["steps"] > 0 and curve["loss"].notna().all()
    assert (project / "models/pretrain/backbone/model.safetensors").exists()
    # and the features stage encoded with it: the lock records the pretrain stage's output as its input
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    written = {out["path"]: out["md5"] for out in lock["pretrain"]["outs"]}
    read = {dep["path"]: dep["md5"] for dep in lock["features"]["deps"]}
    assert read["models/pretrain"] == written["models/pretrain"]
    assert (
        json.loads((project / "data/features/backbone.json").read_text())["checkpoint"]
        == "models/pretrain/backbone"
    )
    assert "metrics/pretrain_curve.csv" in dvc(project, "plots", "show", "--json")
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert {"clip_accuracy", "sequence_accuracy", "video_accuracy"} <= set(evaluation)
    # every indexed test video is scored here (none skipped), and the stage says how many were
    assert evaluation["test_videos_scored"] == evaluation["test_videos_indexed"] == evaluation["videos"]
    assert evaluation["test_videos_not_scored"] == []
    # Figure 4's heat on the synthetic test clips: each map's heat (above its baseline) in the person's box,
    # against the box's share of the crop and of the frame (measured, decision 28; None: no heat at all)
    assert len(evaluation["explained_clips"]) == 2
    for clip in evaluation["explained_clips"].values():
        assert len(clip["heat_in_box"]) == 3
        for heat in clip["heat_in_box"].values():
            assert heat["mass_in_box"] is None or 0 <= heat["mass_in_box"] <= 1
            assert 0 < heat["box_share"] <= 1 and heat["baseline"]
            assert 0 < heat["box_share_of_frame"] < 1
    # and over every test clip with a box: the mean mass against the mean share, and how many clips are above
    assert len(evaluation["heat_on_test_clips"]) == 3
    for heat in evaluation["heat_on_test_clips"].values():
        assert 0 < heat["clips"] <= evaluation["clips"] and 0 <= heat["clips_above_share"] <= 1
        assert 0 <= heat["mass_in_box"] <= 1 and 0 < heat["box_share"] <= 1
    # what the frozen tokens say of the person, the same clips: probes scored on recordings not fitted on
    tokens = evaluation["person_in_tokens"]
    assert 0 < tokens["clips"] <= evaluation["clips"] and tokens["groups"] >= 2 and "skipped" not in tokens
    assert 2 <= tokens["folds"] <= 5 and 0 < tokens["tokens_on_box"] < tokens["tokens"]
    for probe in ("on_box_balanced_accuracy", "class_from_person_tokens", "class_from_background_tokens"):
        assert 0 <= tokens[probe] <= 1
    complexity = json.loads((project / "metrics/train.json").read_text())["complexity"]
    assert complexity["paper_size"]["parameters"]["fusion"] == 9_454_080
    assert complexity["run_size"]["backbone"]["flops"] > 0 and complexity["run_size"]["flops"]["total"] > 0
    table = json.loads((project / "metrics/ablation.json").read_text())
    assert sorted(table) == ["full", "keep_50", "no_selector"]
    # keep_50 trained on its own cache of 8 of the 16 patches a group, measured beside full in one run
    own = json.loads((project / "data/ablation_features/keep_50/features/backbone.json").read_text())
    shared = json.loads((project / "data/ablation_features/full/shared.json").read_text())
    assert (
        shared["features"] == "data/features"
        and not (project / "data/ablation_features/full/features").exists()
    )
    assert own["grid"] == [8, 8] and own["keep"] == 0.5 and own["full_patches_per_group"] == 16
    assert table["keep_50"]["backbone_keep"] == 0.5 and table["full"]["backbone_keep"] == 1.0
    assert table["keep_50"]["backbone_flops"] < table["full"]["backbone_flops"]
    assert table["keep_50"]["backbone_flops_paper_size"] < table["full"]["backbone_flops_paper_size"]
    for row in table.values():
        assert (
            len(row["seed_accuracies"]) == 2
            and row["interval"][0] <= row["accuracy_mean"] <= row["interval"][1]
        )
        assert row["head_latency_ms"] > 0 and row["e2e_latency_ms"] > 0 and row["head_flops"] > 0
    markdown = (project / "metrics/ablation.md").read_text()
    assert "| full |" in markdown and "| no_selector |" in markdown and "| keep_50 |" in markdown
    again = dvc(project, "repro")
    assert "Running stage" not in again, again


def test_experiment_reruns_only_the_head_and_metrics_diff_shows_it(project):
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "baseline results"], project)
    log = dvc(project, "exp", "run", "-S", "selector.top_k_frames=4")
    # the keep variants' own caches are not encoded again: only the head's stages re-run
    variants = ("full", "keep_50", "no_selector")
    for stage in ("synth", "checkpoints", "prepare", "frames", "detect", "pose", "features") + tuple(
        f"ablate_features@{variant}" for variant in variants
    ):
        assert f"Running stage '{stage}'" not in log, stage
        assert f"'{stage}' didn't change, skipping" in log, stage
    assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log
    assert all(f"Running stage 'ablate@{variant}'" in log for variant in variants)
    diff = dvc(project, "params", "diff")
    assert "selector.top_k_frames" in diff
    metrics = dvc(project, "metrics", "diff", "--all")
    assert "video_accuracy" in metrics and "head_latency_ms" in metrics


def _reset_to_head(project: Path) -> None:
    """Back to the committed params and results (an `exp run` in the workspace changes them)."""
    _run(["git", "checkout", "--", "."], project)
    dvc(project, "checkout", "--force")


def test_model_source_experiment_runs_rtdetr_and_vitpose_through_dvc(project):
    _reset_to_head(project)
    # target `pose`: the stages this test is about (the head's re-run is covered by the tests above)
    log = dvc(project, "exp", "run", "-S", "detect.source=model", "-S", "pose.source=model", "pose")
    assert "Running stage 'detect'" in log and "Running stage 'pose'" in log
    assert "Running stage 'frames'" not in log
    import pandas as pd

    tracks = pd.read_parquet(project / "data/tracks.parquet")
    assert list(tracks.columns)[:9] == [
        "video_id", "frame_idx", "track_id", "x1", "y1", "x2", "y2", "score", "is_primary"
    ]  # fmt: skip
    frames = pd.read_parquet(project / "data/frames/frames.parquet")
    primary = tracks[tracks["is_primary"]]
    assert len(primary) == len(frames)  # exactly one primary box per kept frame
    keypoints = pd.read_parquet(project / "data/keypoints.parquet")
    assert len(keypoints) == len(frames) and "left_wrist_score" in keypoints.columns
    detect = json.loads((project / "metrics/detect.json").read_text())
    pose = json.loads((project / "metrics/pose.json").read_text())
    assert detect["source"] == "model" and detect["checkpoint"] == "models/tiny/detector"
    assert {"recall", "precision", "primary_coverage", "identity_switches"} <= set(detect)
    assert pose["source"] == "model" and 0.0 <= pose["pck"] <= 1.0 and len(pose["pck_per_joint"]) == 17


def test_another_backbone_skips_pretraining_and_encodes_the_same_clips(project):
    _reset_to_head(project)
    log = dvc(project, "exp", "run", "-S", "backbone.checkpoint=models/tiny/backbone", "features")
    assert "Running stage 'pretrain'" in log and "Running stage 'features'" in log
    # pretrain had nothing to do and says why, in its metrics and in the folder it would have written
    assert "skipped" in json.loads((project / "metrics/pretrain.json").read_text())
    assert [p.name for p in (project / "models/pretrain").iterdir()] == ["skipped.json"]
    record = json.loads((project / "data/features/backbone.json").read_text())
    assert record["checkpoint"] == "models/tiny/backbone"
    before = _outs(_run(["git", "show", "HEAD:dvc.lock"], project))
    after = _outs((project / "dvc.lock").read_text())
    assert after["data/features"] != before["data/features"]  # other tokens
    assert after["data/clips.parquet"] == before["data/clips.parquet"]  # of the same clips


def _outs(lock: str) -> dict[str, str]:
    """path -> md5 of every stage output in a dvc.lock's text."""
    import yaml

    stages = yaml.safe_load(lock)["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def test_frames_decoded_from_the_sources_give_the_same_derived_data(project):
    _reset_to_head(project)
    log = dvc(project, "exp", "run", "-S", "frames.store=source", "train")
    assert "Running stage 'frames'" in log and "Running stage 'features'" in log
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == [
        "frames.parquet", "sources.parquet", "videos.parquet"
    ]  # fmt: skip
    before = _outs(_run(["git", "show", "HEAD:dvc.lock"], project))
    after = _outs((project / "dvc.lock").read_text())
    assert after["data/frames"] != before["data/frames"]
    for path in ("data/tracks.parquet", "data/keypoints.parquet", "data/clips.parquet", "data/features"):
        assert after[path] == before[path], path
    assert after["models/transmodal"] == before["models/transmodal"]


def test_tokens_encoded_again_when_read_train_and_evaluate_the_same_model(project):
    """backbone.store=recompute through DVC: no token grid on disk, and train and evaluate encode the clips
    again from data/frames, giving the cached run's weights and accuracies."""
    _reset_to_head(project)
    cached_weights = (project / "models/transmodal/model.safetensors").read_bytes()
    cached_eval = json.loads((project / "metrics/eval.json").read_text())
    log = dvc(project, "exp", "run", "-S", "backbone.store=recompute", "evaluate")
    assert "Running stage 'features'" in log and "Running stage 'evaluate'" in log
    assert [p.name for p in (project / "data/features").iterdir()] == ["backbone.json"]
    assert (project / "models/transmodal/model.safetensors").read_bytes() == cached_weights
    recomputed_eval = json.loads((project / "metrics/eval.json").read_text())
    for unit in ("clip", "sequence", "video"):
        assert recomputed_eval[f"{unit}_accuracy"] == cached_eval[f"{unit}_accuracy"], unit


def test_queued_sweep_runs_every_value(project):
    import time

    _reset_to_head(project)
    # target `evaluate`: each queued experiment trains and evaluates (ablations are covered above)
    dvc(project, "exp", "run", "--queue", "-S", "selector.top_k_frames=4,12", "evaluate")
    dvc(project, "queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    values = set()
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                metrics = data.get("metrics", {}).get("metrics/eval.json", {}).get("data", {})
                if "video_accuracy" in metrics:
                    values.add(params["selector"]["top_k_frames"])
    assert {4, 12} <= values, shown


FOLDER = {
    "data": {
        "dataset": "folder",
        "root": "videos",
        "split": "random",
        "test_fraction": 0.25,
        "val_fraction": 0.5,
    },
    "detect": {"source": "model"},  # one's own videos have no ground-truth boxes or keypoints
    "pose": {"source": "model"},
    "clips": {"per_video_train": 1, "per_video_test": 1},
    "backbone": {"batch_size": 16},
    "train": {"epochs": 1},
}


def test_your_own_videos_in_class_folders_train_and_evaluate(tmp_path_factory):
    """data.dataset folder: two classes of a camera's AVIs (25 and 30 fps) in per-person folders and a
    phone's variable-rate MP4 loose in each class folder go through `dvc repro evaluate`: indexed by class
    folder with a person's videos in one split, decoded, detected, posed, trained on and scored."""
    import pandas as pd

    from tests.conftest import write_vfr
    from tests.test_predict import camera_like_video

    project = make_project(tmp_path_factory.mktemp("folder"), FOLDER)
    for label in ("clap", "wave"):
        for person, fps in (("ann", 25.0), ("bob", 25.0), ("cid", 30.0)):
            (project / "videos" / label / person).mkdir(parents=True)
            camera_like_video(project / "videos" / label / person / "take1.avi", 40, (160, 120), fps)
        write_vfr(project / "videos" / label / "phone.mp4", [1 / 30] * 45 + [1 / 10] * 15, size=(160, 120))
    (project / "videos" / "README.txt").write_text("not a class folder: a file at the root is not indexed\n")
    log = dvc(project, "repro", "evaluate")
    assert "Running stage 'synth'" not in log  # the dataset is the folder, not the synthetic set
    index = pd.read_parquet(project / "data/index.parquet")
    assert len(index) == 8 and sorted(set(index["label"])) == ["clap", "wave"]
    assert index.groupby("group")["split"].nunique().max() == 1
    assert set(index["split"]) == {"train", "val", "test"}
    prepare = json.loads((project / "metrics/prepare.json").read_text())
    assert prepare["dataset"] == "folder" and prepare["groups"] == 8
    videos = pd.read_parquet(project / "data/frames/videos.parquet")
    assert (videos["status"] == "ok").all() and len(videos) == 8
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert evaluation["video_accuracy"] in (0.0, 0.5, 1.0)  # one test group, here one video, a class
    assert 0.0 <= evaluation["clip_accuracy"] <= 1.0
