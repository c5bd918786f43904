"""The odd-input corpus generator (tests/corpus.py): each file has the property its manifest claims."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_test_video
from tests.corpus import (
    HEADER_FACTOR,
    LISTED,
    ODD,
    UNKNOWN_ACTION_FILES,
    avi_header_counts,
    build_corpus,
    build_mixed_tree,
    kth_path,
    patch_avi_frame_count,
)
from transmodal.data.index import index_kth

UNICODE_ROOT = "my videos ü 日本"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict[str, dict], float]:
    root = tmp_path_factory.mktemp("corpus") / UNICODE_ROOT
    started = time.perf_counter()
    manifest = build_mixed_tree(root)
    return root, manifest, time.perf_counter() - started


def probe(path: Path) -> dict:
    """What OpenCV says about a video and what actually decodes."""
    cap = cv2.VideoCapture(str(path))
    info = {"opened": cap.isOpened(), "decoded": 0, "frames": []}
    if not info["opened"]:
        return info
    info.update(
        reported=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        fps=cap.get(cv2.CAP_PROP_FPS),
        size=[int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))],
    )
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        info["frames"].append(frame)
    cap.release()
    info["decoded"] = len(info["frames"])
    return info


def by_kind(manifest: dict[str, dict], kind: str) -> str:
    (rel,) = [rel for rel, entry in manifest.items() if entry["kind"] == kind]
    return rel


def test_the_manifest_covers_every_file_and_the_build_is_quick(tree):
    root, manifest, seconds = tree
    assert seconds < 20
    kinds = {entry["kind"] for entry in manifest.values()}
    assert kinds == {"good", *ODD, *UNKNOWN_ACTION_FILES}
    for rel, entry in manifest.items():
        assert (root / rel).is_file(), rel
        assert entry["expect"] in ("usable", "unusable") and entry["why"], rel
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.avi")}
    assert on_disk == set(manifest)
    for kind, (subject, action, scenario) in ODD.items():
        assert manifest[kth_path(subject, action, scenario)]["kind"] == kind
    # Small: everything but the 1080p video is at most 100 frames of 160x120 (or 120x160).
    for rel, entry in manifest.items():
        if entry["kind"] != "hd_1080p" and entry["frames"]:
            assert entry["frames"] <= 100 and entry["size"][0] * entry["size"][1] <= 160 * 120, rel


def test_unusable_files_do_not_open(tree):
    root, manifest, _ = tree
    assert (root / by_kind(manifest, "zero_byte")).stat().st_size == 0
    assert (root / by_kind(manifest, "text")).read_text(encoding="ascii").startswith("<!DOCTYPE html>")
    assert (root / by_kind(manifest, "random_bytes")).stat().st_size == 65536
    for kind in ("zero_byte", "random_bytes", "text"):
        assert manifest[by_kind(manifest, kind)]["expect"] == "unusable"
        info = probe(root / by_kind(manifest, kind))
        assert info["decoded"] == 0, kind


def test_plain_usable_videos_decode_every_frame_at_their_size_and_rate(tree):
    root, manifest, _ = tree
    for rel, entry in manifest.items():
        if entry["frames"] == 0 or entry["kind"] in ("truncated", "wrong_header"):
            continue
        info = probe(root / rel)
        assert info["reported"] == info["decoded"] == entry["frames"], rel
        assert info["size"] == entry["size"] and info["fps"] == pytest.approx(entry["fps"]), rel
        assert info["frames"][0].shape == (entry["size"][1], entry["size"][0], 3), rel


def test_the_truncated_video_decodes_fewer_frames_than_its_header_reports(tree):
    root, manifest, _ = tree
    rel = by_kind(manifest, "truncated")
    info = probe(root / rel)
    # The header (avih/strh, at the start of the file) survives the cut: OpenCV still reports 60.
    assert info["reported"] == manifest[rel]["header_frames"] == manifest[rel]["frames"] == 60
    assert 0 < info["decoded"] < info["reported"]
    assert info["decoded"] >= 20  # about half (28 here)


def test_the_wrong_header_video_reports_the_patched_count_and_decodes_the_real_one(tree):
    root, manifest, _ = tree
    rel = by_kind(manifest, "wrong_header")
    entry = manifest[rel]
    claimed = HEADER_FACTOR * entry["frames"]
    assert avi_header_counts(root / rel) == {"avih.dwTotalFrames": claimed, "strh.dwLength": claimed}
    info = probe(root / rel)
    assert info["reported"] == entry["header_frames"] == claimed
    assert info["decoded"] == entry["frames"] == 40


def test_opencv_takes_the_frame_count_from_the_video_strh_not_avih(tmp_path):
    """Documents the finding behind ``wrong_header``: FFmpeg reads strh dwLength (AVStream.nb_frames)."""
    for field, reported in (("avih.dwTotalFrames", 12), ("strh.dwLength", 99)):
        path = tmp_path / f"{field}.avi"
        write_test_video(path, 12)
        assert avi_header_counts(path) == {"avih.dwTotalFrames": 12, "strh.dwLength": 12}
        assert patch_avi_frame_count(path, 99, only=[field]) == [field]
        assert avi_header_counts(path)[field] == 99
        info = probe(path)
        assert (info["reported"], info["decoded"]) == (reported, 12), field


def test_grey_is_written_grey_and_the_other_odd_videos_in_colour(tree):
    root, manifest, _ = tree
    grey = probe(root / by_kind(manifest, "grey"))["frames"]
    assert all(np.array_equal(f[..., 0], f[..., 1]) and np.array_equal(f[..., 0], f[..., 2]) for f in grey)
    colour = probe(root / by_kind(manifest, "portrait"))["frames"][0].astype(int)
    assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 5


def test_frame_rates_and_sizes(tree):
    root, manifest, _ = tree
    assert probe(root / by_kind(manifest, "fps_10"))["fps"] == pytest.approx(10.0)
    assert probe(root / by_kind(manifest, "fps_30"))["fps"] == pytest.approx(30.0)
    assert manifest[by_kind(manifest, "fps_10")]["frames"] == 30
    assert manifest[by_kind(manifest, "fps_30")]["frames"] == 90
    assert probe(root / by_kind(manifest, "hd_1080p"))["size"] == [1920, 1080]
    assert probe(root / by_kind(manifest, "portrait"))["size"] == [120, 160]
    assert manifest[by_kind(manifest, "one_frame")]["frames"] == 1
    assert manifest[by_kind(manifest, "short_clip")]["frames"] == 10


def test_the_root_with_spaces_and_non_ascii_characters_works_with_opencv(tree):
    root, manifest, _ = tree
    assert root.name == UNICODE_ROOT and not str(root).isascii() and " " in root.name
    # Written there by cv2.VideoWriter and read back by cv2.VideoCapture (the tests above), and here directly.
    info = probe(root / by_kind(manifest, "portrait"))
    assert info["opened"] and info["decoded"] == 60


def test_the_ground_truth_matches_the_people_in_each_video(tree):
    root, manifest, _ = tree
    annotations = pd.read_parquet(root / "annotations.parquet")
    people = annotations.groupby("video_id")["person"].nunique()

    def video_id(kind: str) -> str:
        return Path(by_kind(manifest, kind)).name.removesuffix("_uncomp.avi")

    assert people[video_id("two_people")] == 2
    assert video_id("no_person") not in people
    assert manifest[by_kind(manifest, "two_people")]["people"] == 2
    assert manifest[by_kind(manifest, "no_person")]["people"] == 0
    hd = annotations[annotations["video_id"] == video_id("hd_1080p")]
    assert hd["x2"].max() <= 1920 and hd["y2"].max() <= 1080 and hd["x1"].min() >= 240  # inside the pillarbox
    for vid, rows in annotations.groupby("video_id"):
        rel = next(r for r in manifest if Path(r).name == f"{vid}_uncomp.avi")
        assert rows["frame_idx"].max() < manifest[rel]["frames"], vid
        assert (rows["x2"] <= manifest[rel]["size"][0]).all() and (
            rows["y2"] <= manifest[rel]["size"][1]
        ).all()


def test_the_indexer_indexes_the_kth_names_and_lists_the_unknown_action(tree):
    root, manifest, _ = tree
    index, summary = index_kth(root, "paper")
    kth_named = {rel for rel, entry in manifest.items() if not entry["kind"].startswith("unknown_action")}
    assert set(index["path"]) == kth_named
    unknown = sorted(UNKNOWN_ACTION_FILES.values())
    assert summary["unrecognised_files"] == unknown and summary["unrecognised"] == 2
    reasons = summary["unrecognised_reasons"]
    assert reasons[UNKNOWN_ACTION_FILES["unknown_action"]] == (
        "names the action 'kicking' but lies in the folder 'boxing'"
    )
    assert reasons[UNKNOWN_ACTION_FILES["unknown_action_folder"]].startswith(
        "folder 'kicking' is not a KTH action"
    )
    assert not any(p.startswith("kicking/") for p in index["path"])
    for part in ("train", "val", "test"):
        assert set(index.loc[index["split"] == part, "label"]) == {"boxing", "walking"}, part
    odd_parts = {index.loc[index["path"] == kth_path(*ODD[kind]), "split"].item() for kind in ODD}
    assert odd_parts == {"train", "test"}
    listed = dict(zip(index["path"], index["sequences"].map(len), strict=True))
    for rel, entry in manifest.items():
        if rel in listed:
            assert (listed[rel] > 0) == entry["listed"], rel
    assert {manifest[kth_path(*ODD[kind])]["listed"] for kind in LISTED} == {True}
    assert summary["listed_missing_on_disk"] == 0


def test_build_corpus_alone_with_given_good_videos(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)
    rel = kth_path(20, "handwaving", "d1")
    manifest = build_corpus(tmp_path / "odd", good={rel: frames})
    assert manifest[rel]["kind"] == "good" and manifest[rel]["listed"] and manifest[rel]["size"] == [64, 48]
    index, summary = index_kth(tmp_path / "odd", "paper")
    assert len(index) == len(ODD) + 1
    assert index.loc[index["path"] == rel, "sequences"].item() == [[1, 12]]
    with pytest.raises(ValueError, match="collides"):
        build_corpus(tmp_path / "clash", good={kth_path(*ODD["zero_byte"]): frames})
    with pytest.raises(ValueError, match="not named"):
        build_corpus(tmp_path / "bad", good={"boxing/clip.avi": frames})
