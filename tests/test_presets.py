"""Paper presets: ``transmodal preset NAME`` merges params/NAME.yaml into params.yaml, comments kept."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO_ROOT
from transmodal.cli import main
from transmodal.params import SECTIONS, section
from transmodal.presets import available

PAPER = {
    "paper-kth": ("kth", "paper"),
    "paper-ucf101": ("ucf101", 1),
    "paper-hmdb51": ("hmdb51", 1),
}


def test_the_three_paper_presets_exist():
    assert set(PAPER) <= set(available(REPO_ROOT / "params"))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_sets_the_paper_setup_and_keeps_everything_else(name, tmp_path, capsys):
    target = tmp_path / "params.yaml"
    original = (REPO_ROOT / "params.yaml").read_text()
    target.write_text(original)
    main(["preset", name, "--params", str(target)])
    assert f"preset {name} set" in capsys.readouterr().out
    text = target.read_text()
    assert "# TransMODAL pipeline parameters" in text and "# paper: 100" in text  # comments survive
    before, after = yaml.safe_load(original), yaml.safe_load(text)
    dataset, split = PAPER[name]
    assert after["data"]["dataset"] == dataset and after["data"]["split"] == split
    assert after["detect"]["source"] == after["pose"]["source"] == "model"
    assert after["detect"]["checkpoint"] == "PekingU/rtdetr_r50vd_coco_o365"
    assert after["pose"]["checkpoint"] == "usyd-community/vitpose-plus-base"
    assert after["backbone"]["checkpoint"] == "MCG-NJU/videomae-base-finetuned-kinetics"
    assert after["train"]["epochs"] == 100
    assert after["backbone"]["precision"] == "fp16"
    # at the paper's size the keep variants' selector keeps full's 24 patches a group (the demo's: 6 and 3)
    for variant in ("keep_50", "keep_25"):
        assert after["ablation"]["variants"][variant]["selector.top_k_tokens"] == 12
        after["ablation"]["variants"][variant] = before["ablation"]["variants"][variant]
    for key in ("model", "selector", "ablation", "clips", "frames"):
        assert after[key] == before[key]
    for sect in SECTIONS:
        section(after, sect)  # every section valid
    main(["preset", name, "--params", str(target)])  # idempotent
    assert target.read_text() == text
    # only the lines of the keys it sets change: no long line folded, no `null` rewritten as an empty value
    old_lines, new_lines = original.splitlines(), text.splitlines()
    assert len(new_lines) == len(old_lines)
    edited = {a.split(":")[0].strip() for a, b in zip(old_lines, new_lines, strict=True) if a != b}
    sets = {"dataset", "root", "split", "source", "checkpoint", "precision", "batch_size", "epochs"}
    assert edited <= sets | {"keep_50", "keep_25"} and "epochs" in edited


def test_unknown_preset_is_one_line(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    with pytest.raises(SystemExit) as exit_:
        main(["preset", "paper-kinetics", "--params", str(target)])
    assert exit_.value.code == 2
    assert "no params/paper-kinetics.yaml (presets: " in capsys.readouterr().err


def test_a_preset_key_params_yaml_lacks_is_refused(tmp_path):
    from transmodal.params import ParamError
    from transmodal.presets import apply_preset

    (tmp_path / "typo.yaml").write_text("train:\n  epoch: 100\n")
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    with pytest.raises(ParamError, match=r"preset: train.epoch is not a key of params.yaml"):
        apply_preset("typo", target, tmp_path)
    assert target.read_text() == (REPO_ROOT / "params.yaml").read_text()


def test_preset_says_what_dvc_repro_would_miss(tmp_path, capsys, monkeypatch):
    """DVC checks data.root before prepare runs (and removes prepare's outputs first), and a missing checkpoint
    shows only when its stage starts: the preset says both up front, without touching the network."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    main(["preset", "paper-ucf101", "--params", str(target)])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preset: note: ")]
    assert notes[0] == (
        "preset: note: data.root 'data/ucf101' does not exist here: run "
        "`transmodal download ucf101 data/ucf101` before `dvc repro`"
    )
    checkpoints = ("backbone", "detect", "pose")
    assert [note.split()[2] for note in notes[1:]] == [f"{key}.checkpoint" for key in checkpoints]
    assert all("not in the Hugging Face cache" in note for note in notes[1:])
    after = yaml.safe_load(target.read_text())
    (tmp_path / "data" / "ucf101").mkdir(parents=True)
    for key in checkpoints:
        (tmp_path / after[key]["checkpoint"]).mkdir(parents=True)
    main(["preset", "paper-ucf101", "--params", str(target)])
    assert "note" not in capsys.readouterr().err


def test_preset_says_which_cached_checkpoints_are_not_pinned(tmp_path, tiny_checkpoints, monkeypatch):
    """A hub id in the cache but with no ``<stage>.revision``: the preset names the cached commit to pin; a
    pinned revision that is not cached is named in the fetch command."""
    import shutil

    import huggingface_hub

    from transmodal.presets import not_ready

    commit = "7" * 40
    repo = tmp_path / "hub" / "models--MCG-NJU--videomae-base-finetuned-kinetics"
    shutil.copytree(tiny_checkpoints["backbone"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "data" / "kth").mkdir(parents=True)
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    main(["preset", "paper-kth", "--params", str(target)])
    params = yaml.safe_load(target.read_text())
    params["detect"]["source"] = params["pose"]["source"] = "annotations"  # only the backbone is loaded
    assert not_ready(params, tmp_path) == [
        "backbone.checkpoint 'MCG-NJU/videomae-base-finetuned-kinetics' is cached at commit "
        f"{commit}; set backbone.revision to it so that another machine, or a later download, loads the "
        "same weights"
    ]
    params["backbone"]["revision"] = commit
    assert not_ready(params, tmp_path) == []
    params["backbone"]["revision"] = "8" * 40
    (note,) = not_ready(params, tmp_path)
    assert f"at backbone.revision {'8' * 40} is not a folder here" in note
    assert f"`hf download MCG-NJU/videomae-base-finetuned-kinetics --revision {'8' * 40}`" in note


def test_a_preset_that_changes_a_checkpoint_drops_the_old_ones_revision(tmp_path):
    from transmodal.presets import apply_preset

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["backbone"].update(checkpoint="some-org/other-videomae", revision="e" * 40)
    params["pose"].update(checkpoint="usyd-community/vitpose-plus-base", revision="f" * 40)
    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump(params, sort_keys=False))
    changed = apply_preset("paper-kth", target)
    after = yaml.safe_load(target.read_text())
    assert "backbone.revision" in changed and after["backbone"]["revision"] is None
    # the preset names the same pose checkpoint: its pinned revision stays
    assert "pose.revision" not in changed and after["pose"]["revision"] == "f" * 40


def test_a_params_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    # ruamel's syntax error was a traceback (exit code 1)
    target = tmp_path / "params.yaml"
    target.write_text("data:\n  root: data/synthetic\n   split: paper\n")
    with pytest.raises(SystemExit) as exit_:
        main(["preset", "paper-kth", "--params", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"transmodal preset: error: {target}, line 3: not valid YAML (")


def test_a_preset_is_found_from_another_folder(tmp_path, monkeypatch):
    # the presets were looked for in the working folder only: `--params` from elsewhere found none
    target = tmp_path / "project" / "params.yaml"
    target.parent.mkdir()
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    main(["preset", "paper-kth", "--params", str(target)])  # this checkout's params/
    assert yaml.safe_load(target.read_text())["train"]["epochs"] == 100
    (target.parent / "params").mkdir()  # the project's own presets, beside its params.yaml, come first
    (target.parent / "params" / "paper-kth.yaml").write_text("train:\n  epochs: 7\n")
    main(["preset", "paper-kth", "--params", str(target)])
    assert yaml.safe_load(target.read_text())["train"]["epochs"] == 7


def _custom_preset(tmp_path, text: str):
    from transmodal.presets import apply_preset

    (tmp_path / "custom.yaml").write_text(text)
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    skipped: list[str] = []
    return target, skipped, lambda: apply_preset("custom", target, tmp_path, skipped=skipped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # each section alone is valid; the train stage refuses 99 frames of a 16-frame clip
        ("selector:\n  top_k_frames: 99\n", r"preset custom: .*selector\.top_k_frames is 99"),
        # the override's section alone was checked, not the variant
        ("ablation:\n  variants:\n    keep_50: {selector.top_k_tokens: x}\n", r"ablation\.variants\.keep_50"),
        ("- a\n- b\n", r"preset: a preset must be a mapping of keys, not CommentedSeq"),
        ("data:\n  root: {a: 1}\n", r"preset: data\.root is a value in params\.yaml, not a section"),
    ],
)
def test_a_preset_whose_result_a_stage_would_refuse_leaves_params_yaml_alone(tmp_path, text, message):
    from transmodal.params import ParamError

    target, _, apply = _custom_preset(tmp_path, text)
    with pytest.raises(ParamError, match=message):
        apply()
    assert target.read_text() == (REPO_ROOT / "params.yaml").read_text()


def test_a_preset_leaves_out_a_variant_params_yaml_lacks_and_may_add_an_override(tmp_path):
    """The variants are the user's: a removed keep_25 no longer stops paper-kth, and a variant that does not
    set top_k_tokens gets the preset's."""
    target, skipped, apply = _custom_preset(
        tmp_path,
        "ablation:\n  variants:\n    gone: {selector.top_k_tokens: 12}\n    no_pose: {selector.top_k_tokens: 6}\n",
    )
    apply()
    variants = yaml.safe_load(target.read_text())["ablation"]["variants"]
    assert skipped == ["ablation.variants.gone"] and "gone" not in variants
    assert variants["no_pose"] == {"model.use_pose": False, "selector.top_k_tokens": 6}
