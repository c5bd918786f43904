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
