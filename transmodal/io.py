"""Atomic writers: every output appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

PARTIAL_DIR = ".partial"  # beside each resumable output: finished parts of an interrupted run


def _read_umask() -> int:
    """The process's umask: from /proc where there is one (reading it through ``os.umask`` sets it, which
    another thread could see), else set and put back, once, at import."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _remove_leftovers(path: Path) -> None:
    """Remove the temporaries of an earlier write of ``path`` that was killed before it could clean up."""
    for leftover in [
        *path.parent.glob(f".{glob.escape(path.name)}.*.tmp"),
        path.with_name(f".{path.name}.old"),
    ]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists():
            leftover.unlink(missing_ok=True)


_UNFINISHED: set[Path] = set()  # this process's temporaries that are not yet renamed or removed


def _new_temporary(path: Path, directory: bool) -> Path:
    """Create an empty temporary file (or folder) beside ``path``, 0600 (0700), under a fresh name.

    The name is registered in ``_UNFINISHED`` before the file exists, so :func:`remove_unfinished` finds it
    however early a Ctrl-C lands (``tempfile.mkstemp`` would hand the name back only once it is created).
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        _UNFINISHED.add(tmp)
        try:
            if directory:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:  # another writer's temporary: draw another name
            _UNFINISHED.discard(tmp)


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    _UNFINISHED.discard(tmp)


def register_unfinished(tmp: Path) -> None:
    """Count ``tmp``, a temporary written by other means than :func:`atomic_path` (a shard filled over many
    writes, a video writer's file), among those :func:`remove_unfinished` removes; call it before the file
    is created and :func:`forget_unfinished` once it is renamed or removed."""
    _UNFINISHED.add(Path(tmp))


def forget_unfinished(tmp: Path) -> None:
    _UNFINISHED.discard(Path(tmp))


def remove_unfinished() -> None:
    """Remove every temporary this process is still writing: on Ctrl-C, before the process exits.

    A ``with atomic_path(...)`` block removes its temporary when it is left, but a Ctrl-C that lands between
    a temporary's creation and the moment its block (or an ``ExitStack``) takes charge of it would leave it
    behind; this catches those too. A temporary is never a complete-looking output, only clutter."""
    for tmp in list(_UNFINISHED):
        _remove(tmp)


# what a file system that cannot sync says (a folder on some network mounts: EINVAL), and what opening a
# folder that may be written but not read says: the write itself succeeded, so these are not an error
CANNOT_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.ENOSYS, errno.EACCES, errno.EPERM)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) from the page cache to the disk, where it can be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        if err.errno in CANNOT_SYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def sync_tree(path: str | Path) -> None:
    """Put ``path`` on the disk: the file, or every file and folder under it."""
    path = Path(path)
    if not path.is_dir():
        _fsync(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _open_to_the_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the read and write bits the umask allows: a library may
    create its files 0600 (safetensors' ``save_file`` does), which would hide a model's weights from the
    group of a shared project while the ``config.json`` beside them is readable."""
    for parent, folders, files in os.walk(folder):
        for name, allowed in [*((f, 0o777) for f in folders), *((f, 0o666) for f in files)]:
            entry = Path(parent) / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode & 0o7777 | allowed & ~UMASK
            if wanted != mode & 0o7777:
                entry.chmod(wanted)


def durable_replace(source: str | Path, target: str | Path) -> None:
    """``os.replace(source, target)`` that survives a power cut: ``source``'s content reaches the disk before
    the rename, and the rename before this returns. Without the first sync a file system may commit the
    rename first, and a crash then leaves an empty or cut file under the final name, which a resumed stage
    would take as finished (frames' and features' parts are checked by name)."""
    sync_tree(source)
    os.replace(source, target)
    _fsync(Path(target).parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    with _named_as(path):
        tmp = _new_temporary(path, directory=False)
    try:
        with _named_as(path, tmp):
            tmp.chmod(0o666 & ~UMASK)  # 0600 would hide the output from the group (a shared project)
            yield tmp
            durable_replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def _named_as(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """An error of the file system on the temporary (``.x.json.<hex>.tmp``; no permission, a folder of that
    name, a full disk) names the output it stands for, which the user asked for and can act on."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and (
            (tmp is not None and Path(err.filename) == tmp)
            or Path(err.filename).name.startswith(f".{path.name}.")
        ):
            err.filename = str(path)
        if err.filename2 is not None and tmp is not None and Path(err.filename2) == tmp:
            err.filename2 = str(path)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = _new_temporary(path, directory=True)
    try:
        tmp.chmod(0o777 & ~UMASK | tmp.stat().st_mode & stat.S_ISGID)  # a group folder's setgid bit stays
        yield tmp
        _open_to_the_umask(tmp)
        sync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        _remove(tmp)


def write_parquet(frame: pd.DataFrame, path: str | Path, schema=None) -> None:
    """Write a DataFrame as Parquet (zstd), atomically, without the pandas index.

    Float columns are written without dictionary encoding: their values rarely repeat (coordinates, scores),
    so a dictionary only costs time (4x the write of the keypoints table) and bytes; the other columns (ids,
    frame numbers, labels) keep it. ``schema`` (a pyarrow schema) pins column types that pandas cannot
    infer, e.g. an all-empty list column.
    """
    dictionary = [str(name) for name, dtype in frame.dtypes.items() if not pd.api.types.is_float_dtype(dtype)]
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, compression="zstd", schema=schema, use_dictionary=dictionary)


def write_json(obj, path: str | Path) -> None:
    """Write JSON (sorted keys, 2-space indent), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (sorted keys): the identity of a piece of work."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_signature(path: str | Path) -> list:
    """``[size, mtime_ns]`` of a file (``[-1, -1]`` when absent): a cheap stand-in for its content."""
    try:
        stat = Path(path).stat()
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


def folder_signature(folder: Path) -> list:
    """Names and signatures of the files in a folder (a checkpoint, the frame store), sorted; the folder's
    name when it is not a folder."""
    if not folder.is_dir():
        return [str(folder)]
    return [
        (p.relative_to(folder).as_posix(), file_signature(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def source_digest(*modules: str | Path) -> str:
    """Hash of source files, so that finished parts of an older version of the code are never reused."""
    return hashlib.sha256(b"".join(Path(m).read_bytes() for m in modules)).hexdigest()[:16]


PARTS_FOLDER = {"ablate_features": "ablation_features"}  # data/.partial/<this>, when not the stage's name


def stage_parts(stage: str) -> Path:
    """``data/.partial/<stage>`` (or its :data:`PARTS_FOLDER`): where a stage keeps the finished parts of an
    interrupted run (a :class:`Resumable`'s ``base``), outside its DVC outputs, which DVC deletes before it
    runs the stage."""
    return Path("data") / PARTIAL_DIR / PARTS_FOLDER.get(stage, stage)


def discard_parts(base: str | Path) -> None:
    """Remove the finished parts of every key under ``base`` (a :class:`Resumable`'s), and ``.partial`` when
    that leaves it empty: the output they were for is complete. Nothing above ``.partial`` is touched (a
    ``base`` outside any ``.partial``: its parent, when emptied)."""
    base = Path(base)
    shutil.rmtree(base, ignore_errors=True)
    if base.name == PARTIAL_DIR:  # the parts of every stage: the folder that holds it stays
        return
    for folder in base.parents:  # up to .partial itself (else the parent alone), each only when empty
        with contextlib.suppress(OSError):
            folder.rmdir()
        if folder.name == PARTIAL_DIR or PARTIAL_DIR not in base.parts:
            break


def discard_parts_except(base: str | Path, names) -> None:
    """:func:`discard_parts` of every folder under ``base`` whose name is not in ``names`` (the ablation
    stage's: the folders of variants no longer in ``ablation.variants``, which have no stage left to remove
    them)."""
    base = Path(base)
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if folder.name not in names:
            discard_parts(folder)


class Resumable:
    """Finished parts of one stage output that survive an interruption (Ctrl-C, a kill, a crash).

    The parts live in ``<out_dir's parent>/.partial/<out_dir name>/<digest of key>/`` (or ``<base>/<digest>/``
    where that parent lies inside a stage's output): outside the output,
    which DVC deletes before it re-runs a stage, and under a name that changes with anything that would
    change a part (``key``: params, inputs' signatures, the code's hash), so a part is reused only by the
    run that would have written the same bytes. Each part is written atomically; a part exists under its
    name only once complete. Parts of other keys are removed when a run starts, and :meth:`discard` removes
    this run's folder once the output is complete.
    """

    def __init__(self, out_dir: str | Path, key: dict, clean: bool = True, base: str | Path | None = None):
        """``clean``: remove other keys' parts and this key's leftover temporaries (one process of several
        does it, before any of them writes). ``base``: the folder of the parts when ``out_dir``'s parent is
        itself inside a stage's output (the default, ``<parent>/.partial/<name>``, would then go with it)."""
        out_dir = Path(out_dir)
        self.base = Path(base) if base is not None else out_dir.parent / PARTIAL_DIR / out_dir.name
        self.directory = self.base / digest(key)
        if not clean:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.resumed = 0
            return
        if self.base.is_dir():
            for other in self.base.iterdir():
                if other != self.directory:
                    shutil.rmtree(other, ignore_errors=True) if other.is_dir() else other.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(".*.tmp"):  # a part being written when the run was killed
            leftover.unlink()
        self.resumed = 0

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def path(self, name: str) -> Path:
        return self.directory / name

    def writing(self, name: str):
        """``atomic_path`` of a part: the part appears under ``name`` only when the block succeeds."""
        return atomic_path(self.directory / name)

    def move(self, name: str, target: Path) -> None:
        """Move a finished part into the output being assembled (same file system: a rename)."""
        os.replace(self.directory / name, target)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        for folder in (self.base, self.base.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
