"""``transmodal preset NAME``: merge ``params/NAME.yaml`` into params.yaml, keeping its comments and order.

A preset holds only the keys that differ from the demo defaults. The merged file is validated section by
section before it replaces params.yaml (atomically), so a preset never leaves a params.yaml that a stage
would refuse. ``git checkout params.yaml`` returns to the demo.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from transmodal.io import write_text
from transmodal.params import CheckpointError, ParamError, yaml_error_line

PRESETS_DIR = Path("params")


def available(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(path.stem for path in Path(presets_dir).glob("*.yaml"))


def presets_dir_for(name: str, params_path: Path) -> Path:
    """Where preset ``name`` is: ``params/`` beside the params file, else in the working folder, else in this
    project's checkout (``transmodal preset`` run from another folder with ``--params``)."""
    folders = [
        Path(params_path).parent / PRESETS_DIR,
        PRESETS_DIR,
        Path(__file__).resolve().parents[1] / PRESETS_DIR,
    ]
    for folder in folders:
        if (folder / f"{name}.yaml").is_file():
            return folder
    return next((folder for folder in folders if folder.is_dir()), PRESETS_DIR)


VARIANTS = "ablation.variants"


def _merge(target, overrides, where: str, skipped: list[str]) -> list[str]:
    """Set every leaf of ``overrides`` in ``target`` (ruamel maps, comments kept); returns the dotted keys.

    Under ``ablation.variants`` the names are the user's: a variant params.yaml does not have is left out
    (its name added to ``skipped``), and a variant's overrides may gain a key it did not set."""
    if not isinstance(overrides, Mapping):
        what = f"{where} in the preset" if where else "a preset"
        raise ParamError(f"preset: {what} must be a mapping of keys, not {type(overrides).__name__}")
    if not isinstance(target, Mapping):
        raise ParamError(
            f"preset: {where} is a value in params.yaml, not a section of keys the preset can set"
        )
    changed = []
    for key, value in overrides.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in target and where == VARIANTS:
            skipped.append(dotted)
            continue
        if key not in target and not where.startswith(f"{VARIANTS}."):
            raise ParamError(f"preset: {dotted} is not a key of params.yaml")
        if isinstance(value, dict):
            changed += _merge(target[key], value, dotted, skipped)
        else:
            if target.get(key, object()) != value:
                changed.append(dotted)
            target[key] = value
    pinned = target.get("revision")
    if f"{where}.checkpoint" in changed and "revision" not in overrides and pinned is not None:
        target["revision"] = None  # a commit of the checkpoint it replaces: not one of the new one
        changed.append(f"{where}.revision")
    return changed


def apply_preset(
    name: str,
    params_path: Path = Path("params.yaml"),
    presets_dir: Path | None = None,
    skipped: list[str] | None = None,
) -> list[str]:
    """Merge the preset into ``params_path``; returns the keys whose value changed. ``presets_dir`` None:
    :func:`presets_dir_for`. ``skipped`` receives the preset's ablation variants that params.yaml does not
    have (left out). The result must pass every stage's validation, each variant's included, before it
    replaces params.yaml."""
    from ruamel.yaml import YAML

    from transmodal.params import validate_all

    presets_dir = presets_dir_for(name, params_path) if presets_dir is None else Path(presets_dir)
    path = Path(presets_dir) / f"{name}.yaml"
    if not path.is_file():
        raise ParamError(
            f"preset {name!r}: no {path} (presets: {', '.join(available(presets_dir)) or 'none'})"
        )
    yaml = YAML()  # round-trip: comments and key order survive
    yaml.width = 4096  # a long line stays one line
    yaml.Representer = _representer()  # `key: null` stays so, not `key:`
    params = _load(yaml, Path(params_path))
    preset = _load(yaml, path) or {}
    changed = _merge(params, preset, "", skipped if skipped is not None else [])
    try:
        validate_all(YAML(typ="safe").load(_dump(yaml, params)))
    except (ParamError, CheckpointError) as err:
        raise type(err)(f"preset {name}: {err}; params.yaml is left as it was") from None
    write_text(_dump(yaml, params), params_path)
    return changed


def _load(yaml, path: Path):
    """A YAML file read round-trip; a syntax error is one line naming the file and the line."""
    from ruamel.yaml import YAMLError

    try:
        return yaml.load(path.read_text())
    except YAMLError as err:
        raise ParamError(yaml_error_line(err, path)) from None


def not_ready(params: dict, project: Path = Path(".")) -> list[str]:
    """What ``dvc repro`` would miss on this machine with ``params``: the dataset folder (DVC checks a stage's
    deps before it runs, so prepare's own message would never show, and DVC removes prepare's outputs first)
    and model checkpoints that are neither a folder nor in the Hugging Face cache (found otherwise only
    when the stage that loads one starts, after every stage before it). Looks, never downloads."""
    from transmodal.data.download import DATASETS
    from transmodal.vision.checkpoints import cached_snapshot, hub_revision

    notes = []
    data = params["data"]
    if not (Path(project) / str(data["root"])).is_dir():
        fetch = (
            f"`transmodal download {data['dataset']} {data['root']}`"
            if data["dataset"] in DATASETS
            else "put the dataset there"
        )
        notes.append(f"data.root {data['root']!r} does not exist here: run {fetch} before `dvc repro`")
    used = [("backbone", params["backbone"])] + [
        (stage, params[stage]) for stage in ("detect", "pose") if params[stage]["source"] == "model"
    ]
    for stage, values in used:
        checkpoint, revision = str(values["checkpoint"]), values.get("revision")
        if (Path(project) / checkpoint).is_dir():
            continue
        snapshot = cached_snapshot(checkpoint, revision)
        at = f" at {stage}.revision {revision}" if revision else ""
        if snapshot is None:
            fetch = f"hf download {checkpoint}" + (f" --revision {revision}" if revision else "")
            notes.append(
                f"{stage}.checkpoint {checkpoint!r}{at} is not a folder here and not in the Hugging Face "
                f"cache: the stage that loads it downloads it (needs the network), or fetch it first (`{fetch}`)"
            )
        elif revision is None:
            notes.append(
                f"{stage}.checkpoint {checkpoint!r} is cached at commit {hub_revision(snapshot)}; set "
                f"{stage}.revision to it so that another machine, or a later download, loads the same weights"
            )
    return notes


def _representer():
    """ruamel's round-trip representer writing None as ``null`` (its own writes nothing), as a subclass so
    no other YAML dumper of the process changes."""
    from ruamel.yaml.representer import RoundTripRepresenter

    class NullRepresenter(RoundTripRepresenter):
        def represent_none(self, data):
            return self.represent_scalar("tag:yaml.org,2002:null", "null")

    NullRepresenter.add_representer(type(None), NullRepresenter.represent_none)
    return NullRepresenter


def _dump(yaml, data) -> str:
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()
