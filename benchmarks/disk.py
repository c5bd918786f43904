"""Disk use of every derived output of the pipeline, measured on synthetic videos at real size, and what
that extrapolates to for KTH, UCF101 and HMDB51.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/disk.py [--videos 12] [--frames 96]
                                                         [--feature-videos 4] [--device auto]
                                                         [--work /tmp/disk-bench] [--out PATH]

What it measures, per source size, running the project's own code on the same synthetic videos:

- 160 x 120: ``--videos`` videos of the synthetic KTH-like set (``transmodal.data.synth``, grey MJPG,
  25 fps, ``--frames`` frames each; both train and test subjects of the paper split, scenarios d1 and d4);
- 320 x 240 ("UCF-like"): the same videos decoded, upscaled 2x with ``cv2.resize`` (bilinear) and
  re-written with the same container and codec (``write_avi``: MJPG .avi) into a copy of the dataset folder
  with the same layout (``00sequences.txt``, ``annotations.parquet`` with coordinates doubled), so the KTH
  indexer reads it unchanged.

Outputs, each written by the stage code: ``data/index.parquet`` (``build_index``), ``data/frames/``
(``extract_frames``: LZ4 pixel shards + videos.parquet + frames.parquet; and with ``frames.store: source``,
the tables and sources.parquet only), ``data/tracks.parquet`` and
``data/keypoints.parquet`` (``run_detect`` / ``run_pose`` with ``source: annotations``, the demo default; a
model writes the same columns, one row per kept frame of the primary track), ``data/clips.parquet`` and
``data/features/`` (``build_features``). Clips come from params.yaml's ``clips`` section.

- clips.parquet over all videos with a tiny random VideoMAE (its columns do not depend on the backbone's
  size); features at REAL size with a random-weight VideoMAE-B (16 frames x 224 px, tubelet 2, patch 16:
  8 groups x 196 patches x 768, fp16) on ``--feature-videos`` videos (half train, half test), checked
  against G * P * D * 2 bytes a clip plus the safetensors header, and the tokens compressed with LZ4,
  zstd 1 and 3 and byte-shuffle + zstd (high bytes, then low bytes of each fp16). The tokens come from
  RANDOM weights: a pretrained model's tokens may compress differently.
- Small Parquet tables (tracks, keypoints, clips, index) carry a fixed footer that dominates at a dozen
  videos, so besides bytes per video the script fits bytes = fixed + per_row * rows from the files written
  for the first half of the videos and for all of them (same ``write_parquet``), and extrapolates with that.

Then it scales the measurements to the real datasets with the facts in ``DATASETS`` (dataset facts, with
their sources) and the pipeline params (``frames.stride`` / ``frames.reference_fps`` kept frames a second,
``clips.*`` clips per video, ``data.val_fraction``): frames, tracks and keypoints by kept frames, clips.parquet
and features by clips. Frames use the 160 x 120 measurement for KTH and the 320 x 240 one for UCF101 and
HMDB51.

Caveats it prints: the synthetic frames are grey and the upscaled ones smooth, so they compress better
than real footage (UCF101 and HMDB51 are colour): frames bytes are a LOWER bound; the raw RGB bytes (what
the frames take uncompressed, an upper bound as LZ4 hardly expands) are printed beside them.

Runs in about 3 minutes on 2 CPU cores (most of it the 20 VideoMAE-B forwards). Scratch data under
``--work`` (removed and re-created at the start). Peak memory is not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

# the project code measured here
from transmodal.data.annotations import load_annotations
from transmodal.data.frames import FrameStore, extract_frames
from transmodal.data.index import ARROW_SCHEMA, KTH_SPLITS, build_index
from transmodal.data.synth import (
    ANNOTATIONS_FILE,
    SEQUENCES_FILE,
    VideoSpec,
    format_sequences,
    render_video,
    sequence_ranges,
    write_avi,
)
from transmodal.features.cache import BACKBONE_FILE, TOKENS_KEY
from transmodal.features.store import build_features
from transmodal.io import write_parquet
from transmodal.params import (
    KTH_ACTIONS,
    BackboneConfig,
    DataConfig,
    DetectConfig,
    PoseConfig,
    load_params,
    section,
)
from transmodal.vision.detect import run_detect
from transmodal.vision.pose import run_pose
from transmodal.vision.tiny import write_backbone

GB = 1e9
REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------------------
# Dataset facts (not measured here). Sources:
# - KTH: Schuldt, Laptev, Caputo, ICPR 2004, and the dataset page (www.csc.kth.se/cvap/actions/): 25
#   subjects x 6 actions x 4 scenarios = 600 files, one missing (599); 2391 sequences listed in
#   00sequences.txt; 160 x 120, 25 fps; about 18.5 s a file on average.
# - UCF101: Soomro, Zamir, Shah, CRCV-TR-12-01 (2012): 13,320 clips, 320 x 240, 25 fps, about 7.2 s on
#   average; split 1 of ucfTrainTestlist: 9,537 train + 3,783 test.
# - HMDB51: Kuehne et al., ICCV 2011: 6,766 clips, height 240 (width about 320), 30 fps, about 3.2 s on
#   average; split 1 marks 70 train + 30 test clips per class (3,570 + 1,530) and leaves the rest unused,
#   which the HMDB51 indexer excludes (transmodal/data/index.py), so the frames stage never decodes them.
DATASETS = {
    "KTH": {
        "files": 599,
        "sequences": 2391,
        "size": "160x120",
        "fps": 25,
        "seconds": 18.5,
        "train_videos": None,  # by subjects of the KTH split in params (data.split), see kth_split_counts
    },
    "UCF101": {"files": 13320, "size": "320x240", "fps": 25, "seconds": 7.2, "train": 9537, "test": 3783},
    "HMDB51": {"files": 6766, "size": "320x240", "fps": 30, "seconds": 3.2, "train": 3570, "test": 1530},
}
KTH_SUBJECTS = 25
# ----------------------------------------------------------------------------------------------------------

# (subject, scenario) of each group of six videos (one per action): train and test subjects of the paper
# split in turn, outdoors (d1) and indoors (d4, more noise) in turn
SUBJECT_CYCLE = [(1, "d1"), (18, "d4"), (2, "d4"), (19, "d1"), (3, "d1"), (20, "d4")]
COORDINATE_SUFFIXES = ("_x", "_y")
BOX = ("x1", "y1", "x2", "y2")


# ----------------------------------------------------------------------------------------------------------
# Data


def render_dataset(root: Path, num_videos: int, frames: int, seed: int = 0) -> None:
    """The synthetic KTH-like set (KTH layout, sequences file, annotations) for ``num_videos`` videos."""
    specs = [
        VideoSpec(SUBJECT_CYCLE[i // 6 % len(SUBJECT_CYCLE)][0], KTH_ACTIONS[i % 6],
                  SUBJECT_CYCLE[i // 6 % len(SUBJECT_CYCLE)][1], frames, seed)
        for i in range(num_videos)
    ]  # fmt: skip
    entries, truths = [], []
    for spec in specs:
        pixels, rows = render_video(spec)
        write_avi(pixels, root / spec.action / spec.filename)
        entries.append((spec, sequence_ranges(spec, rows)))
        truths.append(rows)
    entries.sort(key=lambda entry: (entry[0].subject, entry[0].action, entry[0].scenario))
    (root / SEQUENCES_FILE).write_bytes(format_sequences(entries).encode("ascii"))
    write_parquet(pd.concat(truths, ignore_index=True), root / ANNOTATIONS_FILE)


def upscaled_copy(source: Path, target: Path, factor: int = 2) -> None:
    """``source`` with every video upscaled ``factor`` x (cv2.resize, bilinear) and re-written with
    ``write_avi`` (same container, codec and frame rate), annotations scaled to match, same layout."""
    for path in sorted(source.rglob("*.avi")):
        capture = cv2.VideoCapture(str(path))
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            size = (frame.shape[1] * factor, frame.shape[0] * factor)
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
        capture.release()
        write_avi(np.stack(frames), target / path.relative_to(source), fps=fps)
    shutil.copyfile(source / SEQUENCES_FILE, target / SEQUENCES_FILE)
    truth = pd.read_parquet(source / ANNOTATIONS_FILE)
    # continuous pixel coordinates (pixel j covers [j, j + 1)), so doubling is exact
    for column in truth.columns:
        if column in BOX or column.endswith(COORDINATE_SUFFIXES):
            truth[column] = (truth[column] * factor).astype(truth[column].dtype)
    write_parquet(truth, target / ANNOTATIONS_FILE)


# ----------------------------------------------------------------------------------------------------------
# Measuring


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parquet_fit(frame: pd.DataFrame, videos: list[str], scratch: Path, schema=None) -> dict:
    """Bytes of ``frame`` written with ``write_parquet`` for the first half of ``videos`` and for all, and
    the line through them: ``bytes = fixed + per_row * rows``."""
    half = frame[frame["video_id"].isin(videos[: len(videos) // 2])]
    sizes = []
    for part, name in ((half, "half"), (frame, "all")):
        path = scratch / f"{name}.parquet"
        write_parquet(part.reset_index(drop=True), path, schema=schema)
        sizes.append(path.stat().st_size)
        path.unlink()
    per_row = (sizes[1] - sizes[0]) / max(len(frame) - len(half), 1)
    return {
        "rows": len(frame),
        "bytes_half": sizes[0],
        "rows_half": len(half),
        "bytes_all": sizes[1],
        "per_row": per_row,
        "fixed": sizes[1] - per_row * len(frame),
    }


def measure_size(label: str, root: Path, work: Path, params: dict, tiny: Path) -> dict:
    """Run prepare, frames, detect, pose and features (tiny backbone) on ``root``; bytes of each output."""
    out = work / "out" / label
    out.mkdir(parents=True)
    frames_cfg, clips_cfg = section(params, "frames"), section(params, "clips")
    result: dict = {"label": label}
    timings = {}

    started = time.perf_counter()
    index, _ = build_index(DataConfig(dataset="synthetic", root=str(root), split="paper"))
    write_parquet(index, out / "index.parquet", schema=ARROW_SCHEMA)
    videos = list(index["video_id"])
    result["videos"] = len(videos)
    result["videos_per_split"] = index["split"].value_counts().to_dict()
    result["index"] = {"file_bytes": tree_bytes(out / "index.parquet")}
    timings["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    # extract_frames' default store: the kept pixels in LZ4 shards (what this measures)
    summary = extract_frames(
        index, root, out / "frames", stride=frames_cfg.stride, clip_length=clips_cfg.length,
        videos_per_shard=frames_cfg.videos_per_shard, progress=False,
        reference_fps=frames_cfg.reference_fps,
    )  # fmt: skip
    timings["frames"] = time.perf_counter() - started
    # frames.store: source: the tables and the list of source files, no pixels (decision 42)
    extract_frames(
        index, root, out / "frames-source", stride=frames_cfg.stride, clip_length=clips_cfg.length,
        videos_per_shard=frames_cfg.videos_per_shard, progress=False,
        reference_fps=frames_cfg.reference_fps, store="source",
    )  # fmt: skip
    store = FrameStore(out / "frames")
    ok = store.videos[store.videos["status"] == "ok"]
    kept = int(ok["frames_kept"].sum())
    h, w = int(ok["height"].iloc[0]), int(ok["width"].iloc[0])
    shards = sorted((out / "frames").glob("shard-*.parquet"))
    raw = kept * h * w * 3
    shard_bytes = sum(p.stat().st_size for p in shards)
    total = tree_bytes(out / "frames")
    result["frames"] = {
        "width": w,
        "height": h,
        "frames_kept": kept,
        "kept_per_video": kept / len(videos),
        "skipped": summary["videos_skipped"],
        "shard_bytes": shard_bytes,
        "tables_bytes": total - shard_bytes,  # videos.parquet + frames.parquet
        "dir_bytes": total,
        "raw_rgb_bytes": raw,
        "lz4_ratio": raw / shard_bytes,
        "per_kept_frame": total / kept,
        "raw_per_kept_frame": raw / kept,
        "source_store_per_video": tree_bytes(out / "frames-source") / len(videos),
    }

    started = time.perf_counter()
    annotations = load_annotations(root, "annotations", "detect.source")
    tracks, _ = run_detect(store, DetectConfig(source="annotations"), annotations, progress=False)
    keypoints, _ = run_pose(store, tracks, PoseConfig(source="annotations"), annotations, progress=False)
    write_parquet(tracks, out / "tracks.parquet")
    write_parquet(keypoints, out / "keypoints.parquet")
    timings["detect+pose"] = time.perf_counter() - started
    for name, table in (("tracks", tracks), ("keypoints", keypoints)):
        fit = parquet_fit(table, videos, out)
        result[name] = {
            "file_bytes": tree_bytes(out / f"{name}.parquet"),
            "rows_per_kept_frame": len(table) / kept,
            "columns": len(table.columns),
        } | fit

    started = time.perf_counter()
    backbone = BackboneConfig(checkpoint=str(tiny), device="cpu")
    features = build_features(
        index, store, tracks, keypoints, clips_cfg, backbone, out / "features", out / "clips.parquet",
        progress=False,
    )  # fmt: skip
    timings["features (tiny)"] = time.perf_counter() - started
    clips = pd.read_parquet(out / "clips.parquet")
    fit = parquet_fit(clips, videos, out)
    result["clips"] = {
        "file_bytes": tree_bytes(out / "clips.parquet"),
        "clips": int(features["clips"]),
        "clips_per_split": features["clips_per_split"],
    } | fit
    result["seconds"] = timings
    result["store"] = store  # dropped before the JSON
    result["index_frame"], result["tracks_frame"], result["keypoints_frame"] = index, tracks, keypoints
    return result


def write_videomae_base(folder: Path, seed: int = 2) -> None:
    """VideoMAE-B with random weights, as benchmarks/real_size.py builds it: the VideoMAEConfig defaults
    (16 frames x 224 px, tubelet 2, patch 16, 12 layers, 768 wide) with mean pooling, ImageNet mean / std."""
    import torch
    import transformers
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    VideoMAEModel(VideoMAEConfig(use_mean_pooling=True)).eval().save_pretrained(folder)
    VideoMAEImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def feature_subset(index: pd.DataFrame, count: int) -> pd.DataFrame:
    """``count`` videos of the index, half of them (rounded up) train, the rest val or test."""
    train = index[index["split"] == "train"]
    other = index[index["split"] != "train"]
    take = (count + 1) // 2
    return pd.concat([train.head(take), other.head(count - take)]).reset_index(drop=True)


def compression(tokens: np.ndarray) -> dict:
    """Bytes and seconds of the fp16 ``tokens`` compressed whole with each codec (all lossless)."""
    data = np.ascontiguousarray(tokens).view(np.uint8).reshape(-1)

    def shuffle(raw: np.ndarray) -> np.ndarray:
        pairs = raw.reshape(-1, 2)  # little-endian fp16: [low byte, high byte]
        return np.concatenate(
            [pairs[:, 1], pairs[:, 0]]
        )  # high bytes (sign, exponent, 2 mantissa bits) first

    variants = {
        "lz4": (pa.Codec("lz4"), False),
        "zstd-1": (pa.Codec("zstd", compression_level=1), False),
        "zstd-3": (pa.Codec("zstd", compression_level=3), False),
        "shuffle+zstd-1": (pa.Codec("zstd", compression_level=1), True),
        "shuffle+zstd-3": (pa.Codec("zstd", compression_level=3), True),
    }
    out = {"raw": {"bytes": data.nbytes, "ratio": 1.0, "seconds": 0.0}}
    for name, (codec, shuffled) in variants.items():
        started = time.perf_counter()  # the shuffle is timed with the compression
        payload = shuffle(data) if shuffled else data
        packed = codec.compress(payload)
        seconds = time.perf_counter() - started
        back = np.frombuffer(codec.decompress(packed, decompressed_size=payload.nbytes), np.uint8)
        if name.startswith("shuffle"):  # undo the shuffle: the round trip must give the tokens back
            n = back.size // 2
            back = np.stack([back[n:], back[:n]], axis=1).reshape(-1)
        assert np.array_equal(back, data), name
        out[name] = {"bytes": packed.size, "ratio": data.nbytes / packed.size, "seconds": seconds}
    return out


def measure_features(label: str, measured: dict, work: Path, params: dict, checkpoint: Path, count: int,
                     device: str) -> dict:  # fmt: skip
    """``build_features`` at real size on ``count`` videos of one source size; shard bytes and compression."""
    from safetensors import safe_open

    out = work / "out" / f"{label}-real"
    out.mkdir(parents=True)
    index = feature_subset(measured["index_frame"], count)
    backbone = BackboneConfig(checkpoint=str(checkpoint), device=device)
    started = time.perf_counter()
    summary = build_features(
        index, measured["store"], measured["tracks_frame"], measured["keypoints_frame"],
        section(params, "clips"), backbone, out / "features", out / "clips.parquet", progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    n = int(summary["clips"])
    groups, patches, hidden = summary["grid"]
    payload = groups * patches * hidden * 2  # fp16
    shard = out / "features" / "shard-00000.safetensors"
    shard_bytes = sum(p.stat().st_size for p in (out / "features").glob("shard-*.safetensors"))
    header = shard.stat().st_size - n * payload
    with safe_open(str(shard), framework="np") as f:
        tokens = f.get_tensor(TOKENS_KEY)
    assert tokens.shape == (n, groups, patches, hidden) and tokens.dtype == np.float16
    assert shard_bytes == n * payload + header and summary["shards"] == 1, "shard is not G*P*D*2 + header"
    recomputed = out / "recompute"  # backbone.store: recompute: the same clips, no grids
    build_features(
        index, measured["store"], measured["tracks_frame"], measured["keypoints_frame"],
        section(params, "clips"), dataclasses.replace(backbone, store="recompute"), recomputed / "features",
        recomputed / "clips.parquet", progress=False,
    )  # fmt: skip
    return {
        "label": label,
        "videos": list(index["video_id"]),
        "clips": n,
        "grid": [groups, patches, hidden],
        "payload_per_clip": payload,
        "header_bytes": header,
        "shard_bytes": shard_bytes,
        "per_clip": shard_bytes / n,
        "equals_grid_plus_header": True,
        "backbone_json_bytes": tree_bytes(out / "features" / BACKBONE_FILE),
        "recompute_features_bytes": tree_bytes(recomputed / "features"),  # backbone.json alone
        "clips_per_shard": backbone.clips_per_shard,
        "seconds": seconds,
        "seconds_per_clip": seconds / n,
        "device": summary["device"],
        "token_stats": {
            "mean": float(tokens.astype(np.float32).mean()),
            "std": float(tokens.astype(np.float32).std()),
            "max_abs": float(np.abs(tokens.astype(np.float32)).max()),
        },
        "compression": compression(tokens),
    }


# ----------------------------------------------------------------------------------------------------------
# Extrapolating


def dataset_counts(name: str, params: dict) -> dict:
    """Indexed videos, kept frames and clips of one dataset, from the facts in DATASETS and the params."""
    facts = DATASETS[name]
    frames_cfg, clips_cfg, data_cfg = section(params, "frames"), section(params, "clips"), params["data"]
    kept_per_second = frames_cfg.reference_fps / frames_cfg.stride  # time sampling, whatever the fps
    if name == "KTH":
        split = data_cfg.get("split") if data_cfg.get("split") in KTH_SPLITS else "paper"
        share_train = len(KTH_SPLITS[split]["train"]) / KTH_SUBJECTS  # KTH has no random val hold-out
        videos = facts["files"]
        train = videos * share_train  # about: one missing file, videos spread evenly over subjects
        eval_sequences = facts["sequences"] * (1 - share_train)  # val and test: one clip per sequence
        if clips_cfg.per_sequence_test:
            clips = train * clips_cfg.per_video_train + eval_sequences * clips_cfg.per_sequence_test
        else:
            clips = train * clips_cfg.per_video_train + (videos - train) * clips_cfg.per_video_test
        note = f"split {split!r}: train = {share_train:.0%} of the subjects; val/test by sequence"
    else:
        videos = facts["train"] + facts["test"]
        val = facts["train"] * float(data_cfg.get("val_fraction", 0.1))  # about: held out by group per class
        train = facts["train"] - val
        clips = train * clips_cfg.per_video_train + (val + facts["test"]) * clips_cfg.per_video_test
        note = f"split 1; val = {data_cfg.get('val_fraction', 0.1):g} of train (by group)"
    kept_per_video = facts["seconds"] * kept_per_second
    return {
        "videos": videos,
        "kept_per_video": kept_per_video,
        "kept_frames": videos * kept_per_video,
        "clips": clips,
        "size": facts["size"],
        "note": note,
    }


def extrapolate(measured: dict[str, dict], real: list[dict], params: dict) -> dict:
    """Bytes of each output for each dataset (decimal GB) from the measurements."""
    per_clip_payload = real[0]["payload_per_clip"]
    header = max(r["header_bytes"] for r in real)
    backbone_json = real[0]["backbone_json_bytes"]
    per_shard = real[0]["clips_per_shard"]
    best = min(
        (name for name in real[0]["compression"] if name != "raw"),
        key=lambda name: np.mean([r["compression"][name]["bytes"] for r in real]),
    )
    best_ratio = float(np.mean([r["compression"][best]["ratio"] for r in real]))
    rows = {}
    for name in DATASETS:
        counts = dataset_counts(name, params)
        m = measured[counts["size"]]
        kept, clips, videos = counts["kept_frames"], counts["clips"], counts["videos"]
        features = clips * per_clip_payload + math.ceil(clips / per_shard) * header + backbone_json
        out = {
            "index": m["index"]["file_bytes"] / m["videos"] * videos,  # tiny; per video as measured
            "frames": m["frames"]["per_kept_frame"] * kept,
            "frames_raw_rgb": m["frames"]["raw_per_kept_frame"] * kept,
            "tracks": m["tracks"]["fixed"]
            + m["tracks"]["per_row"] * m["tracks"]["rows_per_kept_frame"] * kept,
            "keypoints": m["keypoints"]["fixed"]
            + m["keypoints"]["per_row"] * m["keypoints"]["rows_per_kept_frame"] * kept,
            "clips": m["clips"]["fixed"] + m["clips"]["per_row"] * clips,
            "features": features,
        }
        out["total"] = sum(v for k, v in out.items() if k != "frames_raw_rgb")
        out["total_frames_source"] = (
            out["total"] - out["frames"] + m["frames"]["source_store_per_video"] * videos
        )
        out["total_recompute"] = (  # frames.store: source and backbone.store: recompute
            out["total_frames_source"] - features + real[0]["recompute_features_bytes"]
        )
        out["features_compressed"] = features / best_ratio
        rows[name] = {"counts": counts, "bytes": out}
    totals = {k: sum(r["bytes"][k] for r in rows.values()) for k in rows["KTH"]["bytes"]}
    return {"datasets": rows, "totals": totals, "best_codec": best, "best_ratio": best_ratio}


# ----------------------------------------------------------------------------------------------------------
# Report


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def report(measured: dict[str, dict], real: list[dict], extra: dict, args, seconds: float) -> str:
    sizes = list(measured)
    a, b = (measured[s] for s in sizes)
    lines = [
        f"# Disk use per output (measured on {a['videos']} synthetic videos of {args.frames} frames, "
        f"25 fps; kept frames/video {a['frames']['kept_per_video']:g})",
        "",
        f"| output | unit | {sizes[0]} | {sizes[1]} |",
        "|---|---|---:|---:|",
    ]

    def row(output: str, unit: str, get) -> None:
        lines.append(f"| {output} | {unit} | {get(a)} | {get(b)} |")

    row("data/index.parquet", "bytes/video", lambda m: fmt_bytes(m["index"]["file_bytes"] / m["videos"]))
    row(
        "data/frames/ (shards + tables)",
        "bytes/video",
        lambda m: fmt_bytes(m["frames"]["dir_bytes"] / m["videos"]),
    )
    row(
        "data/frames/ (shards + tables)",
        "bytes/kept frame",
        lambda m: fmt_bytes(m["frames"]["per_kept_frame"]),
    )
    row(
        "  of which videos.parquet + frames.parquet",
        "bytes/video",
        lambda m: fmt_bytes(m["frames"]["tables_bytes"] / m["videos"]),
    )
    row(
        "data/frames/ with frames.store: source",
        "bytes/video",
        lambda m: fmt_bytes(m["frames"]["source_store_per_video"]),
    )
    row(
        "  raw RGB (uncompressed)", "bytes/kept frame", lambda m: fmt_bytes(m["frames"]["raw_per_kept_frame"])
    )
    row("  LZ4 ratio (raw / shards)", "x", lambda m: f"{m['frames']['lz4_ratio']:.2f}")
    for name in ("tracks", "keypoints"):
        row(
            f"data/{name}.parquet",
            "bytes/video (file)",
            lambda m, n=name: fmt_bytes(m[n]["file_bytes"] / m["videos"]),
        )
        row(f"data/{name}.parquet", "bytes/row (fit)", lambda m, n=name: f"{m[n]['per_row']:.1f} B")
        row(f"data/{name}.parquet", "fixed bytes (fit)", lambda m, n=name: fmt_bytes(m[n]["fixed"]))
    row("  rows per kept frame", "", lambda m: f"{m['tracks']['rows_per_kept_frame']:.3f}")
    row("data/clips.parquet", "clips/video", lambda m: f"{m['clips']['clips'] / m['videos']:.2f}")
    row(
        "data/clips.parquet",
        "bytes/video (file)",
        lambda m: fmt_bytes(m["clips"]["file_bytes"] / m["videos"]),
    )
    row("data/clips.parquet", "bytes/clip (fit)", lambda m: f"{m['clips']['per_row']:.1f} B")
    row("data/clips.parquet", "fixed bytes (fit)", lambda m: fmt_bytes(m["clips"]["fixed"]))
    real_by = {r["label"]: r for r in real}
    lines.append(
        "| data/features/ (VideoMAE-B, real size) | bytes/clip | "
        + " | ".join(fmt_bytes(real_by[s]["per_clip"]) if s in real_by else "-" for s in sizes)
        + " |"
    )
    lines.append(
        "| data/features/ (VideoMAE-B, real size) | bytes/video (clips/video above) | "
        + " | ".join(fmt_bytes(real_by[s]["per_clip"] * measured[s]["clips"]["clips"] / measured[s]["videos"])
                     if s in real_by else "-" for s in sizes) + " |"
    )  # fmt: skip
    r0 = real[0]
    g, p, d = r0["grid"]
    lines += [
        "",
        f"Features: grid {g} x {p} x {d} fp16 = {r0['payload_per_clip']:,} bytes a clip; each shard measured "
        f"= clips x that + its safetensors header ({', '.join(str(r['header_bytes']) for r in real)} bytes) "
        f"exactly; backbone.json {r0['backbone_json_bytes']} bytes. "
        + "; ".join(
            f"{r['label']}: {r['clips']} clips of {len(r['videos'])} videos, {r['seconds_per_clip']:.1f} s a clip"
            f" ({r['device']})"
            for r in real
        ),
        "",
        "## Real-size token compression (whole shard's tokens, lossless; RANDOM-weight VideoMAE-B: a pretrained "
        "model's tokens may compress differently)",
        "",
        "| codec | " + " | ".join(f"{r['label']} bytes/clip | ratio | MB/s (1 thread)" for r in real) + " |",
        "|---|" + "---:|---:|---:|" * len(real),
    ]
    for codec in r0["compression"]:
        cells = []
        for r in real:
            c = r["compression"][codec]
            speed = f"{c['bytes'] * c['ratio'] / c['seconds'] / 1e6:,.0f}" if c["seconds"] else "-"
            cells.append(f"{fmt_bytes(c['bytes'] / r['clips'])} | {c['ratio']:.3f} | {speed}")
        lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    stats = r0["token_stats"]
    lines += [
        f"(tokens of {r0['label']}: mean {stats['mean']:.3f}, std {stats['std']:.3f}, max |x| {stats['max_abs']:.2f})",
        "",
        "## Extrapolated to the real datasets (decimal GB; frames by kept frames, features by clips)",
        "",
        "| dataset | videos | kept frames | clips | index | frames | (raw RGB) | tracks | keypoints | clips.parquet "
        "| features | total | total, frames.store: source | and backbone.store: recompute "
        f"| features {extra['best_codec']} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("index", "frames", "frames_raw_rgb", "tracks", "keypoints", "clips", "features", "total",
            "total_frames_source", "total_recompute", "features_compressed")  # fmt: skip
    for name, row_ in extra["datasets"].items():
        c, v = row_["counts"], row_["bytes"]
        lines.append(
            f"| {name} ({c['size']}) | {c['videos']:,.0f} | {c['kept_frames']:,.0f} | {c['clips']:,.0f} | "
            + " | ".join(f"{v[k] / GB:,.3f}" for k in keys)
            + " |"
        )
    t = extra["totals"]
    lines.append("| **all three** | | | | " + " | ".join(f"**{t[k] / GB:,.3f}**" for k in keys) + " |")
    lines += [
        "",
        "Notes:",
        "- Dataset facts (files, sequences, durations, splits) are constants in this script with their sources; "
        "kept frames = seconds x reference_fps / stride; clips from params `clips` "
        + "; ".join(f"{n}: {r['counts']['note']}" for n, r in extra["datasets"].items())
        + ".",
        "- Frames bytes are a LOWER bound: the synthetic frames are grey (3 equal channels, as KTH, but UCF101 "
        "and HMDB51 are colour) and the 320x240 ones are bilinear 2x upscales, which compress better than real "
        "footage. Raw RGB (no compression) is the upper bound; real LZ4 sits between.",
        f"- Last column: features compressed with {extra['best_codec']} at the mean measured ratio "
        f"{extra['best_ratio']:.3f} (random weights).",
        "- tracks/keypoints with `source: annotations`; a model writes the same columns, one row per kept frame of "
        "the primary track, but its values (scores, sub-pixel noise) may compress a little differently.",
        f"- Total runtime {seconds:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=12, help="synthetic videos per source size (12)")
    parser.add_argument(
        "--frames", type=int, help="frames per synthetic video (params synth.frames_per_video)"
    )
    parser.add_argument("--feature-videos", type=int, default=4,
                        help="videos per source size through the real-size VideoMAE-B (4)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="device of the real-size forwards (auto)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--work", default="/tmp/disk-bench", help="scratch folder (emptied first)")
    parser.add_argument("--out", default="/tmp/disk-bench/disk.json", help="JSON of every number")
    args = parser.parse_args()
    params = load_params(args.params)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's and from_pretrained's bars
    args.frames = args.frames or int(params["synth"]["frames_per_video"])
    started = time.perf_counter()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    say(f"rendering {args.videos} synthetic videos of {args.frames} frames")
    roots = {"160x120": work / "synthetic", "320x240": work / "synthetic-320x240"}
    render_dataset(roots["160x120"], args.videos, args.frames)
    say("upscaling them 2x into a copy")
    upscaled_copy(roots["160x120"], roots["320x240"])
    tiny = work / "checkpoints" / "tiny"
    write_backbone(tiny, seed=0)
    measured = {}
    for label, root in roots.items():
        say(f"{label}: prepare, frames, detect, pose, features (tiny backbone)")
        measured[label] = measure_size(label, root, work, params, tiny)
    say("writing a random-weight VideoMAE-B")
    base = work / "checkpoints" / "videomae-base"
    write_videomae_base(base)
    real = []
    for label in roots:
        say(f"{label}: features at real size on {args.feature_videos} videos")
        real.append(
            measure_features(label, measured[label], work, params, base, args.feature_videos, args.device)
        )
    extra = extrapolate(measured, real, params)
    seconds = time.perf_counter() - started
    print(report(measured, real, extra, args, seconds))
    for m in measured.values():
        for key in ("store", "index_frame", "tracks_frame", "keypoints_frame"):
            m.pop(key)
    result = {
        "args": vars(args),
        "dataset_facts": DATASETS,
        "measured": measured,
        "features_real_size": real,
        "extrapolated": extra,
        "seconds": seconds,
        "notes": {
            "frames_lower_bound": "synthetic frames are grey and the 320x240 ones upscaled: they compress better "
            "than real footage, so frames bytes are a lower bound (raw RGB: the upper bound)",
            "random_weights": "real-size tokens come from a RANDOM-weight VideoMAE-B; pretrained tokens may "
            "compress differently",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
