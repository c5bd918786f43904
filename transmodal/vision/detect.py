"""Detect stage (paper 3.1 step 1): RT-DETR person boxes per kept frame, linked by ByteTrack into tracks.

``run_detect`` returns the tracks table (``data/tracks.parquet``, contract in docs/data-contracts.md and
:mod:`transmodal.vision.track`) and the metrics written to ``metrics/detect.json``. With
``detect.source: annotations`` the tracks come from the dataset's ground truth instead of the detector,
through the same primary-track rule and gap filling.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from transmodal import distributed
from transmodal.data.frames import FrameStore
from transmodal.params import CheckpointError, DetectConfig, ParamError
from transmodal.vision import checkpoints
from transmodal.vision.batches import (
    VIDEOS_PER_UNIT,
    FinishedUnits,
    FramePiece,
    VideoFrames,
    frames_to_tensor,
    iter_frame_batches,
    pipelined,
    size_hw,
    stored_videos,
    unit_key,
    video_units,
)
from transmodal.vision.quality import detection_quality
from transmodal.vision.track import (
    BOX_COLUMNS,
    DetectedRows,
    VideoDetections,
    finalize_tracks,
    track_video,
)

TABLE_DTYPES = {
    "frame_idx": np.int64,
    "track_id": np.int64,
    **dict.fromkeys(BOX_COLUMNS, np.float64),
    "score": np.float64,
}
"""The dtypes of :func:`~transmodal.vision.track.track_video`'s rows."""
PIL_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, as stored in preprocessor_config.json


# ----------------------------------------------------------------------------------------------------------
# RT-DETR person detector


class PersonDetector:
    """RT-DETR through transformers, person class only.

    ``detector(frames (n, H, W, 3) uint8 RGB) -> [(boxes (N_i, 4) x1, y1, x2, y2 float32 pixels, scores (N_i,)
    float32)]``, boxes clamped to the frame.

    Pre-processing follows the checkpoint's own image processor. For the configurations RT-DETR checkpoints
    ship (fixed height x width, bilinear, rescale, optional normalise, no padding) it runs as batched torch
    ops on the model's device, equal to the processor's output up to uint8 rounding (1/255; tested); any
    other configuration goes through the processor itself.
    """

    def __init__(self, model, processor, person_id: int, score_threshold: float, device: torch.device):
        self.model = model
        self.processor = processor
        self.person_id = person_id
        self.score_threshold = score_threshold
        self.device = device
        self.revision: str | None = None  # from_config: the hub commit of a hub id
        self.folder: str | None = None  # from_config: where the checkpoint's files are
        self.dtype = next(model.parameters()).dtype
        self._fast = self._fast_preprocess_spec(processor)

    @classmethod
    def from_config(cls, cfg: DetectConfig) -> PersonDetector:
        """Load ``detect.checkpoint`` (hub id or folder) on ``detect.device`` in ``detect.precision``."""
        from transformers import AutoImageProcessor, RTDetrForObjectDetection, RTDetrV2ForObjectDetection

        folder = checkpoints.resolve_checkpoint(cfg.checkpoint, "detect.checkpoint", cfg.revision)
        try:
            config = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError) as err:  # a missing or damaged config.json (a cut copy of the cache)
            raise CheckpointError(
                f"params.yaml: detect.checkpoint is {cfg.checkpoint!r}: no readable config.json ({err})"
            ) from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        model_cls = {"rt_detr": RTDetrForObjectDetection, "rt_detr_v2": RTDetrV2ForObjectDetection}.get(
            model_type
        )
        if model_cls is None:
            raise CheckpointError(
                f"params.yaml: detect.checkpoint is {cfg.checkpoint!r}: model_type {model_type!r} is not "
                "RT-DETR (expected rt_detr or rt_detr_v2)"
            )
        device = checkpoints.pick_device(cfg.device)
        dtype = checkpoints.pick_dtype(cfg.precision, device)
        model = checkpoints.load_model(model_cls, folder, "detect.checkpoint", device, dtype)
        processor = checkpoints.load_processor(AutoImageProcessor, folder, "detect.checkpoint")
        # every box the tracker may use: the low ones (from detect.low_score_threshold) only extend tracks
        detector = cls(
            model, processor, person_label_id(model.config, cfg.person_label), cfg.low_score_threshold, device
        )
        detector.revision = checkpoints.hub_revision(folder)  # the hub commit; None for a local folder
        detector.folder = folder
        return detector

    @staticmethod
    def _fast_preprocess_spec(processor) -> dict | None:
        size = size_hw(getattr(processor, "size", None))
        supported = (
            getattr(processor, "do_resize", True)
            and size is not None
            and int(getattr(processor, "resample", PIL_BILINEAR)) == PIL_BILINEAR
            and not getattr(processor, "do_pad", False)
        )
        if not supported:
            return None
        spec = {"size": size, "scale": processor.rescale_factor if processor.do_rescale else 1.0}
        if getattr(processor, "do_normalize", False):
            spec["mean"] = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            spec["std"] = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        return spec

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 RGB -> pixel_values (n, 3, S_h, S_w) on the model's device and dtype."""
        if self._fast is None:
            pixel_values = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
            return pixel_values.to(self.device, self.dtype)
        spec = self._fast
        x = frames_to_tensor(frames, self.device)  # (n, 3, H, W) 0..255
        # antialiased bilinear is PIL's bilinear filter; PIL rounds the resized image to uint8, so do we
        x = F.interpolate(x, size=spec["size"], mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255) * spec["scale"]  # (n, 3, S_h, S_w)
        if "mean" in spec:
            x = (x - spec["mean"].to(x.device)) / spec["std"].to(x.device)
        return x.to(self.dtype)

    def forward(self, pixel_values: torch.Tensor):
        """The bare model call (what the benchmark compares the stage against)."""
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values)

    def postprocess(self, outputs, sizes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Person boxes above the threshold per image; ``sizes`` are the frames' (height, width)."""
        # On the CPU in float32: one copy per batch instead of a device sync per image, and numpy has no bf16.
        outputs32 = SimpleNamespace(
            logits=outputs.logits.float().cpu(), pred_boxes=outputs.pred_boxes.float().cpu()
        )
        with torch.inference_mode():
            results = self.processor.post_process_object_detection(
                outputs32, threshold=self.score_threshold, target_sizes=sizes, use_focal_loss=True
            )
        detections = []
        for result, (height, width) in zip(results, sizes, strict=True):
            # Focal top-k can list one query under two labels; keeping the person label alone removes that.
            person = result["labels"] == self.person_id
            boxes = result["boxes"][person].float()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            detections.append((boxes.numpy().astype(np.float32), result["scores"][person].float().numpy()))
        return detections

    def __call__(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        height, width = frames.shape[1:3]
        outputs = self.forward(self.preprocess(frames))
        return self.postprocess(outputs, [(height, width)] * len(frames))


def person_label_id(config, person_label: str) -> int:
    """The class id named ``person_label`` in the checkpoint's ``id2label`` (exact, then case-insensitive)."""
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    for wanted in (lambda name: name == person_label, lambda name: name.lower() == person_label.lower()):
        ids = sorted(i for i, name in id2label.items() if wanted(name))
        if ids:
            return ids[0]
    shown = ", ".join(repr(id2label[i]) for i in sorted(id2label)[:8])
    raise ParamError(
        f"params.yaml: detect.person_label is {person_label!r}, which is not a class of the detector "
        f"(its {len(id2label)} labels start with {shown})"
    )


# ----------------------------------------------------------------------------------------------------------
# The stage


def ground_truth_tracks(annotations: pd.DataFrame) -> dict[str, DetectedRows]:
    """Ground truth as detected tracks: video_id -> rows (frame_idx, track_id = person, boxes, score = 1), in
    annotation order within each video (one stable sort by video, then one slice per video)."""
    video_ids, video_of_row = np.unique(
        annotations["video_id"].astype(str).to_numpy(object), return_inverse=True
    )
    order = np.argsort(video_of_row, kind="stable")
    ends = np.cumsum(np.bincount(video_of_row, minlength=len(video_ids)))
    rows = DetectedRows(
        annotations["frame_idx"].to_numpy(np.int64)[order],
        annotations["person"].to_numpy(np.int64)[order],
        annotations[BOX_COLUMNS].to_numpy(np.float64).reshape(-1, 4)[order],
        np.ones(len(order)),
    )
    return {
        str(video_id): rows.take(slice(end - count, end))
        for video_id, end, count in zip(video_ids, ends, np.diff(ends, prepend=0), strict=True)
    }


def _model_tracks(
    store: FrameStore,
    videos: dict[str, VideoFrames],
    detector: PersonDetector,
    cfg: DetectConfig,
    progress: bool,
    units: FinishedUnits,
    videos_per_unit: int = VIDEOS_PER_UNIT,
) -> tuple[dict[str, DetectedRows], int]:
    """Detect persons in every kept frame of ``videos`` and track them: video_id -> detected track rows, and
    the number of person boxes scored ``detect.score_threshold`` or more. Each video's rows also go to
    ``units`` as a table (video_id, frame_idx, track_id, boxes, score; its box count in ``attrs["boxes"]``).
    A video is tracked as soon as its last frame is detected, so on a GPU the tracking of one video overlaps
    the detection of the next."""
    pending = {v: ([None] * len(info.frame_idx), [None] * len(info.frame_idx)) for v, info in videos.items()}
    missing = {v: len(info.frame_idx) for v, info in videos.items()}
    tracked: dict[str, DetectedRows] = {}
    counts = {"boxes": 0}
    total = sum(missing.values())

    def prepare(batch: list[FramePiece]) -> torch.Tensor:
        """pixel_values (B, 3, S_h, S_w) of one batch."""
        if len({piece.frames.shape[1:] for piece in batch}) == 1:  # one frame size: one resize
            frames = batch[0].frames if len(batch) == 1 else np.concatenate([p.frames for p in batch])
            return detector.preprocess(frames)
        # videos differ in size: pre-process per piece, then one forward on the whole batch
        return torch.cat([detector.preprocess(piece.frames) for piece in batch])

    def finish(batch: list[FramePiece], outputs) -> None:
        sizes = [piece.frames.shape[1:3] for piece in batch for _ in range(len(piece.frame_idx))]
        results = iter(detector.postprocess(outputs, sizes))
        for piece in batch:
            boxes, scores = pending[piece.video_id]
            for position in range(piece.start, piece.start + len(piece.frame_idx)):
                boxes[position], scores[position] = next(results)
            missing[piece.video_id] -= len(piece.frame_idx)
            if missing[piece.video_id] == 0:
                boxes, scores = pending.pop(piece.video_id)
                # boxes at or above detect.score_threshold (the low ones only extend tracks)
                found = sum(int((s >= cfg.score_threshold).sum()) for s in scores)
                counts["boxes"] += found
                video = videos[piece.video_id]
                table = track_video(boxes, scores, video.frame_idx, cfg, video.frame_rate)
                table = table.astype(TABLE_DTYPES)  # a video without rows too (its columns: object)
                tracked[piece.video_id] = DetectedRows.from_table(table)
                table.insert(0, "video_id", piece.video_id)
                table.attrs["boxes"] = found
                units.add(piece.video_id, table)
        bar.update(len(sizes))

    with tqdm(total=total, desc="detect+track", unit="frame", disable=not progress) as bar:
        # on a GPU the device runs batch k + 1 while the host decodes and tracks batch k (on the CPU: a plain
        # loop with all of torch's threads)
        pipelined(
            iter_frame_batches(store, list(videos), cfg.batch_size, videos_per_unit),
            lambda batch: detector.forward(prepare(batch)),
            finish,
        )
    return tracked, counts["boxes"]


STITCH_KEYS = ("stitch_tracks", "stitch_max_scale")  # detect params applied to the merged units


def _resume_key(cfg: DetectConfig, detector, store, videos: dict, per_unit: int) -> dict:
    """What a unit of detected rows depends on (see :func:`~transmodal.vision.batches.unit_key`), with the
    tracker's packages. Not :data:`STITCH_KEYS` (applied after the units are merged), ``source`` or ``device``
    (the device the model resolved to is in the key)."""
    from importlib.metadata import version

    here = Path(__file__).parent
    params = {k: v for k, v in asdict(cfg).items() if k not in STITCH_KEYS + ("source", "device")}
    code = [here / "detect.py", here / "track.py", here / "quality.py"]  # track_video uses quality.box_iou
    return unit_key(
        params, detector, store, video_units(list(videos), per_unit), code,
        tracker=[version("trackers"), version("supervision")],
    )  # fmt: skip


def _merged_tracks(
    units: FinishedUnits, tracked: dict[str, DetectedRows], boxes: int
) -> tuple[dict[str, DetectedRows], int] | None:
    """This process's tracked videos with the rows of every other unit, and the box count, on rank 0 (None on
    the others)."""
    others = units.others()
    if others is None:
        return None
    for table in others:
        for video_id, rows in table.groupby("video_id", sort=False):
            tracked[video_id] = DetectedRows.from_table(rows.reset_index(drop=True))
        boxes += int(table.attrs["boxes"])
    return tracked, boxes


def run_detect(
    store: FrameStore,
    cfg: DetectConfig,
    annotations: pd.DataFrame | None,
    progress: bool = True,
    detector: PersonDetector | None = None,
    parts_dir: str | Path | None = None,
    videos_per_unit: int = VIDEOS_PER_UNIT,
) -> tuple[pd.DataFrame, dict]:
    """Tracks of every stored video and the detect metrics (for ``metrics/detect.json``).

    With source ``model`` the videos are detected and tracked by units of ``videos_per_unit``
    (:class:`~transmodal.vision.batches.FinishedUnits`). Each finished unit's rows are kept in ``parts_dir``
    (the stage's: ``data/.partial/detect``; None keeps them in memory), so a run interrupted after hours
    starts at its first unfinished unit and gives the same bytes. Under torchrun (``compute.nproc`` x
    ``compute.nnodes`` > 1, which needs ``parts_dir``) each process takes every world-size-th unit left, and
    rank 0 merges the parts and returns the result; the other ranks return (None, None).

    ``annotations`` is the dataset's ground truth or None; ``source: annotations`` requires it, and whenever
    given it scores the tracks (adds the keys of :func:`~transmodal.vision.quality.detection_quality`).
    ``detector`` reuses an already loaded model (benchmarks); by default one is loaded from ``cfg``.
    """
    started = time.perf_counter()
    if cfg.source == "annotations" and annotations is None:
        raise ParamError(
            "params.yaml: detect.source is 'annotations' but the dataset has no annotations.parquet"
        )
    videos = stored_videos(store)
    stitch = cfg.stitch_tracks  # see transmodal.vision.track.best_chain
    metrics: dict = {"source": cfg.source, "stitch_tracks": stitch}
    if stitch:
        metrics["stitch_max_scale"] = cfg.stitch_max_scale
    if cfg.source == "model":
        if detector is None:
            detector = PersonDetector.from_config(cfg)
        revision = detector.revision
        metrics.update(
            checkpoint=cfg.checkpoint,
            **({"checkpoint_revision": revision} if revision else {}),
            device=str(detector.device),
            dtype=str(detector.dtype).removeprefix("torch."),
            batch_size=cfg.batch_size,
            score_threshold=cfg.score_threshold,
            low_score_threshold=cfg.low_score_threshold,
        )
        # detected track rows per video (frame_idx, track_id, boxes, score), by units of videos: those an
        # interrupted run finished are read back, the others computed (under torchrun shared out by unit)
        world = distributed.current()
        key = functools.partial(_resume_key, cfg, detector, store, videos, videos_per_unit)
        units = FinishedUnits(list(videos), videos_per_unit, parts_dir, key, world)
        if units.done and progress and world.is_main:
            print(
                f"detect: resuming, {len(units.done)} of {len(units.units)} units of videos already done "
                f"in {units.directory}"
            )
        mine = {v: videos[v] for v in units.videos()}
        tracked, boxes = _model_tracks(
            store, mine, detector, cfg, progress and world.is_main, units, videos_per_unit
        )
        merged = _merged_tracks(units, tracked, boxes)
        if merged is None:
            return None, None  # not rank 0: rank 0 finishes the stage
        detected_by_video, detections = merged
    else:
        detected_by_video = ground_truth_tracks(annotations)
        detections = 0

    finalize = []
    for video_id, video in videos.items():
        detected = detected_by_video.get(video_id, DetectedRows.empty())
        if cfg.source == "annotations":
            detected = detected.take(np.isin(detected.frame_idx, video.frame_idx))
            detections += len(detected)
        finalize.append(VideoDetections(video_id, detected, video.frame_idx, video.width, video.height))
    finalized = finalize_tracks(finalize, stitch=stitch, max_scale=cfg.stitch_max_scale)
    tracks, fallback_videos = finalized.tracks, finalized.fallback

    primary = tracks[tracks["is_primary"]]
    status = store.videos["status"]
    seconds = time.perf_counter() - started
    metrics.update(
        videos=int(len(videos)),
        videos_without_frames=int((status != "ok").sum()),
        videos_fallback=len(fallback_videos),
        fallback_examples=fallback_videos[:20],
        frames=int(len(primary)),
        detections=int(detections),
        tracks=int(tracks.loc[~tracks["fallback"], ["video_id", "track_id"]].drop_duplicates().shape[0]),
        primary_frames_detected=int((~primary["interpolated"] & ~primary["fallback"]).sum()),
        primary_frames_interpolated=int(primary["interpolated"].sum()),
        seconds=round(seconds, 3),
        frames_per_second=round(len(primary) / seconds, 2) if seconds > 0 else None,
    )
    if stitch:
        joined = primary.loc[~primary["fallback"]].groupby("video_id", sort=False)["track_id"].nunique() - 1
        metrics.update(
            stitched_tracks=int(joined.sum()),
            stitch_refused_tracks=int(sum(finalized.stitch_refused.values())),
            stitch_refused_examples=list(finalized.stitch_refused)[:20],
        )
    if annotations is not None:  # flat keys: `dvc metrics diff` shows recall, precision, ... directly
        metrics.update(detection_quality(tracks, annotations, store.frames))
    return tracks, metrics
