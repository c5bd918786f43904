import json

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_test_video
from transmodal.data.frames import FrameStore, decode_video, extract_frames


def _decode_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


@pytest.fixture
def video_tree(tmp_path):
    root = tmp_path / "videos"
    write_test_video(root / "a.avi", 40, seed=1)
    write_test_video(root / "b.avi", 21, seed=2)
    write_test_video(root / "short.avi", 10, seed=3)
    (root / "zero.avi").write_bytes(b"")
    (root / "text.avi").write_text("this is not a video\n")
    write_test_video(root / "cut.avi", 40, seed=4)
    data = (root / "cut.avi").read_bytes()
    (root / "cut.avi").write_bytes(data[: len(data) // 2])
    ids = ["a", "b", "short", "zero", "text", "cut", "absent"]
    index = pd.DataFrame({"video_id": ids, "path": [f"{i}.avi" for i in ids]})
    return root, index


def test_stride_keeps_every_nth_frame_and_pixels_match_opencv(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    store = FrameStore(tmp_path / "frames")
    frame_idx, frames = store.read("a")
    assert frame_idx.tolist() == list(range(0, 40, 2))
    np.testing.assert_array_equal(frames, _decode_all(root / "a.avi")[::2])
    frame_idx, _ = store.read("b")
    assert frame_idx.tolist() == list(range(0, 21, 2))  # 11 frames: 0, 2, ..., 20
    assert summary["videos_ok"] == 3
    # frame table: one row per kept frame with size and fps
    table = store.frames[store.frames["video_id"] == "a"]
    assert len(table) == 20 and set(table["width"]) == {64} and set(table["height"]) == {48}
    assert np.allclose(table["fps"], 25.0)


def test_bad_videos_are_skipped_with_reasons_and_counted(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    reasons = {item["video_id"]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == {"zero", "text", "cut", "absent"}
    assert reasons["zero"] == "zero-byte file"
    assert reasons["absent"] == "file not found"
    assert "truncated" in reasons["cut"] or "no frame" in reasons["cut"]
    assert summary["videos_skipped"] == 4
    videos = FrameStore(tmp_path / "frames").videos.set_index("video_id")
    assert (videos.loc[list(reasons), "status"] == "skipped").all()
    assert videos.loc["cut", "reason"] == reasons["cut"]


def test_short_video_is_kept_and_flagged(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    store = FrameStore(tmp_path / "frames")
    videos = store.videos.set_index("video_id")
    assert bool(videos.loc["short", "short"]) and videos.loc["short", "frames_kept"] == 5
    assert not bool(videos.loc["a", "short"])
    assert summary["videos_short"] == 2  # short (5 kept) and b (11 kept) are under 16
    assert store.read("short")[1].shape == (5, 48, 64, 3)


def test_shards_hold_several_videos(video_tree, tmp_path):
    root, index = video_tree
    extract_frames(index, root, tmp_path / "frames", stride=1, clip_length=16, videos_per_shard=2)
    shards = sorted(p.name for p in (tmp_path / "frames").glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet", "shard-00001.parquet"]  # 3 good videos, 2 per shard


def test_two_runs_give_identical_outputs(video_tree, tmp_path):
    root, index = video_tree
    for name in ("one", "two"):
        extract_frames(
            index, root, tmp_path / name, stride=2, clip_length=16, videos_per_shard=2, progress=False
        )
    for path in sorted((tmp_path / "one").iterdir()):
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes(), path.name


def test_failed_run_leaves_no_output(video_tree, tmp_path, monkeypatch):
    root, index = video_tree
    import transmodal.data.frames as frames_module

    def explode(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(frames_module.pq.ParquetWriter, "write_table", explode)
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    assert not (tmp_path / "frames").exists()
    assert not list(tmp_path.glob(".frames*"))


def test_decode_video_reports_header_count(tmp_path):
    path = tmp_path / "v.avi"
    write_test_video(path, 12)
    video = decode_video(path, "v", stride=3)
    assert video.frames_decoded == 12 and video.frames_reported == 12
    assert video.frame_idx.tolist() == [0, 3, 6, 9]
    assert json.dumps(video.reason) == '""'
