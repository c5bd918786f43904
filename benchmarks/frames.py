"""Frames stage throughput vs a bare OpenCV read loop over the same videos, side by side in one run.

    python benchmarks/frames.py [--subjects N] [--repeats R]

Prints frames/s of both and the ratio stage_time / bare_decode_time (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import pandas as pd

from transmodal.data.frames import extract_frames
from transmodal.data.index import index_kth
from transmodal.data.synth import generate
from transmodal.params import SynthConfig


def bare_decode(paths: list[Path]) -> int:
    """Read every frame with OpenCV and do nothing else; returns the number of frames read."""
    count = 0
    for path in paths:
        capture = cv2.VideoCapture(str(path))
        while capture.read()[0]:
            count += 1
        capture.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stride", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        generate(root, SynthConfig(subjects=args.subjects, scenarios=("d1", "d4")), progress=False)
        index, _ = index_kth(root, "paper")
        paths = [root / p for p in index["path"]]
        bare, stage = [], []
        for repeat in range(args.repeats):  # interleaved, so both see the same machine state
            start = time.perf_counter()
            frames_read = bare_decode(paths)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            summary = extract_frames(
                pd.DataFrame(index), root, Path(tmp) / f"frames{repeat}", args.stride, 16, 64, progress=False
            )
            stage.append(time.perf_counter() - start)
        bare_s, stage_s = statistics.median(bare), statistics.median(stage)
        print(
            f"videos: {len(paths)}, frames decoded: {frames_read}, kept: {summary['frames_kept']} (stride {args.stride})"
        )
        print(
            f"bare OpenCV decode : {bare_s:7.2f} s  {frames_read / bare_s:8.0f} frames/s (median of {args.repeats})"
        )
        print(
            f"frames stage       : {stage_s:7.2f} s  {frames_read / stage_s:8.0f} frames/s (median of {args.repeats})"
        )
        print(f"ratio stage / bare : {stage_s / bare_s:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
