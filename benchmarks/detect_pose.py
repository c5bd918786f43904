"""Throughput of the detect and pose stages against their bare model forward.

    python benchmarks/detect_pose.py [--quick] [--stage both|detect|pose] [--cpu-worker process|thread|none]
                                     [--checkpoint-size tiny|real] [--device auto|cpu|cuda]
                                     [--precision fp32|fp16|bf16] [--score-threshold 0.5] [--crop-chunk-bytes N]

Each stage runs on synthetic videos (pose on as many frames as the demo keeps, 300 videos x 48 frames;
detect, whose forward dominates, on the first 32) twice in one process:

- stage: the stage code end to end, model already loaded: read and decode the frames from the FrameStore,
  batching, pre-processing, forward, post-processing, ByteTrack (detect), the output table, and writing it
  as Parquet to a temporary folder;
- bare: only ``model(pixel_values)`` (plus ``dataset_index`` for ViTPose++) on tensors made beforehand, in
  the same batch shapes (full batches and the last, partial one), 3 distinct tensors per shape taken in turn.

Both print frames per second and their ratio (target: stage >= 0.8 x bare). On the CPU the bare forward runs
with as many torch threads as the stage's forward: all of torch's for detect; one fewer for pose, whose stage
leaves a core to the worker that reads, crops and decodes (``--cpu-worker``, ``pose.cpu_worker``: a forked
process by default, or a thread; ``none``: the plain loop, all threads). For pose it also prints how long
the stage's own forwards took against the bare ones (how much the worker beside them slows them) and the
rest of the stage's time. Timings are the median of ``--repeats`` runs after one warm-up, stage and bare
alternating so machine drift hits both alike. Each stage run also gets its own ratio, against the mean of
the bare runs right before and after it (median and range), and those whose two bare runs agree within 4 %
are shown apart as "steady": on a machine whose speed swings from one second to the next, they are the
pairs where the stage run most likely saw the speed its bare runs did.
``--checkpoint-size tiny`` uses the random tiny checkpoints of the tests (CPU-sized); ``real`` builds
random-weight models of the real sizes from their configs (RT-DETR r50vd default config with the COCO labels,
640 x 640; ViTPose++ base, 6 experts, 256 x 192) for a GPU run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transmodal.data.frames import FrameStore, extract_frames
from transmodal.io import write_parquet
from transmodal.params import DetectConfig, PoseConfig
from transmodal.vision import pose as pose_module
from transmodal.vision.detect import PersonDetector, forward_threads, run_detect
from transmodal.vision.pose import PoseEstimator, run_pose

WIDTH, HEIGHT = 160, 120  # the synthetic KTH-like frame size
STEADY = 0.04  # a stage run counts as steady when the bare runs before and after it differ by at most 4 %


def write_videos(root: Path, num_videos: int, num_frames: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic KTH-like videos (the project's renderer) -> (index, their ground truth)."""
    from transmodal.data.synth import VideoSpec, render_video, write_avi

    root.mkdir(parents=True, exist_ok=True)
    rows, annotations = [], []
    for i in range(num_videos):
        video_id = f"v{i:03d}"
        spec = VideoSpec(subject=i % 25 + 1, action="walking", scenario="d1", num_frames=num_frames, seed=i)
        frames, truth = render_video(spec)
        write_avi(frames, root / f"{video_id}.avi")
        annotations.append(truth.assign(video_id=video_id))
        rows.append({"video_id": video_id, "path": f"{video_id}.avi"})
    return pd.DataFrame(rows), pd.concat(annotations, ignore_index=True)


def write_checkpoints(out: Path, size: str) -> tuple[str, str]:
    """Detector and pose folders (save_pretrained format) of the requested size."""
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    from transmodal.vision.tiny import COCO_LABELS, write_tiny_checkpoints

    if size == "tiny":
        folders = write_tiny_checkpoints(out)
        return folders["detector"], folders["pose"]

    torch.manual_seed(0)
    id2label = {i: name.replace("_", " ") for i, name in enumerate(COCO_LABELS)}
    detector_config = RTDetrConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    RTDetrForObjectDetection(detector_config).eval().save_pretrained(out / "detector")
    # the processor of PekingU/rtdetr_r50vd_coco_o365: 640 x 640 bilinear, rescale, no normalising or padding
    RTDetrImageProcessor(
        size={"height": 640, "width": 640}, do_normalize=False, do_pad=False
    ).save_pretrained(out / "detector")
    backbone = VitPoseBackboneConfig(num_experts=6, part_features=192, out_indices=[12])  # ViTPose++ base
    pose_config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    VitPoseForPoseEstimation(pose_config).eval().save_pretrained(out / "pose")
    VitPoseImageProcessor().save_pretrained(out / "pose")  # 256 x 192, ImageNet mean/std
    return str(out / "detector"), str(out / "pose")


def batch_sizes(frames: int, batch_size: int) -> list[int]:
    return [batch_size] * (frames // batch_size) + ([frames % batch_size] if frames % batch_size else [])


def bare_inputs(
    frames: int, batch_size: int, item_shape: tuple, device: torch.device, dtype: torch.dtype, pool: int = 3
) -> list[torch.Tensor]:
    """Random model inputs in the stage's batch shapes (full batches and the last, partial one): ``pool``
    distinct tensors per shape, taken in turn, as the stage's crops come from a ring of 3 buffers. Making one
    tensor per batch instead would hold the whole run's inputs (530 MB for pose) in this process during the
    stage runs, and the pose stage's fork and its worker's exit cost more in a bigger process than they do
    in the pipeline."""
    made: dict[int, list[torch.Tensor]] = {}  # batch size -> its tensors
    inputs = []
    for n in batch_sizes(frames, batch_size):
        tensors = made.setdefault(
            n, [torch.randn(n, *item_shape, device=device).to(dtype) for _ in range(pool)]
        )
        inputs.append(tensors[len(inputs) % pool])
    return inputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_bare(forward, inputs: list[torch.Tensor], device: torch.device, threads: int) -> float:
    """The forwards alone, with ``threads`` torch threads: the number the stage's forward runs with."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sync(device)
        start = time.perf_counter()
        for pixel_values in inputs:
            forward(pixel_values)
        sync(device)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def time_stage(run, out: Path, device: torch.device) -> tuple[float, pd.DataFrame]:
    sync(device)
    start = time.perf_counter()
    table, _ = run()
    write_parquet(table, out)
    sync(device)
    return time.perf_counter() - start, table


class ForwardClock:
    """Stands in for a model's ``forward`` inside the stage and adds up its wall time (in this process)."""

    def __init__(self, forward, device: torch.device):
        self.forward, self.device, self.seconds = forward, device, 0.0

    def __call__(self, pixel_values):
        start = time.perf_counter()
        outputs = self.forward(pixel_values)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return outputs


def compare(
    name: str,
    run_stage,
    bare_forward,
    inputs,
    frames: int,
    out: Path,
    device,
    repeats: int,
    threads: int,
    clock: ForwardClock | None = None,
) -> dict:
    time_stage(run_stage, out, device)  # warm-up: allocator, kernels, page cache
    bare_times = [time_bare(bare_forward, inputs, device, threads)]  # the one before the first stage run
    stage_times, inside = [], []
    for _ in range(repeats):
        if clock is not None:
            clock.seconds = 0.0
        stage_times.append(time_stage(run_stage, out, device)[0])
        inside.append(clock.seconds if clock is not None else math.nan)
        bare_times.append(time_bare(bare_forward, inputs, device, threads))
    # each stage run between two bare runs: against their mean; "steady" where those two agree within
    # STEADY, i.e. the machine's speed did not visibly change around that stage run
    pairs = [
        ((before + after) / 2 / stage, abs(before - after) / min(before, after) <= STEADY)
        for before, stage, after in zip(bare_times, stage_times, bare_times[1:], strict=False)
    ]
    bare_times = bare_times[1:]
    stage_fps = frames / statistics.median(stage_times)
    bare_fps = frames / statistics.median(bare_times)
    return {
        "stage": name,
        "frames": frames,
        "stage_fps": stage_fps,
        "bare_fps": bare_fps,
        "ratio": stage_fps / bare_fps,
        "pair_ratios": sorted(ratio for ratio, _ in pairs),
        "steady_ratios": sorted(ratio for ratio, steady in pairs if steady),
        "threads": threads,
        "stage_seconds": statistics.median(stage_times),
        "bare_seconds": statistics.median(bare_times),
        "forward_in_stage_seconds": statistics.median(inside),
    }


def pose_steps(store: FrameStore, tracks: pd.DataFrame, estimator: PoseEstimator, batch_size: int) -> dict:
    """Seconds of each pose step alone, one after the other on this thread, over all frames: ``read``
    (FrameStore.read), ``crop`` (the warp to pixel_values), ``forward`` (wall time, torch's threads as set),
    ``decode`` (heatmaps -> keypoints). The single-threaded steps in thread CPU time."""
    primary = tracks[tracks["is_primary"].astype(bool)].set_index(["video_id", "frame_idx"])
    steps = dict.fromkeys(("read", "crop", "forward", "decode"), 0.0)
    for video_id in store.video_ids:
        start = time.thread_time()
        frame_idx, frames = store.read(video_id)
        steps["read"] += time.thread_time() - start
        boxes = primary.loc[[(video_id, int(i)) for i in frame_idx], ["x1", "y1", "x2", "y2"]].to_numpy(float)
        for first in range(0, len(frames), batch_size):
            part = slice(first, first + batch_size)
            start = time.thread_time()
            pixel_values = estimator.preprocess(frames[part], boxes[part])
            steps["crop"] += time.thread_time() - start
            start = time.perf_counter()
            outputs = estimator.forward(pixel_values)
            steps["forward"] += time.perf_counter() - start
            start = time.thread_time()
            estimator.decode(outputs, boxes[part])
            steps["decode"] += time.thread_time() - start
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos and repeats")
    parser.add_argument("--stage", choices=("both", "detect", "pose"), default="both")
    parser.add_argument("--checkpoint-size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument(
        "--person-label",
        default="person",
        help="class counted as person (random tiny weights never propose 'person'; e.g. 'sink' makes the "
        "tiny detector's boxes reach the tracker)",
    )
    parser.add_argument("--track-activation-threshold", type=float, default=0.25)
    parser.add_argument("--detect-batch-size", type=int, default=16)
    parser.add_argument("--pose-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--cpu-worker",
        choices=("process", "thread", "none"),
        default=PoseConfig.cpu_worker,
        help="pose.cpu_worker: where reading + cropping and decoding run during the forward on the CPU (a forked "
        "process or a thread, the forward getting one torch thread fewer; none: a plain loop with all threads)",
    )
    parser.add_argument(
        "--crop-chunk-bytes",
        type=int,
        default=None,
        help="pose crops on the CPU warp this many bytes of float pixels at a time (default: "
        "transmodal.vision.pose.CROP_CHUNK_BYTES; a huge value warps each batch in one pass)",
    )
    parser.add_argument("--videos", type=int, default=None, help="override the number of videos (pose)")
    parser.add_argument(
        "--detect-videos", type=int, default=32, help="the first this many videos for detect (default 32)"
    )
    parser.add_argument("--frames", type=int, default=None, help="override the frames per video")
    args = parser.parse_args(argv)
    # default: pose on as many frames as the demo keeps, laid out as it does (300 videos x 48 kept frames), so
    # its one-off costs (the worker's fork and first batch) weigh as in the pipeline; on fewer frames they
    # weigh more. Detect, forward-bound, on the first 32 videos.
    num_videos, num_frames = (4, 48) if args.quick else (300, 48)
    num_videos, num_frames = args.videos or num_videos, args.frames or num_frames
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.crop_chunk_bytes is not None:
        pose_module.CROP_CHUNK_BYTES = args.crop_chunk_bytes
    repeats = args.repeats or (3 if args.quick else 5)

    with tempfile.TemporaryDirectory(prefix="bench-detect-pose-") as tmp:
        tmp = Path(tmp)
        index, annotations = write_videos(tmp / "videos", num_videos, num_frames)

        def frame_store(videos: pd.DataFrame, name: str) -> FrameStore:
            extract_frames(
                videos,
                tmp / "videos",
                tmp / name,
                stride=1,
                clip_length=16,
                videos_per_shard=64,
                progress=False,
            )
            return FrameStore(tmp / name)

        store = frame_store(index, "frames")
        frames = len(store.frames)
        detect_index = index.head(min(args.detect_videos, len(index)))
        detect_store = frame_store(detect_index, "frames-detect")
        detect_frames = len(detect_store.frames)
        detector_dir, pose_dir = write_checkpoints(tmp / "checkpoints", args.checkpoint_size)

        detect_row = detect_metrics = pose_row = steps = None
        size = crop = None
        device = None
        if args.stage in ("both", "detect"):
            detect_cfg = DetectConfig(
                source="model",
                checkpoint=detector_dir,
                score_threshold=args.score_threshold,
                person_label=args.person_label,
                track_activation_threshold=args.track_activation_threshold,
                batch_size=args.detect_batch_size,
                device=args.device,
                precision=args.precision,
            )
            detector = PersonDetector.from_config(detect_cfg)
            device = detector.device
            size = tuple(detector.preprocess(detect_store.read(detect_store.video_ids[0])[1][:1]).shape[-2:])
            detect_inputs = bare_inputs(
                detect_frames, detect_cfg.batch_size, (3, *size), device, detector.dtype
            )
            detect_row = compare(
                "detect",
                lambda: run_detect(detect_store, detect_cfg, None, progress=False, detector=detector),
                detector.forward,
                detect_inputs,
                detect_frames,
                tmp / "out" / "tracks.parquet",
                device,
                repeats,
                forward_threads(device, overlap=False),  # the detect stage keeps torch's threads
            )
            tracks, detect_metrics = run_detect(
                detect_store, detect_cfg, None, progress=False, detector=detector
            )
            del detect_inputs

        if args.stage in ("both", "pose"):
            pose_cfg = PoseConfig(
                source="model",
                checkpoint=pose_dir,
                batch_size=args.pose_batch_size,
                device=args.device,
                precision=args.precision,
                cpu_worker=args.cpu_worker,
            )
            estimator = PoseEstimator.from_config(pose_cfg)
            overlap = args.cpu_worker != "none"
            device = estimator.device
            # crops of the real people (not the random detector's boxes), on every video
            tracks, _ = run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
            crop = tuple(
                estimator.preprocess(
                    store.read(store.video_ids[0])[1][:1], np.array([[10, 20, 40, 100]])
                ).shape[-2:]
            )
            pose_inputs = bare_inputs(frames, pose_cfg.batch_size, (3, *crop), device, estimator.dtype)
            bare_forward = estimator.forward
            clock = estimator.forward = ForwardClock(bare_forward, device)  # the stage's forwards, timed
            pose_row = compare(
                "pose",
                lambda: run_pose(store, tracks, pose_cfg, None, progress=False, estimator=estimator),
                bare_forward,
                pose_inputs,
                frames,
                tmp / "out" / "keypoints.parquet",
                device,
                repeats,
                forward_threads(device, overlap),  # what run_pose's forward runs with
                clock,
            )
            estimator.forward = bare_forward
            if device.type == "cpu":
                before = torch.get_num_threads()
                torch.set_num_threads(pose_row["threads"])
                try:
                    pose_steps(store, tracks, estimator, pose_cfg.batch_size)  # warm-up
                    steps = pose_steps(store, tracks, estimator, pose_cfg.batch_size)
                finally:
                    torch.set_num_threads(before)

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    inputs = ", ".join(
        text
        for text in (
            f"detector input {size[0]}x{size[1]}" if size else "",
            f"pose crop {crop[0]}x{crop[1]}" if crop else "",
        )
        if text
    )
    print(
        f"checkpoints: {args.checkpoint_size}; device: {name}; precision: {args.precision}; "
        f"{num_videos} videos x {num_frames} frames ({WIDTH}x{HEIGHT}; detect on the first "
        f"{len(detect_index)}); {inputs}; "
        f"batch {args.detect_batch_size} / {args.pose_batch_size}; median of {repeats}"
    )
    if detect_row is not None:
        print(
            f"detect: score_threshold {args.score_threshold}, person_label {args.person_label!r}, "
            f"{detect_metrics['detections']} person boxes, {detect_metrics['tracks']} tracks, "
            f"{detect_metrics['videos_fallback']} fallback videos; forward threads (stage and bare alike) "
            f"{detect_row['threads']}"
        )
    if pose_row is not None:
        layout = {
            "process": "read + crop and decode in a forked worker process",
            "thread": "read + crop and decode on a worker thread",
            "none": "plain loop",
        }[args.cpu_worker]
        print(
            f"pose: {layout}; forward threads (stage and bare alike) {pose_row['threads']}; crops warped "
            f"{pose_module.CROP_CHUNK_BYTES:,} bytes of float pixels at a time on the CPU"
        )
        inside, bare = pose_row["forward_in_stage_seconds"], pose_row["bare_seconds"]
        print(
            f"pose: the stage's forwards took {inside * 1e3:.0f} ms against {bare * 1e3:.0f} ms bare "
            f"({inside / bare - 1:+.0%}); the rest of the stage's {pose_row['stage_seconds'] * 1e3:.0f} ms "
            f"({(pose_row['stage_seconds'] - inside) * 1e3:.0f} ms) is set-up, the worker's start and first "
            "batch, waiting for the worker, and the table"
        )
    if pose_row is not None and steps is not None:
        # What the machine allows at best: the forward keeps its threads busy for its wall time, every other
        # step needs a core for its CPU time; with all cores busy all the time the run takes at least
        # max(forward, (forward * threads + the rest) / cores). Contention between the cores is not in it.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        rest = steps["read"] + steps["crop"] + steps["decode"]
        floor = max(steps["forward"], (steps["forward"] * min(pose_row["threads"], cores) + rest) / cores)
        print(
            "pose steps alone, ms per frame: "
            + ", ".join(f"{name} {seconds / frames * 1e3:.3f}" for name, seconds in steps.items())
            + f"; ceiling on {cores} cores from these costs: ratio <= {steps['forward'] / floor:.2f}"
        )
    print(
        f"{'stage':<8}{'frames':>8}{'stage fps':>12}{'bare fps':>12}{'ratio':>8}  each stage run against the "
        f"bare runs before and after it: all; steady (those two within {STEADY:.0%})"
    )
    rows = [row for row in (detect_row, pose_row) if row is not None]
    for row in rows:
        flag = "" if row["ratio"] >= 0.8 else "  (below the 0.8 target)"
        pairs, steady = row["pair_ratios"], row["steady_ratios"]
        steady_text = (
            f"median {statistics.median(steady):.2f}, {steady[0]:.2f}-{steady[-1]:.2f}" if steady else "none"
        )
        print(
            f"{row['stage']:<8}{row['frames']:>8}{row['stage_fps']:>12.1f}{row['bare_fps']:>12.1f}"
            f"{row['ratio']:>8.2f}  median {statistics.median(pairs):.2f}, {pairs[0]:.2f}-{pairs[-1]:.2f}; "
            f"steady {len(steady)} of {len(pairs)}: {steady_text}{flag}"
        )
    return 0 if all(not math.isnan(row["ratio"]) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
