"""Features stage throughput vs the bare backbone forward, and peak memory at two dataset sizes.

    python benchmarks/features.py [--quick] [--backbone tiny|narrow224] [--sizes 6 48] [--frames 128]
                                  [--batch-size 8] [--repeats 3] [--threads N]

Throughput: clips/s through ``build_features`` (decode + crop + normalise + forward + write, model load
included) against the bare ``FrozenBackbone.forward`` on pre-made pixel tensors of the same shape and batch
size, interleaved in one run; target stage / bare >= 0.85. The stage is also timed with its background
crop thread disabled, to show what the overlap buys. Memory: one fresh subprocess per dataset size runs the
stage and reports its RSS growth over the loaded model, ru_maxrss and the tracemalloc peak; peak memory
must not grow with the number of videos. ``--backbone tiny`` is the 64 px VideoMAE of
``transmodal.vision.tiny``; ``narrow224`` a random 2-layer, 192-wide VideoMAE at the paper's 224 px input
(8 x 196 grid), whose forward-to-preprocessing cost ratio is nearer the real ViT-B's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pandas as pd
import torch

import transmodal.features.store as feature_store
from transmodal.data.coco import COCO_JOINTS, NUM_JOINTS
from transmodal.data.frames import FrameStore, extract_frames
from transmodal.features.backbone import FrozenBackbone
from transmodal.features.clips import make_clips
from transmodal.features.crops import crop_frames
from transmodal.features.store import ShardWriter, available_cores, build_features, plan_clips
from transmodal.params import KTH_ACTIONS, BackboneConfig, ClipsConfig
from transmodal.vision.tiny import write_backbone

WIDTH, HEIGHT = 160, 120


def person_box(frame: int, video: int) -> tuple[float, float, float, float]:
    """A 30 x 80 px 'person' walking right (wrapping), one pixel per frame."""
    x = float((frame + 7 * video) % (WIDTH - 40))
    return x, 20.0, x + 30.0, 100.0


def make_dataset(root: Path, num_videos: int, num_frames: int) -> None:
    """Videos, index (KTH-like: two sequences per video), frames store, primary tracks and keypoints."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for video in range(num_videos):
        video_id = f"person{video:02d}_walking_d1"
        writer = cv2.VideoWriter(
            str(root / "videos" / f"{video_id}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (WIDTH, HEIGHT)
        )
        for frame in range(num_frames):
            image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
            x1, y1, x2, y2 = (int(v) for v in person_box(frame, video))
            cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (30, 200, 240), thickness=-1)
            writer.write(image)
        writer.release()
        half = num_frames // 2
        rows.append(
            {
                "video_id": video_id,
                "path": f"videos/{video_id}.avi",
                "label": "walking",
                "label_idx": 5,
                "group": video,
                "scenario": "d1",
                "split": "train" if video % 3 else "test",
                "sequences": [[1, half], [half + 1, num_frames]],
            }
        )
    index = pd.DataFrame(rows)
    index.attrs["class_names"] = list(
        KTH_ACTIONS
    )  # the dataset's classes by label_idx, as prepare writes them
    index.to_parquet(root / "index.parquet")
    extract_frames(
        index, root, root / "frames", stride=2, clip_length=16, videos_per_shard=64, progress=False
    )
    frames = FrameStore(root / "frames").frames
    tracks, keypoints = [], []
    for video_id, frame in zip(frames["video_id"], frames["frame_idx"], strict=True):
        x1, y1, x2, y2 = person_box(int(frame), int(video_id[6:8]))
        tracks.append(
            {"video_id": video_id, "frame_idx": frame, "track_id": 1, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
        )
        row = {"video_id": video_id, "frame_idx": frame}
        for j, name in enumerate(COCO_JOINTS):
            row |= {
                f"{name}_x": x1 + 30 * j / NUM_JOINTS,
                f"{name}_y": y1 + 80 * j / NUM_JOINTS,
                f"{name}_score": 0.9,
            }
        keypoints.append(row)
    tracks = pd.DataFrame(tracks).assign(score=0.9, is_primary=True, interpolated=False, fallback=False)
    tracks.to_parquet(root / "tracks.parquet")
    pd.DataFrame(keypoints).to_parquet(root / "keypoints.parquet")


def write_narrow224(out: Path, seed: int = 0) -> None:
    """A random VideoMAE at the paper's input (224 px, 16 frames -> 8 x 196 grid), 192 wide and 2 layers deep."""
    write_backbone(out, seed, image_size=224, hidden_size=192, num_attention_heads=3, intermediate_size=768)


BACKBONES = {"tiny": lambda out: write_backbone(out, seed=2), "narrow224": write_narrow224}


def load_inputs(root: Path) -> tuple:
    """The stage's inputs as the stage script loads them: index, frame store, tracks, keypoints."""
    return (
        pd.read_parquet(root / "index.parquet"),
        FrameStore(root / "frames"),
        pd.read_parquet(root / "tracks.parquet"),
        pd.read_parquet(root / "keypoints.parquet"),
    )


def run_stage(
    root: Path,
    checkpoint: str,
    batch_size: int,
    out: str,
    progress: bool = False,
    inputs: tuple | None = None,
    timings: dict | None = None,
) -> dict:
    return build_features(
        *(inputs or load_inputs(root)),
        ClipsConfig(),
        BackboneConfig(checkpoint=checkpoint, batch_size=batch_size, device="cpu", clips_per_shard=64),
        root / out / "features",
        root / out / "clips.parquet",
        progress=progress,
        timings=timings,
    )


def breakdown(root: Path, backbone: FrozenBackbone, batch_size: int, repeats: int) -> dict[str, float]:
    """Milliseconds per clip of each step alone, one after the other on this thread (medians of repeats).

    read: ``FrameStore.read`` of every video (decompression), shared by its clips; crop: cutting and resizing
    the clips' frames (reads done); normalise: uint8 crops -> float pixel_values; forward: the backbone on
    those batches; write: the fp16 tokens to a shard file. The single-threaded steps are timed in this
    thread's CPU time (other jobs on a shared machine barely move it), the forward in wall time.
    """
    index, store, tracks, keypoints = load_inputs(root)
    clips = make_clips(index, store.videos, store.frames, ClipsConfig())
    clips, _ = plan_clips(clips, store.videos, tracks, keypoints, ClipsConfig().crop_margin)
    size, n = backbone.image_size, len(clips)
    boxes = clips[list(feature_store.CROP_COLUMNS)].to_numpy(np.int64)
    steps: dict[str, list[float]] = {name: [] for name in ("read", "crop", "normalise", "forward", "write")}
    for _ in range(repeats):
        start = time.thread_time()
        videos = {video_id: store.read(video_id) for video_id in clips["video_id"].unique()}
        steps["read"].append(time.thread_time() - start)
        start = time.thread_time()
        crops = []
        for row, (video_id, wanted) in enumerate(zip(clips["video_id"], clips["frame_idx"], strict=True)):
            frame_idx, frames = videos[video_id]
            positions = np.searchsorted(frame_idx, np.asarray(wanted, dtype=np.int64)).tolist()
            crops.append(crop_frames(frames, tuple(boxes[row].tolist()), size, positions))
        steps["crop"].append(time.thread_time() - start)
        del videos
        start = time.thread_time()
        batches = []
        for first in range(0, n, batch_size):
            part = crops[first : first + batch_size]
            batch = np.empty((len(part), *backbone_shape(backbone)), np.float32)
            for crop, out in zip(part, batch, strict=True):
                backbone.normalizer.normalize_into(crop, out)
            batches.append(torch.from_numpy(batch))
        steps["normalise"].append(time.thread_time() - start)
        start = time.perf_counter()
        tokens = [backbone.forward(batch) for batch in batches]
        steps["forward"].append(time.perf_counter() - start)
        del batches
        with tempfile.TemporaryDirectory() as out:
            start = time.thread_time()
            writer = ShardWriter(Path(out), n, 64, (*backbone.grid, backbone.hidden_size))
            for part in tokens:
                writer.write(part)
            writer.close()
            steps["write"].append(time.thread_time() - start)
    return {name: statistics.median(values) / n * 1e3 for name, values in steps.items()}


def backbone_shape(backbone: FrozenBackbone) -> tuple[int, int, int, int]:
    """One clip's pixel_values shape (T, 3, S, S)."""
    return (backbone.num_frames, 3, backbone.image_size, backbone.image_size)


def bare_forward(backbone: FrozenBackbone, num_clips: int, batch_size: int) -> float:
    """Seconds for the backbone alone on pre-made pixel tensors, batched like the stage."""
    pixels = torch.randn(batch_size, *backbone_shape(backbone))  # (B, T, 3, S, S)
    start = time.perf_counter()
    for first in range(0, num_clips, batch_size):
        backbone.forward(pixels[: min(batch_size, num_clips - first)])
    return time.perf_counter() - start


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(root: Path, checkpoint: str, batch_size: int) -> None:
    """Run the stage once in this fresh process; print a JSON line with its memory.

    ru_maxrss is a high-water mark that model loading may already have set, so the stage's own growth is
    sampled from /proc every 5 ms (RSS above the level after imports, a model load and the input tables),
    beside the tracemalloc
    peak (Python and numpy allocations; torch's own allocator is not traced).
    """
    import threading
    import tracemalloc

    FrozenBackbone(BackboneConfig(checkpoint=checkpoint, device="cpu"), 16)  # imports + a model: the baseline
    inputs = load_inputs(root)  # per-frame tables, loaded whole by the stage script: they scale with the data
    baseline_mb = current_rss_mb()
    peak_mb, done = [baseline_mb], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak_mb[0] = max(peak_mb[0], current_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    summary = run_stage(root, checkpoint, batch_size, "memory", inputs=inputs)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    done.set()
    sampler.join()
    row = {
        "clips": summary["clips"],
        "baseline_mb": baseline_mb,
        "growth_mb": peak_mb[0] - baseline_mb,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "traced_mb": traced / 2**20,
    }
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="sizes 6 and 24 videos, 1 repeat")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny")
    parser.add_argument("--sizes", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"))
    parser.add_argument("--frames", type=int, default=128, help="frames per video (kept at stride 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.checkpoint, args.batch_size)
        return
    if args.threads:
        torch.set_num_threads(args.threads)  # one thread is far less sensitive to other jobs on a shared box
    sizes = args.sizes or ((6, 24) if args.quick else (6, 48))
    repeats = args.repeats or (1 if args.quick else 3)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "backbone"
        BACKBONES[args.backbone](checkpoint)
        for size in sizes:
            make_dataset(tmp / f"videos{size}", size, args.frames)
        large = tmp / f"videos{sizes[1]}"
        backbone = FrozenBackbone(BackboneConfig(checkpoint=str(checkpoint), device="cpu"), 16)
        run_stage(tmp / f"videos{sizes[0]}", str(checkpoint), args.batch_size, "warmup")  # first-call costs

        stage, serial, bare, timings, clips = [], [], [], [], 0
        overlapped = feature_store.prefetch
        for repeat in range(repeats):  # interleaved, so all three see the same machine state
            timings.append({})
            start = time.perf_counter()
            clips = run_stage(large, str(checkpoint), args.batch_size, f"stage{repeat}", timings=timings[-1])
            stage.append(time.perf_counter() - start)
            clips = clips["clips"]
            feature_store.prefetch = lambda items, **_: items  # no background batch thread
            try:
                start = time.perf_counter()
                run_stage(large, str(checkpoint), args.batch_size, f"serial{repeat}")
                serial.append(time.perf_counter() - start)
            finally:
                feature_store.prefetch = overlapped
            bare.append(bare_forward(backbone, clips, args.batch_size))
        # The least of the interleaved repeats: on a shared machine other jobs only ever add time.
        stage_s, serial_s, bare_s = (min(v) for v in (stage, serial, bare))
        medians = {
            name: statistics.median(v) for name, v in (("bare", bare), ("stage", stage), ("serial", serial))
        }
        paired = statistics.median(b / s for b, s in zip(bare, stage, strict=True))  # same-moment pairs
        best = timings[stage.index(stage_s)]
        steps = breakdown(large, backbone, args.batch_size, repeats)

        memory = {}
        for size in sizes:
            command = [sys.executable, __file__, "--child", str(tmp / f"videos{size}")]
            command += ["--checkpoint", str(checkpoint), "--batch-size", str(args.batch_size)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            memory[size] = json.loads(result.stdout.strip().splitlines()[-1])

    grid = f"{backbone.image_size} px, {backbone.grid[0]} x {backbone.grid[1]} x {backbone.hidden_size} grid"
    print(f"backbone: {args.backbone} VideoMAE ({grid}), CPU, {torch.get_num_threads()} threads")
    print(
        f"batch {args.batch_size}; {sizes[1]} videos x {args.frames} frames -> {clips} clips; best of {repeats}"
    )
    rows = (("bare backbone forward", bare_s), ("build_features (overlap)", stage_s))
    rows += (("build_features (no bg thread)", serial_s),)
    for name, seconds in rows:
        print(f"{name:<28}: {seconds:8.3f} s {clips / seconds:9.1f} clips/s  ratio {bare_s / seconds:.2f}")
    print("medians: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in medians.items()))
    print(f"median of the per-repeat ratios (bare / stage, run back to back): {paired:.2f}")
    print(
        "target: ratio (stage clips/s over bare clips/s) >= 0.85; the stage time includes loading the model"
    )
    loop = best["wait"] + best["forward"] + best["write"]
    print(
        f"best stage run: setup {best['setup']:.3f} s (model load, clip sampling and planning), batch loop "
        f"{loop:.3f} s (waiting for pixels {best['wait']:.3f}, forward {best['forward']:.3f}, write "
        f"{best['write']:.3f}), finish {best['finish']:.3f} s; loop-only ratio {bare_s / loop:.2f}"
    )
    print(
        f"each step alone, ms per clip on one thread (torch: {torch.get_num_threads()} threads; the stage crops "
        f"on {available_cores()} cores while the model waits): "
        + ", ".join(f"{name} {ms:.3f}" for name, ms in steps.items())
    )
    # What this machine allows at best: the forward keeps torch's threads busy for its wall time, the other
    # steps need one core each for theirs; with every core busy all the time a clip costs at least
    # max(forward, (forward * threads + the rest) / cores).
    threads, cores = torch.get_num_threads(), available_cores()
    rest = steps["read"] + steps["crop"] + steps["normalise"] + steps["write"]
    floor = max(steps["forward"], (steps["forward"] * min(threads, cores) + rest) / cores)
    print(
        f"ceiling on {cores} cores from the step costs: forward {steps['forward']:.3f} ms x {min(threads, cores)} "
        f"threads + the rest {rest:.3f} ms -> at best {floor:.3f} ms per clip, ratio <= {steps['forward'] / floor:.2f}"
    )
    print()
    header = (
        "videos",
        "clips",
        "RSS after load MB",
        "stage RSS growth MB",
        "ru_maxrss MB",
        "tracemalloc peak MB",
    )
    print("  ".join(f"{h:>{max(len(h), 6)}}" for h in header))
    for size, row in memory.items():
        values = (
            size,
            row["clips"],
            row["baseline_mb"],
            row["growth_mb"],
            row["maxrss_mb"],
            row["traced_mb"],
        )
        cells = [
            f"{v:>{max(len(h), 6)}{'.1f' if isinstance(v, float) else ''}}"
            for h, v in zip(header, values, strict=True)
        ]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
