"""params.yaml validation and its agreement with dvc.yaml."""

import copy

import pytest
import yaml

from tests.conftest import REPO_ROOT
from transmodal.params import SECTIONS, ParamError, apply_overrides, load_params, section

PARAMS = load_params(REPO_ROOT / "params.yaml")


def test_default_params_validate():
    for name in SECTIONS:
        section(PARAMS, name)


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("selector.top_k_frames", 0, "selector.top_k_frames"),
        ("selector.scoring", "magic", "selector.scoring"),
        ("selector.position", "anywhere", "selector.position"),
        ("frames.stride", 0, "frames.stride"),
        ("frames.max_side", 10, "frames.max_side"),
        ("frames.max_side", "big", "frames.max_side"),
        ("data.dataset", "kinetics", "data.dataset"),
        ("data.split", 4, "data.split"),
        ("train.lr", -1.0, "train.lr"),
        ("train.epochs", 1.5, "train.epochs"),
        ("detect.source", "oracle", "detect.source"),
        ("backbone.precision", "int8", "backbone.precision"),
        ("model.use_pose", "yes", "model.use_pose"),
        ("clips.length", 1, "clips.length"),
    ],
)
def test_bad_value_names_the_key(dotted, value, message):
    params = copy.deepcopy(PARAMS)
    sect, key = dotted.split(".")
    params[sect][key] = value
    with pytest.raises(ParamError, match=message.replace(".", r"\.")):
        section(params, sect)


def test_unknown_key_is_an_error():
    params = copy.deepcopy(PARAMS)
    params["selector"]["top_k_frame"] = 4
    with pytest.raises(ParamError, match=r"selector\.top_k_frame is not a known key"):
        section(params, "selector")


def test_selector_range_against_the_grid():
    cfg = section(PARAMS, "selector")
    cfg.check_against_grid(num_frames=16, patches_per_group=196)
    too_many = apply_overrides(PARAMS, {"selector.top_k_frames": 17})
    with pytest.raises(ParamError, match=r"selector\.top_k_frames is 17; the clip has only 16 frames"):
        section(too_many, "selector").check_against_grid(16, 196)
    with pytest.raises(ParamError, match=r"selector\.top_k_tokens"):
        section(apply_overrides(PARAMS, {"selector.top_k_tokens": 197}), "selector").check_against_grid(
            16, 196
        )


def test_missing_dataset_root_names_path_and_param(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["data"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(ParamError, match=r"data\.root is .*nowhere.*does not exist"):
        section(params, "data").root_path()


def test_ablation_overrides_are_validated():
    with pytest.raises(ParamError, match=r"selector\.top_k_frames"):
        apply_overrides(PARAMS, {"selector.top_k_frames": 0})
    params = copy.deepcopy(PARAMS)
    params["ablation"]["variants"]["bad"] = {"frames.stride": 3}
    with pytest.raises(ParamError, match=r"ablation\.variants\.bad"):
        section(params, "ablation")


def _stage_params(stage: dict) -> list[str]:
    return [item for item in stage.get("params", []) if isinstance(item, str)]


def test_dvc_yaml_lists_only_existing_params_and_every_section_is_read():
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    listed = set()
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for key in _stage_params(body):
            if "${" in key:
                continue
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name} lists {key}, absent from params.yaml"
                node = node[part]
            listed.add(key.split(".")[0])
    assert listed == set(PARAMS), f"params sections no stage reads: {set(PARAMS) - listed}"


def test_extraction_stages_do_not_depend_on_head_params():
    """A change of model/selector/train params must never re-run extraction."""
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    for name in ("synth", "checkpoints", "prepare", "frames", "detect", "pose", "features"):
        sections = {key.split(".")[0] for key in _stage_params(dvc["stages"][name])}
        assert not sections & {"model", "selector", "train", "eval", "ablation"}, name


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"keep_0.5": {"backbone.keep": 0.5}}, r"variant named 'keep_0\.5'; a name is letters, digits"),
        ({3: {"model.use_pose": False}}, r"variant named 3; a name is letters"),
        ({"a/b": {}}, r"variant named 'a/b'"),
        ({"odd": {1: 2}}, r"ablation\.variants\.odd overrides 1; a key is a dotted name"),
    ],
)
def test_a_variant_name_dvc_cannot_use_or_an_override_key_that_is_no_name_is_one_line(variants, message):
    """DVC reads ``ablation.variants.keep_0.5`` as nested keys (its stage would fail after training), and a
    name or key that is not a string was a TypeError / AttributeError traceback."""
    params = copy.deepcopy(PARAMS)
    params["ablation"]["variants"].update(variants)
    with pytest.raises(ParamError, match=message):
        section(params, "ablation")


@pytest.mark.parametrize("value", [None, 3, "d1", [1, 2]])
def test_synth_names_must_be_a_list_of_names(value):
    params = copy.deepcopy(PARAMS)
    params["synth"]["scenarios"] = value
    with pytest.raises(ParamError, match=r"synth\.scenarios is .*; expected a list of names"):
        section(params, "synth")


def test_a_params_file_that_is_not_yaml_is_one_line_naming_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("selector:\n  top_k_frames: [4\n")
    with pytest.raises(ParamError, match=rf"^{path}, line \d+: not valid YAML \("):
        load_params(path)


def test_a_misspelt_section_is_refused_when_a_stage_starts():
    """``dvc exp run -S +selectr.top_k_frames=4`` adds a section no stage reads: the run would use the
    defaults and say nothing."""
    from transmodal.params import validate_stage

    params = copy.deepcopy(PARAMS)
    params["selectr"] = {"top_k_frames": 4}
    with pytest.raises(ParamError, match=r"'selectr' is not a known section \(sections: synth, "):
        validate_stage("prepare", params)


def test_a_bad_compute_nnodes_stops_the_stage_before_its_work(tmp_path, monkeypatch, capsys):
    """The stage's end reads compute.nnodes (which machine records the time): read unvalidated after the
    work, a bad value failed the stage with a traceback once its outputs were written."""
    from transmodal.stage import run_stage

    params = copy.deepcopy(PARAMS)
    params["compute"]["nnodes"] = "2"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    ran = []
    with pytest.raises(SystemExit) as exit_:
        run_stage("checkpoints", ran.append)
    assert exit_.value.code == 2 and ran == []
    assert "compute.nnodes is '2'; expected an integer" in capsys.readouterr().err
