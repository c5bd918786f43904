"""The atomic writers: round trip, encodings, nothing left behind on failure, the umask's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from transmodal import io
from transmodal.io import atomic_dir, discard_parts, discard_parts_except, write_json, write_parquet


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
            (folder / "part").mkdir(mode=0o700)
            save_file({"w": torch.zeros(2)}, str(folder / "part" / "model.safetensors"))  # creates it 0600
    finally:
        os.umask(old)
    assert io.UMASK == umask
    assert _mode(tmp_path / "metrics.json") == 0o666 & ~umask
    assert _mode(tmp_path / "table.parquet") == 0o666 & ~umask
    assert _mode(tmp_path / "model") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "weights.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "model" / "part") == 0o777 & ~umask
    assert _mode(tmp_path / "model" / "part" / "model.safetensors") == 0o666 & ~umask


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


@pytest.mark.parametrize("writer", [io.atomic_path, atomic_dir], ids=["file", "folder"])
def test_ctrl_c_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, writer):
    """The first step after the temporary exists (its chmod) is inside the block's cleanup: a Ctrl-C there
    leaves no temporary beside the output."""

    def interrupted(self, mode):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tmp_path), "chmod", interrupted)
    with pytest.raises(KeyboardInterrupt), writer(tmp_path / "out"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", [io.atomic_path, atomic_dir], ids=["file", "folder"])
def test_remove_unfinished_removes_a_temporary_no_block_took_charge_of(tmp_path, writer):
    """A Ctrl-C between a temporary's creation and an ``ExitStack`` taking charge of it leaves the temporary
    with no cleanup to run (the interrupted frame keeps the writer alive); the stage's Ctrl-C handler calls
    ``remove_unfinished``, which removes it. A finished write is not touched."""
    write_json({"a": 1}, tmp_path / "done.json")
    pending = writer(tmp_path / "out")
    temporary = pending.__enter__()  # entered, never exited: the block was interrupted before taking charge
    if temporary.is_dir():
        (temporary / "part").write_bytes(b"0")
    assert temporary.exists() and temporary in io._UNFINISHED
    io.remove_unfinished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]
    assert io._UNFINISHED == set()


def test_an_interrupted_stage_removes_its_unfinished_temporaries(tmp_path, monkeypatch, capsys):
    """`run_stage` on Ctrl-C: the temporaries still being written are removed, one line, exit code 130."""
    from transmodal.stage import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    out = tmp_path / "data"
    held = []  # the interrupted frames keep the writer alive: no generator clean-up runs meanwhile

    def body(params):
        held.append(io.atomic_path(out / "shard.parquet"))
        held[0].__enter__()  # a write the Ctrl-C caught before its `with` took charge
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_stage("synth", body)
    assert stop.value.code == 130
    assert list(out.iterdir()) == []
    assert (
        capsys.readouterr().err == "synth: interrupted; nothing it was writing looks complete. Run it again\n"
    )


@pytest.mark.parametrize(
    ("stage", "part"),
    [
        ("detect", "data/.partial/detect/k1/unit-00000.parquet"),
        ("ablate@keep_50", "data/.partial/ablate/keep_50/seed-0/k1/state.pt"),
        ("ablate_features@keep_50", "data/.partial/ablation_features/keep_50/k1/shard-00000.safetensors"),
    ],
)
def test_an_interrupted_stage_says_whether_it_kept_what_it_finished(
    stage, part, tmp_path, monkeypatch, capsys
):
    """The line names the folder of the finished parts only when there is one: not before the first part is
    finished (a temporary is no part), nor for another variant's parts."""
    from transmodal.stage import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())

    def body(params):
        raise KeyboardInterrupt

    def said(name: str = stage) -> str:
        with pytest.raises(SystemExit) as stop:
            run_stage(name, body)
        assert stop.value.code == 130
        return capsys.readouterr().err

    part = Path(part)
    (part.parent / "other-key").mkdir(parents=True)
    (part.parent / f".{part.name}.abc.tmp").write_bytes(b"x")  # a part being written when it stopped
    assert said().endswith("looks complete. Run it again\n")
    part.write_bytes(b"x")
    kept = Path(*part.parts[: 4 if "@" in stage else 3])
    assert said().endswith(f"Run it again: the same run resumes from what it finished, kept in {kept}\n")
    if "@" in stage:  # another variant's parts are not this one's
        assert said(stage.replace("keep_50", "full")).endswith("looks complete. Run it again\n")


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [
        ("sigterm", 143, "synth: terminated (SIGTERM); nothing it was writing looks complete"),
        ("full disk", 1, "synth: error: No space left on device: data/shard.parquet"),
        (
            "missing input",
            2,
            "synth: error: data/frames/videos.parquet: no such file; `dvc repro synth` runs",
        ),
        ("missing elsewhere", 2, "synth: error: /elsewhere/x.txt: no such file\n"),
        ("bug", None, None),  # any other error: its traceback, after the temporaries are removed
    ],
)
def test_a_stage_stopped_otherwise_removes_its_temporaries_in_one_line(
    tmp_path, monkeypatch, capsys, stop, code, said
):
    """SIGTERM (`kill`, a scheduler, torchrun stopping a worker) is handled as Ctrl-C; an error of the file
    system is one line, exit code 1; a missing file outside the pipeline's folders gets no `dvc repro` hint."""
    import errno
    import os
    import signal

    from transmodal.stage import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    out = tmp_path / "data"
    held = []

    def body(params):
        held.append(io.atomic_path(out / "shard.parquet"))
        held[0].__enter__()
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif stop == "full disk":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "data/shard.parquet")
        elif stop == "missing input":
            raise FileNotFoundError(errno.ENOENT, "No such file", "data/frames/videos.parquet")
        elif stop == "bug":
            raise RuntimeError("a bug")
        raise FileNotFoundError(errno.ENOENT, "No such file", "/elsewhere/x.txt")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError if code is None else SystemExit) as stopped:
        run_stage("synth", body)
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the stage's handler is gone with it
    if code is None:
        return
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err


def test_an_error_on_the_temporary_names_the_output(tmp_path):
    # "Is a directory: /x/.out.json.9cdc8f21d573.tmp" named a file the user never asked for
    folder = tmp_path / "out.json"
    folder.mkdir()
    with pytest.raises(OSError) as error:
        write_json({"a": 1}, folder)
    assert error.value.filename == str(folder) and ".tmp" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # and no temporary left


def _record_syncs(monkeypatch, output: Path) -> list[tuple[str, bool]]:
    """Each path io syncs, with whether ``output`` existed under its final name at that moment."""
    synced: list[tuple[str, bool]] = []
    real = io._fsync

    def record(path):
        synced.append((Path(path).name, output.exists()))
        real(path)

    monkeypatch.setattr(io, "_fsync", record)
    return synced


def test_an_output_file_reaches_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """A power cut after the rename must not leave an empty or cut file under the final name (a resumed
    stage takes a part by its name): the temporary is synced before the rename, the folder after it."""
    synced = _record_syncs(monkeypatch, tmp_path / "out.json")
    write_json({"a": 1}, tmp_path / "out.json")
    (temporary, before), (folder, after) = synced
    assert temporary.startswith(".out.json.") and temporary.endswith(".tmp") and not before
    assert folder == tmp_path.name and after


def test_an_output_folder_reaches_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    synced = _record_syncs(monkeypatch, tmp_path / "out")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "inner").mkdir()
        (tmp / "inner" / "a.bin").write_bytes(b"x")
        (tmp / "b.bin").write_bytes(b"y")
    names = [name for name, _ in synced]
    assert {"a.bin", "b.bin", "inner"} <= set(names[:-1])  # every file and folder inside, before the rename
    assert not any(existed for _, existed in synced[:-1])
    assert synced[-1] == (tmp_path.name, True)  # the parent, once the folder has its name


def test_a_folder_that_cannot_be_synced_does_not_fail_a_write_that_succeeded(tmp_path, monkeypatch):
    """A folder that may be written but not read (EACCES on open), or a file system that cannot sync a
    folder (EINVAL): the output is in place, so the write succeeds; other errors still fail it."""
    import errno

    real_open = os.open

    def no_folder_reads(path, flags, *args):
        if Path(path).is_dir():
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(io.os, "open", no_folder_reads)
    write_json({"a": 1}, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text().startswith("{")

    def disk_error(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(io.os, "open", real_open)
    monkeypatch.setattr(io.os, "fsync", disk_error)
    with pytest.raises(OSError, match="Input/output error"):
        write_json({"a": 2}, tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()


def test_discarding_a_stages_parts_removes_every_key_and_the_emptied_partial_folders(tmp_path):
    data = tmp_path / "data"
    for key in ("a1", "b2"):  # this run's key and an older one
        (data / ".partial" / "ablate" / "full" / "seed-0" / key).mkdir(parents=True)
        (data / ".partial" / "ablate" / "full" / "seed-0" / key / "state.pt").write_bytes(b"x")
    (data / ".partial" / "ablate" / "no_pose").mkdir()  # another variant's, still running
    discard_parts(data / ".partial" / "ablate" / "full")
    assert sorted(p.name for p in (data / ".partial" / "ablate").iterdir()) == ["no_pose"]
    discard_parts(data / ".partial" / "ablate" / "no_pose")
    assert sorted(p.name for p in data.iterdir()) == []  # .partial went with its last part
    assert tmp_path.is_dir()  # nothing above .partial
    (data / ".partial" / "detect" / "k").mkdir(parents=True)
    discard_parts(data / ".partial")  # every stage's parts: the folder above stays, though empty
    assert data.is_dir() and list(data.iterdir()) == []


def test_the_parts_of_variants_no_longer_listed_are_discarded(tmp_path):
    base = tmp_path / "data" / ".partial" / "ablate"
    for variant in ("full", "no_pose", "renamed"):
        (base / variant / "seed-0" / "k").mkdir(parents=True)
    discard_parts_except(base, {"full": {}, "no_pose": {}})
    assert sorted(p.name for p in base.iterdir()) == ["full", "no_pose"]  # listed: kept for their rerun
    discard_parts_except(base, {})
    assert list((tmp_path / "data").iterdir()) == []  # .partial went with its last part
    discard_parts_except(base, {})  # nothing left: no error
