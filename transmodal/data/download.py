"""Download and unpack the official KTH, UCF101 and HMDB51 files into the layout the indexer reads.

``download(dataset, root)`` fetches the files of :data:`ARCHIVES` (the one table of official URLs) and
leaves under ``root`` exactly what :mod:`transmodal.data.index` expects:

- ``kth``: ``<root>/<action>/personNN_<action>_dS_uncomp.avi`` (each ``<action>.zip`` is flat and is
  unpacked into ``<root>/<action>/``) and ``<root>/00sequences.txt`` (a plain file, moved into place).
- ``ucf101``: ``<root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (``UCF101.rar``) and
  ``<root>/ucfTrainTestlist/`` with ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt`` (the splits zip).
- ``hmdb51``: ``<root>/<class>/<video>.avi`` (``hmdb51_org.rar`` holds one ``<class>.rar`` per class; each
  inner archive is unpacked in turn) and ``<root>/testTrainMulti_7030_splits/<class>_test_splitN.txt``.

Work files live in ``<root>/.download/`` (no ``.avi`` directly in it, so the HMDB51 indexer, which takes
every folder of ``<root>`` holding videos for a class, ignores it):

- ``<name>.part``: a transfer in progress. A re-run resumes it with ``Range: bytes=N-``; a server that
  answers 200 instead of 206 is read from the start again.
- ``<name>``: a complete download, renamed from ``.part`` only after its size matched the server's
  Content-Length (and the table's size and sha256, where the table has them). The official sources publish
  no checksums, so the official table has none; the sha256 of every file as fetched is recorded in its
  marker and in the summary. Deleted once unpacked unless ``keep_archives``.
- ``extract-<name>.tmp/``: unpacking in progress. Its tree is moved into ``<root>`` only once the whole
  archive (and, for HMDB51, every inner archive) unpacked, and it is removed on failure, so a failed or
  interrupted extraction never leaves a tree that looks complete.
- ``<name>.done``: JSON marker (url, bytes, sha256, what was placed), written after the move; a re-run skips
  the file without contacting the server. Without it a re-run redoes the extraction (and the download, if
  the archive is gone).
- ``<name>.unpack-failed``: JSON (sha256) of a download that did not unpack and was deleted; when the file
  fetched again has the same bytes and fails again, it is kept and the error says to unpack it by hand.

Archives are read with libarchive (PyPI ``libarchive-c`` over the system ``libarchive.so.13``), which
detects zip, RAR and RAR5 from the content. Members are written by this module, not by libarchive: absolute
paths, ``..`` components, links and special files are refused with :class:`DownloadError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import requests
import urllib3
from tqdm import tqdm

from transmodal.io import durable_replace, write_json
from transmodal.params import KTH_ACTIONS

DATASETS = ("kth", "ucf101", "hmdb51")
KINDS = ("file", "archive", "nested")
WORK_DIR = ".download"
INNER_ARCHIVE_SUFFIXES = (".rar", ".zip")
CHUNK = 1 << 20
TIMEOUT_S = (30, 120)  # connect, read (between bytes)
RETRY_DELAY_S = 2.0  # before retry k: RETRY_DELAY_S * k seconds

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(?P<start>\d+)-(?P<end>\d+)|\*)/(?P<total>\d+|\*)")


ANOTHER_SOURCE = "pass another source with --url NAME=URL (a mirror's URL of that file)"

ARCHIVE_MAGIC = (b"Rar!\x1a\x07", b"PK\x03\x04")  # RAR 4/5, zip: what every archive of ARCHIVES starts with


class DownloadError(Exception):
    """A download or extraction that cannot go on; the message is one line naming the URL or file and what
    to do."""


@dataclass(frozen=True)
class Archive:
    """One file of a dataset.

    ``name`` is the file name under ``<root>/.download``; ``kind`` is ``file`` (moved to ``<root>/<dest>``
    as is), ``archive`` (unpacked into ``<root>/<dest>``) or ``nested`` (unpacked, then every inner
    ``.rar``/``.zip`` unpacked into ``<root>/<dest>``). ``dest`` is ``""`` (the root) or one folder name.
    ``size`` and ``sha256`` are checked when given.
    """

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    kind: str = "archive"
    dest: str = ""

    def __post_init__(self):
        if not self.name or self.name != Path(self.name).name or self.name in (".", ".."):
            raise ValueError(f"Archive name {self.name!r} must be a plain file name")
        if self.name.endswith((".part", ".done")):
            raise ValueError(f"Archive name {self.name!r} must not end in .part or .done")
        if self.kind not in KINDS:
            raise ValueError(
                f"Archive {self.name}: kind is {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.dest and (self.dest != Path(self.dest).name or self.dest in (".", "..", WORK_DIR)):
            raise ValueError(f"Archive {self.name}: dest {self.dest!r} must be '' or one folder name")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"Archive {self.name}: sha256 must be 64 lowercase hex digits")
        if self.size is not None and (isinstance(self.size, bool) or self.size < 0):
            raise ValueError(f"Archive {self.name}: size must be a non-negative integer")


_KTH = "http://www.csc.kth.se/cvap/actions"
_UCF = "https://www.crcv.ucf.edu/data/UCF101"
_HMDB = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10"

# The official sources. None publishes checksums, so none is given here (do not add one that was not
# published); sizes are checked against the server's Content-Length.
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "kth": (
        *(Archive(f"{action}.zip", f"{_KTH}/{action}.zip", dest=action) for action in KTH_ACTIONS),
        Archive("00sequences.txt", f"{_KTH}/00sequences.txt", kind="file"),
    ),
    "ucf101": (
        Archive("UCF101.rar", f"{_UCF}/UCF101.rar"),
        Archive(
            "UCF101TrainTestSplits-RecognitionTask.zip", f"{_UCF}/UCF101TrainTestSplits-RecognitionTask.zip"
        ),
    ),
    "hmdb51": (
        Archive("hmdb51_org.rar", f"{_HMDB}/hmdb51_org.rar", kind="nested"),
        Archive("test_train_splits.rar", f"{_HMDB}/test_train_splits.rar"),
    ),
}
assert tuple(ARCHIVES) == DATASETS


class _Retryable(Exception):
    """A transfer that broke off (network error, 5xx, short body); the .part is kept for a resume."""


class _Corrupt(Exception):
    """libarchive could not read an archive."""


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# -------------------------------------------------------------------------------------------- download


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of a Content-Range header; None where absent or ``*``."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start = int(match["start"]) if match["start"] is not None else None
    total = int(match["total"]) if match["total"] != "*" else None
    return start, total


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def _open(
    session: requests.Session, archive: Archive, offset: int
) -> tuple[requests.Response | None, int, int | None]:
    """GET ``archive.url`` from ``offset``: (response or None if the .part is already complete, the offset
    the body starts at, the file's total size or None)."""
    for _ in range(2):  # a second request only after a refused or mismatched range, from 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = session.get(archive.url, headers=headers, stream=True, timeout=TIMEOUT_S)
        except requests.exceptions.SSLError as exc:  # not a glitch: retrying changes nothing
            raise DownloadError(
                f"{archive.url}: the server's certificate could not be verified ({_one_line(exc)[:200]}); "
                f"set REQUESTS_CA_BUNDLE to a CA bundle that has its issuer, or {ANOTHER_SOURCE}"
            ) from None
        except requests.RequestException as exc:
            raise _Retryable(_one_line(exc)) from exc
        status = response.status_code
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start == offset:
                if total is None and (length := _content_length(response)) is not None:
                    total = offset + length
                return response, offset, total
            response.close()
            offset = 0
        elif status == 416 and offset:
            _, total = _parse_content_range(response.headers.get("Content-Range"))
            response.close()
            if total == offset:
                return None, offset, total
            offset = 0
        elif status == 200:
            # A fresh request, or a server that ignored Range: the body is the whole file.
            return response, 0, _content_length(response)
        else:
            response.close()
            if status >= 500 or status in (408, 429):
                raise _Retryable(f"HTTP {status} {response.reason}")
            raise DownloadError(
                f"{archive.url} answered HTTP {status} {response.reason}; the file may have moved: "
                f"{ANOTHER_SOURCE}"
            )
    raise _Retryable("the server kept refusing the byte range")


def _hash_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest


def _transfer(session: requests.Session, archive: Archive, part: Path, progress: bool) -> tuple[int, str]:
    """One attempt to complete ``part``: (bytes received, sha256 of the whole .part)."""
    offset = part.stat().st_size if part.is_file() else 0
    response, start, total = _open(session, archive, offset)
    if archive.size is not None and total is not None and total != archive.size:
        if response is not None:
            response.close()
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.url}: the server reports {total} bytes but {archive.name} should have {archive.size}; "
            "the file on the server differs from the expected one, check the source"
        )
    if response is None:
        return 0, _hash_file(part).hexdigest()
    digest = _hash_file(part) if start else hashlib.sha256()
    received = 0
    with (
        response,
        open(part, "ab" if start else "wb") as file,
        tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=archive.name,
            disable=not progress,
        ) as bar,
    ):
        try:
            for block in response.raw.stream(CHUNK, decode_content=False):
                file.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
                raise DownloadError(
                    f"{part}: cannot write ({_one_line(exc)}); free space and run again"
                ) from exc
            raise _Retryable(f"connection broken after {start + received} bytes ({_one_line(exc)})") from exc
    size = start + received
    if total is not None and size < total:
        raise _Retryable(f"the body ended after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(
            f"{archive.url}: received {size} bytes, more than the {total} of Content-Length; deleted the "
            "download, run again"
        )
    return received, digest.hexdigest()


def _fetch(
    session: requests.Session, archive: Archive, path: Path, progress: bool, retries: int
) -> tuple[int, str]:
    """Download ``archive`` to ``path`` through ``path.part``: (bytes received, sha256).

    A broken transfer is resumed up to ``retries`` times in a row without progress: an attempt that adds
    to the ``.part`` starts the count again, so a long download over a link that drops now and then goes on.
    """
    part = path.with_name(path.name + ".part")
    received, failures, attempt = 0, 0, 0
    kept = part.stat().st_size if part.is_file() else 0
    while True:
        if failures:
            time.sleep(RETRY_DELAY_S * failures)
        attempt += 1
        try:
            got, sha256 = _transfer(session, archive, part, progress)
        except _Retryable as exc:
            now = part.stat().st_size if part.is_file() else 0
            failures = 1 if now > kept else failures + 1
            kept = now
            if failures > retries:
                tries = f"{attempt} {'try' if attempt == 1 else 'tries'}"
                if not now:
                    raise DownloadError(
                        f"{archive.url}: {exc}; gave up after {tries}, nothing received: check the network, "
                        f"or {ANOTHER_SOURCE}"
                    ) from None
                raise DownloadError(
                    f"{archive.url}: {exc}; gave up after {tries}, {now} bytes kept in {part}, run again to "
                    "resume"
                ) from None
            continue
        received += got
        break
    size = part.stat().st_size
    if archive.size is not None and size != archive.size:
        part.unlink()
        raise DownloadError(
            f"{archive.url}: received {size} bytes but {archive.name} should have {archive.size}; deleted the "
            "download, check the source"
        )
    if archive.sha256 is not None and sha256 != archive.sha256:
        part.unlink()
        raise DownloadError(
            f"{archive.name}: sha256 is {sha256}, expected {archive.sha256} ({archive.url}); deleted the "
            "download, run again to fetch it afresh or check the source"
        )
    _check_content(archive, part)
    durable_replace(part, path)
    return received, sha256


def _check_content(archive: Archive, part: Path) -> None:
    """An archive must start as a zip or RAR does, a plain file must not be a web page: a server that sends
    a login, error or "moved" page with status 200 is caught here, not by a failed unpacking. The bytes
    decide, not the Content-Type (old servers label archives text/html too)."""
    with open(part, "rb") as file:
        head = file.read(512)
    if archive.kind == "file":
        bad = head.lstrip().lower().startswith((b"<!doctype", b"<html"))
        what = "a web page"
    else:
        bad = not head.startswith(ARCHIVE_MAGIC)
        what = "not a zip or RAR archive"
    if bad:
        part.unlink()
        raise DownloadError(
            f"{archive.url}: what the server sent is {what} (it starts with {head[:16]!r}); deleted it; the file "
            f"may have moved: {ANOTHER_SOURCE}"
        )


# ------------------------------------------------------------------------------------------- extraction


def _libarchive() -> ModuleType:
    """The ``libarchive`` module; DownloadError saying what to install when it or its library is missing."""
    try:
        import libarchive
    except ModuleNotFoundError as exc:
        if exc.name != "libarchive":
            raise
        raise DownloadError(
            "the Python package libarchive-c is missing; install it: pip install libarchive-c"
        ) from None
    except (ImportError, OSError, AttributeError) as exc:
        raise DownloadError(
            f"cannot load the system library libarchive ({_one_line(exc)}); install it (Debian/Ubuntu: "
            "apt install libarchive13, macOS: brew install libarchive) or set LIBARCHIVE to its path"
        ) from None
    return libarchive


def _member_parts(name: str | bytes | None, label: str) -> list[str]:
    """The path components of an archive member; [] for the archive's own root (``./``)."""
    if name is None:
        raise DownloadError(f"{label}: a member has no name; the archive is damaged, delete it and run again")
    name = os.fsdecode(name).replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise DownloadError(f"{label}: member {name!r} has an absolute path; refusing to unpack this archive")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"{label}: member {name!r} leaves the target folder (..); refusing to unpack it")
    return parts


class _Warnings(logging.Handler):
    """libarchive-c logs what libarchive returns as a warning (a zip member whose CRC does not match, among
    others) and goes on: the ones that say the data is damaged are collected here and end the unpacking."""

    DAMAGE = re.compile(r"crc|checksum|damaged|truncated|corrupt", re.IGNORECASE)

    def __init__(self):
        super().__init__(logging.WARNING)
        self.damage: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.DAMAGE.search(record.getMessage()):
            self.damage.append(_one_line(record.getMessage()))


@contextlib.contextmanager
def _damage_warnings() -> Iterator[_Warnings]:
    logger = logging.getLogger("libarchive")
    handler = _Warnings()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _extract(archive_path: Path, out: Path, label: str) -> int:
    """Unpack every member of ``archive_path`` under ``out``; the number of files written."""
    libarchive = _libarchive()
    written = 0
    try:
        with _damage_warnings() as warnings, libarchive.file_reader(str(archive_path)) as reader:
            for entry in reader:
                parts = _member_parts(entry.pathname, label)
                if not parts:
                    continue
                target = out.joinpath(*parts)
                if entry.isdir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if entry.issym or entry.islnk or not entry.isfile:
                    raise DownloadError(
                        f"{label}: member {'/'.join(parts)!r} is a link or special file; refusing to unpack it"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as file:
                    for block in entry.get_blocks(CHUNK):
                        file.write(block)
                if warnings.damage:
                    raise _Corrupt(f"{label}: member {'/'.join(parts)!r} is damaged ({warnings.damage[0]})")
                written += 1
    except libarchive.ArchiveError as exc:
        message = _one_line(exc)
        if "unsupported" in message.lower():  # this libarchive cannot read it; the file may be fine
            version = libarchive.ffi.version_number()
            raise DownloadError(
                f"{label}: cannot unpack ({message}) with libarchive {version // 1000000}."
                f"{version // 1000 % 1000}.{version % 1000}; {archive_path} is kept: upgrade libarchive (3.6 "
                "or later reads RAR filters) and run again"
            ) from None
        raise _Corrupt(f"{label}: cannot unpack ({message})") from exc
    return written


def _files_under(folder: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(folder):
        for filename in sorted(filenames):
            yield Path(dirpath) / filename


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _unpack(archive: Archive, path: Path, root: Path, work: Path, sha256: str) -> list[str]:
    """Unpack ``path`` into a temporary tree, then move the tree's top-level entries into ``root``.

    An archive that does not unpack is deleted to be fetched afresh, once: when the bytes fetched again
    (the same ``sha256``, recorded in ``<name>.unpack-failed``) fail again, the file is most likely whole and
    libarchive cannot read it (it has open reports of valid RAR4 files it refuses), so it is kept and the
    message says how to unpack it by hand, rather than each run downloading gigabytes to delete them."""
    failed = work / f"{archive.name}.unpack-failed"
    tmp = work / f"extract-{archive.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted run left
    tree = tmp / "tree"
    out = tree / archive.dest if archive.dest else tree
    out.mkdir(parents=True)
    try:
        if archive.kind == "nested":
            outer = tmp / "outer"
            _extract(path, outer, archive.name)
            for member in list(_files_under(outer)):
                rel = member.relative_to(outer).as_posix()
                if member.suffix.lower() in INNER_ARCHIVE_SUFFIXES:
                    try:
                        _extract(member, out, f"{archive.name}/{rel}")
                    except _Corrupt as exc:  # the outer archive's own checks passed: the server's file
                        raise DownloadError(  # is damaged, and downloading it again would not help
                            f"{exc}; the inner archive is damaged in the file the server has ({path} is "
                            f"kept): {ANOTHER_SOURCE.replace('NAME', archive.name)}"
                        ) from None
                    member.unlink()  # frees the space as it goes
                else:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(member, out / rel)
        else:
            _extract(path, out, archive.name)
        if not any(_files_under(tree)):
            raise _Corrupt(f"{archive.name}: holds no files")
        entries = sorted(tree.iterdir())
        for entry in entries:
            if entry.name == WORK_DIR:
                raise DownloadError(f"{archive.name}: holds a top-level {WORK_DIR}; refusing to unpack it")
        for entry in entries:
            target = root / entry.name
            _remove(target)
            durable_replace(entry, target)
        failed.unlink(missing_ok=True)
        return [entry.name for entry in entries]
    except _Corrupt as exc:
        if (_read_marker(failed) or {}).get("sha256") == sha256:
            raise DownloadError(
                f"{exc}; the same bytes (sha256 {sha256[:16]}...) failed to unpack after a fresh download, so "
                f"the file is likely whole and this libarchive cannot read it: {path} is kept; unpack it by "
                f"hand into {root} (`unrar x` or `7z x`), or {ANOTHER_SOURCE.replace('NAME', archive.name)}"
            ) from None
        write_json({"sha256": sha256}, failed)
        path.unlink(missing_ok=True)
        raise DownloadError(f"{exc}; deleted {path}, run again to download it afresh") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DownloadError(
                f"{archive.name}: a member's name is too long for the file system of {root} ({_one_line(exc)}); "
                f"unpack into a folder on another file system ({path} is kept)"
            ) from None
        raise DownloadError(
            f"{archive.name}: unpacking into {tmp} failed ({_one_line(exc)}); free space or fix permissions and "
            f"run again ({path} is kept)"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ entry


@contextlib.contextmanager
def _lock(work: Path) -> Iterator[None]:
    """An exclusive lock on ``work/.lock`` for the whole run: two runs on one ROOT would write the same
    ``.part``. Released when the run ends, or its process does."""
    with open(work / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(
                f"another `transmodal download` is writing into {work.parent}; wait for it to finish"
            ) from None
        yield


def _read_marker(marker: Path) -> dict | None:
    """A ``.done`` marker's record, None when there is none (or it cannot be read: the file is redone)."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def with_urls(archives: Sequence[Archive], urls: dict[str, str]) -> tuple[Archive, ...]:
    """``archives`` with the URL of each file named in ``urls`` (``{name: url}``) replaced: a mirror, or a
    server that moved (``transmodal download --url NAME=URL``)."""
    names = [archive.name for archive in archives]
    unknown = sorted(set(urls) - set(names))
    if unknown:
        raise DownloadError(
            f"--url names {', '.join(unknown)}, not a file of this dataset (its files: {', '.join(names)})"
        )
    return tuple(replace(archive, url=urls.get(archive.name, archive.url)) for archive in archives)


def download(
    dataset: str,
    root: Path,
    *,
    progress: bool = True,
    sources: Sequence[Archive] | None = None,
    retries: int = 3,
    keep_archives: bool = False,
) -> dict:
    """Download and unpack ``dataset`` (one of :data:`DATASETS`) into ``root``; see the module docs.

    ``sources`` replaces the official :data:`ARCHIVES` entries of the dataset (other mirrors, tests).
    ``retries`` is how often a broken transfer is resumed within this call. ``keep_archives`` keeps the
    downloaded archives in ``<root>/.download`` after unpacking. Returns a summary: ``files`` (one record
    per file: name, url, bytes, sha256, placed, fetched_bytes, skipped), ``fetched_files``,
    ``fetched_bytes``, ``placed`` (the entries of ``root`` written) and ``root``.
    """
    if dataset not in DATASETS:
        raise DownloadError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    archives = tuple(ARCHIVES[dataset] if sources is None else sources)
    if not archives:
        raise DownloadError(f"no files to download for {dataset}; pass at least one source")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DownloadError(f"{root} exists and is not a folder; pass a folder as ROOT")
    work = root / WORK_DIR
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {work} ({_one_line(exc)}); pick a writable ROOT") from None

    def marker_of(archive: Archive) -> Path:
        return work / f"{archive.name}.done"

    if any(archive.kind != "file" and not marker_of(archive).is_file() for archive in archives):
        _libarchive()  # fail before downloading gigabytes that could not be unpacked

    files: list[dict] = []
    with _lock(work), requests.Session() as session:
        for archive in archives:
            marker = marker_of(archive)
            done = _read_marker(marker)
            if done is not None and all((root / name).exists() for name in done.get("placed", ())):
                files.append({**done, "fetched_bytes": 0, "skipped": True})
                continue
            marker.unlink(missing_ok=True)  # what it placed is gone: fetch (or unpack) it again
            path = work / archive.name
            if path.is_file():  # downloaded and checked by an earlier run whose extraction did not finish
                received, sha256 = 0, _hash_file(path).hexdigest()
                if archive.sha256 is not None and sha256 != archive.sha256:
                    path.unlink()
                    raise DownloadError(
                        f"{archive.name}: sha256 is {sha256}, expected {archive.sha256}; deleted {path}, run "
                        "again to fetch it afresh"
                    )
            else:
                received, sha256 = _fetch(session, archive, path, progress, retries)
            size = path.stat().st_size
            if archive.kind == "file":
                target = root / archive.dest / archive.name if archive.dest else root / archive.name
                target.parent.mkdir(parents=True, exist_ok=True)
                durable_replace(path, target)
                placed = [target.relative_to(root).as_posix()]
            else:
                placed = _unpack(archive, path, root, work, sha256)
            record = {
                "name": archive.name,
                "url": archive.url,
                "bytes": size,
                "sha256": sha256,
                "placed": placed,
            }
            write_json(record, marker)
            if archive.kind != "file" and not keep_archives:
                path.unlink(missing_ok=True)
            files.append({**record, "fetched_bytes": received, "skipped": False})
    return {
        "dataset": dataset,
        "root": str(root),
        "files": files,
        "fetched_files": sum(1 for record in files if not record["skipped"]),
        "fetched_bytes": sum(record["fetched_bytes"] for record in files),
        "placed": sorted({name for record in files for name in record["placed"]}),
    }
