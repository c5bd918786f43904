"""Shared fixtures: tiny videos written with OpenCV, tiny checkpoints, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and OpenMP threads spin badly when the two cores are shared
# (another test process, a parallel job): one thread keeps test times stable.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_test_video(
    path: Path, num_frames: int, size: tuple[int, int] = (64, 48), seed: int = 0
) -> np.ndarray:
    """Write an MJPG .avi of moving noise; returns the frames as written (T, H, W, 3) BGR."""
    width, height = size
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(num_frames, height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return frames


def write_vfr(path: Path, durations: list[float], size=(64, 48)) -> np.ndarray:
    """An MPEG-4 .mp4 whose frame n lasts ``durations[n]`` seconds (a phone's variable frame rate), frame n
    coloured by n (:func:`vfr_frame_numbers` reads it back); the frames' times in seconds. Written with PyAV
    (supervision's dependency): OpenCV's writer only writes a constant rate."""
    import fractions

    import av

    ticks = fractions.Fraction(1, 30000)  # MPEG-4 part 2 allows a time base of at most 16 bits
    times = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=round(1 / float(np.median(durations))))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = ticks
        for n, time in enumerate(times):
            bits = (n >> np.arange(8)) & 1  # n in binary, one 8-pixel column a bit: survives MPEG-4
            row = np.repeat(bits * 255, size[0] // 8).astype(np.uint8)
            pixels = np.broadcast_to(row[None, :, None], (size[1], size[0], 3)).copy()
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = round(time * 30000), ticks
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return times


def vfr_frame_numbers(frames: np.ndarray) -> np.ndarray:
    """The frame number each frame of :func:`write_vfr` was coloured with (RGB frames)."""
    width = frames.shape[2] // 8
    bits = frames[:, frames.shape[1] // 2, width // 2 :: width, 0] > 128  # the middle of each column
    return (bits * (1 << np.arange(bits.shape[1]))).sum(axis=1)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny random RT-DETR / ViTPose++ / VideoMAE folders, written once per session."""
    from transmodal.vision.tiny import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The hand-made videos of ``tests/test_detect.py`` (solo, duo, gap, empty; stride 2): (FrameStore,
    ground-truth annotations). Built once per test module that asks for it."""
    from tests.test_detect import build_dataset

    return build_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def gt_tracks(dataset):
    """The detect stage's tracks and metrics from the ground truth of :func:`dataset`."""
    from transmodal.params import DetectConfig
    from transmodal.vision.detect import run_detect

    store, annotations = dataset
    return run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
