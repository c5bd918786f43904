import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import vfr_frame_numbers, write_test_video, write_vfr
from transmodal.data.frames import FrameStore, decode_video, extract_frames, sample_numbers, sample_step
from transmodal.features.clips import time_samples
from transmodal.stage import StageInputError


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
    assert summary["videos_ok"] == 4  # a, b, short and the truncated cut
    # frame table: one row per kept frame with size and fps
    table = store.frames[store.frames["video_id"] == "a"]
    assert len(table) == 20 and set(table["width"]) == {64} and set(table["height"]) == {48}
    assert np.allclose(table["fps"], 25.0)


def test_bad_videos_are_skipped_with_reasons_and_counted(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    reasons = {item["video_id"]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == {"zero", "text", "absent"}
    assert reasons["zero"] == "zero-byte file"
    assert reasons["absent"] == "no such file"
    assert reasons["text"].startswith("not a readable video")
    assert summary["videos_skipped"] == 3
    videos = FrameStore(tmp_path / "frames").videos.set_index("video_id")
    assert (videos.loc[list(reasons), "status"] == "skipped").all()


def test_a_folder_named_like_a_video_and_a_broken_link_are_named_as_such(video_tree, tmp_path):
    """Each needs its own fix (a stray folder, a moved dataset), so neither reads "no such file"."""
    root, _ = video_tree
    (root / "folder.avi").mkdir()
    (root / "link.avi").symlink_to(root / "moved.avi")
    (root / "good_link.avi").symlink_to(root / "a.avi")
    index = pd.DataFrame(
        {"video_id": ["folder", "link", "good_link"], "path": ["folder.avi", "link.avi", "good_link.avi"]}
    )
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    reasons = {item["video_id"]: item["reason"] for item in summary["skipped"]}
    assert reasons == {
        "folder": "is a folder, not a video file",
        "link": f"broken symbolic link (to {root / 'moved.avi'})",
    }
    store = FrameStore(tmp_path / "frames")
    assert store.read("good_link")[0].tolist() == list(range(0, 40, 2))
    assert (store.videos.set_index("video_id").loc[list(reasons), "status"] == "skipped").all()


class _BrokenStreams:
    """cv2.VideoCapture where ``b.avi`` doubles its frame size from frame 4 on and ``short.avi`` makes OpenCV
    raise at frame 6 (streams seen in the wild); every other file decodes as it is."""

    def __init__(self):
        self.open = cv2.VideoCapture

    def __call__(self, path, *args):
        capture, name, frames = self.open(path, *args), Path(path).name, [0]

        class Capture:
            def __getattr__(self, attr):
                return getattr(capture, attr)

            def grab(self):
                if name == "short.avi" and frames[0] == 6:
                    raise cv2.error("OpenCV(4.x) error: (-2:Unspecified error) broken stream")
                frames[0] += 1
                return capture.grab()

            def retrieve(self):
                ok, frame = capture.retrieve()
                if ok and name == "b.avi" and frames[0] > 4:
                    frame = cv2.resize(frame, (2 * frame.shape[1], 2 * frame.shape[0]))
                return ok, frame

        return Capture()


def test_a_stream_that_changes_size_or_breaks_opencv_is_skipped_with_its_reason(
    video_tree, tmp_path, monkeypatch
):
    # before, the exception ended the frames stage, and its resume met it again
    from transmodal.data import frames as frames_module

    root, index = video_tree
    monkeypatch.setattr(frames_module.cv2, "VideoCapture", _BrokenStreams())
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    reasons = {item["video_id"]: item["reason"] for item in summary["skipped"]}
    assert reasons["b"] == "the frame size changes at frame 4 (64x48, then 128x96)"
    assert (
        reasons["short"]
        == "OpenCV failed at frame 6: OpenCV(4.x) error: (-2:Unspecified error) broken stream"
    )
    assert summary["videos_skipped"] == 5 and "a" not in reasons  # with zero, text and absent


def test_truncated_video_keeps_the_frames_it_decoded_flagged_and_counted(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    store = FrameStore(tmp_path / "frames")
    cut = store.videos.set_index("video_id").loc["cut"]
    assert cut["status"] == "ok" and bool(cut["truncated"])
    assert 0 < cut["frames_decoded"] < cut["frames_reported"] == 40
    assert cut["reason"].startswith(f"truncated: decoded {cut['frames_decoded']} of the 40 frames the header")
    assert summary["videos_truncated"] == 1
    assert summary["flagged"] == [{"video_id": "cut", "reason": cut["reason"]}]
    frame_idx, frames = store.read("cut")
    decoded = _decode_all(root / "cut.avi")
    assert len(decoded) == cut["frames_decoded"]
    assert frame_idx.tolist() == list(range(0, len(decoded), 2))
    np.testing.assert_array_equal(frames, decoded[::2])


def test_short_video_is_kept_and_flagged(video_tree, tmp_path):
    root, index = video_tree
    summary = extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    store = FrameStore(tmp_path / "frames")
    videos = store.videos.set_index("video_id")
    assert bool(videos.loc["short", "short"]) and videos.loc["short", "frames_kept"] == 5
    assert not bool(videos.loc["a", "short"])
    assert summary["videos_short"] == 3  # short (5 kept), b (11) and the truncated cut are under 16
    assert store.read("short")[1].shape == (5, 48, 64, 3)


def test_shards_hold_several_videos(video_tree, tmp_path):
    root, index = video_tree
    extract_frames(index, root, tmp_path / "frames", stride=1, clip_length=16, videos_per_shard=2)
    # index rows [a, b] [short, zero] [text, cut] [absent], 2 per shard; the last has no decodable video
    shards = sorted(p.name for p in (tmp_path / "frames").glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    videos = FrameStore(tmp_path / "frames").videos.set_index("video_id")
    assert videos.loc[["a", "b", "short", "cut"], "shard"].tolist() == [0, 0, 1, 2]
    assert videos.loc[["a", "b", "short", "cut"], "row_group"].tolist() == [0, 1, 0, 0]


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


class _HeaderSays:
    """cv2.VideoCapture whose header announces ``count`` frames (0: none), whatever the file holds."""

    def __init__(self, count: int):
        self.count, self.open = count, cv2.VideoCapture

    def __call__(self, path, *args):
        capture, count = self.open(path, *args), self.count

        class Capture:
            def __getattr__(self, name):
                return getattr(capture, name)

            def get(self, prop):
                return count if prop == cv2.CAP_PROP_FRAME_COUNT else capture.get(prop)

        return Capture()


@pytest.mark.parametrize("count", [0, 5, 30, 10**12])  # none, too few, too many, absurd
def test_decoded_frames_do_not_depend_on_the_header_frame_count(tmp_path, monkeypatch, count):
    # the kept frames go straight into an array sized from the header (held once, never stacked from a list):
    # a missing, short, long or absurd count changes nothing but the note
    from transmodal.data import frames as frames_module

    path = tmp_path / "v.avi"
    written = write_test_video(path, 20)
    truth = decode_video(path, "v", stride=2)
    monkeypatch.setattr(frames_module.cv2, "VideoCapture", _HeaderSays(count))
    video = decode_video(path, "v", stride=2)
    assert video.frames_reported == count and video.frames.flags["C_CONTIGUOUS"]
    assert np.array_equal(video.frames, truth.frames) and video.frame_idx.tolist() == list(range(0, 20, 2))
    assert video.frames.shape == (10, *written.shape[1:])
    assert video.truncated == (count > 20)


def _write_at_fps(path, num_frames, fps, size=(32, 24)):
    """An MJPG .avi at ``fps`` whose frame n is filled with the value n (readable back after compression)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for n in range(num_frames):
        writer.write(np.full((size[1], size[0], 3), (n * 2) % 256, np.uint8))
    writer.release()


def test_sample_numbers_at_25_fps_are_every_stride_th_frame():
    for stride in (1, 2, 3):
        for frames in (1, 2, 95, 96, 97):
            assert sample_numbers(frames, sample_step(25.0, stride, 25.0)).tolist() == list(
                range(0, frames, stride)
            )
    assert sample_step(30.0, 2, None) == 2.0  # no reference rate: by frame count
    assert sample_step(0.0, 2, 25.0) == 2.0  # no usable header rate: by frame count
    assert sample_step(30.0, 2, 25.0) == pytest.approx(2.4)


@pytest.mark.parametrize("fps", [10.0, 25.0, 30.0, 50.0])
def test_other_frame_rates_are_resampled_by_time(tmp_path, fps):
    """Kept frames sample time every stride / 25 s: a clip of 16 samples spans 1.28 s at any rate."""
    path = tmp_path / "v.avi"
    _write_at_fps(path, int(fps * 3), fps)  # 3 s
    video = decode_video(path, "v", stride=2, reference_fps=25.0)
    assert video.fps == pytest.approx(fps) and video.reason == ""
    samples = sample_numbers(video.frames_decoded, video.step)
    assert abs(len(samples) - 3 / 0.08) <= 1  # one sample per 0.08 s whatever the rate
    times = samples / fps
    np.testing.assert_allclose(
        times, np.arange(len(samples)) * 0.08, atol=0.5 / fps + 1e-9
    )  # nearest in time
    assert np.unique(samples).tolist() == video.frame_idx.tolist()  # kept: the distinct samples
    if fps < 12.5:
        assert video.frame_idx.tolist() == list(range(video.frames_decoded))  # every frame, some twice
        assert len(samples) > len(video.frame_idx)
    index = pd.DataFrame({"video_id": ["v"], "path": ["v.avi"]})
    summary = extract_frames(index, tmp_path, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=1,
                             progress=False, reference_fps=25.0)  # fmt: skip
    assert summary["videos_resampled"] == (fps != 25.0)
    store = FrameStore(tmp_path / "frames")
    row = store.videos.iloc[0]
    assert row["samples"] == len(samples) and row["step"] == pytest.approx(2 * fps / 25)
    assert time_samples(store.videos, store.frames)["v"].tolist() == samples.tolist()


@pytest.mark.parametrize("fps", [10.0, 25.0, 30000 / 1001, 30.0, 50.0])
@pytest.mark.parametrize("fourcc", ["MJPG", "mp4v"])
def test_sampling_by_timestamp_keeps_the_same_frames_of_a_constant_rate_file(tmp_path, fps, fourcc):
    """predict samples by timestamp; on a constant-rate file that must be exactly the frames stage's choice."""
    path = tmp_path / ("v.avi" if fourcc == "MJPG" else "v.mp4")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (32, 24))
    for n in range(int(fps * 4)):
        writer.write(np.full((24, 32, 3), (n * 2) % 256, np.uint8))
    writer.release()
    by_number = decode_video(path, "v", stride=2, reference_fps=25.0)
    by_time = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    assert by_time.reason == by_number.reason == ""
    assert by_time.frame_idx.tolist() == by_number.frame_idx.tolist()
    assert (
        by_time.sample_frames().tolist() == sample_numbers(by_number.frames_decoded, by_number.step).tolist()
    )
    np.testing.assert_array_equal(by_time.frames, by_number.frames)


@pytest.mark.parametrize(
    "rates",
    [[(30, 60), (10, 60)], [(30, 30), (120, 60), (10, 40)]],
    ids=["30-then-10-fps", "30-120-10-fps"],
)
def test_a_variable_frame_rate_file_is_sampled_evenly_in_time(tmp_path, rates):
    """2 s at 30 fps, then 6 s at 10 fps (a phone in the dark): the header's average rate is 15 fps, so
    sampling by frame number takes steps of 0.053 s, then 0.16 s; by timestamp every 0.08 s. A burst at 120
    fps (frames closer than a quarter of the header's interval) changes nothing."""
    path = tmp_path / "phone.mp4"
    times = write_vfr(path, [1 / fps for fps, count in rates for _ in range(count)])
    duration = sum(count / fps for fps, count in rates)
    by_number = decode_video(path, "v", stride=2, reference_fps=25.0)
    video = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    assert video.fps == pytest.approx(len(times) / duration, rel=0.05)
    samples = video.sample_frames()
    wanted = np.arange(len(samples)) * 0.08
    assert len(samples) == pytest.approx(duration / 0.08, abs=2)
    nearest = np.abs(times[None, :] - wanted[:, None]).argmin(axis=1)
    assert np.abs(times[samples] - times[nearest]).max() < 1e-6  # each sample the frame nearest its time
    assert video.frame_idx.tolist() == np.unique(samples).tolist()
    assert vfr_frame_numbers(video.frames).tolist() == video.frame_idx.tolist()  # the frames kept are those
    assert (
        video.reason.startswith("variable frame rate: ")
        and "sampled by each frame's timestamp" in video.reason
    )
    by_number_times = times[by_number.sample_frames()]
    assert np.abs(by_number_times - np.arange(len(by_number_times)) * 0.08).max() > 0.5  # what it fixes


def _write_tick_webm(path: Path, frames: int, fps: int) -> np.ndarray:
    """A WebM whose header gives 1000 fps (the millisecond tick a browser's or a webcam's recording states
    when it states no rate), its frames ``fps`` apart; frame n coloured n * 4. The frames' times (s)."""
    import fractions

    import av

    tick = fractions.Fraction(1, 1000)
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tick
        for n in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), n * 4, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(n * 1000 / fps), tick
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return np.arange(frames) / fps


def test_a_header_giving_the_millisecond_tick_as_its_rate_is_no_rate(tmp_path):
    _tick_header_sampling(tmp_path)


def _tick_header_sampling(tmp_path):
    """2 s at 30 fps under a 1000 fps header: taken at its word, sampling by frame number kept 1 frame in 80
    (one frame of the 60) and the header's count (1968 frames) made the file look cut. The tick is no rate:
    one frame in ``stride`` is kept, said so; by timestamp the samples are 0.08 s apart."""
    path = tmp_path / "browser.webm"
    times = _write_tick_webm(path, 60, 30)
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == 1000.0  # what OpenCV reads from such a file
    capture.release()
    video = decode_video(path, "v", stride=2, reference_fps=25.0)
    assert video.frame_idx.tolist() == list(range(0, 60, 2)) and video.step == 2.0
    assert not video.truncated and video.frames_reported == 0
    assert "no usable frame rate in the header (1000); kept one frame in 2" in video.reason
    timed = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    wanted = np.arange(25) * 0.08  # 2 s in samples of 0.08 s
    assert len(timed.sample_frames()) == pytest.approx(len(wanted), abs=1)
    got = times[timed.sample_frames()]
    assert np.abs(got - wanted[: len(got)]).max() <= 0.5 / 30 + 1e-6  # each the frame nearest its time
    assert "no usable frame rate" not in timed.reason
    return path, timed


def test_a_header_giving_a_finer_tick_as_its_rate_is_sampled_by_timestamp_too(tmp_path, monkeypatch):
    """An MPEG-TS header's 90000 fps is a tick as well: by timestamp, the file is sampled as under a 1000 fps
    header (its timestamps read in milliseconds), not one frame in ``stride`` (a 60 fps phone file at 30 Hz
    then, clips of half the time), and the note names the header's rate."""
    from transmodal.data import frames

    path, ticked = _tick_header_sampling(tmp_path)
    opened = frames.cv2.VideoCapture

    class HeaderRate:
        def __init__(self, *args):
            self.capture = opened(*args)

        def __getattr__(self, name):
            return getattr(self.capture, name)

        def get(self, prop):
            return 90000.0 if prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

    monkeypatch.setattr(frames.cv2, "VideoCapture", HeaderRate)
    timed = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    np.testing.assert_array_equal(timed.sample_frames(), ticked.sample_frames())
    assert "no usable frame rate" not in timed.reason and "header's 90000 fps grid" in timed.reason


@pytest.mark.parametrize("header", [1000.0, 90000.0])
def test_a_tick_header_without_usable_timestamps_keeps_a_frame_a_reference_frame_apart(
    tmp_path, monkeypatch, header
):
    """Under a tick the timestamps are read in milliseconds, and a frame without a usable one (a raw stream
    reads 0 throughout) went one millisecond after the one before: 60 frames spanned 60 ms, one sample. It
    goes a frame at the reference rate on (40 ms at 25 fps), so the file is sampled as if at that rate."""
    from transmodal.data import frames

    path = tmp_path / "browser.webm"
    _write_tick_webm(path, 60, 30)
    stamps = _Timestamps([0.0] * 60)

    def opened(*args):
        capture = stamps(*args)
        real = capture.get
        capture.get = lambda prop: header if prop == cv2.CAP_PROP_FPS else real(prop)
        return capture

    monkeypatch.setattr(frames.cv2, "VideoCapture", opened)
    timed = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    assert timed.sample_frames().tolist() == list(range(0, 60, 2))  # as one frame in stride
    assert "59 frame(s) repeat the timestamp before" in timed.reason


class _Timestamps:
    """cv2.VideoCapture whose CAP_PROP_POS_MSEC after the n-th grab is ``stamps[n]``."""

    def __init__(self, stamps):
        self.stamps, self.open = stamps, cv2.VideoCapture

    def __call__(self, path, *args):
        capture, stamps, grabbed = self.open(path, *args), self.stamps, [-1]

        class Capture:
            def __getattr__(self, name):
                return getattr(capture, name)

            def grab(self):
                grabbed[0] += 1
                return capture.grab()

            def get(self, prop):
                return stamps[grabbed[0]] if prop == cv2.CAP_PROP_POS_MSEC else capture.get(prop)

        return Capture()


def _stamps_with(change):
    stamps = [40.0 * n for n in range(60)]  # 25 fps
    change(stamps)
    return stamps


@pytest.mark.parametrize(
    ("stamps", "said"),
    [
        (_stamps_with(lambda t: t.__setitem__(10, 1e8)), "2 timestamp jump(s) backwards or of more than 2 s"),
        (_stamps_with(lambda t: t.__setitem__(10, 1e15)), "2 timestamp jump(s)"),  # garbage
        (_stamps_with(lambda t: t.__setitem__(10, t[9])), "1 frame(s) repeat the timestamp before"),
        (_stamps_with(lambda t: t.__setitem__(10, float("nan"))), "1 frame(s) repeat the timestamp before"),
        (
            _stamps_with(lambda t: t.__setitem__(slice(30, 60), [3.6e6 + 40.0 * n for n in range(30)])),
            "1 timestamp jump",
        ),
        ([0.0] * 60, "59 frame(s) repeat the timestamp before (or have none)"),  # a raw stream
        ([float("nan")] * 60, "59 frame(s) repeat"),
    ],
    ids=["outlier", "garbage", "repeated", "nan", "one-hour-pause", "all-zero", "all-nan"],
)
def test_timestamps_that_cannot_be_a_frame_rate_cost_one_frame_at_most(tmp_path, monkeypatch, stamps, said):
    """A 25 fps file whose timestamps have one outlier, a garbage value, a repeat, a one-hour pause (a
    motion-triggered recording), or none: each bad value is taken as one frame, so the samples are those of
    the frame numbers, never thousands of copies of one frame or the rest of the video lost."""
    from transmodal.data import frames as frames_module

    path = tmp_path / "v.avi"
    _write_at_fps(path, 60, 25.0)
    monkeypatch.setattr(frames_module.cv2, "VideoCapture", _Timestamps(stamps))
    video = decode_video(path, "v", stride=2, reference_fps=25.0, by_time=True)
    assert video.sample_frames().tolist() == list(range(0, 60, 2))
    assert video.frame_idx.tolist() == list(range(0, 60, 2))
    assert said in video.reason and "variable frame rate" not in video.reason


def test_an_interrupted_run_resumes_from_its_finished_shards(video_tree, tmp_path, monkeypatch):
    """Shards finished before the interruption are not decoded again, and the output is the same bytes."""
    import transmodal.data.frames as frames_module

    root, index = video_tree
    extract_frames(
        index, root, tmp_path / "clean", stride=2, clip_length=16, videos_per_shard=2, progress=False
    )
    real_write = frames_module._write_video
    calls = []

    def interrupt_at_the_second_shard(writer, video, pixels):
        calls.append(video.video_id)
        if video.video_id == "short":  # the first video of shard 1 (a and b are shard 0)
            raise KeyboardInterrupt
        real_write(writer, video, pixels)

    monkeypatch.setattr(frames_module, "_write_video", interrupt_at_the_second_shard)
    out = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt):
        extract_frames(index, root, out, stride=2, clip_length=16, videos_per_shard=2, progress=False)
    assert not out.exists()  # nothing that looks complete
    partial = list((tmp_path / ".partial" / "frames").iterdir())
    assert len(partial) == 1
    assert sorted(p.name for p in partial[0].iterdir()) == [
        "shard-00000.parquet",
        "shard-00000.videos.parquet",
    ]

    assert calls == ["a", "b", "short"]
    monkeypatch.setattr(frames_module, "_write_video", real_write)
    decoded = []
    real_decode = frames_module.decode_video
    monkeypatch.setattr(
        frames_module,
        "decode_video",
        lambda path, vid, *a, **k: decoded.append(vid) or real_decode(path, vid, *a, **k),
    )
    extract_frames(index, root, out, stride=2, clip_length=16, videos_per_shard=2, progress=False)
    assert decoded == ["short", "zero", "text", "cut", "absent"]  # a and b (shard 0) were not decoded again
    for path in sorted((tmp_path / "clean").iterdir()):
        assert path.read_bytes() == (out / path.name).read_bytes(), path.name
    assert not (tmp_path / ".partial").exists()  # removed once the output is complete


def test_finished_shards_of_other_params_or_inputs_are_not_reused(video_tree, tmp_path, monkeypatch):
    import transmodal.data.frames as frames_module

    root, index = video_tree
    monkeypatch.setattr(frames_module, "_write_video", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    monkeypatch.undo()
    first = list((tmp_path / ".partial" / "frames").iterdir())
    write_test_video(root / "a.avi", 30, seed=9)  # an input changed
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(
            frames_module, "_write_video", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
        )
        extract_frames(index, root, tmp_path / "frames", stride=2, clip_length=16, videos_per_shard=2)
    second = list((tmp_path / ".partial" / "frames").iterdir())
    assert len(second) == 1 and second != first  # the old parts were removed, not reused


def test_source_store_reads_the_same_frames_from_the_videos_and_holds_no_pixels(video_tree, tmp_path):
    root, index = video_tree
    kept = extract_frames(index, root, tmp_path / "pixels", stride=2, clip_length=16, videos_per_shard=2)
    summary = extract_frames(
        index, root, tmp_path / "source", stride=2, clip_length=16, videos_per_shard=2, store="source"
    )
    assert not list((tmp_path / "source").glob("shard-*"))
    assert {p.name for p in (tmp_path / "source").iterdir()} == {
        "videos.parquet", "frames.parquet", "sources.parquet"
    }  # fmt: skip
    # the tables are those of the pixel store, byte for byte
    for name in ("videos.parquet", "frames.parquet"):
        assert (tmp_path / "source" / name).read_bytes() == (tmp_path / "pixels" / name).read_bytes()
    assert summary.pop("store") == "source" and kept.pop("store") == "pixels"
    assert summary == kept
    pixels, source = FrameStore(tmp_path / "pixels"), FrameStore(tmp_path / "source")
    assert source.video_ids == pixels.video_ids == ["a", "b", "short", "cut"]
    for video_id in pixels.video_ids:
        for a, b in zip(pixels.read(video_id), source.read(video_id), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    # a source that changed after the frames stage is an error naming the file and what to re-run
    write_test_video(root / "a.avi", 30, seed=9)
    with pytest.raises(StageInputError, match=r"a\.avi.*changed.*dvc repro frames"):
        source.read("a")
    (root / "b.avi").unlink()
    with pytest.raises(StageInputError, match=r"b\.avi.*missing"):
        source.read("b")
    data = bytearray((root / "short.avi").read_bytes())  # same size, one byte of the pixels changed
    data[len(data) // 2] ^= 0xFF
    (root / "short.avi").write_bytes(bytes(data))
    with pytest.raises(StageInputError, match=r"short\.avi.*changed"):
        source.read("short")


def test_a_shard_does_not_hold_its_videos_frames(tmp_path):
    """Each video goes into its shard as it is decoded and compressed: with 8 videos to a shard the stage
    holds about one video's raw frames, not eight (a shard of 64 phone videos would not fit in memory)."""
    import tracemalloc

    root = tmp_path / "videos"
    ids = [f"v{i}" for i in range(8)]
    for number, video_id in enumerate(ids):
        write_test_video(root / f"{video_id}.avi", 30, size=(320, 240), seed=number)
    index = pd.DataFrame({"video_id": ids, "path": [f"{i}.avi" for i in ids]})
    raw = 30 * 240 * 320 * 3  # one video's kept frames at stride 1
    peaks = {}
    for per_shard in (1, 8):
        tracemalloc.start()  # numpy's arrays are traced (Arrow's compressed buffers are not)
        try:
            extract_frames(
                index, root, tmp_path / f"out{per_shard}", stride=1, clip_length=16,
                videos_per_shard=per_shard, progress=False, workers=1,
            )  # fmt: skip
            peaks[per_shard] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[8] < 2.5 * raw, (peaks, raw)
    assert peaks[8] < 1.25 * peaks[1], peaks
    for name in ("shard-00000.parquet", "videos.parquet", "frames.parquet"):
        assert (tmp_path / "out8" / name).is_file()


def test_a_decode_worker_holds_one_chunk_of_raw_frames_not_the_video(tmp_path, monkeypatch):
    """The frames stage compresses a video's kept frames a chunk at a time as they are decoded: a worker held
    every raw frame of its video first (20 GB for ten minutes of 720p, one worker per core). Here a chunk is
    3 frames of 320 x 240, the video 30 frames; the stored pixels are those of the whole-video decode."""
    import tracemalloc

    import pyarrow as pa

    import transmodal.data.frames as frames_module

    write_test_video(tmp_path / "long.avi", 30, size=(320, 240))
    frame_bytes = 240 * 320 * 3
    monkeypatch.setattr(frames_module, "CHUNK_BYTES", 3 * frame_bytes)
    tracemalloc.start()
    try:
        video = decode_video(tmp_path / "long.avi", "long", 1, pixels=frames_module.PIXEL_CODEC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * frame_bytes, peak / frame_bytes  # the whole video: 30 frames
    assert len(video.pixels) == 10 and video.frames.shape == (30, 240, 320, 3)
    whole = decode_video(tmp_path / "long.avi", "long", 1)
    codec = pa.Codec(frames_module.PIXEL_CODEC)
    stored = b"".join(codec.decompress(chunk, decompressed_size=3 * frame_bytes) for chunk in video.pixels)
    assert stored == whole.frames.tobytes()
    np.testing.assert_array_equal(video.frame_idx, whole.frame_idx)
    dropped = decode_video(tmp_path / "long.avi", "long", 1, pixels="none")
    assert dropped.pixels is None and dropped.frames.shape == (30, 240, 320, 3)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((200, 90), 64, (64, 29)),  # 28.8 rounds up
        ((90, 200), 64, (29, 64)),  # portrait
        ((150, 90), 100, (100, 60)),
        ((64, 48), 64, (64, 48)),  # not larger: kept as it is
        ((64, 48), None, (64, 48)),
    ],
)
def test_decoded_frames_have_the_size_predict_budgets_for(tmp_path, size, max_side, expected):
    """predict's memory check counts a frame's bytes from frames.shrunk_size before decoding: the decoder
    must give exactly that size (a review found the two rounding differently let a suggestion not fit)."""
    from transmodal.data.frames import shrunk_size

    path = tmp_path / "v.avi"
    write_test_video(path, 4, size)
    for by_time in (False, True):
        video = decode_video(path, "v", 1, max_side=max_side, by_time=by_time)
        assert video.frames.shape[1:3] == expected[::-1]
    assert shrunk_size(*size, max_side) == expected


def _garble_packet(path: Path, index: int) -> Path:
    """A copy of ``path`` whose video packet ``index`` (decode order) is overwritten with garbage."""
    import av

    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        pos, size = packets[index].pos, packets[index].size
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = bytes((i * 97 + 13) % 256 for i in range(size))
    damaged = path.with_name(f"damaged-{path.name}")
    damaged.write_bytes(data)
    return damaged


def test_a_packet_that_does_not_decode_is_skipped_and_the_stream_goes_on(tmp_path):
    """OpenCV's grab() is False on a corrupt packet as at the end: the frames after it were lost (45 of 90
    kept). Now they are decoded and numbered as decoded; by timestamp (predict) each time sample still gets
    the frame nearest its time, checked against the number painted into the frame, the file reaches its
    header's count by its timestamps (not truncated, with either sampling), and the frames past the gap are
    no sign of a variable rate."""
    clean = tmp_path / "v.mp4"
    write_vfr(clean, [1 / 30] * 90)
    damaged = _garble_packet(clean, 45)  # a P-frame after the keyframe at 44
    said = (
        "grab failed 1 time(s) from frame 45 on and the stream went on (packets that do not decode, or a "
        "long run of other streams' packets); the frames after are numbered as decoded"
    )

    video = decode_video(damaged, "v", 1)  # the timestamps reach the header's count: skipped, not cut
    assert video.frames_decoded == 89 and video.frame_idx.tolist() == list(range(89)) and not video.truncated
    assert video.reason == said
    timed = decode_video(damaged, "v", 1, reference_fps=30.0, by_time=True)
    assert timed.frame_idx.tolist() == list(range(89)) and not timed.truncated
    assert timed.reason == f"{said}, sampled by their timestamps"
    painted = vfr_frame_numbers(timed.frames)[np.searchsorted(timed.frame_idx, timed.sample_frames())]
    expected = np.arange(90)
    expected[45] = 46  # the lost frame's sample: the nearest frame after it (a tie goes to the later)
    assert painted.tolist() == expected.tolist()
    assert decode_video(clean, "v", 1).reason == ""  # a whole file: nothing skipped, nothing said


def test_a_matroska_count_from_its_duration_is_not_a_cut_when_the_rate_varies(tmp_path):
    """Matroska stores no frame count: OpenCV gives the duration times the first rate (118 for 1.5 s at 30
    fps then 2.5 s at 10 fps, 70 frames). By timestamp the frames reach the end, so it is not truncated,
    with frames.by_time or without (without, it was: the count alone was compared); a Matroska file cut in
    half still is, either way."""
    path = tmp_path / "phone.mkv"
    write_vfr(path, [1 / 30] * 45 + [1 / 10] * 25)
    video = decode_video(path, "v", 2, reference_fps=25.0, by_time=True)
    assert (video.frames_reported, video.frames_decoded) == (118, 70) and not video.truncated
    assert "truncated" not in video.reason and video.reason.startswith("variable frame rate: ")
    video = decode_video(path, "v", 2, reference_fps=25.0)  # sampled by number: its timestamps say the same
    assert (video.frames_reported, video.frames_decoded) == (118, 70) and not video.truncated
    assert video.reason == ""

    long_last = tmp_path / "long-last.mp4"  # its header rate is 90 frames over 4.97 s: every frame decodes
    write_vfr(long_last, [1 / 30] * 89 + [2.0])
    video = decode_video(long_last, "v", 2, reference_fps=25.0, by_time=True)
    assert video.frames_decoded == video.frames_reported == 90 and not video.truncated

    whole = tmp_path / "cfr.mkv"
    write_vfr(whole, [1 / 30] * 90)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for by_time in (True, False):
        video = decode_video(cut, "v", 2, reference_fps=25.0, by_time=by_time)
        assert video.truncated and 0 < video.frames_decoded < 90 and "truncated: decoded" in video.reason


def test_non_square_pixels_are_stretched_for_predict_and_kept_for_the_frames_stage(tmp_path):
    """An anamorphic stream (stored 96 x 64, pixel aspect 4:3, shown 128 x 64): predict's frames are shown
    as a player shows them, a stored 32 x 32 square 43 px wide, before --max-side applies; the frames
    stage keeps the stored pixels."""
    import fractions

    import av

    from transmodal.predict import decode_args, read_header

    def shown(max_side):  # as predict decodes it (its VideoStream takes the same arguments)
        return decode_video(video_id="v", **decode_args(path, 2, max_side, 25.0))

    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.sample_aspect_ratio = fractions.Fraction(4, 3)
        image = np.zeros((64, 96, 3), np.uint8)
        image[16:48, 32:64] = 255
        for _ in range(10):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())

    video, (source, _, _) = shown(1280), read_header(path)
    assert source == (128, 64) and video.frames.shape[1:3] == (64, 128)
    assert "pixels not square (sample aspect ratio 1.333): frames stretched to 128x64" in video.reason
    ys, xs = np.nonzero(video.frames[0, :, :, 0] > 128)
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) in {(42, 32), (43, 32), (44, 32)}
    assert shown(64).frames.shape[1:3] == (32, 64)  # then shrunk to --max-side
    stored = decode_video(path, "v", 2, reference_fps=25.0)
    assert stored.frames.shape[1:3] == (64, 96) and stored.reason == ""


@pytest.mark.parametrize(
    ("sar", "rotation", "auto", "aspect"),
    [
        ((4, 3), 0, 1, 4 / 3),
        ((4, 3), 90, 1, 3 / 4),  # a phone's rotation, turned by OpenCV: the stored axes are swapped
        ((4, 3), 270, 1, 3 / 4),
        ((4, 3), 180, 1, 4 / 3),
        ((4, 3), 90, 0, 4 / 3),  # not turned: the stored axes
        ((0, 0), 90, 1, 1.0),  # unset
        ((-1, -1), 0, 0, 1.0),  # a backend without the property
    ],
)
def test_the_pixel_aspect_is_that_of_the_frames_as_turned(sar, rotation, auto, aspect):
    from transmodal.data.frames import sample_aspect

    props = {
        cv2.CAP_PROP_SAR_NUM: sar[0],
        cv2.CAP_PROP_SAR_DEN: sar[1],
        cv2.CAP_PROP_ORIENTATION_META: rotation,
        cv2.CAP_PROP_ORIENTATION_AUTO: auto,
    }
    capture = type("Capture", (), {"get": lambda self, prop: float(props[prop])})()
    assert sample_aspect(capture) == pytest.approx(aspect)


def test_a_damaged_file_decodes_to_the_same_pixels_every_time(tmp_path, monkeypatch):
    """FFmpeg's threaded decoders conceal a damaged packet differently from run to run (seen: two pixel sums
    in eight runs of an MPEG-4 file with a packet garbled from its 64th byte, under load; not every run
    shows it), so decode_video asks OpenCV for one decoding thread, and the frames stage (and its
    ``frames.store: source`` check) is reproducible."""
    clean = tmp_path / "v.mp4"
    write_vfr(clean, [1 / 30] * 90, size=(320, 240))
    damaged = _garble_packet(clean, 5)
    first = decode_video(damaged, "v", 1)
    for _ in range(5):
        again = decode_video(damaged, "v", 1)
        assert again.frame_idx.tolist() == first.frame_idx.tolist()
        assert np.array_equal(again.frames, first.frames)

    opened, open_capture = [], cv2.VideoCapture

    def capture(*args):
        opened.append(args[1:])
        return open_capture(*args)

    monkeypatch.setattr("transmodal.data.frames.cv2.VideoCapture", capture)
    decode_video(damaged, "v", 1)
    assert opened == [(cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])]


def test_the_frames_stage_samples_by_timestamp_with_by_time(video_tree, tmp_path):
    """frames.by_time: a phone's variable-rate video (2 s at 30 fps, then 6 s at 10 fps) is sampled every
    0.08 s of its timestamps, and the clips are planned on those samples (``sample_idx``); a constant-rate
    file keeps the same frames, and the default leaves the tables as they were (no ``sample_idx``). The
    source store decodes it the same way."""
    from transmodal.features.clips import time_samples

    root, index = video_tree
    times = write_vfr(root / "phone.mp4", [1 / 30] * 60 + [1 / 10] * 60)
    index = pd.concat(
        [index, pd.DataFrame({"video_id": ["phone"], "path": ["phone.mp4"]})], ignore_index=True
    )
    common = dict(stride=2, clip_length=16, videos_per_shard=2, reference_fps=25.0)
    plain = extract_frames(index, root, tmp_path / "plain", **common)
    timed = extract_frames(index, root, tmp_path / "timed", **common, by_time=True)
    source = extract_frames(index, root, tmp_path / "source", **common, by_time=True, store="source")
    assert timed["by_time"] and "by_time" not in plain and timed["videos_ok"] == plain["videos_ok"]
    plain_store, timed_store = FrameStore(tmp_path / "plain"), FrameStore(tmp_path / "timed")
    assert "sample_idx" not in plain_store.videos.columns and "sample_idx" in timed_store.videos.columns
    by_number = time_samples(plain_store.videos, plain_store.frames)
    by_time = time_samples(timed_store.videos, timed_store.frames)
    for video_id in ("a", "b", "short"):  # constant-rate files: the same frames and samples
        assert by_time[video_id].tolist() == by_number[video_id].tolist()
        np.testing.assert_array_equal(timed_store.read(video_id)[1], plain_store.read(video_id)[1])
    expected = decode_video(root / "phone.mp4", "phone", 2, reference_fps=25.0, by_time=True).sample_frames()
    assert by_time["phone"].tolist() == expected.tolist()

    from transmodal.features.clips import make_clips
    from transmodal.params import ClipsConfig

    labelled = index.assign(label="x", label_idx=0, split="test", sequences=[[] for _ in range(len(index))])
    clips = make_clips(labelled, timed_store.videos, timed_store.frames, ClipsConfig(per_video_test=3))
    for frames in clips.loc[clips["video_id"] == "phone", "frame_idx"]:  # each clip 16 samples, 1.2 s apart
        assert 1.2 - 0.1 <= times[frames[-1]] - times[frames[0]] <= 1.2 + 0.1

    def late(samples):  # how far each sample's frame is from the sample's time, k x 0.08 s
        return np.abs(times[samples] - np.arange(len(samples)) * 0.08)

    assert late(by_time["phone"]).max() <= 0.05 + 1e-9  # within half a 10 fps frame of its time ...
    assert late(by_number["phone"]).max() > 0.5  # ... which by frame number it is not
    source_store = FrameStore(tmp_path / "source")
    assert source["by_time"] and bool(source_store.sources.loc["phone", "by_time"])
    from transmodal.params import FramesConfig, ParamError

    with pytest.raises(ParamError, match=r"frames.by_time is true but frames.reference_fps is null"):
        FramesConfig(by_time=True, reference_fps=None)  # nothing to match timestamps to
    none = extract_frames(index.iloc[:0], root, tmp_path / "none", **common, by_time=True)  # an empty index
    assert none["videos"] == 0 and "sample_idx" in FrameStore(tmp_path / "none").videos.columns
    for video_id in ("phone", "a"):
        for x, y in zip(source_store.read(video_id), timed_store.read(video_id), strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_video_over_one_chunk_is_stored_in_chunks_and_reads_back_whole(video_tree, tmp_path, monkeypatch):
    """Parquet refuses a value of 2 GiB or more: one compressed buffer per video stopped the stage at a minute
    or so of 1080p. The pixels go in chunks of CHUNK_BYTES raw bytes (here 3 frames of 64 x 48)."""
    import pyarrow.parquet as pq

    import transmodal.data.frames as frames_module

    root, index = video_tree
    whole = extract_frames(index, root, tmp_path / "whole", stride=2, clip_length=16, videos_per_shard=2)
    monkeypatch.setattr(frames_module, "CHUNK_BYTES", 3 * 64 * 48 * 3 + 5)
    chunked = extract_frames(index, root, tmp_path / "chunked", stride=2, clip_length=16, videos_per_shard=2)
    assert chunked == whole
    shard = pq.ParquetFile(tmp_path / "chunked" / "shard-00000.parquet").metadata
    # a video a row group, a chunk a row: a (20 frames) in 7, b (11) in 4
    assert [shard.row_group(g).num_rows for g in range(shard.num_row_groups)] == [7, 4]
    one, several = FrameStore(tmp_path / "whole"), FrameStore(tmp_path / "chunked")
    for video_id in one.video_ids:
        for left, right in zip(one.read(video_id), several.read(video_id), strict=True):
            np.testing.assert_array_equal(left, right)


def test_a_long_video_is_read_a_chunk_at_a_time(video_tree, tmp_path, monkeypatch):
    """Readers need not hold a long video whole: ``iter_chunks`` gives its stored chunks in order (together,
    ``read``'s frames), ``read(first, last)`` only the chunks that hold those frame numbers (a run of clips
    of a long video read all of it, once per run of 32 clips)."""
    import transmodal.data.frames as frames_module
    from transmodal.features.store import crop_video

    root, index = video_tree
    extract_frames(index, root, tmp_path / "whole", stride=2, clip_length=16, videos_per_shard=2)
    monkeypatch.setattr(frames_module, "CHUNK_BYTES", 3 * 64 * 48 * 3)
    extract_frames(index, root, tmp_path / "chunked", stride=2, clip_length=16, videos_per_shard=2)
    store = FrameStore(tmp_path / "chunked")
    # a run of clips is cropped from the chunks that hold its frames: the crops of the whole video's frames
    clip_frames, boxes = (
        [np.arange(14, 24, 2), np.arange(16, 26, 2)],
        np.array([[2, 3, 40, 30], [0, 0, 64, 48]]),
    )
    for size in (16, 24):
        np.testing.assert_array_equal(
            crop_video(store, "a", clip_frames, boxes, size),
            crop_video(FrameStore(tmp_path / "whole"), "a", clip_frames, boxes, size),
        )
    frame_idx, frames = store.read("a")  # frames 0, 2, ..., 38 in 7 chunks of 3 (the last of 2)
    chunks = list(store.iter_chunks("a"))
    assert [len(idx) for idx, _ in chunks] == [3] * 6 + [2]
    np.testing.assert_array_equal(np.concatenate([idx for idx, _ in chunks]), frame_idx)
    np.testing.assert_array_equal(np.concatenate([part for _, part in chunks]), frames)
    part_idx, part = store.read("a", 13, 20)  # chunks (12, 14, 16) and (18, 20, 22)
    assert part_idx.tolist() == [12, 14, 16, 18, 20, 22]
    np.testing.assert_array_equal(part, frames[6:12])
    assert store.read("a", 14, 14)[0].tolist() == [12, 14, 16]
    assert len(store.read("a", 100, 200)[0]) == 0


def test_reading_a_video_holds_one_chunk_not_the_row_group(tmp_path, monkeypatch):
    """Reading a row group holds every compressed chunk of the video at once (about 2.6 times their size,
    measured); the store streams the shard a row at a time. Measured in a fresh process by the peak of
    Arrow's memory pool: ten chunks of 4 MiB of noise stored, a few held."""
    import subprocess
    import sys

    import transmodal.data.frames as frames_module

    monkeypatch.setattr(frames_module, "CHUNK_BYTES", 4 * 2**20)
    write_test_video(tmp_path / "v.avi", 40, size=(640, 480))
    index = pd.DataFrame({"video_id": ["v"], "path": ["v.avi"]})
    extract_frames(index, tmp_path, tmp_path / "frames", stride=1, clip_length=16, videos_per_shard=1)
    script = (
        "import sys, pyarrow as pa\n"
        "from transmodal.data.frames import FrameStore\n"
        "frame_idx, frames = FrameStore(sys.argv[1]).read('v')\n"
        "print(len(frame_idx), pa.default_memory_pool().max_memory() / 2**22)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "frames")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
    ).stdout.split()  # fmt: skip
    assert out[0] == "40", out  # 4 frames of 640 x 480 to a chunk of 4 MiB: 10 chunks
    # measured 3.8: the chunk decompressed and about three copies of it compressed (the page, the value, the
    # batch); the video is 10 chunks raw and about as many compressed (read whole, 22.9)
    assert float(out[1]) < 5.0, out


def test_a_source_that_decodes_to_other_frame_numbers_is_refused(video_tree, tmp_path, monkeypatch):
    """Another OpenCV or FFmpeg build may decode the same file to the same count and size but other frames
    (a timestamp rounding, a damaged packet concealed): the re-decoded frame numbers must be the recorded
    ones, else pose and features would pair rows with other frames."""
    import transmodal.data.frames as frames_module

    root, index = video_tree
    extract_frames(
        index, root, tmp_path / "source", stride=2, clip_length=16, videos_per_shard=2, store="source"
    )
    store = FrameStore(tmp_path / "source")
    real = frames_module.decode_video

    def shifted(*args, **kwargs):
        video = real(*args, **kwargs)
        video.frame_idx = video.frame_idx + 1  # same count, same pixels' shape
        return video

    monkeypatch.setattr(frames_module, "decode_video", shifted)
    with pytest.raises(RuntimeError, match=r"a\.avi.*decodes to other frames than the frames stage recorded"):
        store.read("a")


def test_a_header_without_a_frame_count_is_said(tmp_path, monkeypatch):
    """A live or browser recording (WebM from MediaRecorder) states no count: a cut one decoded silently
    short. It cannot be checked, and the video's reason says so."""
    import transmodal.data.frames as frames_module

    path = tmp_path / "a.avi"
    write_test_video(path, 12, seed=1)
    real = frames_module.VideoStream.open

    def no_count(self):
        opened = real(self)
        self.reported, self.clock = 0, None  # as OpenCV reads such a header
        return opened

    monkeypatch.setattr(frames_module.VideoStream, "open", no_count)
    video = decode_video(path, "a", 2, reference_fps=25)
    assert not video.truncated and "the header gives no frame count" in video.reason


def test_frames_over_max_side_are_kept_shrunk_and_counted(video_tree, tmp_path):
    """frames.max_side: a 4K phone video kept at the source's size held 25 MB a frame in every stage that
    reads it; frames whose longer side exceeds it are kept shrunk to it (aspect kept), counted (not as an
    odd video: a phone dataset would be all odd), and the source store decodes them again at that size."""
    root, index = video_tree
    summary = extract_frames(
        index, root, tmp_path / "pixels", stride=2, clip_length=16, videos_per_shard=2, max_side=32
    )
    store = FrameStore(tmp_path / "pixels")
    frame_idx, frames = store.read("a")
    assert frames.shape == (20, 24, 32, 3)
    first = _decode_all(root / "a.avi")[0]  # RGB 48 x 64
    np.testing.assert_array_equal(frames[0], cv2.resize(first, (32, 24), interpolation=cv2.INTER_AREA))
    table = store.videos.set_index("video_id")
    assert (table.loc["a", "width"], table.loc["a", "height"]) == (32, 24)
    assert table.loc["a", "shrunk"] and table.loc["a", "reason"] == ""
    assert summary["max_side"] == 32 and summary["videos_shrunk"] == summary["videos_ok"] == 4
    source = tmp_path / "source"
    extract_frames(
        index, root, source, stride=2, clip_length=16, videos_per_shard=2, max_side=32, store="source"
    )
    np.testing.assert_array_equal(FrameStore(source).read("a")[1], frames)
    # at the source's size nothing is shrunk
    whole = extract_frames(
        index, root, tmp_path / "big", stride=2, clip_length=16, videos_per_shard=2, max_side=64
    )
    assert not FrameStore(tmp_path / "big").videos["shrunk"].any() and whole["videos_shrunk"] == 0


def test_a_video_of_more_than_2_gib_compressed_is_written(tmp_path):
    """Parquet refuses a value, and a data page, of 2 GiB or more: 9 chunks of 256 MiB (one buffer, written
    9 times: 2.25 GiB on disk, 256 MiB in memory) go into one row group as 9 rows."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    import transmodal.data.frames as frames_module

    height, width = 720, 1280
    step = frames_module.frames_per_chunk(height, width)
    chunk = pa.py_buffer(np.zeros(frames_module.CHUNK_BYTES, np.uint8))
    video = SimpleNamespace(
        video_id="long",
        frame_idx=np.arange(9 * step),
        frames=np.broadcast_to(np.uint8(0), (9 * step, height, width, 3)),
    )
    path = tmp_path / "shard-00000.parquet"
    try:
        with frames_module._shard_writer(path) as writer:
            frames_module._write_video(writer, video, [chunk] * 9)
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups == 1 and meta.row_group(0).num_rows == 9
        assert meta.row_group(0).total_byte_size > 2**31
    finally:
        path.unlink(missing_ok=True)
