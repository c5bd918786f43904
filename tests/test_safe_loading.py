"""Weights load only from safetensors or ``torch.load(weights_only=True)``: no pickle reaches the package.

Parses every module of ``transmodal/``, ``stages/`` and ``benchmarks/`` and refuses imports of pickle-based
serialisers, ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)`` and
``pandas.read_pickle``. (transformers' ``from_pretrained`` reads safetensors, or a ``.bin`` through
``torch.load(weights_only=True)``.)
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO_ROOT

PICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
FILES = sorted(
    path for folder in ("transmodal", "stages", "benchmarks") for path in (REPO_ROOT / folder).rglob("*.py")
)


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def problems(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PICKLERS:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                value = _keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"line {node.lineno}: torch.load without weights_only=True")
            elif name == "load" and _keyword(node, "allow_pickle") is not None:
                value = _keyword(node, "allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"line {node.lineno}: load(allow_pickle=...)")
            elif name in {"read_pickle", "to_pickle"}:
                found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_pickle_in_the_package(path):
    assert problems(path.read_text()) == []


def test_the_check_catches_each_unsafe_form():
    unsafe = [
        "import pickle",
        "from joblib import load",
        "import torch\ntorch.load('w.pt')",
        "import torch\ntorch.load('w.pt', weights_only=False)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('t.pkl')",
    ]
    for source in unsafe:
        assert problems(source), source
    assert problems("import torch\ntorch.load('w.pt', weights_only=True)") == []
