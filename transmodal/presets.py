"""``transmodal preset NAME``: merge ``params/NAME.yaml`` into params.yaml, keeping its comments and order.

A preset holds only the keys that differ from the demo defaults. The merged file is validated section by
section before it replaces params.yaml (atomically), so a preset never leaves a params.yaml that a stage
would refuse. ``git checkout params.yaml`` returns to the demo.
"""

from __future__ import annotations

import io
from pathlib import Path

from transmodal.io import write_text
from transmodal.params import SECTIONS, ParamError

PRESETS_DIR = Path("params")


def available(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(path.stem for path in Path(presets_dir).glob("*.yaml"))


def _merge(target, overrides, where: str) -> list[str]:
    """Set every leaf of ``overrides`` in ``target`` (ruamel maps, comments kept); returns the dotted keys."""
    changed = []
    for key, value in overrides.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in target:
            raise ParamError(f"preset: {dotted} is not a key of params.yaml")
        if isinstance(value, dict):
            changed += _merge(target[key], value, dotted)
        else:
            if target[key] != value:
                changed.append(dotted)
            target[key] = value
    return changed


def apply_preset(
    name: str, params_path: Path = Path("params.yaml"), presets_dir: Path = PRESETS_DIR
) -> list[str]:
    """Merge the preset into ``params_path``; returns the keys whose value changed."""
    from ruamel.yaml import YAML

    from transmodal.params import section

    path = Path(presets_dir) / f"{name}.yaml"
    if not path.is_file():
        raise ParamError(
            f"preset {name!r}: no {path} (presets: {', '.join(available(presets_dir)) or 'none'})"
        )
    yaml = YAML()  # round-trip: comments and key order survive
    params = yaml.load(Path(params_path).read_text())
    preset = yaml.load(path.read_text()) or {}
    changed = _merge(params, preset, "")
    plain = YAML(typ="safe").load(_dump(yaml, params))
    for name_ in SECTIONS:
        if name_ in plain:
            section(plain, name_)
    write_text(_dump(yaml, params), params_path)
    return changed


def _dump(yaml, data) -> str:
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()
