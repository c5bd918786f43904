"""predict's decoding by timestamp against decoding by frame number, side by side in one run.

    python benchmarks/decode_by_time.py [--seconds S] [--size 1920x1080] [--fps 30] [--repeats R]

Writes one constant-rate MPEG-4 video (moving noise blocks, so the codec has work to do) and decodes it
with ``decode_video`` as predict does (stride 2 of 25 fps, --max-side 1280), by frame number and by
timestamp (``by_time``, which converts every frame because the choice waits for the next timestamp).
Both keep the same frames here (a constant rate), so the ratio is the cost of sampling a phone's
variable-rate video evenly: by_time seconds / by-number seconds (the median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from transmodal.data.frames import decode_video


def write_video(path: Path, seconds: float, size: tuple[int, int], fps: float) -> int:
    width, height = size
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames = int(seconds * fps)
    for n in range(frames):
        moved = np.roll(blocks, n, axis=1)
        writer.write(cv2.resize(moved, size, interpolation=cv2.INTER_NEAREST))
    writer.release()
    return frames


def timed(path: Path, by_time: bool, max_side: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    video = decode_video(path, "v", 2, max_side=max_side, reference_fps=25.0, by_time=by_time)
    return time.perf_counter() - started, video.frame_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--max-side", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        frames = write_video(path, args.seconds, size, args.fps)
        by_number, by_time = [], []
        for _ in range(args.repeats):  # alternated, so both see the same machine load
            seconds, kept_number = timed(path, False, args.max_side)
            by_number.append(seconds)
            seconds, kept_time = timed(path, True, args.max_side)
            by_time.append(seconds)
            assert kept_number.tolist() == kept_time.tolist(), (
                "a constant-rate file must keep the same frames"
            )
    number, timestamp = statistics.median(by_number), statistics.median(by_time)
    print(
        f"{frames} frames of {args.size} at {args.fps:g} fps, {len(kept_number)} kept, --max-side {args.max_side}"
    )
    print(f"by frame number: {number:.2f} s ({frames / number:.0f} source frames/s)")
    print(f"by timestamp:    {timestamp:.2f} s ({frames / timestamp:.0f} source frames/s)")
    print(f"ratio by_time / by_number: {timestamp / number:.2f}")


if __name__ == "__main__":
    main()
