"""dvc.yaml's code deps of each stage are exactly the files its script imports inside the project.

A stage must re-run when a file it runs changes, and only then: its ``deps`` under ``stages/`` and
``transmodal/`` (a folder counts as every ``.py`` file in it) must equal its script plus the closure of the
script's imports inside ``transmodal/`` (every ``import``, also those inside functions, followed file by
file; importing ``transmodal.a.b`` runs ``transmodal/a/__init__.py`` too). An ``__init__.py`` without code
(empty or a docstring) cannot change what a stage computes and is left out on both sides.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PACKAGE = "transmodal"
CODE_ROOTS = ("stages", PACKAGE)


def module_file(module: str) -> Path | None:
    """The file of a ``transmodal...`` module (its ``__init__.py`` for a package), None if there is none."""
    path = REPO_ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every ``transmodal...`` module an ``import`` anywhere in ``path`` names, with the packages above it
    (whose ``__init__.py`` runs first); ``from package import name`` counts ``package.name`` when that is a
    module."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {module for module in modules if module_file(module) is not None}


def has_code(path: Path) -> bool:
    """Whether a file holds anything but a docstring."""
    body = ast.parse(path.read_text()).body
    return any(
        not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        for node in body
    )


def counted(files: set[Path]) -> set[str]:
    """Repository-relative paths, without the ``__init__.py`` files that hold no code."""
    return {
        path.relative_to(REPO_ROOT).as_posix()
        for path in files
        if path.name != "__init__.py" or has_code(path)
    }


def closure_files(script: Path) -> set[Path]:
    """``script`` and every project file it runs through imports, transitively."""
    seen, todo = {script}, [script]
    while todo:
        for module in imported_modules(todo.pop()):
            path = module_file(module)
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


def import_closure(script: Path) -> set[str]:
    return counted(closure_files(script))


def listed_code(deps: list[str]) -> set[str]:
    """The ``.py`` files of a stage's deps under ``stages/`` and ``transmodal/`` (folders expanded)."""
    files = set()
    for dep in deps:
        if dep.split("/")[0] not in CODE_ROOTS:
            continue
        path = REPO_ROOT / dep
        assert path.exists(), f"dvc.yaml lists {dep}, which does not exist"
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return counted(files)


def stage_code() -> dict[str, tuple[Path, set[str]]]:
    """Stage name -> (its script, the code files its deps list), from dvc.yaml (``foreach`` stages once)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        script = re.fullmatch(r"sh stages/python.sh (stages/\w+\.py)( .*)?", stage["cmd"])
        assert script, f"dvc.yaml: stage {name}'s cmd {stage['cmd']!r} does not run a script of stages/"
        found[name] = (REPO_ROOT / script.group(1), listed_code(stage["deps"]))
    return found


STAGES = stage_code()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_equal_the_import_closure_of_its_script(name):
    script, listed = STAGES[name]
    closure = import_closure(script)
    missing, extra = sorted(closure - listed), sorted(listed - closure)
    assert not missing and not extra, (
        f"dvc.yaml stage {name}: deps miss {missing} (imported, so a change there must re-run it) and list "
        f"{extra} (not imported, so a change there must not)"
    )


def test_the_closure_follows_imports_inside_functions_and_package_inits(tmp_path):
    """Checks of the checker: train imports ``transmodal.model``, whose __init__ pulls in every model module;
    an import inside a function counts; a folder dep is its .py files; an __init__ without code is left out."""
    closure = import_closure(REPO_ROOT / "stages" / "train.py")
    assert {"transmodal/model/__init__.py", "transmodal/model/selector.py", "transmodal/params.py"} <= closure
    assert "transmodal/features/cache.py" in closure and "transmodal/vision/detect.py" not in closure
    assert not has_code(REPO_ROOT / "transmodal" / "features" / "__init__.py")
    assert "transmodal/features/__init__.py" not in closure  # runs, but holds only a docstring
    script = tmp_path / "lazy.py"
    script.write_text("def main():\n    from transmodal.vision.tiny import write_tiny_checkpoints\n")
    assert REPO_ROOT / "transmodal" / "vision" / "tiny.py" in closure_files(script)
    assert listed_code(["stages/features.py", "data/frames", "transmodal/features"]) >= {
        "stages/features.py",
        "transmodal/features/store.py",
    }


def test_removing_a_dep_is_caught():
    script, listed = STAGES["pose"]
    closure = import_closure(script)
    assert closure == listed
    assert closure != listed - {"transmodal/vision/pose_decode.py"}


def test_stages_find_the_project_python_without_an_activated_venv(tmp_path):
    """`.venv/bin/dvc repro` without activating the venv: a stage's interpreter is still the project's."""
    import os
    import subprocess
    import sys

    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    if venv_python.is_file():
        probe = subprocess.run(
            ["sh", "stages/python.sh", "-c", "import sys, transmodal; print(sys.prefix)"],
            cwd=REPO_ROOT,
            env=bare,
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 0, probe.stderr
        assert Path(probe.stdout.strip()).resolve() == (REPO_ROOT / ".venv").resolve()
    # an activated environment with the project installed wins
    probe = subprocess.run(
        ["sh", str(REPO_ROOT / "stages" / "python.sh"), "-c", "import sys; print(sys.prefix)"],
        cwd=tmp_path,
        env={**bare, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == sys.prefix
    # neither: one line saying what to do
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "python.sh").write_text((REPO_ROOT / "stages" / "python.sh").read_text())
    probe = subprocess.run(
        ["/bin/sh", "stages/python.sh", "stages/train.py"],
        cwd=tmp_path,
        env={"PATH": str(tmp_path / "nothing")},
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 2
    assert probe.stderr.strip().splitlines() == [
        "stages/train.py: error: no Python with the transmodal package on PATH and no .venv here: run "
        "'make setup', then '. .venv/bin/activate'"
    ]


def _sections(names) -> set[str]:
    return {name.partition(".")[0] for name in names}


def test_the_readme_table_names_every_params_section_each_stage_lists():
    """README's pipeline table: the params column of a stage names each section its dvc.yaml entry lists."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    sections = set(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    rows = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = cells[0].removesuffix("@v") if cells else ""
        if len(cells) == 3 and name in stages:
            rows[name] = _sections(re.findall(r"`([^`]+)`", cells[2])) & sections
    assert set(rows) == set(stages), "README's pipeline table must have one row per dvc.yaml stage"
    for name, stage in stages.items():
        listed = _sections(stage.get("do", stage).get("params", []))
        assert rows[name] == listed, (
            f"README row {name!r} names {sorted(rows[name])}, dvc.yaml {sorted(listed)}"
        )


def test_an_experiment_copy_runs_its_own_code_with_the_workspace_venv(tmp_path):
    """`dvc exp run --temp` and queued runs work in <workspace>/.dvc/tmp/exps/tmpXXXX: the stages import the
    copy's transmodal/ (the installed package points at the workspace's) and use the workspace's .venv."""
    import os
    import subprocess
    import sys

    workspace = tmp_path / "workspace"
    copy = workspace / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (copy / "stages").mkdir(parents=True)
    (copy / "stages" / "python.sh").write_text((REPO_ROOT / "stages" / "python.sh").read_text())
    (copy / "transmodal").mkdir()
    (copy / "transmodal" / "__init__.py").write_text("")
    probe = "import sys, transmodal; print(transmodal.__file__); print(sys.prefix)"
    # the workspace's .venv: a stand-in that runs this test's interpreter
    (workspace / ".venv" / "bin").mkdir(parents=True)
    shim = workspace / ".venv" / "bin" / "python"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    home = {"HOME": os.environ.get("HOME", "/tmp")}
    assert (Path(sys.executable).parent / "python").is_file()  # so "activated" takes the PATH branch
    runs = {
        "activated": {**home, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        "not activated": {**home, "PATH": "/usr/bin:/bin"},
    }
    for how, env in runs.items():
        result = subprocess.run(
            ["sh", "stages/python.sh", "-c", probe], cwd=copy, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, (how, result.stderr)
        module, prefix = result.stdout.split()
        assert Path(module) == copy / "transmodal" / "__init__.py", how
        assert Path(prefix) == Path(sys.prefix), how


def test_a_python_without_the_project_is_not_taken_for_one_that_has_it(tmp_path):
    """In the workspace, transmodal.egg-info sits in the current folder: a system Python on PATH must not pass
    for one with the project installed (it has none of its dependencies)."""
    import os
    import shutil
    import subprocess
    import sys

    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None or Path(system).resolve() == Path(sys.executable).resolve():
        pytest.skip("no system python3 beside the project's")
    (tmp_path / "python").symlink_to(system)
    (tmp_path / "transmodal.egg-info").mkdir()
    (tmp_path / "transmodal.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: transmodal\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "python.sh").write_text((REPO_ROOT / "stages" / "python.sh").read_text())
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    shim = tmp_path / ".venv" / "bin" / "python"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    result = subprocess.run(
        ["sh", "stages/python.sh", "-c", "import sys; print(sys.prefix)"],
        cwd=tmp_path,
        env={"HOME": os.environ.get("HOME", "/tmp"), "PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == Path(sys.prefix)


def test_ablate_lists_every_train_key_but_the_seed():
    """ablation.seeds replaces train.seed; every other train.* key changes what an ablate stage trains."""
    import dataclasses

    from transmodal.params import TrainConfig

    ablate = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["ablate"]["do"]
    listed = {key.partition(".")[2] for key in ablate["params"] if key.startswith("train.")}
    assert listed == {field.name for field in dataclasses.fields(TrainConfig)} - {"seed"}
