"""``transmodal predict``: the whole chain on one video file, its outputs, and its bad inputs.

The model folder is a head with random weights saved the way the train stage saves one (config.json with
``pipeline``), over the tiny random checkpoints: these tests pin the wiring, not the accuracy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, write_vfr
from transmodal.cli import main
from transmodal.params import BackboneConfig, ModelConfig, SelectorConfig, TrainConfig
from transmodal.predict import Prediction, window_starts

CLASSES = ["boxing", "handclapping", "handwaving", "jogging", "running", "walking"]


def camera_like_video(path: Path, frames: int = 40, size: tuple[int, int] = (640, 480), fps: float = 25.0):
    """A real-camera-like clip: a textured backdrop and two rendered people walking in opposite directions
    (head, torso, swinging arms and legs), written as MJPG. Returns the first person's box per frame."""
    width, height = size
    rng = np.random.default_rng(0)
    backdrop = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3), dtype=np.uint8), (0, 0), 6)
    backdrop[int(0.75 * height) :] = (90, 110, 90)  # floor
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    scale = height / 480
    boxes = []
    for t in range(frames):
        image = backdrop.copy()
        for direction, colour, start in ((1, (40, 40, 200), 0.15), (-1, (200, 60, 40), 0.85)):
            cx = int(width * (start + direction * 0.5 * t / frames))
            feet = int(0.8 * height)
            hip, neck = feet - int(110 * scale), feet - int(200 * scale)
            swing = int(30 * scale * np.sin(t / 3))
            for dx in (swing, -swing):  # legs and arms
                cv2.line(image, (cx, hip), (cx + dx, feet), colour, max(2, int(12 * scale)))
                cv2.line(
                    image,
                    (cx, neck + int(10 * scale)),
                    (cx - dx, hip - int(10 * scale)),
                    colour,
                    max(2, int(9 * scale)),
                )
            cv2.line(image, (cx, neck), (cx, hip), colour, max(2, int(26 * scale)))
            cv2.circle(image, (cx, neck - int(22 * scale)), int(20 * scale), (170, 190, 230), -1)
            if direction == 1:
                boxes.append((cx - 40 * scale, neck - 42 * scale, cx + 40 * scale, feet))
        writer.write(image)
    writer.release()
    return np.asarray(boxes)


def plain_video(path: Path, frames: int, size: tuple[int, int], fourcc: str = "MJPG") -> None:
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.release()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_checkpoints) -> Path:
    """A trained-model folder as the train stage writes it (random head weights), on the tiny checkpoints."""
    return write_model_folder(tmp_path_factory.mktemp("model") / "transmodal", tiny_checkpoints)


def write_model_folder(out: Path, tiny_checkpoints: dict, keep: float = 1.0) -> Path:
    from transmodal.features.backbone import FrozenBackbone
    from transmodal.model import TransModal
    from transmodal.training.train import pipeline_record, save_checkpoint

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["detect"]["checkpoint"] = tiny_checkpoints["detector"]
    params["pose"]["checkpoint"] = tiny_checkpoints["pose"]
    cfg = BackboneConfig(checkpoint=tiny_checkpoints["backbone"], device="cpu", keep=keep)
    backbone = FrozenBackbone(cfg, 16)
    torch.manual_seed(0)
    model = TransModal(
        ModelConfig(),
        SelectorConfig(top_k_tokens=min(SelectorConfig().top_k_tokens, backbone.grid[1])),
        dim=backbone.hidden_size,
        num_classes=len(CLASSES),
        num_frames=16,
        tubelet_size=backbone.tubelet_size,
        patches_per_group=backbone.grid[1],
    )
    config = {
        "model": model.config_dict(),
        "classes": CLASSES,
        "train": asdict(TrainConfig()),
        "best_epoch": 1,
        "backbone": backbone.describe(),
        "pipeline": pipeline_record(params),
    }
    save_checkpoint(model.state_dict(), config, out)
    return out


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "two people.avi"
    camera_like_video(path)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``transmodal ARGV`` in process: (exit code, stdout, stderr)."""
    try:
        main([*argv, "--quiet"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_window_starts_cover_every_frame():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(16, 16, 8) == [0]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    assert window_starts(41, 16, 8) == [0, 8, 16, 24, 25]
    for n in (17, 33, 50):
        starts = window_starts(n, 16, 5)
        covered = set().union(*(range(s, s + 16) for s in starts))
        assert covered == set(range(n))
    from transmodal.predict import window_count

    for n in range(0, 80):
        for length, step in ((16, 8), (16, 5), (4, 7), (2, 1)):
            assert window_count(n, length, step) == len(window_starts(n, length, step))


def test_predict_on_a_camera_like_video(model_dir, camera_video, tmp_path, capsys):
    out_json, out_video = tmp_path / "p.json", tmp_path / "annotated.mp4"
    code, out, err = run(
        [
            "predict",
            str(camera_video),
            "--model",
            str(model_dir),
            "--json",
            str(out_json),
            "--out",
            str(out_video),
        ],
        capsys,
    )
    assert code == 0, err
    ranked = [line for line in out.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(ranked) == 5
    probabilities = [float(line.split()[-1]) for line in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert "detect.source: annotations" in out  # the recorded source is ground truth: said so

    summary = json.loads(out_json.read_text())
    assert summary["size"] == [640, 480] and summary["frames_kept"] == 20  # 40 frames at stride 2
    assert len(summary["video_top5"]) == 5
    assert sum(item["probability"] for item in summary["video_top5"]) <= 1 + 1e-6
    windows = summary["windows"]
    assert [w["start_frame"] for w in windows] == [0, 8]  # 20 kept frames, windows of 16, step 8 -> 0 and 4
    assert windows[-1]["end_frame"] == 38
    for window in windows:
        shown = [item["probability"] for item in window["top5"]]
        assert len(shown) == 5 and shown == sorted(shown, reverse=True) and sum(shown) <= 1 + 1e-6

    capture = cv2.VideoCapture(str(out_video))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 20


def test_writing_an_mp4_prints_nothing_of_the_encoders_it_tries(model_dir, camera_video, tmp_path, capfd):
    """OpenCV tries H.264 first; where only a hardware H.264 encoder is built in and none is present (as
    here), FFmpeg and OpenCV printed four error lines to the terminal before the MPEG-4 fallback wrote it."""
    from transmodal.predict import predict_video, write_annotated

    prediction, _ = predict_video(camera_video, model_dir, progress=False)
    capfd.readouterr()
    codec = write_annotated(prediction, tmp_path / "quiet.mp4")
    assert capfd.readouterr().err == ""
    assert codec in {"avc1 (H.264)", "mp4v (MPEG-4 Part 2)"} and (tmp_path / "quiet.mp4").stat().st_size > 0
    print("still printed after it", file=sys.stderr)  # stderr is back
    assert capfd.readouterr().err == "still printed after it\n"


def test_a_file_ffmpeg_cannot_open_is_one_line_on_the_terminal(tmp_path, capfd):
    """A text file named .mp4: FFmpeg printed "moov atom not found" above predict's own line."""
    from transmodal.predict import PredictError, read_header

    path = _write(tmp_path / "notes.mp4", b"not a video\n" * 100)
    capfd.readouterr()
    with pytest.raises(PredictError, match="not a video OpenCV can read"):
        read_header(path)
    assert capfd.readouterr().err == ""


def test_ctrl_c_in_predict_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C while predict writes: its unfinished temporary is removed, one line, no traceback, code 130."""
    import transmodal.predict
    from transmodal.io import atomic_path

    held = []

    def interrupted(args):
        held.append(atomic_path(tmp_path / "p.json"))
        held[0].__enter__()
        raise KeyboardInterrupt

    monkeypatch.setattr(transmodal.predict, "run_predict", interrupted)
    code, _, err = run(["predict", str(tmp_path / "v.mp4")], capsys)
    assert code == 130 and list(tmp_path.iterdir()) == []
    assert err == "transmodal predict: interrupted; nothing it was writing looks complete\n"


def test_silencing_stderr_runs_the_block_where_there_is_none(monkeypatch):
    """A process started with stderr closed (``2>&-``): no sys.stderr, no descriptor 2 to save."""
    from transmodal import predict

    def closed(fd):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(predict.sys, "stderr", None)
    monkeypatch.setattr(predict.os, "dup", closed)
    ran = []
    with predict._stderr_silenced():
        ran.append(True)
    assert ran == [True]


def test_the_video_level_result_is_the_mean_of_the_window_logits(model_dir, camera_video):
    from transmodal.predict import predict_video, softmax

    prediction, _ = predict_video(camera_video, model_dir, progress=False)
    expected = softmax(prediction.logits.mean(axis=0))
    np.testing.assert_allclose(prediction.video_probabilities(), expected, rtol=1e-5, atol=1e-7)
    again, _ = predict_video(camera_video, model_dir, progress=False)
    np.testing.assert_array_equal(again.logits, prediction.logits)  # deterministic


def test_a_video_without_anyone_uses_the_fallback_box_and_says_so(model_dir, tmp_path, capsys):
    path = tmp_path / "empty.avi"
    plain_video(path, 20, (160, 120))
    code, out, err = run(["predict", str(path), "--model", str(model_dir)], capsys)
    assert code == 0, err
    assert "no person was detected: the whole frame is the crop" in out


@pytest.mark.parametrize(
    ("frames", "size", "note"),
    [
        (1, (160, 120), "fewer than one clip"),  # one frame: one padded window
        (6, (120, 160), None),  # portrait
        (2, (3840, 2160), "frames shrunk from 3840x2160 to 1280x720"),  # 4K
    ],
)
def test_odd_videos_are_scored(model_dir, tmp_path, capsys, frames, size, note):
    path = tmp_path / "odd.avi"
    plain_video(path, frames, size)
    out_json = tmp_path / "odd.json"
    code, out, err = run(["predict", str(path), "--model", str(model_dir), "--json", str(out_json)], capsys)
    assert code == 0, err
    summary = json.loads(out_json.read_text())
    assert len(summary["windows"]) == 1 and summary["windows"][0]["padded"]
    if note:
        assert note in out


def _broken_model(model_dir: Path, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "config.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    edit(broken)
    return broken


def _edit_config(change):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, t, v: (t / "missing.mp4", d), "missing.mp4: no such file"),
        (lambda d, t, v: (_write(t / "text.mp4", b"not a video\n"), d), "not a video OpenCV can read"),
        (lambda d, t, v: (_write(t / "empty.mp4", b""), d), "zero-byte file"),
        (
            lambda d, t, v: ((t / "clip.mp4").mkdir() or t / "clip.mp4", d),
            "clip.mp4: is a folder, not a video file",
        ),
        (
            lambda d, t, v: ((t / "moved.mp4").symlink_to(t / "gone.mp4") or t / "moved.mp4", d),
            "moved.mp4: broken symbolic link",
        ),
        (lambda d, t, v: (v, t / "nowhere"), "no such folder"),
        (
            lambda d, t, v: (v, _broken_model(d, t, lambda f: (f / "config.json").unlink())),
            "config.json is missing",
        ),
        (
            lambda d, t, v: (
                v,
                _broken_model(d, t, _edit_config(lambda c: c.update(classes=c["classes"][:4]))),
            ),
            "names 4 classes but the head has 6 outputs",
        ),
        (
            lambda d, t, v: (v, _broken_model(d, t, _edit_config(lambda c: c.pop("pipeline")))),
            "has no pipeline: not a model folder the train or ablate stages wrote, or one an older version",
        ),
        (
            lambda d, t, v: (
                v,
                _broken_model(d, t, _edit_config(lambda c: c["model"].update(num_classes=4))),
            ),
            "names 6 classes but the head has 4 outputs",
        ),
        (
            lambda d, t, v: (v, _broken_model(d, t, lambda f: _write(f / "model.safetensors", b"\0" * 99))),
            "cannot load the model (SafetensorError: ",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(model_dir, camera_video, tmp_path, capsys, make, message):
    video, model = make(model_dir, tmp_path, camera_video)
    kept = _write(tmp_path / "out.json", b"{}")  # an output of an earlier run: still the input's error
    code, out, err = run(["predict", str(video), "--model", str(model), "--json", str(kept)], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_device_cuda_without_one_names_the_flag(model_dir, camera_video, capsys):
    code, out, err = run(
        ["predict", str(camera_video), "--model", str(model_dir), "--device", "cuda"], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("--device is cuda but no CUDA device is available; use --device auto or cpu")


@pytest.mark.parametrize(
    ("command", "outputs", "message"),
    [
        ("predict", lambda t, v: ["--out", str(v)], "--out {v} is the input video"),
        ("predict", lambda t, v: ["--json", str(v)], "--json {v} is the input video"),
        (
            "predict",
            lambda t, v: ["--json", str(t / "a.mp4"), "--out", str(t / "a.mp4")],
            "is also --json's file",
        ),
        (
            "predict",
            lambda t, v: ["--json", str(t / "a.json"), "--out", str(t / "a.mkv")],
            "use a .mp4 or .avi",
        ),
        ("predict", lambda t, v: ["--out", str(_folder(t / "d.mp4"))], "is a folder; give a file name"),
        # the video under another name (a hard link here; a case-insensitive file system's Mine.avi)
        (
            "predict",
            lambda t, v: ["--out", str(_linked(v, t / "Mine.avi"))],
            "--out {t}/Mine.avi is the input",
        ),
        ("predict", lambda t, v: ["--json", str(_write(t / "f", b"") / "x.json")], "is a file, not a folder"),
        ("explain", lambda t, v: ["--out", str(t / "heat.pdf")], "--out {t}/heat.pdf: use a .png file name"),
        (
            "explain",
            lambda t, v: ["--out", str(t / "h.png"), "--pose-out", str(t / "h.png")],
            "is also --out's",
        ),
    ],
)
def test_outputs_that_would_replace_the_video_or_each_other_are_refused_before_any_work(
    model_dir, camera_video, tmp_path, capsys, monkeypatch, command, outputs, message
):
    """Found after the whole chain (or never: `--out VIDEO` replaced the user's video, exit 0)."""
    import transmodal.predict as predict

    video = tmp_path / "mine.avi"
    video.write_bytes(camera_video.read_bytes())
    before = video.read_bytes()
    monkeypatch.setattr(predict, "predict_video", lambda *a, **k: pytest.fail("the chain ran"))
    argv = [command, str(video), "--model", str(model_dir), *outputs(tmp_path, video)]
    if command == "explain" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "heat.png")]
    code, out, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message.format(t=tmp_path, v=video) in err
    assert video.read_bytes() == before and not (tmp_path / "a.json").exists()


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _linked(video: Path, path: Path) -> Path:
    path.hardlink_to(video)
    return path


def _held_and_detected() -> Prediction:
    """20 kept frames (0, 2, ..., 38) in two windows; the primary box detected up to frame 22, held after
    (interpolated); the pose scored 0.9 on the detected frames and 0.1 on the held ones."""
    import pandas as pd

    from transmodal.data.coco import joint_columns

    frames = np.arange(0, 40, 2)
    held = frames >= 24
    tracks = pd.DataFrame(
        {"video_id": "v", "frame_idx": frames, "track_id": 1, "x1": 10.0, "y1": 8.0, "x2": 40.0, "y2": 44.0,
         "score": np.where(held, 0.0, 0.9), "is_primary": True, "interpolated": held, "fallback": False}
    )  # fmt: skip
    keypoints = pd.DataFrame({"video_id": "v", "frame_idx": frames})
    joints = np.linspace(12, 38, 17)
    for name, values in (("x", joints), ("y", joints)):
        for column, value in zip(joint_columns(name), values, strict=True):
            keypoints[column] = value
    for column in joint_columns("score"):
        keypoints[column] = np.where(held, 0.1, 0.9)
    windows = pd.DataFrame({"frame_idx": [frames[:16].tolist(), frames[4:].tolist()], "padded": False})
    return Prediction(
        video=Path("v.avi"), classes=["a", "b"], frame_idx=frames, fps=25.0, size=(64, 48),
        source_size=(64, 48), windows=windows, logits=np.zeros((2, 2), np.float32), tracks=tracks,
        keypoints=keypoints, notes=[], fallback=False,
    )  # fmt: skip


def test_each_window_says_in_how_many_of_its_frames_the_person_was_detected():
    """A box held over the frames after the person left looks like a detection in the timeline and on
    --out: the share is in --json, a low one is said, and --out draws held boxes grey and no joint the pose
    model scored below DRAW_MIN_SCORE."""
    from transmodal.predict import _Annotator, detection_notes

    prediction = _held_and_detected()
    summary = prediction.summary()
    # window 0: frames 0..30, detected 0..22 (12 of 16); window 1: frames 8..38, detected 8..22 (8 of 16)
    assert [w["detected_share"] for w in summary["windows"]] == [0.75, 0.5]
    assert summary["detected_share"] == 0.6
    assert detection_notes(prediction, 0) == []  # 60 %: not low
    joined, refused = detection_notes(prediction, 0, joined=2, refused=1, max_scale=1.5)
    assert joined.startswith("2 track(s) at other times joined to the primary one")
    assert refused.startswith("1 track(s) at other times not joined") and "more than 1.5x" in refused
    prediction.tracks.loc[prediction.tracks["frame_idx"] >= 12, "interpolated"] = True
    low, others = detection_notes(prediction, 2)
    assert low.startswith("the person was detected in 30% of the kept frames")
    assert others.startswith("2 other track(s)")
    prediction.fallback = True  # a segment fell back to the whole frame: the others' share is said still
    assert detection_notes(prediction, 0) == [low]

    draw, frame = _Annotator(prediction), np.zeros((48, 64, 3), np.uint8)
    detected, held = draw(0, frame), draw(15, frame)  # frames 0 and 30
    orange, grey = np.array([0, 200, 255]), np.array([160, 160, 160])
    assert (detected == orange).all(axis=-1).any() and not (detected == grey).all(axis=-1).any()
    assert (held == grey).all(axis=-1).any() and not (held == orange).all(axis=-1).any()
    joint = np.array([255, 80, 80])  # the joints' dots (BGR)
    assert (detected == joint).all(axis=-1).any() and not (held == joint).all(axis=-1).any()


def test_predict_says_what_stitching_joined_and_left_out(model_dir, camera_video, monkeypatch):
    """The detect stage's counts of stitched and refused tracks reach predict's notes, summed over segments,
    with the model folder's detect.stitch_max_scale."""
    import transmodal.vision.detect as detect
    from transmodal.predict import predict_video

    real = detect.run_detect

    def counted(*args, **kwargs):
        tracks, metrics = real(*args, **kwargs)
        return tracks, {**metrics, "stitched_tracks": 1, "stitch_refused_tracks": 2}

    monkeypatch.setattr(detect, "run_detect", counted)
    prediction, _ = predict_video(camera_video, model_dir, device="cpu", progress=False)
    assert any(note.startswith("1 track(s) at other times joined") for note in prediction.notes)
    refused = [note for note in prediction.notes if note.startswith("2 track(s) at other times not joined")]
    assert len(refused) == 1 and "more than 2x (detect.stitch_max_scale)" in refused[0]


def test_an_annotated_video_that_came_out_incomplete_is_not_kept(
    model_dir, camera_video, tmp_path, capsys, monkeypatch
):
    # OpenCV's writer reports no failed write: on a full disk an MP4 without its index, or an empty AVI,
    # was renamed into place as the finished video, exit 0
    import transmodal.predict as predict

    real = predict.cv2.VideoWriter

    class FullDisk:
        def __init__(self, *args):
            self.writer, self.count = real(*args), 0

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return self.writer.isOpened()

        def write(self, image):
            self.count += 1
            if self.count <= 3:  # then the disk is full: the frames are lost, silently
                self.writer.write(image)

        def release(self):
            self.writer.release()

    monkeypatch.setattr(predict.cv2, "VideoWriter", FullDisk)
    out_video = tmp_path / "annotated.avi"
    code, out, err = run(
        ["predict", str(camera_video), "--model", str(model_dir), "--out", str(out_video)], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "incomplete (a full disk?)" in err and str(out_video) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the video nor its temporary


def test_a_model_folder_finds_its_project_s_checkpoints_from_any_folder(
    model_dir, camera_video, tiny_checkpoints, tmp_path, capsys, monkeypatch
):
    # the train stage records the checkpoints as params.yaml names them, models/tiny/... relative to the
    # project: predict from another folder failed with "params.yaml: detect.checkpoint ... not a folder"
    project = tmp_path / "project"
    for name, key in (("detector", "detector"), ("pose", "pose"), ("backbone", "backbone")):
        (project / "models" / "tiny").mkdir(parents=True, exist_ok=True)
        (project / "models" / "tiny" / name).symlink_to(tiny_checkpoints[key])

    def relative(config):
        config["pipeline"]["detect"]["checkpoint"] = "models/tiny/detector"
        config["pipeline"]["pose"]["checkpoint"] = "models/tiny/pose"
        config["backbone"]["checkpoint"] = "models/tiny/backbone"

    model = _broken_model(model_dir, tmp_path, _edit_config(relative))
    (project / "models" / "transmodal").symlink_to(model)  # the folder the train stage wrote
    elsewhere = tmp_path / "elsewhere"
    # another project's checkpoint of the same name in the working folder is not the model's (it was used)
    (elsewhere / "models" / "tiny" / "detector").mkdir(parents=True)
    (elsewhere / "models" / "tiny" / "detector" / "config.json").write_text("{}")
    monkeypatch.chdir(elsewhere)
    code, out, err = run(
        ["predict", str(camera_video), "--model", str(project / "models" / "transmodal")], capsys
    )
    assert code == 0, err
    code, out, err = run(
        [
            "predict",
            str(camera_video),
            "--model",
            str(project / "models" / "transmodal"),
            "--pose-model",
            "no/such-dir/x",
        ],
        capsys,
    )
    assert code == 2 and err.startswith("transmodal predict: error: --pose-model is 'no/such-dir/x'"), err
    code, out, err = run(["predict", str(camera_video), "--model", str(model)], capsys)  # outside the project
    assert (
        code == 2
        and "the detect checkpoint " in err
        and "config.json records is 'models/tiny/detector'" in err
    )
    assert "params.yaml" not in err


def test_explain_keeps_only_the_windows_it_may_draw(model_dir, tmp_path):
    """explain on a video scored in segments: it holds the tokens and crops of each class's surest window
    only, draws the one of the video's label (the window argmax over all of them picks), and gets the
    crops and maps the whole video gives for it; --window keeps that window alone."""
    from transmodal.features.crops import crop_frames
    from transmodal.predict import explain_window, predict_video, softmax

    path = tmp_path / "long.avi"
    camera_like_video(path, frames=120, size=(160, 120))
    whole, model = predict_video(path, model_dir, progress=False, explain_size=64)
    parts, _ = predict_video(path, model_dir, progress=False, explain_size=64, max_bytes=48 * 160 * 120 * 3)
    assert (
        parts.segments == 2 and len(parts.logits) == 7
    )  # windows 0-4 in the first segment, 5-6 in the second
    probabilities = softmax(parts.logits)
    surest = {int(np.argmax(probabilities[:, c])) for c in range(len(CLASSES))}
    assert set(parts.candidates.kept) == surest and len(surest) <= len(CLASSES)
    label = int(np.argmax(parts.video_probabilities()))
    window = parts.candidates.pick(label)
    assert window == int(np.argmax(probabilities[:, label]))
    (mine, crops, xy, mask), (theirs, crops_whole, xy_whole, _) = (
        explain_window(parts, model, window),
        explain_window(whole, model, window),
    )
    assert crops.shape == (16, 64, 64, 3) and np.array_equal(crops, crops_whole)  # nobody found: whole frame
    row = whole.windows.iloc[window]
    positions = np.searchsorted(whole.frame_idx, np.asarray(row["frame_idx"], np.int64)).tolist()
    box = tuple(int(row[c]) for c in ("crop_x1", "crop_y1", "crop_x2", "crop_y2"))
    assert np.array_equal(crops, crop_frames(whole.frames, box, 64, positions))  # the window's own frames
    for explanation in (mine, theirs):  # the head on the kept tokens gives the window's own logits
        np.testing.assert_allclose(explanation.probabilities, probabilities[window], rtol=0, atol=1e-5)
    assert np.array_equal(xy, xy_whole, equal_nan=True) and mask.shape == (16, 17)
    np.testing.assert_allclose(mine.probabilities, theirs.probabilities, rtol=0, atol=1e-5)
    for name, values in mine.maps().items():
        np.testing.assert_allclose(values, theirs.maps()[name], rtol=0, atol=1e-5, equal_nan=True)

    given, _ = predict_video(path, model_dir, progress=False, explain_size=64, window=5, max_bytes=48 * 57600)
    assert list(given.candidates.kept) == [5] and given.candidates.pick(label) == 5


def test_candidates_keep_each_class_s_surest_window_and_the_earlier_on_a_tie():
    """A still video where nobody is found gives every window the same logits: explain draws the first, as
    argmax over all windows would; a window no longer the surest of any class is let go."""
    import pandas as pd

    from transmodal.data.frames import DecodedVideo
    from transmodal.predict import Candidates

    frames = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    video = DecodedVideo("input", frames, np.arange(0, 8, 2), 8, 8, 25.0)

    def rows(windows):
        return pd.DataFrame(
            {
                "clip_id": [f"input#{n}" for n in windows],
                "frame_idx": [np.array([2 * (n % 4)] * 2, np.int32) for n in windows],
                "crop_x1": 0, "crop_y1": 0, "crop_x2": 8, "crop_y2": 8,
            }
        )  # fmt: skip

    tokens = torch.arange(3 * 4, dtype=torch.float16).reshape(3, 2, 2)
    candidates = Candidates(None, 8)
    candidates.add(video, rows([0, 1, 2]), tokens, np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32))
    assert (candidates.pick(0), candidates.pick(1)) == (0, 2) and set(candidates.kept) == {0, 2}
    assert torch.equal(candidates.kept[2][0], tokens[2])
    assert np.array_equal(candidates.kept[2][1], frames[[2, 2]])  # window 2's frames, cropped whole at 8 px
    candidates.add(video, rows([3]), tokens[:1] + 1, np.array([[5.0, 0.0]], np.float32))
    assert (candidates.pick(0), candidates.pick(1)) == (3, 2) and set(candidates.kept) == {2, 3}
    given = Candidates(1, 8)
    given.add(video, rows([0, 1, 2]), tokens, np.zeros((3, 2), np.float32))
    assert list(given.kept) == [1] and given.pick(0) == 1


def test_quiet_hides_the_weight_loading_bars_and_leaves_them_on_after(model_dir, camera_video, capfd):
    from transformers.utils import logging as hf_logging

    argv = ["predict", str(camera_video), "--model", str(model_dir)]
    for quiet in (False, True):
        main([*argv, "--quiet"] if quiet else argv)
        assert ("Loading weights" in capfd.readouterr().err) != quiet
        assert hf_logging.is_progress_bar_enabled()


def test_explain_on_a_window_the_video_does_not_have_is_one_line(model_dir, camera_video, tmp_path, capsys):
    heat = tmp_path / "heat.png"
    for window, step, message in (
        (5, [], "--window is 5; this video has windows 0..1"),
        (5, ["--step", "2"], "--window is 5; this video has windows 0..2"),  # numbered as predict's timeline
        (-1, [], "--window is -1; it must be"),
    ):
        argv = ["explain", str(camera_video), "--model", str(model_dir), "--out", str(heat), *step]
        code, out, err = run([*argv, "--window", str(window)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not heat.exists()


class _Stream:
    """Kept frames as :class:`~transmodal.data.frames.VideoStream` gives them: (frame number, BGR frame,
    time samples it fills); frame ``n`` is number ``3 n`` and its blue channel holds ``n``."""

    shape = (4, 6, 3)

    def __init__(self, counts: list[int]):
        self.counts = counts
        self.decoded = self.reported = 3 * len(counts)
        self.fps, self.step = 25.0, 2.0

    def __iter__(self):
        for n, count in enumerate(self.counts):
            frame = np.zeros(self.shape, np.uint8)
            frame[..., 0] = n % 256
            yield 3 * n, frame, count


@pytest.mark.parametrize(
    "counts",
    [
        [1] * 100,  # more frames than a segment holds
        [1] * 5,  # shorter than a clip: one padded window
        [3, 1, 2] * 30,  # a slow source: frames fill several samples
        [1] * 37 + [7] + [1] * 60,  # one frame spans a step and more
        [1] * 32 + [9] + [1] * 40,
        # at 48 frames (59 samples) windows 0..40 are scored, the next starts at 48, inside the 12-sample
        # frame (38..49): it straddles where the carried frames begin and must be carried
        [1] * 38 + [12] + [1] * 49,
        [12] * 60,  # a time-lapse
        [1] * 40,  # windows end exactly on the last sample
        [1] * 49,  # one frame past a full segment
        [1] * 50,
        [1] * 97,  # one frame past two
    ],
)
@pytest.mark.parametrize("capacity", [48, 50, 1000])
def test_segments_give_every_window_once_with_its_frames(counts, capacity):
    """A long video scored a segment at a time: the windows are those of the whole video (same numbers,
    frames and padding), each lies in the segment it is scored with, and no segment holds more frames than
    its capacity (the memory bound); what is carried into the next segment is less than a window and a step."""
    import pandas as pd

    from transmodal.predict import Segments, window_clips

    stream = _Stream(counts)
    assert Segments.least_frames(16, 8) == 48
    segments = Segments(stream, 16, 8, capacity * int(np.prod(_Stream.shape)))
    parts, previous = [], None
    for video, clips in segments:
        assert len(video.frames) <= segments.capacity == capacity
        assert (np.diff(video.frame_idx) > 0).all()
        assert (video.frames[:, 0, 0, 2] == (video.frame_idx // 3) % 256).all()  # its own pixels, as RGB
        assert len(clips)
        for frames in clips["frame_idx"]:
            assert set(frames.tolist()) <= set(video.frame_idx.tolist())
        if previous is not None:
            carried = np.intersect1d(previous, video.frame_idx)
            assert len(carried) < 16 + 8 and (carried == video.frame_idx[: len(carried)]).all()
        previous = video.frame_idx
        parts.append(clips)
    samples = np.repeat(np.arange(len(counts)) * 3, counts)
    whole = window_clips(samples, 16, 8)
    got = pd.concat(parts, ignore_index=True)
    assert got["clip_id"].tolist() == whole["clip_id"].tolist()
    assert [f.tolist() for f in got["frame_idx"]] == [f.tolist() for f in whole["frame_idx"]]
    assert got["padded"].tolist() == whole["padded"].tolist()
    assert segments.samples == samples.tolist()
    assert segments.frame_idx == (np.arange(len(counts)) * 3).tolist()
    assert (segments.count > 1) == (len(counts) > capacity)


def test_a_segment_reserves_no_more_frames_than_the_header_announces_and_a_quarter():
    """Half the machine's memory was reserved for any video: 11.4 GiB for 5 frames, which an address-space
    limit refuses. With the header's count known, a segment holds that count and a quarter more (at least
    two windows and steps); unknown (0), what the memory holds. Fewer reserved than decoded: more segments,
    the same windows (the test above)."""
    from transmodal.predict import Segments

    frame = int(np.prod(_Stream.shape))
    huge = 10**6 * frame
    assert Segments(_Stream([1] * 5), 16, 8, huge, expected=5).reserved(frame) == 48
    assert Segments(_Stream([1] * 100), 16, 8, huge, expected=100).reserved(frame) == 125
    assert Segments(_Stream([1] * 100), 16, 8, huge).reserved(frame) == 10**6
    assert Segments(_Stream([1] * 100), 16, 8, 60 * frame, expected=100).reserved(frame) == 60
    segments = Segments(_Stream([1] * 100), 16, 8, huge, expected=60)  # a header short by 40 %
    parts = list(segments)
    assert segments.capacity == 75 and segments.count == 2
    assert sum(len(clips) for _, clips in parts) == len(window_starts(100, 16, 8))


def test_the_memory_for_frames_heeds_a_container_s_and_an_address_space_limit(tmp_path, monkeypatch):
    """psutil gives the machine's available memory; a cgroup's limit (a container, a cluster job) and
    ``ulimit -v`` are what the process may really fill."""
    import resource

    import psutil

    from transmodal import memory

    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    for folder, limit, usage in ((v2 / "job", "1000", "900"), (v2 / "job" / "step", "max", "100")):
        (folder / "memory.max").write_text(limit + "\n")
        (folder / "memory.current").write_text(usage + "\n")
    # 500 of the job's 900 are file cache the kernel drops at the limit: usage near the limit is no shortage
    (v2 / "job" / "memory.stat").write_text("anon 300\nfile 600\ninactive_file 500\nactive_file 100\n")
    (tmp_path / "self-v2").write_text("0::/job/step\n")
    assert memory._cgroup_room(v2, tmp_path / "self-v2") == 600  # the job's, above the unlimited step
    v1 = tmp_path / "v1" / "memory" / "a"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000\n")
    (v1 / "memory.usage_in_bytes").write_text("500\n")
    (tmp_path / "self-v1").write_text("7:cpu:/a\n1:name=systemd:/a\nnot a cgroup line\n5:memory:/a\n")
    assert memory._cgroup_room(tmp_path / "v1", tmp_path / "self-v1") == 1500
    (tmp_path / "self-none").write_text("0::/\n")
    assert memory._cgroup_room(tmp_path / "empty", tmp_path / "self-none") is None

    mapped = psutil.Process().memory_info().vms
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (mapped + 2**20, resource.RLIM_INFINITY))
    assert memory.available_memory() <= 2**20


def test_predict_runs_under_an_address_space_limit(model_dir, tmp_path):
    """``ulimit -v`` (a cluster's ``h_vmem``) at 6 GiB: a 5-frame video reserved half the machine's memory
    for its frames and died with a traceback; it is scored."""
    import resource
    import subprocess

    video = tmp_path / "short.avi"
    plain_video(video, 5, (160, 120))
    limit = 6 * 2**30

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

    command = "from transmodal.cli import main; main()"  # on the CPU: CUDA maps more than the limit
    argv = ["predict", str(video), "--model", str(model_dir), "--device", "cpu", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", command, *argv],
        capture_output=True,
        text=True,
        preexec_fn=limited,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1. " in done.stdout and "Traceback" not in done.stderr


def test_a_long_video_is_scored_a_segment_at_a_time(model_dir, tmp_path):
    """predict on a video whose frames do not fit the memory given: the same windows and time samples as
    scored whole, one track and pose row a kept frame, said in a note; --out decodes the video again and
    gets the same frames, and a file that decodes otherwise the second time is an error."""
    from transmodal.predict import PredictError, kept_frames, predict_video, write_annotated

    path = tmp_path / "long.avi"
    camera_like_video(path, frames=120, size=(160, 120))  # 60 kept frames at stride 2
    whole, _ = predict_video(path, model_dir, progress=False)
    parts, _ = predict_video(path, model_dir, progress=False, max_bytes=48 * 160 * 120 * 3)
    assert parts.segments == 2
    assert whole.segments == 1 and parts.segments == 2 and parts.frames is None
    assert [n for n in parts.notes if n.startswith("scored in")] == [
        "scored in 2 segments of at most 48 kept frames (what the memory for frames holds at --max-side 1280): "
        "each is tracked on its own, with its own primary track, and every window lies in one segment"
    ]
    assert [n for n in whole.notes if "segment" in n] == []
    # the tiny random detector finds nobody here: said per segment
    assert "no person was detected: the whole frame is the crop (the pipeline's fallback box)" in whole.notes
    assert (
        "no person was detected in 2 of the 2 segments: the whole frame is their crop (the pipeline's "
        "fallback box)" in parts.notes
    )
    assert parts.windows["clip_id"].tolist() == whole.windows["clip_id"].tolist()
    assert [f.tolist() for f in parts.windows["frame_idx"]] == [
        f.tolist() for f in whole.windows["frame_idx"]
    ]
    # with nobody found both crop the whole frame, so each window is scored on the same crops: equal but for
    # the last digits (its batch of 8 windows holds others); wrong frames would move them far more
    np.testing.assert_allclose(parts.logits, whole.logits, rtol=0, atol=1e-5)
    assert (
        parts.frame_idx.tolist() == whole.frame_idx.tolist()
        and parts.samples.tolist() == whole.samples.tolist()
    )
    primary = parts.tracks[parts.tracks["is_primary"].astype(bool)]
    assert primary["frame_idx"].tolist() == whole.frame_idx.tolist()
    assert parts.keypoints["frame_idx"].tolist() == whole.frame_idx.tolist()
    assert parts.summary()["segments"] == 2

    again = list(kept_frames(parts))
    for (n, frame, count), (m, held, times) in zip(again, kept_frames(whole), strict=True):
        assert (n, count) == (m, times) and np.array_equal(frame, held)
    out = tmp_path / "long.avi.mp4"
    write_annotated(parts, out)
    capture = cv2.VideoCapture(str(out))
    written = 0
    while capture.read()[0]:
        written += 1
    capture.release()
    assert written == len(parts.samples) == 60

    kept = parts.frame_idx
    parts.frame_idx = kept + 1  # as if the file had changed since it was scored
    with pytest.raises(PredictError, match="decoded differently the second time"):
        list(kept_frames(parts))
    parts.frame_idx = np.append(kept, kept[-1] + 2)  # ... or lost its end
    with pytest.raises(PredictError, match=r"decoded 60 of its 61 kept frames the second time"):
        write_annotated(parts, out.with_name("short.mp4"))
    assert not list(tmp_path.glob("*short*"))


def test_segments_crop_each_window_on_its_own_segment_s_track(model_dir, tmp_path, monkeypatch):
    """With the person's true box as every frame's primary track (the tiny detector finds nobody), a video
    scored in two segments crops each window where the whole video does: the same logits but for the last
    digits of batching. A window cropped with another segment's frames or boxes would differ."""
    from transmodal.predict import predict_video
    from transmodal.vision import detect

    path = tmp_path / "walk.avi"
    truth = camera_like_video(path, frames=160, size=(320, 240))
    real = detect.run_detect

    def true_boxes(store, *args, **kwargs):
        tracks, metrics = real(store, *args, **kwargs)
        tracks = tracks.copy()
        tracks[["x1", "y1", "x2", "y2"]] = truth[tracks["frame_idx"].to_numpy()]
        tracks["fallback"], tracks["is_primary"] = False, True
        return tracks, {**metrics, "videos_fallback": 0}

    monkeypatch.setattr(detect, "run_detect", true_boxes)
    whole, _ = predict_video(path, model_dir, progress=False)
    parts, _ = predict_video(path, model_dir, progress=False, max_bytes=48 * 320 * 240 * 3)
    assert (whole.segments, parts.segments) == (1, 2) and not parts.fallback
    crops = ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]
    assert parts.windows[crops].to_numpy().tolist() == whole.windows[crops].to_numpy().tolist()
    assert len(set(map(tuple, whole.windows[crops].to_numpy()))) > 3  # the crop follows the person
    np.testing.assert_allclose(parts.logits, whole.logits, rtol=0, atol=1e-5)


def test_predict_refuses_only_when_not_even_a_segment_fits(model_dir, camera_video, monkeypatch, capsys):
    from types import SimpleNamespace

    import psutil

    # 20 kept frames of 640 x 480 (18 MiB) fit in half of 40 MiB, not in half of 30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=40 * 2**20))
    code, out, err = run(["predict", str(camera_video), "--model", str(model_dir)], capsys)
    assert code == 0, err
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=30 * 2**20))
    code, out, err = run(["predict", str(camera_video), "--model", str(model_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.strip().endswith(
        "a segment of 20 kept frames (the whole video) needs 0.02 GiB at --max-side 1280, more than half "
        "the 0.03 GiB available; lower --max-side"
    )


def test_the_recorded_precisions_are_used_where_they_apply(model_dir, camera_video, tmp_path):
    """Features made in float16 on CUDA: predict runs the backbone (and the detector and pose model, as
    recorded) in half precision there, and says so where it cannot (the CPU)."""
    from transmodal.predict import ModelFolder, predict_video

    def half(config):
        config["backbone"]["model_dtype"] = "float16"
        config["pipeline"]["detect"]["precision"] = "bf16"
        config["pipeline"]["pose"]["precision"] = "fp16"

    folder = _broken_model(model_dir, tmp_path, _edit_config(half))
    opened = ModelFolder.open(folder)
    assert opened.backbone_config("cuda").precision == "fp16"
    assert (
        opened.detect_config("cpu", None).precision == "bf16"
        and opened.pose_config("cpu", None).precision == "fp16"
    )
    assert ModelFolder.open(model_dir).backbone_config("cuda").precision == "fp32"  # made in float32
    prediction, _ = predict_video(camera_video, folder, device="cpu", progress=False)
    assert any(
        "made with the backbone in float16; here it runs in float32" in note for note in prediction.notes
    )
    prediction, _ = predict_video(camera_video, model_dir, device="cpu", progress=False)
    assert not any("made with the backbone" in note for note in prediction.notes)


def test_the_recorded_revisions_are_loaded(model_dir, tmp_path):
    """The detector, pose model and backbone load at the revisions the model was trained with
    (``detect.revision``, ``pose.revision``, ``backbone.revision``); a checkpoint given on the command line
    replaces the recorded one and its revision."""
    from transmodal.predict import ModelFolder

    def pinned(config):
        config["pipeline"]["detect"].update(checkpoint="PekingU/rtdetr_r50vd_coco_o365", revision="d" * 40)
        config["pipeline"]["pose"].update(checkpoint="usyd-community/vitpose-plus-base", revision="v2")
        config["backbone"].update(checkpoint="MCG-NJU/videomae-base", revision="b" * 40)

    opened = ModelFolder.open(_broken_model(model_dir, tmp_path, _edit_config(pinned)))
    assert opened.detect_config("cpu", None).revision == "d" * 40
    assert opened.pose_config("cpu", None).revision == "v2"
    assert opened.backbone_config("cpu").revision == "b" * 40
    override = opened.detect_config("cpu", "other-org/rtdetr")
    assert (override.checkpoint, override.revision) == ("other-org/rtdetr", None)
    # the demo's local folders: nothing pinned
    plain = ModelFolder.open(model_dir)
    assert plain.detect_config("cpu", None).revision is None and plain.backbone_config("cpu").revision is None


def test_a_folder_from_before_a_detect_key_tracks_as_it_was_trained(model_dir, tmp_path):
    """A model folder recorded before ``detect.low_score_threshold`` and ``detect.stitch_max_scale`` runs
    predict's tracking as its training data was tracked: no low boxes, stitching without the height gate.
    A folder that records them keeps them."""
    from transmodal.predict import ModelFolder

    def older(config):
        for key in ("low_score_threshold", "stitch_max_scale"):
            del config["pipeline"]["detect"][key]

    before = ModelFolder.open(_broken_model(model_dir, tmp_path, _edit_config(older))).detect_config(
        "cpu", None
    )
    assert before.low_score_threshold == before.score_threshold and before.stitch_max_scale is None
    current = ModelFolder.open(model_dir).detect_config("cpu", None)
    assert current.stitch_max_scale == 2.0 and current.low_score_threshold == 0.1


def test_predict_loads_the_backbone_commit_the_features_were_made_with(model_dir, tmp_path, monkeypatch):
    """backbone.json records the commit the features stage loaded: where the cache holds it, predict loads
    that one, whatever main names now; where it does not, the pinned revision (a note says they differ)."""
    import shutil

    from transmodal.predict import ModelFolder

    old, new = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--some-org--videomae"
    for commit in (old, new):
        (repo / "snapshots" / commit).mkdir(parents=True)
        shutil.copy(model_dir / "config.json", repo / "snapshots" / commit / "config.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))

    def trained_at(commit, pinned=None):
        def change(config):
            config["backbone"].update(checkpoint="some-org/videomae", checkpoint_revision=commit)
            if pinned:
                config["backbone"]["revision"] = pinned

        return change

    folder = _broken_model(model_dir, tmp_path, _edit_config(trained_at(old)))
    assert ModelFolder.open(folder).backbone_config("cpu").revision == old
    shutil.rmtree(folder)
    folder = _broken_model(model_dir, tmp_path, _edit_config(trained_at("c" * 40, pinned="v1")))
    assert ModelFolder.open(folder).backbone_config("cpu").revision == "v1"


def test_the_head_runs_on_the_thread_count_it_trained_with(model_dir, camera_video, monkeypatch):
    """On the CPU the head's logits depend on the thread count (decision 37): predict and explain run it on
    ``train.threads`` from the model folder, and give the process its own count back for the backbone."""
    from transmodal.model import TransModal
    from transmodal.predict import ModelFolder, explain_window, predict_video

    recorded = ModelFolder.open(model_dir).threads
    assert recorded == 1
    seen, forward = [], TransModal.forward

    def counting(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TransModal, "forward", counting)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prediction, model = predict_video(
            camera_video, model_dir, device="cpu", progress=False, explain_size=64, window=0
        )
        explain_window(prediction, model, 0)
        assert seen and set(seen) == {recorded}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_what_the_decoding_found_odd_is_said_and_the_annotated_video_plays_at_a_sane_rate(
    model_dir, tmp_path, monkeypatch
):
    """A cut file and a header without a usable frame rate: predict says so (as the frames stage records it),
    and --out writes the kept frames at 25 fps / stride, not at the header's 90000 fps (a tick: the frames
    are sampled by their timestamps)."""
    from transmodal.data import frames
    from transmodal.predict import predict_video, write_annotated

    cut = tmp_path / "cut.avi"
    camera_like_video(cut, frames=40, size=(320, 240))
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    prediction, _ = predict_video(cut, model_dir, device="cpu", progress=False)
    assert any(note.startswith("truncated: decoded ") for note in prediction.notes)

    fast = tmp_path / "fast.avi"
    camera_like_video(fast, frames=20, size=(320, 240))
    opened = cv2.VideoCapture

    class HeaderRate:  # the file's header says 90000 fps (OpenCV's writer caps what it writes), and the
        # count its duration gives at that rate: an absurd rate's count is not refused as too many frames
        def __init__(self, path, *args):
            self.capture, self.source = opened(path, *args), str(path) == str(fast)

        def __getattr__(self, name):
            return getattr(self.capture, name)

        def get(self, prop):
            absurd = {cv2.CAP_PROP_FPS: 90000.0, cv2.CAP_PROP_FRAME_COUNT: 72_000_000.0}
            # that video's header only: the annotated video written from it is read back as it is
            return absurd.get(prop, self.capture.get(prop)) if self.source else self.capture.get(prop)

    monkeypatch.setattr(frames.cv2, "VideoCapture", HeaderRate)
    prediction, _ = predict_video(fast, model_dir, device="cpu", progress=False)
    assert prediction.fps == pytest.approx(90000.0)
    # a tick, read in milliseconds: the 25 fps frames sampled by their timestamps, one in 2
    assert any("off the header's 90000 fps grid" in note for note in prediction.notes), prediction.notes
    assert prediction.samples.tolist() == list(range(0, 20, 2))
    out = tmp_path / "fast-annotated.avi"
    write_annotated(prediction, out)
    monkeypatch.undo()
    capture = cv2.VideoCapture(str(out))
    try:
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5)  # stride 2 of 25 fps
    finally:
        capture.release()
    # a 30 fps video keeps one frame in 2.4 (frames.reference_fps 25, stride 2): it plays at 12.5 fps too
    thirty = tmp_path / "thirty.avi"
    camera_like_video(thirty, frames=30, size=(320, 240), fps=30.0)
    prediction, _ = predict_video(thirty, model_dir, device="cpu", progress=False)
    write_annotated(prediction, tmp_path / "thirty-annotated.avi")
    capture = cv2.VideoCapture(str(tmp_path / "thirty-annotated.avi"))
    try:
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5)
    finally:
        capture.release()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("stage", ["train", "ablate"])
def test_the_train_stage_lists_every_recorded_param(stage):
    """config.json's ``pipeline`` holds params the train stage (and each ablation variant's, for its seeds'
    model folders) must re-run for (dvc.yaml lists them)."""
    from transmodal.training.train import PIPELINE_KEYS

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    listed = set(stages[stage].get("do", stages[stage])["params"])
    for name, keys in PIPELINE_KEYS.items():
        for key in keys:
            assert f"{name}.{key}" in listed or name in listed, f"{name}.{key}"


# ----------------------------------------------------------------------------------------------------------
# explain: selector scores and co-attention on the patch grid (paper Figures 3 and 4)


def _head(**changes):
    from transmodal.model import TransModal

    model_changes = {k: v for k, v in changes.items() if k in ModelConfig.__dataclass_fields__}
    selector_changes = {k: v for k, v in changes.items() if k in SelectorConfig.__dataclass_fields__}
    torch.manual_seed(0)
    return TransModal(
        ModelConfig(**model_changes),
        SelectorConfig(**{"top_k_tokens": 3, **selector_changes}),
        dim=32,
        num_classes=6,
        num_frames=16,
        tubelet_size=2,
        patches_per_group=16,
    ).eval()


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 8, 16, 32, generator=gen), torch.rand(2, 16, 17, 2, generator=gen)


@pytest.mark.parametrize(
    "changes",
    [{}, {"position": "before_ffn"}, {"position": "before_fusion"}, {"use_pose": False}, {"enabled": False}],
)
def test_explanation_maps_are_on_the_grid_and_leave_the_logits_alone(changes):
    from transmodal.explain import explain_clips

    model = _head(**changes)
    tokens, pose = _inputs()
    with torch.inference_mode():
        plain = model(tokens, pose).logits
    explanations = explain_clips(model, tokens, pose)
    with torch.inference_mode():
        torch.testing.assert_close(
            model(tokens, pose).logits, plain, rtol=0, atol=0
        )  # recording is off again
    for b, explanation in enumerate(explanations):
        np.testing.assert_allclose(explanation.probabilities, plain[b].softmax(-1).numpy(), rtol=1e-5)
        maps = explanation.maps()
        if changes.get("use_pose") is False:
            assert set(maps) == {"selector token scores"}
            continue
        assert explanation.rgb_to_pose.shape == explanation.pose_to_rgb.shape == (8, 16)
        seen = np.isfinite(explanation.pose_to_rgb)
        if changes.get("position") == "before_fusion":
            np.testing.assert_array_equal(seen, explanation.kept)  # the fusion saw the kept tokens only
        else:
            assert seen.all()
        assert explanation.pose_to_rgb[seen].sum() == pytest.approx(1.0, rel=1e-5)
        assert ((explanation.rgb_to_pose[seen] >= 0) & (explanation.rgb_to_pose[seen] <= 1)).all()
        if changes.get("enabled") is False:
            assert explanation.token_scores is None and explanation.kept.all()
        else:
            assert explanation.kept.sum() == 4 * 6  # 4 groups x (3 tokens x tubelet 2)
            assert np.isfinite(explanation.token_scores).sum(axis=1).tolist().count(16) == 4


def test_uniform_attention_gives_the_own_frame_share_of_a_tubelet():
    """With zero queries every RGB token attends evenly to the 16 pose tokens: 2 of them are its own."""
    from transmodal.explain import explain_clips

    model = _head()
    for attention in (model.fusion.blocks[-1].attn_rgb, model.fusion.blocks[-1].attn_pose):
        torch.nn.init.zeros_(attention.q_proj.weight)
        torch.nn.init.zeros_(attention.q_proj.bias)
    (explanation, _) = explain_clips(model, *_inputs())
    np.testing.assert_allclose(explanation.rgb_to_pose, 2 / 16, rtol=1e-5)
    np.testing.assert_allclose(explanation.pose_to_rgb, 1 / 128, rtol=1e-5)


def test_heat_in_box():
    from transmodal.explain import heat_in_box

    boxes = np.tile([0.0, 0.0, 0.5, 0.5], (2, 1))  # the upper-left quarter: 4 of 16 patch centres
    flat = np.ones((2, 16))
    assert heat_in_box(flat, boxes) == pytest.approx((0.25, 0.25))
    on_person = np.zeros((2, 16))
    on_person[:, [0, 1, 4, 5]] = 1.0
    assert heat_in_box(on_person, boxes) == pytest.approx((1.0, 0.25))
    off = flat.copy()
    off[:, [0, 1, 4, 5]] = np.nan  # unknown values are left out of both
    assert heat_in_box(off, boxes) == pytest.approx((0.0, 0.0))


def test_the_heat_of_a_map_is_what_lies_above_its_baseline():
    """L2 norms of about 6 varying by 2 put a mass near the box's share on any box, though the selector ranks a
    group's patches by them: 8 on the person's 4 patches and 5 elsewhere was a mass of 0.34 against 0.25. The
    heat is each group's scores above its least (all of it on the person), the own-frame share above the
    uniform share (none when the attention is uniform), the pose tokens' attention as it is."""
    from transmodal.explain import ClipExplanation, heat_in_box

    boxes = np.tile([0.0, 0.0, 0.5, 0.5], (2, 1))  # the upper-left quarter: 4 of 16 patch centres
    scores = np.full((2, 16), 5.0)
    scores[:, [0, 1, 4, 5]] = 8.0
    scores[1] += 1.0  # another group, another level: each is taken above its own least
    attention = np.full((2, 16), 1 / 32)
    explanation = ClipExplanation(
        probabilities=np.full(6, 1 / 6),
        group_index=np.arange(2),
        kept=np.ones((2, 16), bool),
        token_scores=scores,
        rgb_to_pose=np.full((2, 16), 0.125),
        pose_to_rgb=attention,
    )
    assert heat_in_box(scores, boxes)[0] == pytest.approx((32 + 36) / (92 + 108))  # as it is: 0.34
    heat = explanation.heat(uniform_share=0.125)
    values, baseline = heat["selector token scores"]
    assert heat_in_box(values, boxes) == pytest.approx((1.0, 0.25)) and baseline == "each group's least score"
    values, baseline = heat["RGB queries over pose (own-frame share)"]
    assert (values == 0).all() and baseline == "the uniform share 0.125"
    values, _ = heat["pose queries over RGB"]
    assert heat_in_box(values, boxes) == pytest.approx((0.25, 0.25))


def _test_split(monkeypatch, kept=None):
    """Four clips (videos a, b, c and a training clip of a) and tracks with the primary box over the upper-left
    quarter of the crop, from 0.1 to 0.6 of its side, in videos a and b (c has none). A clip's tokens hold
    its row number at [0, 0, 0] and each token's patch and frame group at [..., 1] and [..., 2]; its
    selector map is all on the box, except clip 1's (a fifth there). ``kept`` (clips, G, K): the patches a
    cache made with ``backbone.keep`` < 1 holds, per clip."""
    from types import SimpleNamespace

    import pandas as pd

    from transmodal import explain

    on_person = np.zeros((8, 16))
    on_person[:, [0, 1, 4, 5]] = 1.0
    spread = np.ones((8, 16))
    spread[:, 0] = 0.0  # each group's least, in the box: 3 of the 15 patches with heat are the person's
    maps = [on_person, spread, on_person, on_person]

    def explained(model, tokens, pose, kept, full):  # the clip's row number is in its tokens
        return [
            explain.ClipExplanation(np.ones(6) / 6, None, np.ones((8, 16), bool), maps[int(row)], None, None)
            for row in tokens[:, 0, 0, 0].tolist()
        ]

    def tokens(rows):
        patches = np.tile(np.arange(16), (len(rows), 8, 1)) if kept is None else np.asarray(kept)[rows]
        grid = torch.zeros(len(rows), 8, patches.shape[-1], 32)
        grid[..., 1] = torch.as_tensor(patches, dtype=torch.float32)
        grid[..., 2] = torch.arange(8.0)[:, None]
        grid[:, 0, 0, 0] = torch.as_tensor(rows, dtype=torch.float32)
        return grid

    monkeypatch.setattr(explain, "explain_clips", explained)
    clips = pd.DataFrame(
        {
            "video_id": ["a", "b", "c", "a"],
            "split": ["test", "test", "test", "train"],
            "label_idx": [2, 3, 4, 2],
            "frame_idx": [np.arange(16)] * 4,
            **dict(zip(explain.CROP_COLUMNS, [0.0, 0.0, 100.0, 100.0], strict=True)),
        }
    )
    store = SimpleNamespace(
        clips=clips,
        full_patches_per_group=16,
        pose=lambda rows: (
            np.zeros((len(rows), 16, 17, 2), np.float32),
            np.ones((len(rows), 16, 17), np.float32),
            np.ones((len(rows), 16, 17), bool),
        ),
        tokens=tokens,
        kept_patches=lambda rows: None if kept is None else np.asarray(kept)[rows],
    )
    tracks = pd.DataFrame(
        {
            "video_id": ["a"] * 16 + ["b"] * 16,  # video c has no box
            "frame_idx": list(range(16)) * 2,
            "is_primary": True,
            **dict(zip(("x1", "y1", "x2", "y2"), [10.0, 10.0, 60.0, 60.0], strict=True)),
        }
    )
    return store, tracks


def test_the_heat_over_the_test_clips_is_the_mean_over_those_with_a_box(monkeypatch):
    """evaluate's summary of every test clip: one whose selector heat lies all on the person (the upper-left
    quarter of its crop) and one with a fifth of its heat there give a mean mass of 0.6 against a share of
    0.25, one clip in two above its share; a training clip and a test clip without a box are left out."""
    from transmodal import explain

    store, tracks = _test_split(monkeypatch)
    summary = explain.heat_over_test_clips(_head(), store, tracks, batch_size=2)
    assert summary == {
        "selector token scores": {
            "clips": 2,
            "mass_in_box": pytest.approx(0.6),
            "box_share": pytest.approx(0.25),
            "clips_above_share": 0.5,
            "baseline": "each group's least score",
        }
    }


def test_patches_on_and_clear_of_a_box():
    """A box from 0.1 to 0.6 of the crop holds the centres of patches 0, 1, 4, 5, grazes 2, 6, 8, 9, 10 and
    leaves 3, 7, 11-15 clear; a box on patch edges grazes none; a group without a box has neither."""
    from transmodal.explain import patches_clear_of_box, patches_in_box

    boxes = np.asarray([[0.1, 0.1, 0.6, 0.6], [0.0, 0.0, 0.5, 0.5], [np.nan] * 4])
    on, clear = patches_in_box(boxes, 16), patches_clear_of_box(boxes, 16)
    assert np.flatnonzero(on[0]).tolist() == [0, 1, 4, 5]
    assert np.flatnonzero(clear[0]).tolist() == [3, 7, 11, 12, 13, 14, 15]
    assert np.flatnonzero(on[1]).tolist() == [0, 1, 4, 5] and (clear[1] == ~on[1]).all()
    assert not on[2].any() and not clear[2].any()


@pytest.mark.parametrize("keep", [False, True])
def test_the_probes_get_each_test_clip_s_tokens_on_and_clear_of_the_box(monkeypatch, keep):
    """The same pass hands the probes each test clip with a box, from its groups with a box only: up to
    eight of its tokens on the box and eight clear of it (none the box grazes), and the mean token on and
    clear of it, with its label and recording; with half the patches kept (every other one, a different half
    in each group and clip), among those kept."""
    from transmodal import explain

    kept = None
    if keep:
        kept = [[sorted((g + row + 2 * k) % 16 for k in range(8)) for g in range(8)] for row in range(4)]
    store, tracks = _test_split(monkeypatch, kept)
    tracks = tracks[(tracks["video_id"] != "b") | (tracks["frame_idx"] >= 4)]  # b: no box in groups 0, 1
    collector = explain.PersonTokens({"a": "recording 1", "b": "recording 2", "c": "recording 2"})
    explain.heat_over_test_clips(_head(), store, tracks, batch_size=3, person_tokens=collector)
    assert [(label, group) for _, _, label, group in collector.means] == [
        (2, "recording 1"),
        (3, "recording 2"),
    ]
    on_box, clear = {0, 1, 4, 5}, {3, 7, 11, 12, 13, 14, 15}
    for row, first_group, (tokens, on, _), (on_mean, clear_mean, *_) in zip(
        (0, 1), (0, 2), collector.samples, collector.means, strict=True
    ):
        held = [set(range(16)) if kept is None else set(kept[row][g]) for g in range(first_group, 8)]
        on_tokens = [(g, p) for g, patches in enumerate(held, first_group) for p in sorted(patches & on_box)]
        clear_tokens = [
            (g, p) for g, patches in enumerate(held, first_group) for p in sorted(patches & clear)
        ]
        assert on.sum() == 8 and (~on).sum() == min(8, len(clear_tokens))
        pairs = {(int(g), int(p)) for p, g in tokens[:, 1:3]}
        picked_on = {(int(g), int(p)) for p, g in tokens[on, 1:3]}
        assert picked_on <= set(on_tokens) and pairs - picked_on <= set(clear_tokens)
        assert on_mean[1:3] == pytest.approx(np.mean([(p, g) for g, p in on_tokens], axis=0))
        assert clear_mean[1:3] == pytest.approx(np.mean([(p, g) for g, p in clear_tokens], axis=0))


def test_the_probes_read_what_the_tokens_hold():
    """Tokens that differ on the box and hold the class only there: the box probe is right nearly always and
    the class is read from the person's tokens. The background is the recording's (two videos each) and so
    is the class, so a probe fitted on one video of a recording and scored on the other reads the class
    from the background as well (folded by video it does); folded by recording, it cannot (below the
    commonest class's share, 0.3). Tokens that say nothing give a box probe near 0.5."""
    from transmodal.explain import PersonTokens

    rng = np.random.default_rng(0)
    classes, scenes = rng.normal(size=(4, 16)), 1.5 * rng.normal(size=(10, 16))
    recordings = {f"v{video}": f"r{video // 2}" for video in range(20)}  # two videos each, one class
    on_box = np.zeros((8, 16), bool)
    on_box[:, :4] = True
    clear = np.zeros((8, 16), bool)
    clear[:, 8:] = True  # patches 4-7: grazed
    person, blank, by_video = PersonTokens(recordings), PersonTokens(recordings), PersonTokens()
    for clip in range(80):
        video = clip // 4
        label = (video // 2) % 4
        tokens = rng.normal(size=(8, 16, 16))
        blank.add(tokens.copy(), on_box, clear, label, f"v{video}", clip)
        tokens[on_box] += 2.0 + classes[label]
        tokens[~on_box] += scenes[video // 2]
        person.add(tokens, on_box, clear, label, f"v{video}", clip)
        by_video.add(tokens, on_box, clear, label, f"v{video}", clip)
    told = person.summary()
    assert told["clips"] == 80 and told["groups"] == 10 and told["tokens"] == 80 * 16 and told["folds"] == 5
    assert told["clips_without_tokens_on_and_clear_of_box"] == 0 and "skipped" not in told
    assert told["on_box_balanced_accuracy"] > 0.95
    assert told["class_from_person_tokens"] > 0.9
    assert told["class_from_background_tokens"] < told["class_majority_share"]
    assert by_video.summary()["class_from_background_tokens"] > 0.9
    assert told["class_majority_share"] == pytest.approx(0.3)  # classes 0 and 1 have three recordings
    assert 0.35 < blank.summary()["on_box_balanced_accuracy"] < 0.65


def test_the_probes_say_what_they_could_not_fit():
    """One recording cannot be folded; two recordings of one class each leave each fold's fitted clips of
    one class, so only the box probe is scored; a clip with no token clear of its box is counted and left out."""
    from transmodal.explain import PersonTokens

    rng = np.random.default_rng(1)
    on_box = np.zeros((8, 16), bool)
    on_box[:, :4] = True
    alone, two = PersonTokens(), PersonTokens()
    alone.add(rng.normal(size=(8, 16, 16)), on_box, ~on_box, 0, "v", 0)
    assert alone.summary() == {
        "clips": 1,
        "clips_without_tokens_on_and_clear_of_box": 0,
        "groups": 1,
        "skipped": ["the clips probed come from 1 group(s); folds need 2"],
    }
    for clip in range(4):
        two.add(rng.normal(size=(8, 16, 16)), on_box, ~on_box, clip % 2, f"v{clip % 2}", clip)
    two.add(rng.normal(size=(8, 16, 16)), on_box, np.zeros_like(on_box), 0, "v0", 9)
    told = two.summary()
    assert told["clips"] == 4 and told["clips_without_tokens_on_and_clear_of_box"] == 1 and told["folds"] == 2
    assert told["on_box_balanced_accuracy"] is not None
    assert told["class_from_person_tokens"] is None and told["class_from_background_tokens"] is None
    assert [line.split(":")[0] for line in told["skipped"]] == [
        "class_from_person_tokens",
        "class_from_background_tokens",
    ]


def _clips_with_the_class_on(where: str, count: int, gen: torch.Generator, classes: torch.Tensor):
    """Token grids (count, 8, 16, 32) of noise with a class vector added on a box one patch wide and three tall
    that sits anywhere in the 4 x 4 grid (``where`` "person"), on every patch off it ("background") or on
    both, at half strength off it ("both"); random pose; the boxes in the crop's unit square (x1, y1, x2,
    y2 per group)."""
    strength = {"person": (1.0, 0.0), "background": (0.0, 1.0), "both": (1.0, 0.5)}[where]
    labels = torch.randint(0, len(classes), (count,), generator=gen)
    tokens = torch.randn(count, 8, 16, 32, generator=gen)
    boxes = np.zeros((count, 8, 4))
    for i in range(count):
        x, y = int(torch.randint(0, 4, (1,), generator=gen)), int(torch.randint(0, 2, (1,), generator=gen))
        person = torch.zeros(4, 4, dtype=torch.bool)
        person[y : y + 3, x] = True
        tokens[i][:, person.flatten()] += strength[0] * classes[labels[i]]
        tokens[i][:, ~person.flatten()] += strength[1] * classes[labels[i]]
        boxes[i] = [x / 4, y / 4, (x + 1) / 4, (y + 3) / 4]
    return tokens, torch.rand(count, 16, 17, 2, generator=gen), labels, boxes


@pytest.mark.parametrize("where", ["person", "background", "both"])
def test_a_trained_head_s_maps_sit_where_the_class_is(where):
    """The maps follow the evidence: a head trained on clips whose class lies only on the person's patches
    puts the selector's heat and the pose tokens' attention on the person's box in every held-out clip,
    above the box's share (3 of 16 patches); trained with the class only off the box, it puts them below
    it in every clip. Read with x for y (the box turned on its side, as a grid drawn in the wrong order
    would place it), the same maps fail both. With the class on the person and at half strength on the
    background too (the demo's case in kind, decision 28), the selector's heat stays on the person in every
    clip while the pose tokens' attention keeps little of its lean to it."""
    from transmodal.explain import explain_clips, heat_in_box
    from transmodal.model import TransModal

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    classes = torch.randn(4, 32, generator=gen)
    model = TransModal(
        ModelConfig(token_norm="batch"),
        SelectorConfig(top_k_frames=4, top_k_tokens=4),
        dim=32, num_classes=4, num_frames=16, tubelet_size=2, patches_per_group=16,
    )  # fmt: skip
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    tokens, pose, labels, _ = _clips_with_the_class_on(where, 256, gen, classes)
    model.train()
    for _ in range(150):
        batch = torch.randint(0, 256, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(tokens[batch], pose[batch]).logits, labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tokens, pose, labels, boxes = _clips_with_the_class_on(where, 32, gen, classes)
    explained = explain_clips(model, tokens, pose)
    assert np.mean([e.probabilities.argmax() == int(y) for e, y in zip(explained, labels, strict=True)]) > 0.9

    def masses(name: str, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = [heat_in_box(e.heat(2 / 16)[name][0], b) for e, b in zip(explained, boxes, strict=True)]
        return tuple(np.asarray(pairs).T)

    for name in ("selector token scores", "pose queries over RGB"):
        mass, share = masses(name, boxes)
        sideways, _ = masses(name, boxes[..., [1, 0, 3, 2]])
        assert share == pytest.approx(3 / 16)
        if where == "person":
            assert mass.mean() > 0.4 and (mass > share).all(), (name, mass)
            assert sideways.mean() < 0.3 and not (sideways > share).all(), (name, sideways)
        elif where == "both" and name == "selector token scores":
            assert mass.mean() > 0.3 and (mass > share).all(), (name, mass)
        elif where == "both":
            assert mass.mean() < 0.25, (name, mass)
        else:
            assert mass.mean() < 0.15 and (mass < share).all(), (name, mass)
            assert not (sideways < share).all(), (name, sideways)


def test_box_share_of_frame():
    import pandas as pd

    from transmodal.explain import box_share_of_frame

    # a 200 x 100 (w x h) frame; group 0: a 50 x 50 box, then one twice as wide; group 1: a box half outside
    tracks = pd.DataFrame(
        {
            "video_id": ["v"] * 5,
            "frame_idx": [0, 1, 2, 3, 3],
            "is_primary": [True, True, True, True, False],
            "x1": [0.0, 0.0, 150.0, 150.0, 0.0],
            "y1": [0.0, 0.0, 50.0, 50.0, 0.0],
            "x2": [50.0, 100.0, 250.0, 250.0, 200.0],
            "y2": [50.0, 50.0, 100.0, 100.0, 100.0],
        }
    )
    share = box_share_of_frame(tracks, "v", np.arange(4), (100, 200), tubelet_size=2)
    assert share == pytest.approx((100 * 50 + 50 * 50) / 2 / (200 * 100))
    assert np.isnan(box_share_of_frame(tracks, "w", np.arange(4), (100, 200), tubelet_size=2))


def test_explain_writes_figures_3_and_4(model_dir, camera_video, tmp_path, capsys):
    heat, pose = tmp_path / "heat.png", tmp_path / "pose.png"
    argv = [
        "explain",
        str(camera_video),
        "--model",
        str(model_dir),
        "--out",
        str(heat),
        "--pose-out",
        str(pose),
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    for path in (heat, pose):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run([*argv, "--window", "7"], capsys)
    assert code == 2 and "--window is 7; this video has windows 0..1" in err


@pytest.mark.parametrize("fps", [10.0, 30.0])
def test_windows_span_the_same_time_at_any_frame_rate(model_dir, tmp_path, fps):
    """frames.reference_fps recorded in the model folder: 16 samples at stride 2 of 25 fps, i.e. 1.2 s from a
    window's first to its last frame, at 10 fps (frames repeat) as at 30 fps; an older folder without it keeps
    every stride-th frame, as it was trained."""
    from transmodal.predict import predict_video

    path = tmp_path / "video.avi"
    camera_like_video(path, frames=int(4 * fps), size=(320, 240), fps=fps)
    prediction, _ = predict_video(path, model_dir, progress=False)
    first = np.asarray(prediction.windows["frame_idx"].iloc[0])
    assert abs((first[-1] - first[0]) / fps - 15 * 2 / 25) <= 1 / fps
    assert (np.diff(first) == 0).any() == (fps < 12.5)  # a 10 fps frame fills two samples

    older = _broken_model(
        model_dir, tmp_path, _edit_config(lambda c: c["pipeline"]["frames"].pop("reference_fps"))
    )
    prediction, _ = predict_video(path, older, progress=False)
    first = np.asarray(prediction.windows["frame_idx"].iloc[0])
    assert np.diff(first).tolist() == [2] * 15


def test_a_slow_video_is_one_clip_short_only_when_its_time_samples_are(model_dir, tmp_path):
    """A 4 fps time-lapse: each frame stands for about three time samples (12.5 a second), so 6 frames make
    whole windows and 4 frames one padded window, said in samples, not in frames."""
    from transmodal.predict import predict_video

    for frames, padded in ((6, False), (4, True)):
        path = tmp_path / f"slow{frames}.avi"
        camera_like_video(path, frames=frames, size=(160, 120), fps=4.0)
        prediction, _ = predict_video(path, model_dir, progress=False)
        assert set(prediction.windows["padded"]) == {padded}
        short = [note for note in prediction.notes if "fewer than one clip" in note]
        assert short == (
            [f"only {len(prediction.samples)} time samples, fewer than one clip (16): one window, padded"]
            if padded
            else []
        )


def test_a_variable_frame_rate_video_is_sampled_by_timestamp(model_dir, tmp_path):
    """A phone's video: 3 s at 30 fps, then 3 s at 10 fps (header: the 15 fps average). Every window spans
    1.2 s of the video, as at a constant rate, and predict says the rate varies. --out plays 6 s: one frame
    per time sample at 12.5 fps (a 10 fps frame is written once or twice)."""
    from transmodal.predict import predict_video, write_annotated

    path = tmp_path / "phone.mp4"
    times = write_vfr(path, [1 / 30] * 90 + [1 / 10] * 30, size=(160, 120))
    prediction, _ = predict_video(path, model_dir, progress=False)
    assert any(note.startswith("variable frame rate: ") for note in prediction.notes)
    spans = [times[frames[-1]] - times[frames[0]] for frames in prediction.windows["frame_idx"]]
    assert len(spans) >= 4 and np.allclose(spans, 15 * 2 / 25, atol=0.1)  # 0.1 s: half the slow gap, twice
    write_annotated(prediction, tmp_path / "phone-annotated.avi")
    capture = cv2.VideoCapture(str(tmp_path / "phone-annotated.avi"))
    try:
        fps, count = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    assert fps == pytest.approx(12.5) and count == len(prediction.samples) > len(prediction.frame_idx)
    assert count / fps == pytest.approx(times[-1] + 1 / 10, abs=0.08)  # the source's 6 s


def test_a_model_trained_on_dropped_tokens_predicts_and_explains_with_the_same_keep(
    tiny_checkpoints, camera_video, tmp_path, capsys
):
    """The model folder records backbone.keep; predict drops the same share of each window's patches and
    explain places the maps back on the whole grid, NaN where the backbone never looked."""
    from transmodal.predict import explain_window, predict_video
    from transmodal.training.train import load_checkpoint

    folder = write_model_folder(tmp_path / "keep", tiny_checkpoints, keep=0.5)
    prediction, model = predict_video(
        camera_video, folder, device="cpu", progress=False, explain_size=64, window=0
    )
    windows = len(prediction.logits)
    assert prediction.kept_patches.shape == (windows, 8, 8) and prediction.full_patches == 16
    assert prediction.candidates.kept[0][0].shape[:2] == (8, 8)
    explanation, _, _, _ = explain_window(prediction, model, 0)
    for values in explanation.maps().values():
        assert values.shape == (8, 16) and np.isnan(values).sum(axis=1).min() >= 8  # 8 of 16 never seen
    assert explanation.kept.sum(axis=1).max() <= 8
    loaded, _ = load_checkpoint(folder, "cpu")
    assert loaded.patches_per_group == 8
    code, out, err = run(["predict", str(camera_video), "--model", str(folder)], capsys)
    assert code == 0 and "\n5. " in out, err  # the top-5 list


def test_a_backbone_snapshot_other_than_the_trained_one_is_said(model_dir, camera_video, tmp_path):
    """The model folder records the hub commit its features were made with; another one here is a note."""
    from transmodal.predict import predict_video

    def other_revision(config):
        config["backbone"]["checkpoint_revision"] = "4" * 40

    folder = _broken_model(model_dir, tmp_path, _edit_config(other_revision))
    prediction, _ = predict_video(camera_video, folder, device="cpu", progress=False)
    assert any(f"at revision {'4' * 40}; here it is revision ?" in note for note in prediction.notes)
    prediction, _ = predict_video(camera_video, model_dir, device="cpu", progress=False)
    assert not any("at revision" in note for note in prediction.notes)


def test_predict_shrinks_frames_as_the_model_s_training_frames_were(model_dir, tmp_path, capsys):
    """Without --max-side, predict keeps frames at the model folder's frames.max_side, the size the frames
    stage kept its training frames at; --max-side still overrides it."""
    trained_at_96 = _broken_model(model_dir, tmp_path, _edit_config(
        lambda config: config["pipeline"]["frames"].update(max_side=96)
    ))  # fmt: skip
    path = tmp_path / "wide.avi"
    plain_video(path, 2, (320, 240))
    code, out, err = run(["predict", str(path), "--model", str(trained_at_96)], capsys)
    assert code == 0, err
    assert "frames shrunk from 320x240 to 96x72 (--max-side 96)" in out
    code, out, err = run(["predict", str(path), "--model", str(trained_at_96), "--max-side", "160"], capsys)
    assert code == 0, err
    assert "frames shrunk from 320x240 to 160x120 (--max-side 160)" in out
    (tmp_path / "null").mkdir()
    at_source_size = _broken_model(model_dir, tmp_path / "null", _edit_config(
        lambda config: config["pipeline"]["frames"].update(max_side=None)
    ))  # fmt: skip
    code, out, err = run(["predict", str(path), "--model", str(at_source_size)], capsys)
    assert code == 0, err
    assert "frames shrunk" not in out  # trained on frames at the source's size: run at it
