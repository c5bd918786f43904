"""``transmodal download``: fetch, resume, verify and unpack into the layout the real indexer reads.

Every request goes to a ThreadingHTTPServer on 127.0.0.1 (port 0) started here; the loopback URLs reach
:func:`download` through ``sources``, so no test touches the official servers. The handler implements
Content-Length, ``Range: bytes=N-`` with 206/416, and on request ignores ranges (200), announces a wrong
Content-Length or closes the connection after N bytes of body.

The RAR archives are genuine: :func:`rar4` and :func:`rar5` write stored (uncompressed) RAR 4.x and RAR5
archives from the format's published header layout (rarlab's technote), which is all a test needs and needs
no rar tool. Decoding compressed RAR is libarchive's job and is not exercised here. KTH's archives are zips,
as the official ones are. Videos are short byte strings: the indexer never opens a video.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import shutil
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from transmodal.data import download as dl
from transmodal.data.download import ARCHIVES, DATASETS, WORK_DIR, Archive, DownloadError, download
from transmodal.data.index import build_index
from transmodal.params import KTH_ACTIONS, DataConfig

# ------------------------------------------------------------------------------------------ archives


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rar5(members: dict[str, bytes]) -> bytes:
    """A RAR5 archive of stored files (host OS Windows, attribute 'archive')."""

    def header(body: bytes) -> bytes:
        data = _vint(len(body)) + body
        return struct.pack("<I", zlib.crc32(data)) + data

    out = bytearray(b"Rar!\x1a\x07\x01\x00")
    out += header(_vint(1) + _vint(0) + _vint(0))  # main archive header
    for name, data in members.items():
        encoded = name.encode()
        body = (
            _vint(2)  # file header
            + _vint(0x0002)  # has a data area
            + _vint(len(data))
            + _vint(0x0004)  # CRC32 present
            + _vint(len(data))
            + _vint(0x20)
            + struct.pack("<I", zlib.crc32(data))
            + _vint(0)  # version 0, method 0: stored
            + _vint(0)  # Windows
            + _vint(len(encoded))
            + encoded
        )
        out += header(body) + data
    out += header(_vint(5) + _vint(0) + _vint(0))  # end of archive
    return bytes(out)


def rar4(members: dict[str, bytes]) -> bytes:
    """A RAR 4.x archive of stored files made 'on Windows': backslash separators, as WinRAR writes them."""

    def block(kind: int, flags: int, body: bytes) -> bytes:
        data = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(data) & 0xFFFF) + data

    out = bytearray(b"Rar!\x1a\x07\x00")
    out += block(0x73, 0, bytes(6))
    for name, data in members.items():
        encoded = name.replace("/", "\\").encode()
        body = struct.pack(
            "<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data), 0x21, 20, 0x30, len(encoded), 0x20
        )
        out += block(0x74, 0x8000, body + encoded) + data
    out += block(0x7B, 0x4000, b"")
    return bytes(out)


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def video(name: str) -> bytes:
    """Distinct bytes per video, a few KiB so that transfers can be cut in the middle."""
    return (name.encode() + b"\0") * 200


# ------------------------------------------------------------------------------------------- server


@dataclass
class Served:
    """What the test server holds and has seen."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, list[int]] = field(default_factory=dict)  # per path: next responses' byte limits
    ignore_range: set[str] = field(default_factory=set)
    announce: dict[str, int] = field(default_factory=dict)  # per path: Content-Length to claim
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # per path: more response headers
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == f"/{name}"]


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            rng = self.headers.get("Range")
            served.requests.append((self.path, rng))
            data = served.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and self.path not in served.ignore_range:
                start = int(match[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            for name, value in served.headers.get(self.path, {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(served.announce.get(self.path, len(body))))
            self.end_headers()
            cuts = served.cut_after.get(self.path)
            if cuts:
                body = body[: cuts.pop(0)]
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_DELAY_S", 0.0)


def serve(served: Served, name: str, data: bytes, **fields) -> Archive:
    served.files[f"/{name}"] = data
    return Archive(name, served.url(name), **fields)


def tree(root: Path) -> set[str]:
    """Every file under root outside the work folder, relative, POSIX."""
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and WORK_DIR not in p.parts
    }


# ---------------------------------------------------------------------------------------- fake datasets

KTH_SUBJECTS = (1, 17, 18)  # paper split: train, val, test


def kth_sources(served: Served) -> tuple[list[Archive], set[str]]:
    sources, videos, lines = [], set(), []
    for action in KTH_ACTIONS:
        members = {}
        for subject in KTH_SUBJECTS:
            for scenario in ("d1", "d2"):
                video_id = f"person{subject:02d}_{action}_{scenario}"
                members[f"{video_id}_uncomp.avi"] = video(video_id)
                videos.add(f"{action}/{video_id}_uncomp.avi")
                lines.append(f"{video_id}\t\tframes\t1-20, 25-40")
        sources.append(serve(served, f"{action}.zip", make_zip(members), dest=action))
    text = ("\r\n".join(lines) + "\r\n").encode()
    sources.append(serve(served, "00sequences.txt", text, kind="file"))
    return sources, videos


UCF_CLASSES = ("ApplyEyeMakeup", "Archery")


def ucf_videos() -> dict[str, bytes]:
    return {
        f"UCF-101/{cls}/v_{cls}_g{group:02d}_c{clip:02d}.avi": video(f"{cls}{group}{clip}")
        for cls in UCF_CLASSES
        for group in (1, 2, 3)
        for clip in (1, 2)
    }


def ucf_sources(served: Served, videos: bytes | None = None) -> list[Archive]:
    names = sorted(ucf_videos())
    train = [n.removeprefix("UCF-101/") for n in names if "_g03_" not in n]
    test = [n.removeprefix("UCF-101/") for n in names if "_g03_" in n]
    label = {cls: i + 1 for i, cls in enumerate(UCF_CLASSES)}
    lists = {
        "ucfTrainTestlist/classInd.txt": "".join(f"{i} {c}\r\n" for c, i in label.items()).encode(),
        "ucfTrainTestlist/trainlist01.txt": "".join(
            f"{n} {label[n.split('/')[0]]}\r\n" for n in train
        ).encode(),
        "ucfTrainTestlist/testlist01.txt": "".join(f"{n}\r\n" for n in test).encode(),
    }
    return [
        serve(served, "UCF101.rar", rar4(ucf_videos()) if videos is None else videos),
        serve(served, "UCF101TrainTestSplits-RecognitionTask.zip", make_zip(lists)),
    ]


HMDB_CLASSES = ("brush_hair", "cartwheel")


def hmdb_sources(served: Served) -> tuple[list[Archive], set[str]]:
    inner, videos, splits = {}, set(), {}
    for index, cls in enumerate(HMDB_CLASSES):
        members = {}
        marks = []
        for source, mark in (("April_09", 1), ("Aussie", 1), ("Blonde", 2), ("Cindy", 0)):
            name = f"{source}_{cls}_u_nm_np1_ba_goo_0.avi"
            members[f"{cls}/{name}"] = video(name)
            videos.add(f"{cls}/{name}")
            marks.append(f"{name} {mark} \r\n")
        # One inner archive of each RAR version; the real ones hold <class>/<video>.avi.
        inner[f"{cls}.rar"] = (rar4 if index == 0 else rar5)(members)
        for split in (1, 2, 3):
            splits[f"testTrainMulti_7030_splits/{cls}_test_split{split}.txt"] = "".join(marks).encode()
    sources = [
        serve(served, "hmdb51_org.rar", rar5(inner), kind="nested"),
        serve(served, "test_train_splits.rar", rar4(splits)),
    ]
    return sources, videos


# ------------------------------------------------------------------------------------------------ tests


def test_official_table():
    assert DATASETS == ("kth", "ucf101", "hmdb51") == tuple(ARCHIVES)
    urls = {dataset: [a.url for a in archives] for dataset, archives in ARCHIVES.items()}
    kth = "http://www.csc.kth.se/cvap/actions/"
    assert urls["kth"] == [f"{kth}{action}.zip" for action in KTH_ACTIONS] + [f"{kth}00sequences.txt"]
    assert urls["ucf101"] == [
        "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
        "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
    ]
    hmdb = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/"
    assert urls["hmdb51"] == [f"{hmdb}hmdb51_org.rar", f"{hmdb}test_train_splits.rar"]
    every = [a for archives in ARCHIVES.values() for a in archives]
    assert all(a.sha256 is None and a.size is None for a in every)  # none is published
    assert [a.dest for a in ARCHIVES["kth"][:6]] == list(KTH_ACTIONS)
    assert [a.kind for a in ARCHIVES["hmdb51"]] == ["nested", "archive"]
    with pytest.raises(ValueError, match="plain file name"):
        Archive("../x.zip", "http://127.0.0.1/x.zip")


def test_kth_end_to_end(server, tmp_path):
    sources, videos = kth_sources(server)
    summary = download("kth", tmp_path, progress=False, sources=sources)
    assert tree(tmp_path) == videos | {"00sequences.txt"}
    assert summary["fetched_files"] == 7
    assert summary["fetched_bytes"] == sum(len(d) for d in server.files.values())
    assert summary["placed"] == sorted([*KTH_ACTIONS, "00sequences.txt"])
    record = summary["files"][0]
    assert record["sha256"] == hashlib.sha256(server.files["/boxing.zip"]).hexdigest()
    # Only the markers (and the run lock) stay in the work folder: archives are deleted once unpacked.
    assert sorted(p.name for p in (tmp_path / WORK_DIR).iterdir()) == sorted(
        [".lock", *(f"{a.name}.done" for a in sources)]
    )
    assert (tmp_path / "boxing" / "person01_boxing_d1_uncomp.avi").read_bytes() == video("person01_boxing_d1")

    index, info = build_index(DataConfig(dataset="kth", root=str(tmp_path), split="paper"))
    assert set(index["path"]) == videos
    assert info["sequences_file"] == "00sequences.txt"
    assert info["videos_without_sequences"] == 0
    assert index["sequences"].map(len).eq(2).all()
    assert dict(index.groupby("group")["split"].first()) == {1: "train", 17: "val", 18: "test"}


def test_ucf101_end_to_end(server, tmp_path):
    summary = download("ucf101", tmp_path, progress=False, sources=ucf_sources(server))
    assert summary["placed"] == ["UCF-101", "ucfTrainTestlist"]
    # The RAR 4 archive's backslash names became folders.
    assert set(ucf_videos()) <= tree(tmp_path)
    index, info = build_index(DataConfig(dataset="ucf101", root=str(tmp_path), split=1, val_fraction=0.0))
    assert set(index["path"]) == set(ucf_videos())
    assert info["listed_missing_on_disk"] == 0 and info["unlisted_on_disk"] == 0
    assert info["videos_per_split"] == {"train": 8, "val": 0, "test": 4}
    assert sorted(index["label"].unique()) == list(UCF_CLASSES)


def test_hmdb51_end_to_end_with_nested_archives(server, tmp_path):
    sources, videos = hmdb_sources(server)
    summary = download("hmdb51", tmp_path, progress=False, sources=sources)
    assert summary["placed"] == [*HMDB_CLASSES, "testTrainMulti_7030_splits"]
    files = tree(tmp_path)
    assert videos <= files
    assert not [f for f in files if f.endswith(".rar")]  # the inner archives are not left behind
    assert (tmp_path / "cartwheel" / "Aussie_cartwheel_u_nm_np1_ba_goo_0.avi").read_bytes() == video(
        "Aussie_cartwheel_u_nm_np1_ba_goo_0.avi"
    )
    index, info = build_index(DataConfig(dataset="hmdb51", root=str(tmp_path), split=1, val_fraction=0.0))
    assert set(index["path"]) == {v for v in videos if "Cindy" not in v}
    assert info["unused_excluded"] == 2
    assert info["videos_per_split"] == {"train": 4, "val": 0, "test": 2}
    assert list(index.drop_duplicates("label")["label"]) == list(HMDB_CLASSES)


@pytest.mark.parametrize("retries", [0, 1])
def test_interrupted_transfer_resumes_with_range(server, tmp_path, retries):
    sources = ucf_sources(server)
    data = server.files["/UCF101.rar"]
    cut = len(data) // 3
    server.cut_after["/UCF101.rar"] = [cut]
    work = tmp_path / WORK_DIR
    if retries == 0:
        with pytest.raises(DownloadError, match=r"UCF101\.rar.*run again to resume") as caught:
            download("ucf101", tmp_path, progress=False, sources=sources, retries=0)
        assert "\n" not in str(caught.value)
        assert (work / "UCF101.rar.part").read_bytes() == data[:cut]
        assert not (work / "UCF101.rar").exists() and not (work / "UCF101.rar.done").exists()
        assert tree(tmp_path) == set()
    download("ucf101", tmp_path, progress=False, sources=sources, retries=retries, keep_archives=True)
    assert server.ranges("UCF101.rar") == [None, f"bytes={cut}-"]
    assert (work / "UCF101.rar").read_bytes() == data
    assert not (work / "UCF101.rar.part").exists()
    assert set(ucf_videos()) <= tree(tmp_path)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    sources = ucf_sources(server)
    data = server.files["/UCF101.rar"]
    work = tmp_path / WORK_DIR
    work.mkdir(parents=True)
    stale = b"stale bytes that are not the file"
    (work / "UCF101.rar.part").write_bytes(stale)
    server.ignore_range.add("/UCF101.rar")
    download("ucf101", tmp_path, progress=False, sources=sources, keep_archives=True)
    assert server.ranges("UCF101.rar") == [f"bytes={len(stale)}-"]  # answered 200: the whole file
    assert (work / "UCF101.rar").read_bytes() == data


def test_bad_sha256_is_refused(server, tmp_path):
    good, splits = ucf_sources(server)
    wrong = "0" * 64
    bad = Archive(good.name, good.url, sha256=wrong)
    with pytest.raises(DownloadError) as caught:
        download("ucf101", tmp_path, progress=False, sources=[bad, splits])
    message = str(caught.value)
    got = hashlib.sha256(server.files["/UCF101.rar"]).hexdigest()
    assert "UCF101.rar" in message and wrong in message and got in message and "\n" not in message
    assert [p.name for p in (tmp_path / WORK_DIR).iterdir()] == [".lock"]  # no .part, no file, no marker
    assert tree(tmp_path) == set()
    # The right checksum passes.
    download("ucf101", tmp_path, progress=False, sources=[Archive(good.name, good.url, sha256=got), splits])
    assert set(ucf_videos()) <= tree(tmp_path)


def test_failed_extraction_leaves_no_tree_and_no_marker(server, tmp_path):
    whole = rar4(ucf_videos())
    second = whole.index(video("ApplyEyeMakeup12"))
    sources = ucf_sources(server, videos=whole[: second + 100])  # truncated inside the second video
    with pytest.raises(DownloadError, match=r"UCF101\.rar: cannot unpack .*run again to download it afresh"):
        download("ucf101", tmp_path, progress=False, sources=sources)
    work = tmp_path / WORK_DIR
    assert not (tmp_path / "UCF-101").exists()
    assert not (work / "UCF101.rar.done").exists()
    assert not (work / "UCF101.rar").exists()  # the corrupt download is deleted
    assert not list(work.glob("extract-*"))
    # The server gets fixed: a re-run downloads and unpacks it.
    server.files["/UCF101.rar"] = whole
    download("ucf101", tmp_path, progress=False, sources=sources)
    assert set(ucf_videos()) <= tree(tmp_path)


def test_an_archive_that_fails_twice_with_the_same_bytes_is_kept(server, tmp_path):
    """libarchive refuses some valid RAR4 files: deleting the archive after each failed unpack had every run
    download the same gigabytes again. The second failure of the same bytes keeps the file and says how to
    unpack it by hand; a run that unpacks it clears the record."""
    whole = rar4(ucf_videos())
    second = whole.index(video("ApplyEyeMakeup12"))
    sources = ucf_sources(server, videos=whole[: second + 100])  # the server's bytes never unpack
    work = tmp_path / WORK_DIR
    with pytest.raises(DownloadError, match=r"deleted .*UCF101\.rar, run again to download it afresh"):
        download("ucf101", tmp_path, progress=False, sources=sources)
    assert not (work / "UCF101.rar").exists()
    with pytest.raises(
        DownloadError,
        match=r"the same bytes \(sha256 [0-9a-f]{16}\.\.\.\) failed to unpack .* is kept; unpack it by hand",
    ) as error:
        download("ucf101", tmp_path, progress=False, sources=sources)
    assert "\n" not in str(error.value) and "`unrar x` or `7z x`" in str(error.value)
    assert (work / "UCF101.rar").is_file()  # kept: the next run unpacks it without downloading
    server.files["/UCF101.rar"] = whole  # another source: other bytes, which unpack
    (work / "UCF101.rar").unlink()
    download("ucf101", tmp_path, progress=False, sources=sources)
    assert set(ucf_videos()) <= tree(tmp_path)
    assert not (work / "UCF101.rar.unpack-failed").exists()


def test_rerun_after_interrupted_extraction_redoes_it(server, tmp_path):
    sources = ucf_sources(server)
    work = tmp_path / WORK_DIR
    # A run that was killed while unpacking: the download is complete, the temporary tree half done.
    half = work / "extract-UCF101.rar.tmp" / "tree" / "UCF-101" / "Archery"
    half.mkdir(parents=True)
    (half / "v_Archery_g01_c01.avi").write_bytes(b"half")
    (work / "UCF101.rar").write_bytes(server.files["/UCF101.rar"])
    download("ucf101", tmp_path, progress=False, sources=sources)
    assert server.ranges("UCF101.rar") == []  # not downloaded again
    assert not (work / "extract-UCF101.rar.tmp").exists()
    assert (tmp_path / "UCF-101/Archery/v_Archery_g01_c01.avi").read_bytes() == video("Archery11")
    assert (work / "UCF101.rar.done").is_file()


def test_rerun_after_success_downloads_nothing(server, tmp_path):
    sources, _ = hmdb_sources(server)
    first = download("hmdb51", tmp_path, progress=False, sources=sources)
    before = {p: p.read_bytes() for p in (tmp_path / "brush_hair").iterdir()}
    server.requests.clear()
    again = download("hmdb51", tmp_path, progress=False, sources=sources)
    assert server.requests == []
    assert again["fetched_files"] == 0 and again["fetched_bytes"] == 0
    assert all(record["skipped"] for record in again["files"])
    assert [r["sha256"] for r in again["files"]] == [r["sha256"] for r in first["files"]]
    assert again["placed"] == first["placed"]
    assert {p: p.read_bytes() for p in (tmp_path / "brush_hair").iterdir()} == before


def test_size_mismatch_with_table_is_refused(server, tmp_path):
    good, splits = ucf_sources(server)
    size = len(server.files["/UCF101.rar"])
    with pytest.raises(
        DownloadError, match=rf"server reports {size} bytes but UCF101\.rar should have {size + 1}"
    ):
        download(
            "ucf101", tmp_path, progress=False, sources=[Archive(good.name, good.url, size=size + 1), splits]
        )
    assert [p.name for p in (tmp_path / WORK_DIR).iterdir()] == [".lock"]
    assert tree(tmp_path) == set()


def test_body_shorter_than_content_length_is_refused(server, tmp_path):
    sources = ucf_sources(server)
    size = len(server.files["/UCF101.rar"])
    server.announce["/UCF101.rar"] = size + 10  # claims 10 bytes more than it sends
    with pytest.raises(DownloadError, match=rf"UCF101\.rar: .*after {size} .*gave up after 1 try"):
        download("ucf101", tmp_path, progress=False, sources=sources, retries=0)
    work = tmp_path / WORK_DIR
    assert not (work / "UCF101.rar").exists() and not (work / "UCF101.rar.done").exists()
    assert (work / "UCF101.rar.part").stat().st_size == size  # kept for a resume
    assert tree(tmp_path) == set()


@pytest.mark.parametrize(
    ("member", "why"),
    [("../evil.avi", r"leaves the target folder"), ("/tmp/evil.avi", r"absolute path")],
)
def test_path_traversal_is_refused(server, tmp_path, member, why):
    target = tmp_path / "root"
    sources = [serve(server, "UCF101.rar", rar5({"UCF-101/A/v_A_g01_c01.avi": b"x", member: b"evil"}))]
    with pytest.raises(DownloadError, match=why):
        download("ucf101", target, progress=False, sources=sources)
    assert not (tmp_path / "evil.avi").exists() and not Path("/tmp/evil.avi").exists()
    assert not (target / "UCF-101").exists() and not (target / WORK_DIR / "UCF101.rar.done").exists()


def test_http_error_names_the_url(server, tmp_path):
    missing = Archive("UCF101.rar", server.url("nowhere/UCF101.rar"))
    with pytest.raises(DownloadError, match=r"/nowhere/UCF101\.rar answered HTTP 404"):
        download("ucf101", tmp_path, progress=False, sources=[missing])


def test_unknown_dataset(tmp_path):
    with pytest.raises(
        DownloadError, match="unknown dataset 'kinetics'; expected one of kth, ucf101, hmdb51"
    ):
        download("kinetics", tmp_path)


def test_missing_libarchive_fails_before_downloading(server, tmp_path, monkeypatch):
    sources = ucf_sources(server)
    for name in [n for n in sys.modules if n == "libarchive" or n.startswith("libarchive.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("LIBARCHIVE", str(tmp_path / "no" / "libarchive.so.13"))
    with pytest.raises(
        DownloadError, match=r"apt install libarchive13, macOS: brew install libarchive"
    ) as caught:
        download("ucf101", tmp_path / "root", progress=False, sources=sources)
    assert "\n" not in str(caught.value)
    assert server.requests == []


def test_url_option_fetches_a_file_from_a_mirror(server, tmp_path, capsys):
    """The official HMDB51 and UCF101 servers move: --url NAME=URL takes a file from elsewhere."""
    from transmodal.cli import main

    mirrored = ucf_sources(server)
    args = ["download", "ucf101", str(tmp_path), "--quiet"]
    for archive in mirrored:
        args += ["--url", f"{archive.name}={archive.url}"]
    main(args)
    assert set(ucf_videos()) <= tree(tmp_path)
    for bad, message in (
        (["--url", "UCF101.zip=http://127.0.0.1/x"], "--url names UCF101.zip, not a file of this dataset"),
        (["--url", "UCF101.rar"], "--url 'UCF101.rar': expected NAME=URL"),
    ):
        with pytest.raises(SystemExit) as caught:
            main(["download", "ucf101", str(tmp_path / "other"), *bad])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_web_page_instead_of_the_file_is_refused(server, tmp_path):
    """A moved file's server answers 200 with an HTML page: refused (and deleted), whatever its Content-Type
    says; a plain file (KTH's 00sequences.txt) that is a web page too. The bytes decide: a genuine archive
    that an old server labels text/html is kept."""
    page = b"<!DOCTYPE html><html><body>This page has moved</body></html>"
    rar, splits = ucf_sources(server)
    archive = server.files["/UCF101.rar"]
    server.files["/UCF101.rar"] = page
    for kind in ("text/html; charset=utf-8", "application/octet-stream"):
        server.headers["/UCF101.rar"] = {"Content-Type": kind}
        with pytest.raises(DownloadError, match=r"is not a zip or RAR archive .*deleted it.*--url NAME=URL"):
            download("ucf101", tmp_path, progress=False, sources=[rar, splits])
        assert [p.name for p in (tmp_path / WORK_DIR).iterdir()] == [".lock"] and tree(tmp_path) == set()
    server.files["/UCF101.rar"] = archive  # served as text/html, and a RAR archive: unpacked
    download("ucf101", tmp_path, progress=False, sources=[rar, splits])
    assert set(ucf_videos()) <= tree(tmp_path)
    sequences = serve(server, "00sequences.txt", b"\n  " + page, kind="file")
    with pytest.raises(DownloadError, match=r"00sequences\.txt: what the server sent is a web page"):
        download("kth", tmp_path / "kth", progress=False, sources=[sequences])
    assert not (tmp_path / "kth" / "00sequences.txt").exists()


def test_a_certificate_error_is_said_not_retried(tmp_path, monkeypatch):
    import requests

    calls = []

    def refuse(self, url, **kwargs):
        calls.append(url)
        raise requests.exceptions.SSLError(
            "certificate verify failed: unable to get local issuer certificate"
        )

    monkeypatch.setattr(requests.Session, "get", refuse)
    with pytest.raises(DownloadError, match=r"certificate could not be verified .*REQUESTS_CA_BUNDLE"):
        download(
            "ucf101", tmp_path, progress=False, sources=[Archive("UCF101.rar", "https://x.invalid/a.rar")]
        )
    assert len(calls) == 1


def test_nothing_received_does_not_talk_of_resuming(tmp_path):
    dead = Archive("UCF101.rar", "http://127.0.0.1:9/UCF101.rar")  # the discard port: connection refused
    with pytest.raises(DownloadError) as caught:
        download("ucf101", tmp_path, progress=False, sources=[dead], retries=1)
    message = str(caught.value)
    assert "nothing received: check the network, or pass another source with --url" in message
    assert ".part" not in message


def test_a_link_that_keeps_dropping_goes_on_while_the_file_grows(server, tmp_path):
    """The retries count failures in a row without progress: six drops with retries=2 still finish."""
    sources = ucf_sources(server)
    size = len(server.files["/UCF101.rar"])
    server.cut_after["/UCF101.rar"] = [size // 8] * 6
    download("ucf101", tmp_path, progress=False, sources=sources, retries=2)
    assert set(ucf_videos()) <= tree(tmp_path)
    assert len(server.ranges("UCF101.rar")) == 7


def test_a_marker_whose_files_are_gone_is_redone(server, tmp_path):
    sources = ucf_sources(server)
    download("ucf101", tmp_path, progress=False, sources=sources)
    shutil.rmtree(tmp_path / "UCF-101")
    summary = download("ucf101", tmp_path, progress=False, sources=sources)
    assert set(ucf_videos()) <= tree(tmp_path)
    assert [record["skipped"] for record in summary["files"]] == [False, True]


def test_a_damaged_zip_member_is_not_unpacked_silently(server, tmp_path):
    """libarchive only warns on a zip member whose CRC does not match; that ends the unpacking."""
    sources, _ = kth_sources(server)
    boxing = bytearray(server.files["/boxing.zip"])
    data = video("person01_boxing_d1")
    members = {"person01_boxing_d1_uncomp.avi": data}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, member in members.items():
            archive.writestr(name, member)
    stored = bytearray(buffer.getvalue())
    stored[stored.index(data) + 10] ^= 0xFF  # one byte of the member's data
    server.files["/boxing.zip"] = bytes(stored)
    with pytest.raises(
        DownloadError, match=r"boxing\.zip: member 'person01_boxing_d1_uncomp\.avi' is damaged"
    ):
        download("kth", tmp_path, progress=False, sources=sources[:1])
    assert not (tmp_path / "boxing").exists()
    server.files["/boxing.zip"] = bytes(boxing)
    download("kth", tmp_path, progress=False, sources=sources[:1])
    assert (tmp_path / "boxing" / "person01_boxing_d1_uncomp.avi").read_bytes() == data


def test_a_second_run_on_the_same_root_is_refused(server, tmp_path):
    import fcntl

    sources = ucf_sources(server)
    (tmp_path / WORK_DIR).mkdir(parents=True)
    with open(tmp_path / WORK_DIR / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="another `transmodal download` is writing into"):
            download("ucf101", tmp_path, progress=False, sources=sources)
    assert server.requests == []
    download("ucf101", tmp_path, progress=False, sources=sources)  # released: it runs
    assert set(ucf_videos()) <= tree(tmp_path)


def test_ctrl_c_is_one_line_saying_to_run_again(tmp_path, monkeypatch, capsys):
    from transmodal.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "download", interrupted)
    with pytest.raises(SystemExit) as caught:
        main(["download", "kth", str(tmp_path)])
    err = capsys.readouterr().err
    assert (
        caught.value.code == 130 and "interrupted; nothing it was writing looks complete; run the same" in err
    )
    assert len(err.strip().splitlines()) == 1


def test_a_file_put_in_the_work_folder_by_hand_is_unpacked_without_downloading(server, tmp_path):
    rar, splits = ucf_sources(server)
    (tmp_path / WORK_DIR).mkdir(parents=True)
    (tmp_path / WORK_DIR / "UCF101.rar").write_bytes(server.files["/UCF101.rar"])
    by_hand = Archive("UCF101.rar", "http://127.0.0.1:9/nowhere.rar")  # never asked
    summary = download("ucf101", tmp_path, progress=False, sources=[by_hand, splits])
    assert set(ucf_videos()) <= tree(tmp_path)
    assert server.ranges("UCF101.rar") == [] and summary["files"][0]["fetched_bytes"] == 0


def test_a_member_name_too_long_for_the_file_system_says_so(server, tmp_path):
    long_name = "UCF-101/ApplyEyeMakeup/" + "v" * 300 + ".avi"  # over NAME_MAX (255) of ext4 and most others
    rar = serve(server, "UCF101.rar", rar4({long_name: b"x" * 64}))
    with pytest.raises(DownloadError, match=r"UCF101\.rar: a member's name is too long for the file system"):
        download("ucf101", tmp_path, progress=False, sources=[rar])
    assert (tmp_path / WORK_DIR / "UCF101.rar").is_file()  # kept: nothing is wrong with it


def test_a_damaged_inner_archive_keeps_the_outer_one(server, tmp_path):
    """The outer RAR unpacked with its checks passed, so a damaged inner one is the server's file: the 2 GB
    outer archive is kept (a re-download would fetch the same) and the message points to a mirror."""
    sources, _ = hmdb_sources(server)
    inner = {"brush_hair.rar": rar4({"brush_hair/a_brush_hair_u_nm_np1_ba_goo_0.avi": video("a") * 4})[:-300]}
    server.files["/hmdb51_org.rar"] = rar5(inner)
    with pytest.raises(DownloadError) as caught:
        download("hmdb51", tmp_path, progress=False, sources=sources[:1])
    message = str(caught.value)
    assert message.startswith("hmdb51_org.rar/brush_hair.rar: cannot unpack")
    assert "--url hmdb51_org.rar=URL" in message
    assert (tmp_path / WORK_DIR / "hmdb51_org.rar").is_file() and not (tmp_path / "brush_hair").exists()
