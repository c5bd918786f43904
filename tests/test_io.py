"""The atomic Parquet writer: round trip, encodings, nothing left behind on failure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transmodal.io import write_parquet


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
