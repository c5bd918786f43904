"""Reliability end to end: `dvc repro` over a KTH-layout tree of bad and odd videos mixed with good ones."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.corpus import build_mixed_tree
from tests.dvc_project import dvc, make_project

CORPUS_ROOT = "my videos ü 日本"  # spaces and non-ASCII characters in the dataset path
CORPUS = {
    "synth": {"subjects": 1, "scenarios": ["d1"], "actions": ["boxing"], "frames_per_video": 8},
    "data": {"dataset": "kth", "root": CORPUS_ROOT, "split": "paper"},
    "detect": {"source": "model"},  # the tiny RT-DETR + ByteTrack and ViTPose++ on every frame
    "pose": {"source": "model"},
    "clips": {"per_video_train": 1, "per_video_test": 1},
    "backbone": {"batch_size": 16},
    "train": {"epochs": 2},
    "eval": {"explain_clips": 1},
    "ablation": {"seeds": [0], "latency_warmup": 1, "latency_repeats": 2},
}


def _video_id(path: str) -> str:
    return Path(path).name.removesuffix("_uncomp.avi")


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("corpus"), CORPUS, variants={"full": {}})
    manifest = build_mixed_tree(project / CORPUS_ROOT)
    log = dvc(project, "repro")
    return project, manifest, log


def test_repro_over_bad_and_odd_videos_finishes_and_accounts_for_every_file(corpus_run):
    project, manifest, _ = corpus_run
    indexed = {rel for rel, entry in manifest.items() if not entry["kind"].startswith("unknown_action")}
    unusable = {_video_id(rel) for rel in indexed if manifest[rel]["expect"] == "unusable"}
    usable = {_video_id(rel) for rel in indexed if manifest[rel]["expect"] == "usable"}
    assert len(unusable) == 3 and len(usable) == 23  # zero-byte, random bytes, text; 12 good + 11 odd

    # prepare: the two files named like KTH videos of an unknown action are listed with a reason, counted
    prepare = json.loads((project / "metrics/prepare.json").read_text())
    assert prepare["videos"] == len(indexed) and prepare["unrecognised"] == 2
    assert set(prepare["unrecognised_reasons"]) == set(manifest) - indexed

    # frames: every unusable video in the stage's table with its reason and counted; odd ones flagged, kept
    frames = json.loads((project / "metrics/frames.json").read_text())
    assert {item["video_id"] for item in frames["skipped"]} == unusable == {
        v for v, s in pd.read_parquet(project / "data/frames/videos.parquet")[["video_id", "status"]].values
        if s == "skipped"
    }  # fmt: skip
    assert frames["videos_skipped"] == 3 and frames["videos_ok"] == len(usable)
    flagged = {item["video_id"]: item["reason"] for item in frames["flagged"]}
    for kind in ("truncated", "wrong_header"):
        (rel,) = [r for r, e in manifest.items() if e["kind"] == kind]
        assert flagged[_video_id(rel)].startswith("truncated: decoded"), kind
    assert frames["videos_truncated"] == 2
    assert frames["videos_resampled"] == 2  # the 10 fps and 30 fps videos, resampled by time

    # features: every usable video gives clips; the unusable ones are counted as skipped
    clips = pd.read_parquet(project / "data/clips.parquet")
    assert set(clips["video_id"]) == usable
    features = json.loads((project / "metrics/features.json").read_text())
    assert features["skipped_videos"] == 3 and sorted(features["skipped"]) == sorted(unusable)

    # evaluate: every usable test-split video is scored
    index = pd.read_parquet(project / "data/index.parquet").set_index("video_id")
    test_videos = {v for v in usable if index.loc[v, "split"] == "test"}
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert (
        evaluation["videos"] == len(test_videos) == len(set(clips.loc[clips["split"] == "test", "video_id"]))
    )
    ablation = json.loads((project / "metrics/ablation.json").read_text())
    assert "full" in json.dumps(ablation)


# --- interruption, resume and determinism --------------------------------------------------------------------

RESUME = {
    "synth": {"subjects": 25, "scenarios": ["d1"], "actions": ["boxing", "walking"], "frames_per_video": 40},
    "frames": {"videos_per_shard": 2},  # 25 shards: the stage is stopped after the first
    "clips": {"per_video_train": 4, "per_video_test": 1},
    "backbone": {"batch_size": 4, "clips_per_shard": 8},
    "train": {"epochs": 2},
    "eval": {"explain_clips": 1},
    "ablation": {"seeds": [0], "latency_warmup": 1, "latency_repeats": 2},
}


def _start(project: Path, *args: str) -> subprocess.Popen:
    """`dvc ARGS` in its own process group, as a terminal runs it (Ctrl-C reaches DVC and its stage).

    SIGINT is set back to its default in the child: a suite started in the background (`make test &` from a
    script, `nohup`) inherits it ignored, which Python then keeps, so the stage would never see the Ctrl-C."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env | {"HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _stop_when(process: subprocess.Popen, done: Callable[[], bool], sig: int) -> str:
    """Send ``sig`` to the process group as soon as ``done()``; the stage must still be running then."""
    deadline = time.monotonic() + 300
    while not done():
        assert process.poll() is None, f"finished before it could be interrupted:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no finished part appeared within 300 s"
        time.sleep(0.01)
    os.killpg(process.pid, sig)
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0, out
    # DVC may return before its stage has finished cleaning up: judge what is left once the whole group is gone
    deadline = time.monotonic() + 120
    while _group_running(process.pid):
        assert time.monotonic() < deadline, "the stage was still running 120 s after DVC returned"
        time.sleep(0.05)
    return out


def _group_running(group: int) -> bool:
    """Whether a process of process group ``group`` is still running (zombies aside), from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == group and state != "Z":
            return True
    return False


def _parts(project: Path, output: str, pattern: str) -> list[Path]:
    return sorted((project / "data/.partial" / output).glob(f"*/{pattern}"))


def _outs(project: Path) -> dict[str, str]:
    """Every stage output's hash in dvc.lock (files and folders; the ablation table's latency excluded)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        for out in stage.get("outs", [])
        if not out["path"].startswith("metrics/")  # the metrics are compared without their timings
    }


TIMING = re.compile(r"seconds|per_second|_per_s$|^ms_|_ms$|_ms_|latency|throughput")


def _metrics(project: Path) -> dict[str, object]:
    """Every metrics JSON with its wall-time measurements removed (they are the only fields that may vary)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not TIMING.search(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {p.name: strip(json.loads(p.read_text())) for p in sorted((project / "metrics").glob("*.json"))}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("resume"), RESUME, variants={"full": {}})
    dvc(project, "repro", "prepare", "checkpoints")
    # Ctrl-C in the frames stage (its first run: nothing in DVC's cache), once some shards are finished
    process = _start(project, "repro", "frames")
    sigint_log = _stop_when(
        process, lambda: bool(_parts(project, "frames", "*.videos.parquet")), signal.SIGINT
    )
    after_sigint = {
        "log": sigint_log,
        "frames_exists": (project / "data/frames").exists(),
        "parts": [p.name for p in _parts(project, "frames", "*")],
        "leftovers": sorted(p.name for p in (project / "data").glob(".frames*")),
    }
    # SIGKILL in the features stage (nothing can clean up), once a token shard is finished
    process = _start(project, "repro", "features")
    log_frames_resume = _stop_when(
        process, lambda: bool(_parts(project, "features", "shard-*.safetensors")), signal.SIGKILL
    )
    after_sigkill = {
        "features_exists": (project / "data/features").exists(),
        "clips_exists": (project / "data/clips.parquet").exists(),
        "parts": [p.name for p in _parts(project, "features", "shard-*.safetensors")],
    }
    resumed_log = dvc(project, "repro")
    resumed = _outs(project)
    metrics = _metrics(project)
    forced_log = dvc(project, "repro", "--force")
    return {
        "project": project,
        "after_sigint": after_sigint,
        "after_sigkill": after_sigkill,
        "log_frames_resume": log_frames_resume,
        "resumed_log": resumed_log,
        "resumed": resumed,
        "metrics": metrics,
        "forced_log": forced_log,
        "forced": _outs(project),
    }


def test_ctrl_c_leaves_nothing_that_looks_complete_and_the_rerun_resumes(interrupted):
    sigint = interrupted["after_sigint"]
    assert not sigint["frames_exists"] and sigint["leftovers"] == []
    assert "frames: interrupted; nothing it was writing looks complete" in sigint["log"]
    assert "Traceback" not in sigint["log"]
    assert sigint["parts"] and all(name.startswith("shard-") for name in sigint["parts"])
    # the next run of the frames stage (upstream of features) picked up the shards finished before Ctrl-C
    done = sum(name.endswith(".videos.parquet") for name in sigint["parts"])
    assert f"frames: resuming, {done} of 25 shards already done" in interrupted["log_frames_resume"]


def test_sigkill_leaves_nothing_that_looks_complete_and_the_rerun_resumes(interrupted):
    sigkill = interrupted["after_sigkill"]
    assert not sigkill["features_exists"] and not sigkill["clips_exists"]
    assert sigkill["parts"]  # finished token shards, kept outside DVC's output
    assert f"features: resuming, {len(sigkill['parts'])} of" in interrupted["resumed_log"]
    assert not (interrupted["project"] / "data/.partial").exists()  # removed once the outputs are complete


def test_forced_rerun_gives_byte_identical_outputs_and_metrics(interrupted):
    """`dvc repro --force` after the interrupted-and-resumed run: every Parquet, safetensors and model output
    has the same hash (so an interrupted run equals an uninterrupted one), and the metrics are the same."""
    forced_log = interrupted["forced_log"]
    assert "Running stage 'features'" in forced_log and "resuming" not in forced_log
    assert interrupted["forced"] == interrupted["resumed"]
    assert {
        "data/frames",
        "data/tracks.parquet",
        "data/keypoints.parquet",
        "data/features",
        "models/transmodal",
    } <= set(interrupted["forced"])
    project = interrupted["project"]
    assert {"frames.json", "features.json", "train.json", "eval.json", "ablation.json"} <= set(
        interrupted["metrics"]
    )
    assert _metrics(project) == interrupted["metrics"]
