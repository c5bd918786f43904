"""CPU time of the pose stage's worker per frame, with the crop warped in cache-sized chunks or in one pass.

    python benchmarks/pose_worker.py [--videos 100] [--frames 48] [--rounds 6]

The forked worker of ``pose.cpu_worker: process`` reads every batch's frames (FrameStore), crops them
(``PoseEstimator.preprocess``) and decodes the heatmaps of the batch before; the forward runs in the other
process. When the worker is slower than the forward, the stage waits for it. This times exactly that work on
one thread (thread CPU time), on synthetic videos laid out as the demo keeps them (48 frames each), with
``pose.CROP_CHUNK_BYTES`` at its value and at a value so large that each batch is warped in one pass; the two
alternate, ``--rounds`` times, so machine drift hits both alike. Prints the median and the minimum per frame
and their ratio (chunked / one pass; lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from transmodal.data.frames import FrameStore, extract_frames
from transmodal.params import DetectConfig, PoseConfig
from transmodal.vision import pose as pose_module
from transmodal.vision.detect import iter_frame_batches, run_detect
from transmodal.vision.pose import KeptLayout, PoseEstimator, primary_boxes, stored_videos

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detect_pose import write_checkpoints, write_videos  # noqa: E402 (a sibling script)

ONE_PASS = 10**15  # bytes: more than any batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=48, help="frames per video")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the worker's setting
    chunked = pose_module.CROP_CHUNK_BYTES
    with tempfile.TemporaryDirectory(prefix="bench-pose-worker-") as tmp:
        tmp = Path(tmp)
        index, annotations = write_videos(tmp / "videos", args.videos, args.frames)
        extract_frames(
            index,
            tmp / "videos",
            tmp / "frames",
            stride=1,
            clip_length=16,
            videos_per_shard=64,
            progress=False,
        )
        store = FrameStore(tmp / "frames")
        _, pose_dir = write_checkpoints(tmp / "checkpoints", "tiny")
        estimator = PoseEstimator.from_config(PoseConfig(source="model", checkpoint=pose_dir, device="cpu"))
        tracks, _ = run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
        videos = stored_videos(store)
        layout = KeptLayout.of(videos)
        boxes = layout.split(primary_boxes(tracks, layout)[0])
        crop = estimator.preprocess(store.read(store.video_ids[0])[1][:1], np.array([[10.0, 20, 40, 100]]))
        heatmaps = torch.rand(args.batch_size, *estimator.heatmap_shape(tuple(crop.shape[-2:])))
        frames = len(layout.frame_idx)

        def worker(chunk_bytes: int) -> float:
            """Thread CPU seconds of reading, cropping and decoding every batch (the worker's work)."""
            pose_module.CROP_CHUNK_BYTES = chunk_bytes
            start = time.thread_time()
            for batch in iter_frame_batches(store, list(videos), args.batch_size, read_ahead=False):
                batch_boxes = np.concatenate(
                    [
                        boxes[piece.video_id][piece.start : piece.start + len(piece.frame_idx)]
                        for piece in batch
                    ]
                )
                pixel_values = estimator.preprocess([piece.frames for piece in batch], batch_boxes)
                estimator.decode(SimpleNamespace(heatmaps=heatmaps[: len(pixel_values)]), batch_boxes)
            return time.thread_time() - start

        worker(chunked)  # warm-up
        times: dict[str, list[float]] = {"chunked": [], "one pass": []}
        for _ in range(args.rounds):
            times["chunked"].append(worker(chunked))
            times["one pass"].append(worker(ONE_PASS))
        pose_module.CROP_CHUNK_BYTES = chunked

    print(
        f"pose worker (read + crop + decode, 1 thread), {args.videos} videos x {args.frames} frames "
        f"({frames} frames), batch {args.batch_size}, {args.rounds} rounds alternating"
    )
    for name, values in times.items():
        detail = f" ({chunked:,} bytes of float pixels at a time)" if name == "chunked" else ""
        print(
            f"{name:<9} median {statistics.median(values) / frames * 1e3:.4f} ms/frame, "
            f"min {min(values) / frames * 1e3:.4f}{detail}"
        )
    ratio = statistics.median(times["chunked"]) / statistics.median(times["one pass"])
    print(
        f"chunked / one pass: {ratio:.2f} (median), {min(times['chunked']) / min(times['one pass']):.2f} (min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
