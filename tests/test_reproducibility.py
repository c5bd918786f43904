"""What reproduces bit for bit and what within a tolerance (docs/decisions.md "What reproduces bit for bit").

The determinism of whole `dvc repro` runs is in tests/test_reliability.py; here: the backbone's tokens under
another thread count and another set of float kernels (``ATEN_CPU_CAPABILITY=default``: ATen's portable
kernels instead of this CPU's vector ones, the difference another CPU makes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import REPO_ROOT
from tests.test_features import backbone_cfg, world  # noqa: F401  (the fixture)
from transmodal.features.cache import TOKEN_TOLERANCE, shard_name, tokens_close

BUILD = """
import json, sys
from pathlib import Path
import pandas as pd, torch
from transmodal.data.frames import FrameStore
from transmodal.features.store import build_features
from transmodal.params import BackboneConfig, ClipsConfig
inputs, out, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
build_features(
    pd.read_parquet(inputs / "index.parquet"), FrameStore(inputs / "frames"),
    pd.read_parquet(inputs / "tracks.parquet"), pd.read_parquet(inputs / "keypoints.parquet"),
    ClipsConfig(**json.loads(sys.argv[4])), BackboneConfig(**json.loads(sys.argv[5])),
    out / "features", out / "clips.parquet", progress=False,
)
"""


def _build(setup: dict, out: Path, threads: int, **env) -> dict[str, np.ndarray]:
    import dataclasses

    inputs = setup["root"]
    for name in ("index", "tracks", "keypoints"):
        if not (inputs / f"{name}.parquet").exists():
            setup[name].to_parquet(inputs / f"{name}.parquet", index=False)
    args = [
        sys.executable, "-c", BUILD, str(inputs), str(out), str(threads),
        json.dumps(dataclasses.asdict(setup["clips_cfg"])), json.dumps(dataclasses.asdict(backbone_cfg(setup))),
    ]  # fmt: skip
    result = subprocess.run(args, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted((out / "features").glob("shard-*.safetensors"))
    return {p.name: load_file(p)["tokens"] for p in shards} | {"clips": (out / "clips.parquet").read_bytes()}


@pytest.fixture(scope="module")
def builds(world, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("repro")
    return {
        "one_thread": _build(world, root / "one", 1),
        "two_threads": _build(world, root / "two", 2),
        "portable_kernels": _build(world, root / "portable", 1, ATEN_CPU_CAPABILITY="default"),
    }


def test_the_thread_count_does_not_change_a_bit(builds):
    one, two = builds["one_thread"], builds["two_threads"]
    assert set(one) == set(two) and shard_name(1) in one
    for name in one:
        assert np.array_equal(one[name], two[name]) if name != "clips" else one[name] == two[name], name


def test_other_float_kernels_agree_within_the_token_tolerance(builds):
    """Another CPU's kernels: the clip plan (frames, crop boxes, pose) is identical, the tokens are close."""
    one, other = builds["one_thread"], builds["portable_kernels"]
    assert other["clips"] == one["clips"]
    for name in (n for n in one if n != "clips"):
        assert tokens_close(one[name], other[name]), (name, np.abs(one[name] - other[name]).max())
        assert np.abs(one[name].astype(np.float32) - other[name]).max() <= TOKEN_TOLERANCE["atol"]


def test_the_tolerance_is_not_vacuous(builds):
    tokens = builds["one_thread"][shard_name(0)].astype(np.float32)
    assert not tokens_close(tokens, tokens + 0.05)  # a shift of 0.05 is out
    assert not tokens_close(tokens, tokens[::-1])  # other clips are out
    assert tokens_close(tokens, tokens + 0.004)  # two fp16 steps at |x| ~ 4 are in


def test_a_version_other_than_the_pinned_one_is_said(tmp_path):
    """Parquet files carry the pyarrow and pandas versions, and a model library's release can change outputs:
    every stage says when an installed version is not constraints.txt's."""
    from importlib.metadata import version

    from transmodal.stage import version_notes

    assert version_notes(REPO_ROOT / "constraints.txt") == []  # `make setup` installs the pins
    pins = tmp_path / "constraints.txt"
    pins.write_text(f"pyarrow==0.0.1\nnumpy=={version('numpy')}\ntqdm==0.0.1\n")
    notes = version_notes(pins)
    assert len(notes) == 1 and notes[0].startswith(f"pyarrow {version('pyarrow')} is installed, ")
    assert f"{pins} pins 0.0.1" in notes[0]
    assert version_notes(tmp_path / "none.txt") == []


def test_a_stage_says_a_version_note_once_and_not_in_torchrun_workers(tmp_path, monkeypatch, capsys):
    from transmodal.stage import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "constraints.txt").write_text("pyarrow==0.0.1\n")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    run_stage("synth", lambda params: None)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("synth: note: ")]
    assert len(notes) == 1 and notes[0].startswith("synth: note: pyarrow ")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # a worker torchrun started: the launcher said it
    run_stage("synth", lambda params: None)
    assert "note" not in capsys.readouterr().err
