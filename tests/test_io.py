"""The atomic writers: round trip, encodings, nothing left behind on failure, the umask's permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transmodal import io
from transmodal.io import atomic_dir, write_json, write_parquet


def encodings(path) -> dict[str, set[str]]:
    """Column name -> the Parquet encodings of its chunk in the first row group."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: set(group.column(i).encodings) for i in range(group.num_columns)}


def test_floats_are_written_plain_and_the_rest_with_a_dictionary(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "video_id": np.repeat(["a", "b"], 50),
            "frame_idx": np.tile(np.arange(50, dtype=np.int32), 2),
            "x": rng.uniform(0, 160, 100).astype(np.float32),
            "score": rng.uniform(0, 1, 100),
        }
    )
    path = tmp_path / "table.parquet"
    write_parquet(frame, path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    found = encodings(path)
    for name in ("video_id", "frame_idx"):
        assert "RLE_DICTIONARY" in found[name], found
    for name in ("x", "score"):
        assert not found[name] & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}, found
    assert [f for f in tmp_path.iterdir()] == [path]  # no temporary file left


def test_a_pinned_schema_is_kept_and_a_failed_write_leaves_nothing(tmp_path):
    schema = pa.schema([("video_id", pa.string()), ("labels", pa.list_(pa.int64()))])
    frame = pd.DataFrame({"video_id": ["a"], "labels": [[]]})
    path = tmp_path / "index.parquet"
    write_parquet(frame, path, schema=schema)
    assert pq.read_schema(path).field("labels").type == pa.list_(pa.int64())
    bad = pd.DataFrame({"video_id": ["a"], "labels": ["not a list"]})
    with pytest.raises(pa.ArrowException):
        write_parquet(bad, tmp_path / "bad.parquet", schema=schema)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["index.parquet"]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def test_outputs_get_the_permissions_the_umask_gives_not_the_temporary_files(tmp_path, monkeypatch, umask):
    """A shared project (a group's folder, a lab machine) must be able to read what a stage wrote: the
    temporary file behind each atomic write is created 0600, which would otherwise be the output's mode."""
    old = os.umask(umask)
    try:
        monkeypatch.setattr(io, "UMASK", io._read_umask())
        write_json({"a": 1}, tmp_path / "metrics.json")
        write_parquet(pd.DataFrame({"x": [1.0]}), tmp_path / "table.parquet")
        with atomic_dir(tmp_path / "model") as folder:
            (folder / "weights.bin").write_bytes(b"0")
    finally:
        os.umask(old)
    assert io.UMASK == umask
    assert _mode(tmp_path / "metrics.json") == 0o666 & ~umask
    assert _mode(tmp_path / "table.parquet") == 0o666 & ~umask
    assert _mode(tmp_path / "model") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "weights.bin") == 0o666 & ~umask


def test_an_output_folder_in_a_group_folder_keeps_its_setgid_bit(tmp_path):
    """In a setgid project folder (files take the project's group), an output folder keeps the bit, so the
    files written into it later still belong to the project's group."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    with atomic_dir(shared / "features") as folder:
        (folder / "part").mkdir()
    assert os.stat(shared / "features").st_mode & stat.S_ISGID
    assert os.stat(shared / "features" / "part").st_mode & stat.S_ISGID
