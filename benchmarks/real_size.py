"""Detect, pose and features stages at real model size, each against its bare forward, in one run.

    python benchmarks/real_size.py [--stage all|detect|pose|features] [--videos N] [--frames N]
                                   [--detect-frames N] [--pose-frames N] [--repeats R]
                                   [--device auto|cpu|cuda] [--precision fp32|fp16|bf16] [--threads N]
                                   [--json PATH]

Models: random-weight checkpoints of the real architectures, built from the library's default configs and
written with ``save_pretrained`` into a temporary folder (never the repository): RT-DETR r50vd (the
``RTDetrConfig`` defaults, 80 COCO classes, person = 0, 640 x 640 processor), ViTPose++ base (6 experts,
256 x 192, simple decoder, 17 joints) and VideoMAE base (the ``VideoMAEConfig`` defaults: 16 x 224 px,
12 layers, 768 wide, mean pooling; ImageNet mean / std). Data: ``--videos`` KTH-format videos (160 x 120,
25 fps, the project's synthetic renderer) of ``--frames`` frames, stored with stride 1 (the kept-frame layout
of the demo: 48 per video); detect runs on each video's first ``--detect-frames`` frames, pose on its first
``--pose-frames``, features on all of them (ground-truth tracks and keypoints feed pose and features). The
CPU defaults (2 videos: detect 8 frames, one batch; pose 40, two batches, so that a pose worker has a batch to
prepare beside a forward; features 8 clips) take about 10 minutes on 2 cores.

Each stage runs in its own subprocess, model loaded once, and is timed two ways:

- stage: the stage code end to end as its script runs it: open the FrameStore, read the input tables, read
  and decode the frames, batching, pre-processing, forward, post-processing, ByteTrack (detect), the output
  table and its Parquet file (detect and pose: also their resume key and each unit of videos written as a
  part, removed after the run as the stages remove them; features: ``build_features`` whole, which loads
  its model itself);
- bare: only the model forward (``PersonDetector.forward``, ``PoseEstimator.forward``,
  ``FrozenBackbone.forward``) on tensors made beforehand in the stage's batch shapes, with as many torch
  threads as the stage's forward uses. Detect and pose: copies of the stage's own inputs, recorded in its
  warm-up run (per batch, the first input of its shape and strides; the layout matters: the detector's
  pre-processing makes channels_last tensors, on which RT-DETR's CPU forward is faster than on contiguous
  ones); features: batches of ``backbone.batch_size`` clips in the form the stage feeds them, random
  contiguous float32 pixels on the CPU, pinned random uint8 crops on CUDA (normalised on the device).

One warm-up stage run, then ``--repeats`` rounds of a stage run and a bare run, back to back (stage first in
odd rounds, bare first in even ones, so that a drift of the machine's speed does not favour either); reported:
the median frames/s (detect, pose) or clips/s (features) of each, their ratio (median bare time / median
stage time; target >= 0.9), the range of the per-round ratios (each stage run against its round's bare run).

Memory: "peak RSS" is the high-water mark of the stage's subprocess during each timed stage (or bare) run,
reset before the run through ``/proc/self/clear_refs`` (Linux; elsewhere ru_maxrss, the process's peak since
it started), the maximum over the rounds. It includes what was resident before the run ("base": imports,
the loaded model and the bare inputs; features: the bare run's own model, besides the copy the stage loads).
On CUDA also ``torch.cuda.max_memory_allocated``, reset before each run.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

# the project code measured here (all of it: keep these imports in this one block)
from transmodal.data.frames import FrameStore, extract_frames
from transmodal.data.synth import VideoSpec, render_video, write_avi
from transmodal.features.backbone import FrozenBackbone
from transmodal.features.store import build_features
from transmodal.io import discard_parts, write_parquet
from transmodal.params import BackboneConfig, ClipsConfig, DetectConfig, PoseConfig
from transmodal.vision.detect import PersonDetector, run_detect
from transmodal.vision.pose import run_pose
from transmodal.vision.pose_estimator import PoseEstimator

STAGES = ("detect", "pose", "features")
ACTIONS = ("walking", "boxing", "running", "handwaving", "jogging", "handclapping")
TARGET = 0.9  # stage / bare at real size
# defaults on the CPU (sized for a whole run of about 10 minutes on 2 cores) and on CUDA
CPU_DEFAULTS = {"videos": 2, "frames": 48, "detect_frames": 4, "pose_frames": 20, "repeats": 3}
CUDA_DEFAULTS = {"videos": 32, "frames": 48, "detect_frames": 48, "pose_frames": 48, "repeats": 5}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and data (parent process)


def write_checkpoints(out: Path, seed: int = 0) -> dict[str, str]:
    """The three real-size architectures with random weights, each in a save_pretrained folder."""
    import transformers
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        VideoMAEConfig,
        VideoMAEImageProcessor,
        VideoMAEModel,
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's
    folders = {name: out / name for name in STAGES}
    # RT-DETR r50vd: the config's defaults; 80 classes as COCO, "person" at 0 (the other names do not matter)
    torch.manual_seed(seed)
    id2label = {0: "person", **{i: f"class {i}" for i in range(1, 80)}}
    config = RTDetrConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    RTDetrForObjectDetection(config).eval().save_pretrained(folders["detect"])
    # the processor of PekingU/rtdetr_r50vd_coco_o365: 640 x 640 bilinear, rescale, no normalising or padding
    RTDetrImageProcessor(
        size={"height": 640, "width": 640}, do_normalize=False, do_pad=False
    ).save_pretrained(folders["detect"])
    # ViTPose++ base: 6 expert heads, 256 x 192 crops (the processor's defaults, ImageNet mean / std)
    torch.manual_seed(seed + 1)
    backbone = VitPoseBackboneConfig(num_experts=6, part_features=192, out_indices=[12])
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    VitPoseForPoseEstimation(config).eval().save_pretrained(folders["pose"])
    VitPoseImageProcessor().save_pretrained(folders["pose"])
    # VideoMAE base, 16 frames x 224 px: the config's defaults, mean pooling as the Kinetics-finetuned ones
    torch.manual_seed(seed + 2)
    VideoMAEModel(VideoMAEConfig(use_mean_pooling=True)).eval().save_pretrained(folders["features"])
    VideoMAEImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folders["features"])
    return {name: str(folder) for name, folder in folders.items()}


def render(num_videos: int, num_frames: int) -> list[tuple[VideoSpec, np.ndarray, pd.DataFrame]]:
    """Synthetic KTH-format videos: (spec, frames (T, 120, 160, 3) uint8, ground truth) each."""
    rendered = []
    for i in range(num_videos):
        spec = VideoSpec(
            subject=i % 25 + 1, action=ACTIONS[i % len(ACTIONS)], scenario="d1", num_frames=num_frames, seed=0
        )
        frames, truth = render_video(spec)
        rendered.append((spec, frames, truth.assign(video_id=spec.video_id)))
    return rendered


def write_dataset(root: Path, rendered: list, frames: int) -> None:
    """The first ``frames`` frames of each rendered video as a stage's inputs under ``root``: videos, index,
    annotations, frames/ (stride 1), ground-truth tracks.parquet and keypoints.parquet."""
    rows, truths = [], []
    for spec, pixels, truth in rendered:
        write_avi(pixels[:frames], root / "videos" / spec.filename)
        truths.append(truth[truth["frame_idx"] < frames])
        rows.append(
            {
                "video_id": spec.video_id,
                "path": f"videos/{spec.filename}",
                "label": spec.action,
                "label_idx": ACTIONS.index(spec.action),
                "group": spec.subject,
                "scenario": spec.scenario,
                "split": "train",  # clips.per_video_train clips per video
                "sequences": [[1, frames]],
            }
        )
    index, annotations = pd.DataFrame(rows), pd.concat(truths, ignore_index=True)
    index.attrs["class_names"] = list(ACTIONS)  # the dataset's classes by label_idx, as prepare writes them
    write_parquet(index, root / "index.parquet")
    extract_frames(
        index, root, root / "frames", stride=1, clip_length=16, videos_per_shard=64, progress=False
    )
    store = FrameStore(root / "frames")
    tracks, _ = run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
    keypoints, _ = run_pose(store, tracks, PoseConfig(source="annotations"), annotations, progress=False)
    write_parquet(tracks, root / "tracks.parquet")
    write_parquet(keypoints, root / "keypoints.parquet")


# ----------------------------------------------------------------------------------------------------------
# Measuring (one subprocess per stage)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM; elsewhere ru_maxrss), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(run: Callable[[], object], device: torch.device, threads: int | None = None) -> dict:
    """Wall seconds, peak RSS (and peak GPU memory) of ``run()``, with ``threads`` torch threads if given."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    try:
        sync(device)
        start = time.perf_counter()
        result = run()
        sync(device)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds": seconds, "rss_mb": peak_rss_mb(), "gpu_mb": gpu, "result": result}


class InputRecorder:
    """Stands in for a model's ``forward``: records the layout (shape, strides) of every input (the stage's
    batches) and keeps a copy of the first input of each layout."""

    def __init__(self, forward: Callable):
        self.forward, self.layouts, self.copies = forward, [], {}

    def __call__(self, pixel_values: torch.Tensor):
        layout = (tuple(pixel_values.shape), pixel_values.stride())
        self.layouts.append(layout)
        if layout not in self.copies:
            self.copies[layout] = pixel_values.clone()  # same strides
        return self.forward(pixel_values)

    def inputs(self) -> list[torch.Tensor]:
        """The bare forward's inputs: per batch of the stage, the copy of its layout."""
        return [self.copies[layout] for layout in self.layouts]


def forward_all(forward: Callable, inputs: list[torch.Tensor]) -> None:
    for pixel_values in inputs:
        forward(pixel_values)


def measure(variant: dict, bare: Callable, inputs: list, device: torch.device, repeats: int) -> None:
    """Rounds of a stage run and a bare run, in every other round the bare run first; adds the timings to
    ``variant`` (``stage`` and ``bare``: lists of :func:`timed` results)."""
    variant.update(stage=[], bare=[])
    run_bare = functools.partial(forward_all, bare, inputs)
    for round_ in range(repeats):
        for kind in ("stage", "bare") if round_ % 2 == 0 else ("bare", "stage"):
            if kind == "stage":
                variant["stage"].append(timed(variant["run"], device))
            else:
                variant["bare"].append(timed(run_bare, device, variant["threads"]))
        stage_s, bare_s = variant["stage"][-1]["seconds"], variant["bare"][-1]["seconds"]
        print(
            f"  round {round_ + 1}: {variant['name']}: stage {stage_s:.2f} s, bare {bare_s:.2f} s "
            f"({variant['threads']} threads), ratio {bare_s / stage_s:.3f}",
            file=sys.stderr,
            flush=True,
        )


def child(stage: str, work: Path, args: argparse.Namespace) -> dict:
    """Load one stage's model, warm up, measure; the stage's result rows."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # from_pretrained's bar on every features run
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "host_normalise", False):  # the features stage as it was before device normalisation
        FrozenBackbone.host_normalizer = property(lambda self: self.normalizer)
    data, checkpoint = work / stage, str(work / "checkpoints" / stage)
    out = work / "out" / stage
    parts = work / "partial" / stage  # detect and pose write each unit of videos there, as their stages do
    started = time.perf_counter()
    notes: dict = {}
    if stage == "detect":
        cfg = DetectConfig(
            source="model", checkpoint=checkpoint, device=args.device, precision=args.precision
        )
        model = PersonDetector.from_config(cfg)

        def run_stage(cfg: DetectConfig = cfg) -> dict:
            tracks, metrics = run_detect(
                FrameStore(data / "frames"), cfg, None, progress=False, detector=model, parts_dir=parts
            )
            write_parquet(tracks, out / "tracks.parquet")
            discard_parts(parts)  # as the stage does: the next run computes every unit again
            return metrics

    elif stage == "pose":
        cfg = PoseConfig(source="model", checkpoint=checkpoint, device=args.device, precision=args.precision)
        model = PoseEstimator.from_config(cfg)

        def run_stage(cfg: PoseConfig = cfg) -> dict:
            tracks = pd.read_parquet(data / "tracks.parquet")
            keypoints, metrics = run_pose(
                FrameStore(data / "frames"),
                tracks,
                cfg,
                None,
                progress=False,
                estimator=model,
                parts_dir=parts,
            )
            write_parquet(keypoints, out / "keypoints.parquet")
            discard_parts(parts)
            return metrics

    else:
        cfg = BackboneConfig(checkpoint=checkpoint, device=args.device, precision=args.precision)
        model = FrozenBackbone(cfg, ClipsConfig().length)  # the bare forward's; the stage loads its own
        stage_timings: list[dict] = []

        def run_stage(cfg: BackboneConfig = cfg) -> dict:
            index = pd.read_parquet(data / "index.parquet")
            tracks = pd.read_parquet(data / "tracks.parquet")
            keypoints = pd.read_parquet(data / "keypoints.parquet")
            stage_timings.append({})
            features = [out / "features", out / "clips.parquet"]
            return build_features(
                index,
                FrameStore(data / "frames"),
                tracks,
                keypoints,
                ClipsConfig(),
                cfg,
                *features,
                progress=False,
                timings=stage_timings[-1],
            )

    variant = {"name": stage, "run": run_stage, "threads": torch.get_num_threads()}
    load_s = time.perf_counter() - started

    # warm-up (allocator, kernels, page cache); the first one records the stage's inputs for the bare runs
    if stage != "features":
        recorder = model.forward = InputRecorder(model.forward)
    warm = timed(variant["run"], model.device)
    if stage != "features":
        del model.forward  # the method again
        inputs = recorder.inputs()
    else:  # its batches: float32 pixels on the CPU; on CUDA pinned uint8 crops (normalised on the device)
        clips, batch = warm["result"]["clips"], cfg.batch_size
        sizes = [batch] * (clips // batch) + ([clips % batch] if clips % batch else [])
        side, frames = model.image_size, model.num_frames
        if model.host_normalizer is None:
            generator = torch.Generator().manual_seed(0)
            made = {
                n: torch.randint(
                    0, 256, (n, frames, side, side, 3), dtype=torch.uint8, generator=generator
                ).pin_memory()
                for n in set(sizes)
            }
        else:
            made = {n: torch.randn(n, frames, 3, side, side) for n in set(sizes)}
        inputs = [made[n] for n in sizes]
    shapes = [tuple(x.shape) for x in inputs]
    base_rss = current_rss_mb()
    print(
        f"{stage}: model loaded in {load_s:.1f} s, warm-up {warm['seconds']:.1f} s; "
        f"bare batches {[s[0] for s in shapes]}",
        file=sys.stderr,
        flush=True,
    )
    measure(variant, model.forward, inputs, model.device, args.repeats)

    metrics = warm["result"]
    units = metrics["clips"] if stage == "features" else metrics["frames"]
    if stage == "detect":
        notes["detect"] = (
            f"random weights: {metrics['detections']} person boxes, {metrics['tracks']} tracks, "
            f"{metrics['videos_fallback']} of {metrics['videos']} videos on the full-frame fallback box"
        )
    if stage == "features":
        setup = [t["setup"] for t in stage_timings[1:]]  # the timed runs'
        rest = [t["seconds"] - s for t, s in zip(variant["stage"], setup, strict=True)]
        bare_median = statistics.median(t["seconds"] for t in variant["bare"])
        notes["features"] = (
            f"{metrics['clips']} clips of {metrics['videos']} videos; each stage run loads its model: setup "
            f"(model load, clip sampling, planning) median {statistics.median(setup):.2f} s of the stage's "
            f"time; without it the ratio would be {bare_median / statistics.median(rest):.3f}"
        )
    precision = str(model.dtype).removeprefix("torch.")
    stage_s = [t["seconds"] for t in variant["stage"]]
    bare_s = [t["seconds"] for t in variant["bare"]]
    gpu = [t["gpu_mb"] for t in variant["stage"] + variant["bare"]]
    rows = [
        {
            "stage": variant["name"],
            "unit": "clips" if stage == "features" else "frames",
            "units": units,
            "device": str(model.device),
            "precision": precision,
            "threads": variant["threads"],
            "batch_shapes": sorted(set(shapes)),
            "stage_seconds": stage_s,
            "bare_seconds": bare_s,
            "stage_per_s": units / statistics.median(stage_s),
            "bare_per_s": units / statistics.median(bare_s),
            "ratio": statistics.median(bare_s) / statistics.median(stage_s),
            "round_ratios": [b / s for b, s in zip(bare_s, stage_s, strict=True)],
            "base_rss_mb": base_rss,
            "stage_peak_rss_mb": max(t["rss_mb"] for t in variant["stage"]),
            "bare_peak_rss_mb": max(t["rss_mb"] for t in variant["bare"]),
            "stage_peak_gpu_mb": max(gpu[: len(stage_s)]) if gpu[0] is not None else None,
            "bare_peak_gpu_mb": max(gpu[len(stage_s) :]) if gpu[0] is not None else None,
        }
    ]
    parameters = sum(p.numel() for p in model.model.parameters())
    return {"rows": rows, "notes": notes, "parameters": {stage: parameters}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def resolve_device(device: str) -> torch.device:
    return torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )


# ----------------------------------------------------------------------------------------------------------
# Report


def print_report(report: dict) -> None:
    print()
    print(
        f"{report['date']}  torch {report['torch']}, transformers {report['transformers']}, "
        f"{report['device_name']}, {report['torch_threads']} torch threads of {report['cores']} cores"
    )
    print("models: " + ", ".join(f"{k} {v / 1e6:.1f} M parameters" for k, v in report["parameters"].items()))
    print(f"workload: {report['workload']}")
    cuda = any(row["stage_peak_gpu_mb"] is not None for row in report["rows"])
    header = ["stage", "device", "precision", "threads", "units", "stage /s", "bare /s", "ratio"]
    header += ["per round", "peak RSS stage MB", "peak RSS bare MB", "base RSS MB"]
    header += ["peak GPU stage MB", "peak GPU bare MB"] if cuda else []
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in report["rows"]:
        cells = [
            row["stage"],
            row["device"],
            row["precision"],
            str(row["threads"]),
            f"{row['units']} {row['unit']}",
            f"{row['stage_per_s']:.3f}",
            f"{row['bare_per_s']:.3f}",
            f"{row['ratio']:.3f}" + ("" if row["ratio"] >= TARGET else " (< target)"),
            f"{min(row['round_ratios']):.3f}-{max(row['round_ratios']):.3f}",
            f"{row['stage_peak_rss_mb']:.0f}",
            f"{row['bare_peak_rss_mb']:.0f}",
            f"{row['base_rss_mb']:.0f}",
        ]
        if cuda:
            cells += [f"{row['stage_peak_gpu_mb']:.0f}", f"{row['bare_peak_gpu_mb']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"ratio: median bare time / median stage time (target >= {TARGET}); per round: each stage run "
        f"against its round's bare run, min-max of {report['repeats']} rounds"
    )
    for name, note in report["notes"].items():
        print(f"{name}: {note}")
    print("wall: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["wall_seconds"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("all", *STAGES), default="all")
    parser.add_argument("--videos", type=int, help="videos rendered (CPU default 2, CUDA 32)")
    parser.add_argument("--frames", type=int, help="frames per video, all of them for features (48)")
    parser.add_argument("--detect-frames", type=int, help="each video's first frames for detect (CPU 4)")
    parser.add_argument("--pose-frames", type=int, help="each video's first frames for pose (CPU 20)")
    parser.add_argument("--repeats", type=int, help="timed rounds after the warm-up (CPU 3, CUDA 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA (the CPU runs fp32)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--host-normalise",
        action="store_true",
        help="features on CUDA: normalise on the host and send float32 (the stage before 2026-12-04)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # the parent's settings
        settings = json.loads((args.work / "args.json").read_text())
        print(json.dumps(child(args.child, args.work, argparse.Namespace(**settings))))
        return 0
    device = resolve_device(args.device)
    for key, value in (CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")

    started = time.perf_counter()
    stages = STAGES if args.stage == "all" else (args.stage,)
    wall: dict[str, float] = {}
    report: dict = {"rows": [], "notes": {}, "parameters": {}}
    with tempfile.TemporaryDirectory(prefix="bench-real-size-") as tmp:
        work = Path(tmp)
        write_checkpoints(work / "checkpoints")
        wall["checkpoints"] = time.perf_counter() - started
        mark = time.perf_counter()
        rendered = render(args.videos, args.frames)
        frames = {"detect": args.detect_frames, "pose": args.pose_frames, "features": args.frames}
        for stage in stages:
            write_dataset(work / stage, rendered, min(frames[stage], args.frames))
        wall["data"] = time.perf_counter() - mark
        print(
            f"checkpoints {wall['checkpoints']:.0f} s, data {wall['data']:.0f} s", file=sys.stderr, flush=True
        )
        settings = {key: value for key, value in vars(args).items() if key not in ("json", "child", "work")}
        (work / "args.json").write_text(json.dumps(settings))
        for stage in stages:
            mark = time.perf_counter()
            command = [sys.executable, __file__, "--child", stage, "--work", str(work)]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])  # stderr: its progress lines
            report["rows"] += result["rows"]
            report["notes"].update(result["notes"])
            report["parameters"].update(result["parameters"])
            shutil.rmtree(work / "out" / stage, ignore_errors=True)
            wall[stage] = time.perf_counter() - mark
    wall["total"] = time.perf_counter() - started

    import transformers

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    workload = (
        f"{args.videos} synthetic KTH-format videos (160x120, 25 fps) of {args.frames} frames; detect on the "
        f"first {min(args.detect_frames, args.frames)} of each, pose on the first "
        f"{min(args.pose_frames, args.frames)}, features on all; warm-up + {args.repeats} rounds; "
        f"precision asked: {args.precision}"
    )
    report.update(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        torch=torch.__version__,
        transformers=transformers.__version__,
        device_name=f"{device.type}: {device_name}",
        torch_threads=args.threads or torch.get_num_threads(),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        workload=workload,
        repeats=args.repeats,
        wall_seconds=wall,
    )
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
