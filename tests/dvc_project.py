"""Throwaway git + DVC copies of this project, for the tests that run `dvc repro` end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the project's python first on PATH and the hub offline; fail loudly on error."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def dvc(project: Path, *args: str) -> str:
    result = run([sys.executable, "-m", "dvc", *args], project)
    return result.stdout + result.stderr


# The demo pretrains its backbone for minutes; a test project pretrains it for a few steps (same code path).
SMALL_PRETRAIN = {"epochs": 1, "clips_per_video": 2}


def make_project(root: Path, overrides: dict, variants: dict | None = None) -> Path:
    """Copy dvc.yaml, stages/ and transmodal/ into ``root`` with params.yaml updated section by section by
    ``overrides`` (``variants`` replaces ``ablation.variants``; :data:`SMALL_PRETRAIN` first); git init, dvc
    init, commit."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("stages", "transmodal"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["pretrain"].update(SMALL_PRETRAIN)
    for section, values in overrides.items():
        params[section].update(values)
    if variants is not None:
        params["ablation"]["variants"] = variants
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.invalid"], root)
    run(["git", "config", "user.name", "test"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "core.autostage", "true"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "throwaway project"], root)
    return root
