"""Every stage validates what it reads when it starts (``run_stage`` -> ``params.validate_stage``): sections,
relations between them, local checkpoints and ablation variants, before reading any input or writing
anything. The common mistakes run the real stage scripts in a folder holding only params.yaml (and the
few files a check reads), and must end in exit code 2, one line on stderr naming the key, and no output."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from transmodal.params import (
    FEATURES_BACKBONE,
    STAGE_SECTIONS,
    CheckpointError,
    ParamError,
    load_params,
    validate_stage,
)

PARAMS = load_params(REPO_ROOT / "params.yaml")
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }


def with_values(params: dict, values: dict) -> dict:
    """A copy of ``params`` with ``{'selector.top_k_frames': 32, ...}`` set (a new key too: a misspelling)."""
    result = copy.deepcopy(params)
    for dotted, value in values.items():
        sect, key = dotted.split(".", 1)
        result[sect][key] = value
    return result


def stage_outputs(stage: str) -> list[str]:
    """What dvc.yaml says ``stage`` (``ablate@<v>``) writes: outs, metrics, plots, and its timing file."""
    base, _, variant = stage.partition("@")
    body = DVC[base].get("do", DVC[base])
    paths = [f"metrics/timings/{stage}.json"]
    for kind in ("outs", "metrics", "plots"):
        for item in body.get(kind, []):
            path = item if isinstance(item, str) else next(iter(item))
            paths.append(path.replace("${key}", variant))
    return paths


def run_script(folder: Path, stage: str, params: dict) -> subprocess.CompletedProcess:
    """Run ``stages/<stage>.py`` (``ablate@v`` -> ``stages/ablate.py v``) in ``folder`` on ``params``."""
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    base, _, variant = stage.partition("@")
    args = [sys.executable, str(REPO_ROOT / "stages" / f"{base}.py"), *([variant] if variant else [])]
    return subprocess.run(args, cwd=folder, env=_env(), capture_output=True, text=True, timeout=300)


def write_backbone_record(folder: Path, patches_per_group: int, checkpoint: str | None = None) -> None:
    """A data/features/backbone.json as the features stage writes it (only the keys validation reads), made
    with ``checkpoint`` (default: params.yaml's)."""
    path = folder / FEATURES_BACKBONE
    path.parent.mkdir(parents=True)
    grid = [8, patches_per_group]
    record = {"model_type": "videomae", "num_frames": 16, "tubelet_size": 2, "grid": grid}
    record["checkpoint"] = checkpoint or PARAMS["backbone"]["checkpoint"]
    path.write_text(json.dumps(record | {"patches_per_group": patches_per_group}))


# (stage, values set in params.yaml, what the one line must contain). "<backbone>", "<pose>", "<detector>" are
# the tiny checkpoints' folders.
MISTAKES = {
    "top_k_frames_over_clip_length": (
        "train",
        {"selector.top_k_frames": 32, "clips.length": 16},
        "selector.top_k_frames is 32; the clip has only 16 frames (clips.length); expected 1 to 16",
    ),
    "top_k_tokens_over_the_grid": (
        "train",
        {"selector.top_k_tokens": 17, "backbone.checkpoint": "<backbone>"},
        "selector.top_k_tokens is 17; a frame has only 16 patch tokens",
    ),
    "clip_length_against_num_frames": (
        "features",
        {"clips.length": 8, "backbone.checkpoint": "<backbone>"},
        "clips.length is 8, but backbone.checkpoint",
    ),
    "pose_checkpoint_as_backbone": (
        "features",
        {"backbone.checkpoint": "<pose>"},
        "backbone.checkpoint is '<pose>', a vitpose checkpoint; expected a videomae checkpoint (VideoMAE",
    ),
    "pose_checkpoint_as_backbone_for_latency": (
        "ablation",
        {"backbone.checkpoint": "<pose>"},
        "backbone.checkpoint is '<pose>', a vitpose checkpoint; expected a videomae checkpoint",
    ),
    "backbone_checkpoint_as_detector": (
        "detect",
        {"detect.source": "model", "detect.checkpoint": "<backbone>"},
        "detect.checkpoint is '<backbone>', a videomae checkpoint; expected a rt_detr or rt_detr_v2",
    ),
    "detector_checkpoint_as_pose": (
        "pose",
        {"pose.source": "model", "pose.checkpoint": "<detector>"},
        "pose.checkpoint is '<detector>', a rt_detr checkpoint; expected a vitpose checkpoint",
    ),
    "unknown_variant": (
        "ablate@nonexistent",
        {},
        "ablation.variants has no variant 'nonexistent' (stage ablate@nonexistent); expected one of full, ",
    ),
    "unknown_variant_features": (
        "ablate_features@nonexistent",
        {},
        "ablation.variants has no variant 'nonexistent' (stage ablate_features@nonexistent); expected one of",
    ),
    "variant_over_clip_length_before_its_features": (
        "ablate_features@big",
        {"ablation.variants": {"full": {}, "big": {"backbone.keep": 0.5, "selector.top_k_frames": 99}}},
        "ablation.variants.big: selector.top_k_frames is 99; the clip has only 16 frames",
    ),
    "variant_over_clip_length": (
        "ablate@big",
        {"ablation.variants": {"full": {}, "big": {"selector.top_k_frames": 99}}},
        "ablation.variants.big: selector.top_k_frames is 99; the clip has only 16 frames",
    ),
    "variant_over_clip_length_in_the_table": (
        "ablation",
        {"ablation.variants": {"full": {}, "big": {"selector.top_k_frames": 99}}},
        "ablation.variants.big: selector.top_k_frames is 99",
    ),
    "misspelt_key": ("train", {"selector.top_k_frame": 4}, "selector.top_k_frame is not a known key"),
    "string_for_a_number": ("train", {"train.lr": "fast"}, "train.lr is 'fast'; expected a number"),
    "synth": ("synth", {"synth.subjects": 0}, "synth.subjects is 0; must be >= 1"),
    "checkpoints": ("checkpoints", {"tiny.seed": -1}, "tiny.seed is -1; must be >= 0"),
    "prepare": ("prepare", {"data.dataset": "kinetics"}, "data.dataset is 'kinetics'; expected one of"),
    "frames": ("frames", {"frames.stride": 0}, "frames.stride is 0; must be >= 1"),
    "token_store": (
        "features",
        {"backbone.store": "disk"},
        "backbone.store is 'disk'; expected one of tokens, recompute",
    ),
    "evaluate": ("evaluate", {"eval.batch_size": 0}, "eval.batch_size is 0; must be >= 1"),
}


def _fill(value, checkpoints: dict[str, str]):
    if isinstance(value, str):
        for name, folder in checkpoints.items():
            value = value.replace(f"<{name}>", folder)
    return value


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_stops_the_stage_before_any_work(case, tmp_path, tiny_checkpoints):
    stage, values, expected = MISTAKES[case]
    params = with_values(PARAMS, {key: _fill(value, tiny_checkpoints) for key, value in values.items()})
    result = run_script(tmp_path, stage, params)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert lines[0].startswith(f"{stage}: error: params.yaml: "), lines[0]
    assert _fill(expected, tiny_checkpoints) in lines[0], lines[0]
    written = [path for path in stage_outputs(stage) if (tmp_path / path).exists()]
    assert not written, f"{stage} wrote {written} before failing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_the_grid_of_the_feature_cache_comes_before_the_checkpoints(tmp_path, tiny_checkpoints):
    """backbone.json is what the head trains on: 4 patches there beat the 16 of the checkpoint's config."""
    write_backbone_record(tmp_path, patches_per_group=4, checkpoint=tiny_checkpoints["backbone"])
    params = with_values(PARAMS, {"backbone.checkpoint": tiny_checkpoints["backbone"]})
    result = run_script(tmp_path, "train", params)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "selector.top_k_tokens is 12; a frame has only 4 patch tokens (data/features/backbone.json); "
        "expected 1 to 4" in result.stderr
    )
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_a_cache_of_another_backbone_or_keep_says_nothing_of_this_run_s_grid(
    monkeypatch, tmp_path, tiny_checkpoints
):
    """The demo's cache (4 patches a group here) still on disk when a preset names another backbone: its grid
    was read, and the preset's keep variants refused ("a frame has only 2 patch tokens") before the
    features stage had made the preset's cache. Another checkpoint's or another keep's cache is skipped; the
    checkpoint's own config gives the grid (16), and a hub id none."""
    monkeypatch.chdir(tmp_path)
    write_backbone_record(tmp_path, patches_per_group=4, checkpoint="models/tiny/other")
    params = with_values(PARAMS, {"backbone.checkpoint": tiny_checkpoints["backbone"]})
    validate_stage("train", params)  # top_k_tokens 12 of the checkpoint's 16
    keep_50 = {
        "ablation.variants": {"full": {}, "keep_50": {"backbone.keep": 0.5, "selector.top_k_tokens": 8}}
    }
    validate_stage("ablate_features@keep_50", with_values(params, keep_50))  # 8 of 16 x 0.5
    with pytest.raises(ParamError, match=r"selector\.top_k_tokens is 12; a frame has only 8 patch tokens"):
        validate_stage(
            "train", with_values(params, {"backbone.keep": 0.5})
        )  # this run's keep, not the cache's
    validate_stage(
        "train", with_values(params, {"backbone.checkpoint": "MCG-NJU/videomae-base-finetuned-kinetics"})
    )


# --- validate_stage in process ------------------------------------------------------------------------------


def test_default_params_pass_every_stage(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    per_variant = ("ablate", "ablate_features")
    names = {name for name in DVC if name not in per_variant} | {
        f"{base}@{v}" for base in per_variant for v in PARAMS["ablation"]["variants"]
    }
    for name in sorted(names):
        validate_stage(name, PARAMS)


def test_stage_sections_are_the_sections_dvc_yaml_lists():
    assert set(STAGE_SECTIONS) == set(DVC)
    for name, stage in DVC.items():
        listed = {item.split(".")[0] for item in stage.get("do", stage).get("params", [])}
        assert listed == set(STAGE_SECTIONS[name]), name


def test_unknown_stage_name_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown stage 'trian'"):
        validate_stage("trian", PARAMS)


def test_the_features_record_is_where_the_cache_writes_it():
    from transmodal.features.cache import BACKBONE_FILE

    assert FEATURES_BACKBONE.name == BACKBONE_FILE
    store_doc = (REPO_ROOT / "transmodal" / "features" / "store.py").read_text()
    assert "data/features/backbone.json" in store_doc


def test_a_hub_checkpoint_skips_the_grid_until_the_cache_exists(monkeypatch, tmp_path):
    """No local folder and no backbone.json: the grid is unknown here and checked when the model is built."""
    monkeypatch.chdir(tmp_path)
    params = with_values(
        PARAMS,
        {"selector.top_k_tokens": 999, "backbone.checkpoint": "MCG-NJU/videomae-base-finetuned-kinetics"},
    )
    validate_stage("train", params)
    validate_stage("features", params)  # num_frames of a hub checkpoint: checked when it loads
    write_backbone_record(
        tmp_path, patches_per_group=196, checkpoint="MCG-NJU/videomae-base-finetuned-kinetics"
    )
    with pytest.raises(ParamError, match=r"selector\.top_k_tokens is 999; a frame has only 196 patch tokens"):
        validate_stage("train", params)


def test_checkpoints_are_checked_only_where_the_model_runs(tiny_checkpoints, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    wrong = with_values(
        PARAMS,
        {"detect.checkpoint": tiny_checkpoints["pose"], "pose.checkpoint": tiny_checkpoints["backbone"]},
    )
    validate_stage("detect", wrong)  # source: annotations, the checkpoint is not loaded
    validate_stage("pose", wrong)
    with pytest.raises(CheckpointError, match=r"detect\.checkpoint .* a vitpose checkpoint"):
        validate_stage("detect", with_values(wrong, {"detect.source": "model"}))
    right = with_values(
        PARAMS,
        {
            "detect.source": "model",
            "detect.checkpoint": tiny_checkpoints["detector"],
            "pose.source": "model",
            "pose.checkpoint": tiny_checkpoints["pose"],
            "backbone.checkpoint": tiny_checkpoints["backbone"],
        },
    )
    for name in ("detect", "pose", "features", "ablation", "train"):
        validate_stage(name, right)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"backbone\.checkpoint is .*a folder without config\.json"):
        validate_stage("features", with_values(PARAMS, {"backbone.checkpoint": str(empty)}))


def test_a_disabled_selector_is_not_checked_against_the_grid(monkeypatch, tmp_path):
    """As when the model is built: no selector, nothing selected (linear_probe sets selector.enabled false)."""
    monkeypatch.chdir(tmp_path)
    params = with_values(PARAMS, {"selector.enabled": False, "selector.top_k_frames": 99})
    validate_stage("train", params)
    variant = {"selector.enabled": False, "selector.top_k_frames": 99}
    validate_stage("ablation", with_values(PARAMS, {"ablation.variants": {"full": {}, "off": variant}}))


def test_a_variant_override_of_an_unknown_key_names_the_variant(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    params = with_values(PARAMS, {"ablation.variants": {"full": {}, "typo": {"model.use_pos": False}}})
    with pytest.raises(ParamError, match=r"ablation\.variants\.typo: model\.use_pos is not a known key"):
        validate_stage("ablate@typo", params)
    validate_stage("ablate@full", params)  # another variant's stage is not its business
    with pytest.raises(ParamError, match=r"ablation\.variants\.typo"):
        validate_stage("ablation", params)  # the table reads every variant


# --- through dvc exp run -S ----------------------------------------------------------------------------------


@pytest.fixture()
def project(tmp_path) -> Path:
    """A throwaway git + DVC project (as in tests/test_pipeline.py) where the features stage's deps and outs are
    placeholders committed to dvc.lock (``dvc commit``), so that ``dvc exp run -s train`` finds train's
    inputs and runs only train's command: the validation fails before anything reads them."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "params.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("stages", "transmodal"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_backbone_record(root, patches_per_group=16)
    placeholders = (
        "data/index.parquet",
        "data/frames/videos.parquet",
        "data/tracks.parquet",
        "data/keypoints.parquet",
        "models/tiny/backbone/config.json",
        "models/pretrain/skipped.json",
        "data/clips.parquet",
        "metrics/features.json",
    )
    for path in placeholders:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("placeholder: validation fails before it is read\n")
    dvc = [sys.executable, "-m", "dvc"]
    for args in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@example.invalid"],
        ["git", "config", "user.name", "test"],
        [*dvc, "init", "-q"],
        [*dvc, "commit", "-q", "-f", "features"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "throwaway project"],
    ):
        done = subprocess.run(args, cwd=root, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return root


def test_dvc_exp_run_set_param_fails_in_the_stage_naming_the_key(project):
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-s", "-S", "selector.top_k_frames=99", "train"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0, log
    assert "train: error: params.yaml: selector.top_k_frames is 99; the clip has only 16 frames" in log, log
    assert "Running stage 'train'" in log, log
    for upstream in ("synth", "checkpoints", "prepare", "frames", "detect", "pose", "features"):
        assert f"Running stage '{upstream}'" not in log, upstream
    assert (
        not (project / "models" / "transmodal").exists() and not (project / "metrics" / "train.json").exists()
    )


@pytest.mark.parametrize(
    "stage, missing", [("features", "data/index.parquet"), ("train", "data/clips.parquet")]
)
def test_a_missing_input_is_one_line_naming_it(stage, missing, tmp_path):
    """Valid params, but the upstream stages have not run (a stage script run by hand): one line, exit 2."""
    result = run_script(tmp_path, stage, with_values(PARAMS, {"backbone.checkpoint": "not/a/folder"}))
    lines = [line for line in result.stderr.strip().splitlines() if "Warning" not in line and line.strip()]
    assert result.returncode == 2 and lines[-1].startswith(f"{stage}: error: {missing}"), result.stderr[
        -3000:
    ]
    assert "Traceback" not in result.stderr and f"`dvc repro {stage}`" in lines[-1]


def test_the_commands_name_their_own_flags_and_skip_a_bad_timing_file(tmp_path, capsys):
    """``transmodal synth --subjects 0`` named params.yaml's key, which the command does not read; a
    timings file that is not a stage's record was a traceback."""
    from transmodal.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["synth", str(tmp_path / "out"), "--subjects", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "--subjects is 0; must be >= 1" in err[0] and "params.yaml" not in err[0]
    timings = tmp_path / "timings"
    timings.mkdir()
    (timings / "frames.json").write_text('{"stage": "frames", "seconds": 4.2}')
    (timings / "cut.json").write_text('{"stage": "fea')
    main(["timings", "--dir", str(timings)])
    out = capsys.readouterr().out
    assert f"{timings / 'cut.json'}: not a stage timing" in out and "frames      4.2" in out
