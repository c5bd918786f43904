"""The real-size benchmark runs end to end (`make bench-real`), on a workload small enough for the suite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

STAGES = ("detect", "pose", "features")


def test_real_size_benchmark_measures_every_stage_against_its_bare_forward(tmp_path):
    out = tmp_path / "real_size.json"
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "real_size.py"),
        "--videos",
        "1",
        "--frames",
        "4",
    ]
    command += ["--detect-frames", "2", "--pose-frames", "4", "--repeats", "1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["stage"]: row for row in report["rows"]}
    assert set(rows) == set(STAGES)
    # the real architectures' sizes: RT-DETR r50vd, ViTPose++-B with its 6 experts, VideoMAE-B
    assert 40e6 < report["parameters"]["detect"] < 45e6
    assert 120e6 < report["parameters"]["pose"] < 125e6
    assert 85e6 < report["parameters"]["features"] < 88e6
    assert (rows["detect"]["units"], rows["pose"]["units"], rows["features"]["unit"]) == (2, 4, "clips")
    for row in rows.values():
        assert row["precision"] == "float32" and row["device"] == "cpu"
        assert len(row["stage_seconds"]) == len(row["bare_seconds"]) == 1
        assert row["ratio"] > 0 and row["stage_peak_rss_mb"] > 0.9 * row["base_rss_mb"]
    assert "| pose | cpu | float32 |" in done.stdout  # the printed table


def test_disk_benchmark_measures_every_output_and_extrapolates_by_clips_and_frames(tmp_path):
    out = tmp_path / "disk.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "disk.py"), "--videos", "4", "--frames", "40"]
    command += ["--feature-videos", "1", "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    small, large = report["measured"]["160x120"], report["measured"]["320x240"]
    assert (small["frames"]["width"], large["frames"]["width"]) == (160, 320)
    # four times the pixels take more room, though LZ4 keeps it under four times
    per_frame = [m["frames"]["shard_bytes"] / m["frames"]["frames_kept"] for m in (small, large)]
    assert per_frame[0] < per_frame[1] < 4 * per_frame[0]
    for features in report["features_real_size"]:  # VideoMAE-B's grid, fp16, in safetensors shards
        assert features["grid"] == [8, 196, 768] and features["payload_per_clip"] == 8 * 196 * 768 * 2
        assert features["equals_grid_plus_header"] and features["clips"] >= 1
    ucf = report["extrapolated"]["datasets"]["UCF101"]
    per_clip = report["features_real_size"][-1]["per_clip"]
    assert ucf["bytes"]["features"] == pytest.approx(ucf["counts"]["clips"] * per_clip, rel=1e-3)
    # backbone.store: recompute keeps backbone.json alone: UCF101 split 1's derived data, tables, under 1 GB
    recompute = report["features_real_size"][0]["recompute_features_bytes"]
    assert 0 < recompute < 10_000
    assert ucf["bytes"]["total_recompute"] < 1e9 < 64e9 < ucf["bytes"]["total_frames_source"]
    assert "| UCF101" in done.stdout


def test_decode_by_time_benchmark_runs_and_keeps_the_same_frames():
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "decode_by_time.py"), "--seconds", "1"]
    command += ["--size", "160x120", "--repeats", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # it asserts that both modes keep the same frames
    assert "30 frames of 160x120 at 30 fps, 13 kept" in done.stdout
    assert "ratio by_time / by_number: " in done.stdout


def test_train_state_benchmark_saves_and_restores_the_paper_size_state(tmp_path):
    out = tmp_path / "train_state.json"
    script = REPO_ROOT / "benchmarks" / "train_state.py"
    command = [
        sys.executable,
        str(script),
        "--batch",
        "1",
        "--classes",
        "6",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert 10e6 < report["parameters"] < 20e6  # the head at D=768, 8 x 196 tokens
    this, earlier = report["save"]["best is this epoch"], report["save"]["best is an earlier epoch"]
    # the weights and AdamW's two moments in float32; an earlier best epoch adds its weights
    assert 12 * report["parameters"] < this["bytes"] < 13 * report["parameters"]
    assert earlier["bytes"] - this["bytes"] > 3.9 * report["parameters"]
    assert this["median_s"] > 0 and report["step_s"] > 0 and report["restore_s"] > 0
    assert "of a UCF101 epoch" in done.stdout


def test_stitching_benchmark_scores_each_gate_on_the_same_tracks(tmp_path):
    out = tmp_path / "stitching.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "stitching.py"), "--videos", "4"]
    command += ["--frames", "120", "--scales", "none", "2.0", "1.3", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["videos"] == 4 and report["frames"] == 120
    rows = {row["stitching"]: row for row in report["results"]}
    assert list(rows) == ["off", "on, max_scale None", "on, max_scale 2.0", "on, max_scale 1.3"]
    assert rows["off"]["tracks_joined"] == rows["off"]["tracks_refused"] == 0
    assert rows["on, max_scale None"]["tracks_refused"] == 0
    assert rows["on, max_scale None"]["tracks_joined"] > 0  # the walkers come back under new ids
    for row in rows.values():
        assert 0.0 <= row["primary_coverage"] <= 1.0
    assert "| on, max_scale 2.0 |" in done.stdout
    # the crowd case: an actor in view throughout, bystanders walking through; no chain of theirs wins
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "stitching.py"),
        "--videos",
        "3",
        "--frames",
        "96",
    ]
    command += ["--actions", "in_place", "--bystanders", "3", "--scales", "none", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert (report["actions"], report["bystanders"]) == ("in_place", 3)
    assert [row["primary_coverage"] for row in report["results"]] == [1.0, 1.0]
    assert [row["identity_switches"] for row in report["results"]] == [0, 0]
