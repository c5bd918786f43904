"""``transmodal predict``: the trained model on one video file, through the same chain as the pipeline.

The chain is the stages' own code on a one-video, in-memory frame store: decode (one frame per time sample,
``frames.stride`` frames of 25 fps, matched by timestamp so that a phone's variable frame rate is sampled
evenly, :class:`~transmodal.data.frames.VideoStream` with :func:`decode_args`), RT-DETR + ByteTrack and the primary track
(:func:`~transmodal.vision.detect.run_detect`), ViTPose++ on it (:func:`~transmodal.vision.pose.run_pose`),
the person-centric crop and aligned pose (:func:`~transmodal.features.store.plan_clips`,
:func:`~transmodal.features.store.crop_batches`), the frozen VideoMAE and the fusion head. Every param of
that chain comes from the model folder's ``config.json`` (``pipeline``, recorded by the train stage, and
``backbone``), never from params.yaml, so a model folder is self-contained.

Windows. The video is scored with a sliding window of ``clips.length`` consecutive kept frames, ``step``
kept frames apart (default: half a clip); the last window is moved back to end on the last kept frame, so
every frame is covered. A video shorter than one clip gives one window padded with its last frame (as the
pipeline pads). The video-level result is the mean of the windows' logits, the rule by which ``evaluate``
scores a video from its clips (:func:`~transmodal.training.evaluate.mean_logits_by_unit`); ``evaluate``
takes a few clips of a video (``clips.per_video_test``, or one a KTH sequence), predict every window, so the
two results on one video differ a little. Each window's ``detected_share`` is the share of its frames where
the person was detected, not held or interpolated from the frames around (decision 16).

Memory. The kept frames are held a segment at a time (:class:`Segments`): a video whose frames pass half the
available memory is scored in segments, each tracked on its own, with the windows of the whole video;
``--out`` then decodes it again; ``explain`` keeps only the windows it may draw (:class:`Candidates`).

Sources. A model trained with ``detect.source`` or ``pose.source: annotations`` saw ground-truth boxes or
keypoints, which a new video does not have: predict then runs the recorded ``detect.checkpoint`` /
``pose.checkpoint`` (the tiny checkpoints in the demo) and says so. A video where the detector finds nobody
is cropped on the whole frame (the pipeline's fallback box), also said.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from transmodal.data.coco import COCO_JOINTS, COCO_LIMBS
from transmodal.data.frames import (
    DecodedVideo,
    VideoStream,
    _SizeChanged,
    display_size,
    sample_aspect,
    sample_step,
    shrunk_size,
    unreadable,
    usable_fps,
)
from transmodal.io import durable_replace, forget_unfinished, register_unfinished
from transmodal.memory import address_space_limit, available_memory
from transmodal.params import BackboneConfig, CheckpointError, DetectConfig, ParamError, PoseConfig

VIDEO_ID = "input"
TOP_K = 5
DEFAULT_MAX_SIDE = 1280  # frames are shrunk to this longer side when decoded (the detector sees 640 px)
# a segment's decoded frames may take at most this share of the available memory
MEMORY_SHARE = 0.5
# Writers tried for --out, in order, per container: (fourcc, name).
WRITERS = {
    ".mp4": (("avc1", "H.264"), ("mp4v", "MPEG-4 Part 2")),
    ".avi": (("MJPG", "Motion JPEG"), ("XVID", "MPEG-4 Part 2")),
}
HALF_PRECISIONS = {"float16": "fp16", "bfloat16": "bf16"}  # backbone.json's model_dtype -> backbone.precision


LOW_DETECTED_SHARE = 0.5  # a video whose person was detected in fewer of its kept frames: said
DRAW_MIN_SCORE = 0.3  # --out: joints the pose model scored lower are not drawn (a guess, not a position)


class PredictError(RuntimeError):
    """Bad input to predict (the message is one line naming the file or option to fix)."""


# ----------------------------------------------------------------------------------------------------------
# The model folder


@dataclass
class ModelFolder:
    """A trained model folder and what its config.json records about the chain that made its features."""

    path: Path
    config: dict
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> ModelFolder:
        from transmodal.training.train import CONFIG_FILE, WEIGHTS_FILE

        path = Path(path)
        if not path.is_dir():
            raise PredictError(f"--model {path}: no such folder (train one with `dvc repro train`)")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise PredictError(f"--model {path}: {name} is missing (not a folder the train stage wrote)")
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
        except json.JSONDecodeError as err:
            raise PredictError(f"--model {path}: {CONFIG_FILE} is not valid JSON ({err})") from None
        missing = [key for key in ("model", "classes", "backbone", "pipeline") if key not in config]
        if missing:
            raise PredictError(
                f"--model {path}: {CONFIG_FILE} has no {', '.join(missing)}: not a model folder the train or "
                "ablate stages wrote, or one an older version of them wrote (re-run `dvc repro`)"
            )
        classes, num_classes = config["classes"], config["model"].get("num_classes")
        if len(classes) != num_classes:
            raise PredictError(
                f"--model {path}: {CONFIG_FILE} names {len(classes)} classes but the head has {num_classes} "
                "outputs"
            )
        return cls(path, config)

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def threads(self) -> int | None:
        """``train.threads``: the CPU thread count the head trained with (None before the param)."""
        return self.config.get("train", {}).get("threads")

    @property
    def stride(self) -> int:
        return int(self.config["pipeline"]["frames"]["stride"])

    @property
    def sampling_rate(self) -> float | None:
        """Time samples a second, ``frames.reference_fps / frames.stride`` (None before time resampling)."""
        reference = self.reference_fps
        return None if reference is None else reference / self.stride

    @property
    def reference_fps(self) -> float | None:
        """``frames.reference_fps`` (a model folder from before time resampling: None, every stride-th)."""
        return self.config["pipeline"]["frames"].get("reference_fps")

    @property
    def max_side(self) -> int | None:
        """``frames.max_side`` the training frames were kept at (None: at the source's size); a model folder
        from before the param: :data:`DEFAULT_MAX_SIDE`, what predict used then."""
        return self.config["pipeline"]["frames"].get("max_side", DEFAULT_MAX_SIDE)

    @property
    def clip_length(self) -> int:
        return int(self.config["pipeline"]["clips"]["length"])

    @property
    def crop_margin(self) -> float:
        return float(self.config["pipeline"]["clips"]["crop_margin"])

    def detect_config(self, device: str, checkpoint: str | None) -> DetectConfig:
        return DetectConfig(**self._model_stage("detect", device, checkpoint))

    def pose_config(self, device: str, checkpoint: str | None) -> PoseConfig:
        return PoseConfig(**self._model_stage("pose", device, checkpoint))

    def _model_stage(self, stage: str, device: str, checkpoint: str | None) -> dict:
        """The recorded ``detect``/``pose`` params, run as ``source: model`` on ``device``; a checkpoint given
        on the command line replaces the recorded one and its revision (which pins the recorded one only)."""
        recorded = dict(self.config["pipeline"][stage])
        if stage == "detect":  # a folder from before the low boxes: trained on tracks of its high boxes only
            recorded.setdefault("low_score_threshold", recorded["score_threshold"])
            recorded.setdefault("stitch_max_scale", None)  # from before the height gate: stitched without it
        self._note_source(stage, recorded, checkpoint)
        recorded.update(
            source="model",
            checkpoint=checkpoint or self.local(recorded["checkpoint"]),
            revision=None if checkpoint else recorded.get("revision"),
            device=device,
        )
        return recorded

    def backbone_config(self, device: str) -> BackboneConfig:
        """The backbone the features were made with: checkpoint, precision (half precision applies on CUDA
        only) and, where it dropped tokens, the keep."""
        recorded = self.config["backbone"]
        keep = {key: recorded[key] for key in ("keep", "keep_margin", "keep_by") if key in recorded}
        precision = HALF_PRECISIONS.get(recorded.get("model_dtype", "float32"), "fp32")
        return BackboneConfig(
            checkpoint=self.local(recorded["checkpoint"]),
            revision=self.backbone_revision(),
            device=device,
            precision=precision,
            **keep,
        )

    def local(self, checkpoint: str) -> str:
        """A recorded checkpoint that is a folder relative to the project the model was trained in
        (``models/tiny/detector``), found from any working folder: in the first folder up from the model
        folder that holds it (the model's own project), else as recorded (a hub id, a path from the working
        folder, or one that is not here). The working folder comes last: another project's
        ``models/tiny`` there silently gave the model other weights than it was trained with."""
        if Path(checkpoint).is_absolute():
            return checkpoint
        for base in (*self.path.absolute().parents, *self.path.resolve().parents):
            if (base / checkpoint / "config.json").is_file():
                return str(base / checkpoint)
        return checkpoint

    def backbone_revision(self) -> str | None:
        """The hub commit the training features were made with when this machine's cache holds it (the same
        weights, whatever the id's branches point at now), else ``backbone.revision`` as the features stage
        was given it (None: the cached snapshot, or the newest; a differing commit is then noted)."""
        from transmodal.vision.checkpoints import cached_snapshot

        recorded = self.config["backbone"]
        commit = recorded.get("checkpoint_revision")
        if commit and cached_snapshot(recorded["checkpoint"], commit) is not None:
            return commit
        return recorded.get("revision")

    @property
    def full_patches_per_group(self) -> int:
        """P, the backbone's whole patch grid per frame group (the head sees K of them with a keep < 1)."""
        recorded = self.config["backbone"]
        return int(recorded.get("full_patches_per_group", recorded["grid"][1]))

    def _note_source(self, stage: str, recorded: dict, checkpoint: str | None) -> None:
        used = checkpoint or recorded["checkpoint"]
        if recorded["source"] == "annotations":
            self.notes.append(
                f"the model was trained on ground-truth {'boxes' if stage == 'detect' else 'keypoints'} "
                f"({stage}.source: annotations); this video has none, so {used} ({stage}.checkpoint) runs instead"
            )
        elif checkpoint and checkpoint != recorded["checkpoint"]:
            self.notes.append(f"{stage}: {checkpoint} replaces the recorded {recorded['checkpoint']}")


# ----------------------------------------------------------------------------------------------------------
# One video in memory, with the frame store's interface


class MemoryFrameStore:
    """The kept frames of one decoded video behind :class:`~transmodal.data.frames.FrameStore`'s interface
    (``videos``, ``frames``, ``video_ids``, ``read``, ``iter_chunks``), so the stages' code runs on it."""

    def __init__(self, video: DecodedVideo, sampling_rate: float | None = None):
        """``sampling_rate``: kept samples a second (the tracker's rate where the header gives none)."""
        self.video, self.sampling_rate = video, sampling_rate
        _, height, width, _ = video.frames.shape
        self.videos = pd.DataFrame(
            {
                "video_id": [video.video_id],
                "status": ["ok"],
                "reason": [""],
                "width": [width],
                "height": [height],
                "fps": [video.fps],
            }
        )
        n = len(video.frame_idx)
        self.frames = pd.DataFrame(
            {
                "video_id": [video.video_id] * n,
                "frame_idx": video.frame_idx.astype(np.int64),
                "width": np.full(n, width),
                "height": np.full(n, height),
                "fps": np.full(n, video.fps),
            }
        )

    @property
    def video_ids(self) -> list[str]:
        return [self.video.video_id]

    def __contains__(self, video_id: str) -> bool:
        return video_id == self.video.video_id

    def read(
        self, video_id: str, first: int | None = None, last: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole video: it is in memory (``first``/``last`` may ask for less, never for more)."""
        return self.video.frame_idx.astype(np.int64), self.video.frames

    def iter_chunks(self, video_id: str, first: int | None = None, last: int | None = None):
        yield self.read(video_id)


# ----------------------------------------------------------------------------------------------------------
# The chain


def window_starts(num_frames: int, length: int, step: int) -> list[int]:
    """Start positions (into the kept frames) of the sliding windows; see the module docstring."""
    if num_frames <= length:
        return [0]
    starts = list(range(0, num_frames - length + 1, step))
    if starts[-1] != num_frames - length:
        starts.append(num_frames - length)
    return starts


def window_count(samples: int, length: int, step: int) -> int:
    """``len(window_starts(samples, length, step))``, without the list (a header's frame count may be bogus)."""
    if samples <= length:
        return 1
    return (samples - length) // step + 1 + ((samples - length) % step != 0)


def window_clips(frame_idx: np.ndarray, length: int, step: int) -> pd.DataFrame:
    """One clip row per window (the columns :func:`~transmodal.features.store.plan_clips` reads)."""
    return window_rows(frame_idx, length, window_starts(len(frame_idx), length, step))


def window_rows(samples: np.ndarray, length: int, starts: list[int], first: int = 0) -> pd.DataFrame:
    """The clip rows of the windows starting at ``starts`` (positions in ``samples``, the frame number of each
    time sample), numbered from ``first``; a window past the last sample is padded with it."""
    rows = []
    for n, start in enumerate(starts, first):
        positions = np.arange(start, start + length)
        padded = bool(positions[-1] >= len(samples))
        positions = np.minimum(positions, len(samples) - 1)
        rows.append(
            {
                "clip_id": f"{VIDEO_ID}#{n}",
                "video_id": VIDEO_ID,
                "frame_idx": samples[positions].astype(np.int32),
                "padded": padded,
            }
        )
    return pd.DataFrame(rows)


def top_k(probabilities: np.ndarray, classes: list[str], k: int = TOP_K) -> list[dict]:
    """The ``k`` most probable classes, most probable first (ties: the lower class index)."""
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(classes))]
    return [{"label": classes[i], "probability": float(probabilities[i])} for i in order]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class Prediction:
    """What :func:`predict_video` computed; :meth:`summary` is the ``--json`` document."""

    video: Path
    classes: list[str]
    frame_idx: np.ndarray  # (T,) kept original frame numbers
    fps: float
    size: tuple[int, int]  # (width, height) as decoded (after any shrinking)
    source_size: tuple[int, int]  # (width, height) as a player shows it (non-square pixels stretched)
    windows: pd.DataFrame  # planned clips: frame_idx, padded, crop box, aligned pose
    logits: np.ndarray  # (W, C) float32
    tracks: pd.DataFrame
    keypoints: pd.DataFrame
    notes: list[str]
    fallback: bool  # no person found: the whole frame was cropped
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB kept frames, for --out
    candidates: Candidates | None = None  # the windows explain may draw, with their tokens and crops
    kept_patches: np.ndarray | None = None  # (W, G, K) the patches the backbone kept (backbone.keep < 1)
    full_patches: int | None = None  # P, the whole patch grid of a frame group
    pose: torch.Tensor | None = None  # (W, T, J, C) the head's pose input per window
    threads: int | None = None  # train.threads: the CPU thread count the head runs on
    step: float = 0.0  # source frames per time sample (frames.reference_fps and stride, at this fps)
    samples: np.ndarray | None = (
        None  # (S,) the frame number of each time sample (frames repeat in slow video)
    )
    segments: int = 1  # the segments it was scored in (a long video: Segments)
    decode_args: dict | None = None  # VideoStream's arguments: --out decodes a long video again

    def video_probabilities(self) -> np.ndarray:
        from transmodal.training.evaluate import mean_logits_by_unit

        mean = mean_logits_by_unit(torch.from_numpy(self.logits), [VIDEO_ID] * len(self.logits))
        return softmax(mean.to_numpy()[0])

    def detected_frames(self) -> np.ndarray:
        """The kept frames whose primary box the detector found (not held, interpolated or the fallback)."""
        tracks = self.tracks
        found = tracks["is_primary"].astype(bool) & ~tracks["interpolated"].astype(bool)
        found &= ~tracks["fallback"].astype(bool)
        return np.unique(tracks.loc[found, "frame_idx"].to_numpy(np.int64))

    def summary(self) -> dict:
        probabilities = softmax(self.logits)
        detected = self.detected_frames()
        timeline = []
        for n, (row, probs) in enumerate(
            zip(self.windows.itertuples(index=False), probabilities, strict=True)
        ):
            timeline.append(
                {
                    "window": n,
                    "start_frame": int(row.frame_idx[0]),
                    "end_frame": int(row.frame_idx[-1]),
                    "padded": bool(row.padded),
                    "detected_share": float(np.isin(np.asarray(row.frame_idx), detected).mean()),
                    "top5": top_k(probs, self.classes),
                }
            )
        return {
            "video": str(self.video),
            "frames_kept": int(len(self.frame_idx)),
            "fps": self.fps,
            "size": list(self.size),
            "source_size": list(self.source_size),
            "person_found": not self.fallback,
            "detected_share": float(np.isin(self.frame_idx, detected).mean()) if len(self.frame_idx) else 0.0,
            "segments": self.segments,
            "notes": list(self.notes),
            # evaluate averages the same way over its own clips of a video (clips.per_video_test of them, or
            # one a KTH sequence); predict over every window, so the two results differ a little
            "aggregation": "mean of the windows' logits, then softmax (evaluate's rule, over every window)",
            "video_top5": top_k(self.video_probabilities(), self.classes),
            "windows": timeline,
        }


def decode_args(path: Path, stride: int, max_side: int, reference_fps: float | None) -> dict:
    """How predict decodes a video: :class:`~transmodal.data.frames.VideoStream`'s (and ``decode_video``'s)
    arguments, for the model folder's ``stride`` and ``reference_fps``."""
    return dict(
        path=Path(path),
        stride=stride,
        max_side=max_side,
        reference_fps=reference_fps,
        by_time=True,  # a phone's variable frame rate is sampled evenly in time
        display_aspect=True,  # non-square pixels stretched, as a player shows them
    )


def read_header(path: Path) -> tuple[tuple[int, int], int, float]:
    """(display size, frame count, frame rate) from ``path``'s header, or :class:`PredictError` with one
    line saying why it cannot be a video; the count is 0 and the rate 0 where the header has none usable."""
    path = Path(path)
    if reason := unreadable(path):
        raise PredictError(f"{path}: {reason}")
    with _stderr_silenced():  # FFmpeg's own line on a file it cannot open ("moov atom not found")
        capture = cv2.VideoCapture(str(path))
    try:
        opened = capture.isOpened()
        stored = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        source = display_size(*stored, sample_aspect(capture))  # an anamorphic stream is shown wider
        reported = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    if not opened:
        raise PredictError(f"{path}: not a video OpenCV can read")
    fps = fps if math.isfinite(fps) else 0.0
    # a header whose rate is absurd is no guide to its frame count either (90000 fps and 270000 frames for
    # 3 s): the decoding finds the count
    return source, (reported if usable_fps(fps) else 0), fps


def check_segment(
    path: Path, size: tuple[int, int], frames: int, max_side: int, hint: str, reserve: int = 0
) -> int:
    """The bytes of pixels a segment of predict's kept frames may hold (half the available memory, less
    ``reserve``: explain's candidate windows), or :class:`PredictError` when not even ``frames`` of them
    (:meth:`Segments.least_frames`, or the whole video when shorter) fit; ``hint`` says what those frames
    are."""
    available = available_memory()
    budget = int(MEMORY_SHARE * available) - reserve
    need = frames * _frame_bytes(size, max_side)
    if need > budget:
        raise PredictError(
            f"{path}: a segment of {frames} kept frames ({hint}) needs {need / 2**30:.2f} GiB at "
            f"{at_size(max_side)}, more than half the {available / 2**30:.2f} GiB available; lower --max-side"
        )
    return budget


def at_size(max_side: int | None) -> str:
    """How the frames are sized, for a message: ``--max-side N``, or the source's size."""
    return (
        f"--max-side {max_side}"
        if max_side is not None
        else "the source's size (the model's frames.max_side)"
    )


def _frame_bytes(size: tuple[int, int], max_side: int | None) -> int:
    """Bytes of one decoded frame of ``size`` shrunk to ``max_side`` (as :func:`decode_video` shrinks it)."""
    width, height = shrunk_size(max(1, size[0]), max(1, size[1]), max_side)
    return width * height * 3


@dataclass
class _Chain:
    """The chain's models, loaded once, and the scoring of one segment's windows with them."""

    folder: ModelFolder
    detect_cfg: DetectConfig
    pose_cfg: PoseConfig
    detector: object
    estimator: object
    backbone: object
    model: object
    device: torch.device
    pose_scores: str

    @classmethod
    def load(cls, folder: ModelFolder, device: str, detector: str | None, pose_model: str | None) -> _Chain:
        from transmodal.features.backbone import FrozenBackbone
        from transmodal.training.train import load_checkpoint
        from transmodal.vision.checkpoints import pick_device
        from transmodal.vision.detect import PersonDetector
        from transmodal.vision.pose_estimator import PoseEstimator

        detect_cfg = folder.detect_config(device, detector)
        pose_cfg = folder.pose_config(device, pose_model)
        person_detector = PersonDetector.from_config(detect_cfg)
        estimator = PoseEstimator.from_config(pose_cfg)
        backbone = FrozenBackbone(folder.backbone_config(device), folder.clip_length)
        expected = folder.config["backbone"]
        got = backbone.describe()
        for key in ("grid", "hidden_size", "image_size", "num_frames"):
            if got[key] != expected[key]:
                raise PredictError(
                    f"--model {folder.path}: trained on {expected['checkpoint']} features with {key} "
                    f"{expected[key]}, but that checkpoint now gives {got[key]}"
                )
        trained_at, here = expected.get("checkpoint_revision"), got.get("checkpoint_revision")
        if trained_at != here:
            folder.notes.append(
                f"the training features were made with {expected['checkpoint']} at revision "
                f"{trained_at or '?'}; here it is revision {here or '?'}, so the tokens may differ from those "
                "it was trained on"
            )
        made_in, runs_in = expected.get("model_dtype", "float32"), str(backbone.dtype).removeprefix("torch.")
        if made_in != runs_in:
            folder.notes.append(
                f"the training features were made with the backbone in {made_in}; here it runs in {runs_in} "
                "(half precision on CUDA only), so the tokens differ in the last digits"
            )
        torch_device = pick_device(device)
        model, _ = load_checkpoint(folder.path, torch_device)
        return cls(
            folder, detect_cfg, pose_cfg, person_detector, estimator, backbone, model, torch_device,
            model.model_cfg.pose_scores,
        )  # fmt: skip

    def score(
        self, video: DecodedVideo, clips: pd.DataFrame, progress: bool, bar, candidates: Candidates | None
    ) -> dict:
        """The windows ``clips`` of one segment ``video`` through detect, pose, crop, backbone and head:
        planned windows, logits, kept patches, tracks, keypoints, fallback; ``candidates`` (explain) keeps the
        tokens and crops of the windows it may draw, batch by batch."""
        from transmodal.features.store import crop_batches, plan_clips, plan_kept
        from transmodal.training.data import pose_input
        from transmodal.training.train import trained_threads
        from transmodal.vision.detect import run_detect
        from transmodal.vision.pose import run_pose

        store = MemoryFrameStore(video, self.folder.sampling_rate)
        tracks, detect_metrics = run_detect(store, self.detect_cfg, None, progress, self.detector)
        keypoints, _ = run_pose(store, tracks, self.pose_cfg, None, progress, self.estimator)
        planned, _ = plan_clips(clips, store.videos, tracks, keypoints, self.folder.crop_margin)
        backbone = self.backbone
        window_kept = plan_kept(planned, tracks, backbone) if backbone.drops else None  # (W, G, K) or None
        t, joints = self.folder.clip_length, len(COCO_JOINTS)
        xy = np.stack(planned["pose_xy"].to_numpy()).reshape(len(planned), t, joints, 2)
        score = np.stack(planned["pose_score"].to_numpy()).reshape(len(planned), t, joints)
        mask = np.stack(planned["pose_mask"].to_numpy()).reshape(len(planned), t, joints)
        pose = pose_input(xy, score, mask, self.pose_scores)
        logits, done = [], 0
        batches = crop_batches(
            store, planned, backbone.image_size, 8, backbone.host_normalizer,
            pin_memory=backbone.host_normalizer is None,
        )  # fmt: skip
        with torch.inference_mode():
            for pixel_values in batches:
                batch_kept = None if window_kept is None else window_kept[done : done + len(pixel_values)]
                half = backbone.forward(pixel_values, batch_kept)
                tokens = half.float().to(self.device)
                batch_pose = pose[done : done + len(tokens)].to(self.device)
                with trained_threads(self.folder.threads):  # as evaluate runs it (batches of 8 here)
                    logits.append(self.model(tokens, batch_pose).logits.float().cpu().numpy())
                if candidates is not None:
                    candidates.add(video, planned.iloc[done : done + len(tokens)], half, logits[-1])
                done += len(tokens)
                bar.update(len(tokens))
        return {
            "planned": planned,
            "logits": np.concatenate(logits).astype(np.float32),
            "kept_patches": window_kept,
            "pose": pose,
            "tracks": tracks,
            "keypoints": keypoints,
            "fallback": detect_metrics["videos_fallback"] > 0,
            "joined": detect_metrics.get("stitched_tracks", 0),
            "refused": detect_metrics.get("stitch_refused_tracks", 0),
        }


def predict_video(
    video_path: Path,
    model_dir: Path,
    *,
    step: int | None = None,
    device: str = "auto",
    max_side: int | None = None,
    detector: str | None = None,
    pose_model: str | None = None,
    progress: bool = True,
    max_bytes: int | None = None,
    explain_size: int | None = None,
    window: int | None = None,
) -> tuple[Prediction, object]:
    """Run the chain on one video; returns the prediction and the loaded head.

    The video is decoded once, a segment at a time (:class:`Segments`), so a video of any length fits:
    ``max_bytes`` is the pixels a segment may hold, by default half the available memory
    (:data:`MEMORY_SHARE`), and a video that fits is one segment. ``max_side`` None: the model folder's
    ``frames.max_side`` (the size its training frames were kept at; None there: the source's size).
    ``explain_size`` (``explain``): keep the
    tokens and the crops, at that side, of ``window`` or, without one, of each class's surest window
    (:class:`Candidates`)."""
    from tqdm import tqdm

    video_path = Path(video_path)
    folder = ModelFolder.open(model_dir)
    length = folder.clip_length
    if step is not None and step < 1:
        raise PredictError(f"--step is {step}; it must be at least 1")
    step = step or max(1, length // 2)
    if max_side is None:
        max_side = folder.max_side  # None again for a model trained on frames at the source's size
    decoding = decode_args(video_path, folder.stride, max_side, folder.reference_fps)
    source_size, counted, fps = read_header(video_path)
    sampling = sample_step(fps, folder.stride, folder.reference_fps)
    samples_expected = math.ceil((counted - 0.5) / sampling) if counted else 0  # sample_numbers' count
    kept_expected = min(counted, samples_expected)  # distinct frames
    least = Segments.least_frames(length, step)
    hint = "two windows and two steps"
    if 0 < kept_expected < least:
        least, hint = kept_expected, "the whole video"
    reserve = 0
    if explain_size is not None:  # a window a class: its fp16 tokens and crops (Candidates)
        groups, patches = folder.config["backbone"]["grid"]
        per_window = groups * patches * folder.config["backbone"]["hidden_size"] * 2
        per_window += length * explain_size * explain_size * 3
        reserve = (1 if window is not None else len(folder.classes)) * per_window
    budget = check_segment(video_path, source_size, least, max_side, hint, reserve)
    estimate = window_count(samples_expected, length, step) if counted else None
    candidates = None if explain_size is None else Candidates(window, explain_size)
    stream = VideoStream(**decoding)
    try:
        try:  # the first kept frame decoded before the models load: a file that does not decode fails fast
            if not stream.open():
                raise PredictError(f"{video_path}: not a readable video (OpenCV cannot open it)")
            decoded = iter(stream)
            first = next(decoded, None)
        except (_SizeChanged, cv2.error) as err:
            raise PredictError(f"{video_path}: {_decode_failure(stream, err)}") from None
        if first is None:
            raise PredictError(f"{video_path}: {stream.nothing_decoded()}")
        segments = Segments(
            stream,
            length,
            step,
            budget if max_bytes is None else max_bytes,
            itertools.chain([first], decoded),
            # reserved, not committed: only an address-space limit counts what a buffer reserves
            expected=kept_expected if address_space_limit() is not None else 0,
        )
        parts = iter(segments)
        chain = _Chain.load(folder, device, detector, pose_model)
        results, seen = [], -1
        tracks, keypoints = [], []
        # detect's and pose's own bars: for one segment only
        inner = progress and kept_expected * first[1].nbytes <= segments.max_bytes
        with tqdm(total=estimate, desc="windows", unit="clip", disable=not progress) as bar:
            while True:
                try:  # only the decoding's own errors are the file's
                    part = next(parts, None)
                except (_SizeChanged, cv2.error) as err:
                    raise PredictError(f"{video_path}: {_decode_failure(stream, err)}") from None
                except MemoryError:  # the segment's buffer, where a limit refuses what was measured free
                    raise PredictError(
                        f"{video_path}: no memory for a segment of {segments.capacity} kept frames at "
                        f"{at_size(max_side)}; lower --max-side"
                    ) from None
                if part is None:
                    break
                video, clips = part
                if segments.count > 1:
                    bar.set_postfix_str(f"segment {segments.count}")
                scored = chain.score(video, clips, inner, bar, candidates)
                results.append(scored)
                # a frame carried into the next segment keeps the first segment's track and pose
                for table, into in ((scored["tracks"], tracks), (scored["keypoints"], keypoints)):
                    into.append(table[table["frame_idx"] > seen])
                seen = int(video.frame_idx[-1])
    finally:
        stream.close()
    reason, _ = stream.notes()
    samples = np.asarray(segments.samples, np.int64)
    size = (segments.shape[1], segments.shape[0])

    notes = list(folder.notes)
    if reason:  # what the decoding found odd: a cut file, a header without a usable frame rate
        notes.append(reason)
    fallbacks = sum(part["fallback"] for part in results)
    if segments.count > 1:
        notes.append(
            f"scored in {segments.count} segments of at most {segments.capacity} kept frames (what the memory "
            f"for frames holds at {at_size(max_side)}): each is tracked on its own, with its own primary "
            "track, and every window lies in one segment"
        )
        if fallbacks:
            notes.append(
                f"no person was detected in {fallbacks} of the {segments.count} segments: the whole frame is "
                "their crop (the pipeline's fallback box)"
            )
    elif fallbacks:
        notes.append("no person was detected: the whole frame is the crop (the pipeline's fallback box)")
    if source_size != size:
        notes.append(
            f"frames shrunk from {source_size[0]}x{source_size[1]} to {size[0]}x{size[1]} ({at_size(max_side)})"
        )
    if len(samples) < length:  # a slow source's frame stands for several time samples
        notes.append(f"only {len(samples)} time samples, fewer than one clip ({length}): one window, padded")
    kept_patches = [part["kept_patches"] for part in results]
    prediction = Prediction(
        video=video_path,
        classes=folder.classes,
        frame_idx=np.asarray(segments.frame_idx, np.int64),
        fps=float(stream.fps),
        size=size,
        source_size=source_size,
        windows=pd.concat([part["planned"] for part in results], ignore_index=True),
        logits=np.concatenate([part["logits"] for part in results]),
        tracks=pd.concat(tracks, ignore_index=True),
        keypoints=pd.concat(keypoints, ignore_index=True),
        notes=notes,
        fallback=fallbacks > 0,
        frames=video.frames if segments.count == 1 else None,
        candidates=candidates,
        pose=torch.cat([part["pose"] for part in results]),
        kept_patches=None if kept_patches[0] is None else np.concatenate(kept_patches),
        full_patches=folder.full_patches_per_group,
        threads=folder.threads,
        step=stream.step,
        samples=samples,
        segments=segments.count,
        decode_args=decoding,
    )
    others = max(
        part["tracks"].loc[~part["tracks"]["is_primary"].astype(bool), "track_id"].nunique()
        for part in results
    )
    joined = sum(part["joined"] for part in results)
    refused = sum(part["refused"] for part in results)
    notes.extend(detection_notes(prediction, others, joined, refused, chain.detect_cfg.stitch_max_scale))
    return prediction, chain.model


def detection_notes(
    prediction: Prediction, others: int, joined: int = 0, refused: int = 0, max_scale: float | None = None
) -> list[str]:
    """What the tracking leaves unsaid: a person detected in few of the kept frames (the others cropped on
    a held or interpolated box); ``joined`` tracks at other times stitched to the primary one and ``refused``
    ones left out for their height (``detect.stitch_max_scale``: ``max_scale``), over all segments; and
    ``others`` tracks (the most in one segment) beside the primary one."""
    notes = []
    detected = float(np.isin(prediction.frame_idx, prediction.detected_frames()).mean())
    if detected < LOW_DETECTED_SHARE and detected > 0.0:  # none: the fallback box's note says so
        notes.append(
            f"the person was detected in {detected:.0%} of the kept frames; the others are cropped on the box "
            "held or interpolated from the frames around (each window's detected_share in --json; --out "
            "draws those boxes grey)"
        )
    if joined:
        notes.append(
            f"{joined} track(s) at other times joined to the primary one (a person who leaves the view and "
            "comes back gets a new track; detect.stitch_tracks)"
        )
    if refused:
        notes.append(
            f"{refused} track(s) at other times not joined to the primary one: their height differs from its "
            f"by more than {max_scale:g}x (detect.stitch_max_scale)"
        )
    if others:
        notes.append(
            f"{others} other track(s) (other people, or false detections) beside the primary one"
            + (" in a segment" if prediction.segments > 1 else "")
            + ": the windows follow the primary track only"
        )
    return notes


def _decode_failure(stream: VideoStream, err: Exception) -> str:
    """Why decoding stopped: the frame size changed, or OpenCV gave up on the stream."""
    return str(err) if isinstance(err, _SizeChanged) else stream.failure(err)


class Candidates:
    """The windows ``explain`` may draw, kept as the video is scored, so it holds no more than one window's
    tokens and crops per class: the ``window`` asked for, or for each class the window most sure of it so far
    (explain draws the one of the video's label, known only at the end; ties go to the earlier window, as
    ``argmax`` over all the windows would)."""

    def __init__(self, window: int | None, size: int):
        self.window, self.size = window, size
        self.best: dict[int, tuple[float, int]] = {}  # class -> (probability, window)
        self.kept: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # window -> (tokens (G, K, D), crops)

    def add(self, video: DecodedVideo, rows: pd.DataFrame, tokens: torch.Tensor, logits: np.ndarray) -> None:
        """A batch of scored windows of segment ``video``: planned ``rows``, backbone ``tokens``, ``logits``."""
        from transmodal.features.crops import CROP_COLUMNS, crop_frames

        for i, (row, probabilities) in enumerate(
            zip(rows.itertuples(index=False), softmax(logits), strict=True)
        ):
            n = int(row.clip_id.rsplit("#", 1)[1])
            if self.window is None:
                wanted = False
                for c, p in enumerate(probabilities.tolist()):
                    if c not in self.best or p > self.best[c][0]:
                        self.best[c], wanted = (p, n), True
            else:
                wanted = n == self.window
            if wanted:
                positions = np.searchsorted(video.frame_idx, np.asarray(row.frame_idx, np.int64)).tolist()
                box = tuple(int(getattr(row, column)) for column in CROP_COLUMNS)
                self.kept[n] = (tokens[i].clone(), crop_frames(video.frames, box, self.size, positions))
        if self.window is None:  # a window no longer the surest of any class is let go
            live = {n for _, n in self.best.values()}
            self.kept = {n: kept for n, kept in self.kept.items() if n in live}

    def pick(self, label: int) -> int:
        """The window to draw for the video's ``label``."""
        return self.window if self.window is not None else self.best[label][1]


# ----------------------------------------------------------------------------------------------------------
# A long video, a segment at a time


class Segments:
    """A video's kept frames in segments of at most ``max_bytes`` of pixels, each with the windows that lie in
    it, so predict holds one segment of a long video at a time (:meth:`__iter__` gives
    ``(segment, window clips)``).

    The windows are those of :func:`window_starts` over the whole video's time samples, numbered as there.
    A segment is scored once it is full: the windows that end in it, then its frames from the first one a
    later window can start on are carried into the next (less than a window and a step of samples). The
    last segment also gets the last window (moved back to end on the last sample) or, for a video shorter
    than a clip, the padded one. A video that fits in one segment is scored as a whole, as before."""

    def __init__(
        self,
        stream: VideoStream,
        length: int,
        step: int,
        max_bytes: int,
        frames: Iterable | None = None,
        expected: int = 0,
    ):
        """``frames``: the stream's kept frames (default: iterating ``stream``), e.g. with the first one
        already decoded. ``expected``: the kept frames the header announces (0: unknown); a segment then
        holds at most those and a margin (:meth:`reserved`), not all ``max_bytes``."""
        self.stream, self.length, self.step, self.max_bytes = stream, length, step, max_bytes
        self.expected = expected
        self.frames = stream if frames is None else frames
        self.samples: list[int] = []  # the frame number of each time sample so far
        self.frame_idx: list[int] = []  # the number of each kept frame so far
        self.count = 0  # segments given
        self.capacity = 0  # kept frames a segment holds (from the first frame's size)
        self.done = 0  # windows given
        self.shape: tuple[int, ...] | None = None

    @staticmethod
    def least_frames(length: int, step: int) -> int:
        """Kept frames a segment must hold: a window and a step carried over, and as many new."""
        return 2 * (length + step)

    def reserved(self, frame_bytes: int) -> int:
        """Kept frames a segment holds: what ``max_bytes`` holds, but, given ``expected`` (predict does under an
        address-space limit, ``ulimit -v`` or a cluster's ``h_vmem``, which counts reserved pages as used),
        no more than the header's count and a quarter more (a count a little short, as a Matroska header's
        estimate can be, still gives one segment; a header short by more gives several, said in predict's
        notes). A 5-frame video reserved half the machine's memory, which such a limit refused."""
        least = self.least_frames(self.length, self.step)
        fits = max(self.max_bytes // frame_bytes, least)
        if self.expected <= 0:
            return fits
        return min(fits, max(self.expected + self.expected // 4, least))

    def __iter__(self) -> Iterator[tuple[DecodedVideo, pd.DataFrame]]:
        buffer: np.ndarray | None = None
        numbers: list[int] = []  # the buffer's frames
        firsts: list[int] = []  # the index of each buffered frame's first time sample
        for number, frame, count in self.frames:
            if buffer is None:
                self.shape = frame.shape
                self.capacity = self.reserved(frame.nbytes)
                # reserved whole, not grown: the pages a short video never writes are never committed, and
                # no growing copy holds two buffers at once
                buffer = np.empty((self.capacity, *frame.shape), np.uint8)
            n = len(numbers)
            if n == self.capacity:
                yield self._segment(buffer[:n], numbers, final=False)
                last = self.done_regular_start()
                keep = next(j for j in range(n) if firsts[j] + _counts(firsts, j, len(self.samples)) > last)
                buffer[: n - keep] = buffer[keep:n]
                del numbers[:keep], firsts[:keep]
                n = len(numbers)
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=buffer[n])
            numbers.append(number)
            firsts.append(len(self.samples))
            self.frame_idx.append(number)
            self.samples.extend([number] * count)
        if numbers:
            yield self._segment(buffer[: len(numbers)], numbers, final=True)

    def done_regular_start(self) -> int:
        """The first time sample a window not yet scored can start on."""
        return (self.done - 1) * self.step + 1 if self.done else 0

    def _segment(
        self, frames: np.ndarray, numbers: list[int], final: bool
    ) -> tuple[DecodedVideo, pd.DataFrame]:
        samples = np.asarray(self.samples, np.int64)
        if final:
            starts = window_starts(len(samples), self.length, self.step)[self.done :]
        else:  # the regular windows that end in the samples so far
            first = self.done * self.step
            starts = list(range(first, len(samples) - self.length + 1, self.step))
        clips = window_rows(samples, self.length, starts, self.done)
        self.done += len(starts)
        self.count += 1
        stream = self.stream
        video = DecodedVideo(
            VIDEO_ID, frames, np.asarray(numbers, np.int64), stream.decoded, stream.reported, stream.fps,
            step=stream.step,
        )  # fmt: skip
        return video, clips


def _counts(firsts: list[int], j: int, total: int) -> int:
    """Time samples buffered frame ``j`` fills (its first sample to the next frame's, or to ``total``)."""
    return (firsts[j + 1] if j + 1 < len(firsts) else total) - firsts[j]


# ----------------------------------------------------------------------------------------------------------
# --out: the annotated video


def frame_labels(prediction: Prediction) -> list[str]:
    """The label drawn on each kept frame: that of the window whose centre is nearest the frame."""
    probabilities = softmax(prediction.logits)
    centres = np.array([np.mean(f) for f in prediction.windows["frame_idx"]])
    labels = []
    for frame in prediction.frame_idx:
        n = int(np.argmin(np.abs(centres - frame)))
        best = int(np.argmax(probabilities[n]))
        labels.append(f"{prediction.classes[best]} {probabilities[n, best]:.2f} (window {n})")
    return labels


def draw_frame(
    frame: np.ndarray,
    box: np.ndarray | None,
    joints: np.ndarray | None,
    label: str,
    detected: bool = True,
) -> np.ndarray:
    """One kept frame (H, W, 3) RGB with the primary box (grey where it was not ``detected``: held,
    interpolated or the whole-frame fallback), the COCO skeleton (the joints given: finite ones are drawn)
    and the label, as BGR."""
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    scale = max(image.shape[:2]) / 480
    thick = max(1, round(2 * scale))
    if box is not None and np.isfinite(box).all():
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour, width = ((0, 200, 255), thick) if detected else ((160, 160, 160), max(1, thick // 2))
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, width)
    if joints is not None:
        for a, b in COCO_LIMBS:
            pa, pb = joints[a], joints[b]
            if np.isfinite(pa).all() and np.isfinite(pb).all():
                cv2.line(image, tuple(int(v) for v in pa), tuple(int(v) for v in pb), (80, 255, 80), thick)
        for point in joints:
            if np.isfinite(point).all():
                cv2.circle(image, tuple(int(v) for v in point), thick + 1, (255, 80, 80), -1)
    cv2.putText(
        image, label, (8, int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), thick + 2
    )
    cv2.putText(
        image, label, (8, int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255), thick
    )
    return image


def write_annotated(prediction: Prediction, out: Path) -> str:
    """Write the video's time samples, annotated, to ``out`` (.mp4 or .avi) at the sampling rate (25 fps /
    stride), so it plays at the source's speed: a kept frame that fills several samples (a slow or
    variable-rate source) is written for each. Returns the codec.

    Written to a temporary name in the same folder and renamed when complete.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in WRITERS:
        raise PredictError(f"--out {out}: use a .mp4 or .avi file name")
    # one sample every ``step`` source frames: at a 30 fps source with stride 2 of 25 fps, one every 2.4
    # (12.5 fps); a header rate the decoding found unusable was sampled as if 25 fps
    source_fps = prediction.fps if usable_fps(prediction.fps) else 25.0
    fps = source_fps / prediction.step
    width, height = prediction.size
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    register_unfinished(tmp)  # a Ctrl-C before the ``try`` below: the command's handler removes it
    for fourcc, name in WRITERS[suffix]:  # noqa: B007 (the pair that opened is used below)
        with _stderr_silenced():  # FFmpeg and OpenCV print each encoder they fail to open (hardware H.264)
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if writer.isOpened():
            break
        writer.release()
    else:
        tmp.unlink(missing_ok=True)
        forget_unfinished(tmp)
        tried = ", ".join(f for f, _ in WRITERS[suffix])
        raise PredictError(
            f"--out {out}: OpenCV here writes none of {tried} into {suffix}; try the other suffix"
        )
    try:
        draw = _Annotator(prediction)
        written = 0
        for position, frame, count in kept_frames(prediction):
            image = draw(position, frame)  # a kept frame that fills several samples is drawn once
            for _ in range(count):
                writer.write(image)
            written += count
        writer.release()
        # OpenCV's writer reports no failed write: a full disk left an MP4 without its index, or an empty AVI
        with _stderr_silenced():
            check = cv2.VideoCapture(str(tmp))
            readable = check.isOpened() and int(check.get(cv2.CAP_PROP_FRAME_COUNT)) == written
            check.release()
        if not readable:
            raise OSError(
                errno.EIO,
                "the annotated video came out incomplete (a full disk?), so it was not kept",
                str(out),
            )
        durable_replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        forget_unfinished(tmp)
    return f"{fourcc} ({name})"


def kept_frames(prediction: Prediction) -> Iterator[tuple[int, np.ndarray, int]]:
    """(position, frame RGB, time samples it fills) of each kept frame: from memory, or for a video scored in
    segments decoded again with the same arguments (one decoding thread: the same frames)."""
    frame_idx = prediction.frame_idx
    if prediction.frames is not None:
        samples = prediction.samples if prediction.samples is not None else frame_idx
        counts = np.bincount(np.searchsorted(frame_idx, samples), minlength=len(frame_idx))
        for position, count in enumerate(counts.tolist()):
            yield position, prediction.frames[position], count
        return
    stream = VideoStream(**prediction.decode_args)
    changed = "; was the file changed while predict ran?"
    position = -1
    try:
        if not stream.open():
            raise PredictError(f"{prediction.video}: cannot be opened again to write --out{changed}")
        for position, (number, frame, count) in enumerate(stream):
            if position >= len(frame_idx) or number != frame_idx[position]:
                raise PredictError(
                    f"{prediction.video}: decoded differently the second time (at frame {number}){changed}"
                )
            yield position, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), count
    except (_SizeChanged, cv2.error) as err:
        raise PredictError(
            f"{prediction.video}: decoding it again failed ({_decode_failure(stream, err)}){changed}"
        ) from None
    finally:
        stream.close()
    if position + 1 != len(frame_idx):
        raise PredictError(
            f"{prediction.video}: decoded {position + 1} of its {len(frame_idx)} kept frames the second "
            f"time{changed}"
        )


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 sent to /dev/null for the block: FFmpeg writes there directly, not through Python.
    Without a descriptor 2 (closed), the block just runs."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _Annotator:
    """Kept frame ``position`` of a prediction drawn with its primary box, skeleton and label (BGR)."""

    def __init__(self, prediction: Prediction):
        from transmodal.data.coco import joint_columns

        tracks = prediction.tracks
        self.prediction = prediction
        self.primary = tracks[tracks["is_primary"].astype(bool)].set_index("frame_idx")
        self.keypoints = prediction.keypoints.set_index("frame_idx")
        self.labels = frame_labels(prediction)
        self.xs, self.ys, self.scores = joint_columns("x"), joint_columns("y"), joint_columns("score")

    def __call__(self, position: int, frame: np.ndarray) -> np.ndarray:
        """Kept frame ``position``, ``frame`` (RGB), drawn."""
        frame_no = self.prediction.frame_idx[position]
        box, detected, fallback = None, False, False
        if frame_no in self.primary.index:
            row = self.primary.loc[frame_no]
            box = row[["x1", "y1", "x2", "y2"]].to_numpy(float)
            fallback = bool(row["fallback"])
            detected = not (bool(row["interpolated"]) or fallback)
        joints = None
        if frame_no in self.keypoints.index and not fallback:  # no skeleton on a whole-frame guess
            row = self.keypoints.loc[frame_no]
            joints = np.stack([row[self.xs].to_numpy(float), row[self.ys].to_numpy(float)], axis=1)
            joints[~(row[self.scores].to_numpy(float) >= DRAW_MIN_SCORE)] = np.nan
        return draw_frame(frame, box, joints, self.labels[position], detected)


def explain_window(prediction: Prediction, model, window: int):
    """(explanation, crops (T, S, S, 3) uint8, pose xy (T, J, 2), mask (T, J)) of one of the windows the
    prediction kept for explain (:class:`Candidates`)."""
    from transmodal.explain import explain_clips
    from transmodal.training.train import trained_threads

    row = prediction.windows.iloc[window]
    device = next(model.parameters()).device
    tokens, crops = prediction.candidates.kept[window]
    tokens = tokens[None].float().to(device)
    pose = prediction.pose[window : window + 1].to(device)
    kept = None if prediction.kept_patches is None else prediction.kept_patches[window : window + 1]
    with trained_threads(prediction.threads):
        (explanation,) = explain_clips(model, tokens, pose, kept, prediction.full_patches)
    t = len(row["frame_idx"])
    xy = np.asarray(row["pose_xy"], np.float32).reshape(t, len(COCO_JOINTS), 2)
    mask = np.asarray(row["pose_mask"], bool).reshape(t, len(COCO_JOINTS))
    return explanation, crops, xy, mask


def _predict_from_args(args, explain: bool = False) -> tuple[Prediction, object]:
    """:func:`predict_video` with the command's options; expected errors become :class:`PredictError` and
    the notes are printed."""
    max_side = args.max_side  # None: the model folder's frames.max_side
    if max_side is not None and max_side < 64:
        raise PredictError(f"--max-side is {max_side}; it must be at least 64")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # the shared check would name the stages' device params
            raise PredictError("--device is cuda but no CUDA device is available; use --device auto or cpu")
    try:
        with _loading_bars(not args.quiet):
            prediction, model = predict_video(
                Path(args.video),
                Path(args.model),
                step=getattr(args, "step", None),
                device=args.device,
                max_side=max_side,
                detector=args.detector,
                pose_model=args.pose_model,
                progress=not args.quiet,
                explain_size=_explain_size(args.model) if explain else None,
                window=getattr(args, "window", None),
            )
    except (ParamError, CheckpointError) as err:
        raise PredictError(_named_for_the_command(str(err), args)) from None
    for note in prediction.notes:
        print(f"note: {note}")
    return prediction, model


def _named_for_the_command(message: str, args) -> str:
    """A checkpoint error as the command's: the flag that gave the checkpoint, or the model folder that
    recorded it, where the shared loading code names a params.yaml key predict never reads."""
    flags = {"detect": ("--detector", args.detector), "pose": ("--pose-model", args.pose_model)}
    for section in ("detect", "pose", "backbone"):
        prefix = f"params.yaml: {section}.checkpoint"
        if message.startswith(prefix):
            flag, given = flags.get(section, (None, None))
            where = flag if given else f"the {section} checkpoint {Path(args.model) / 'config.json'} records"
            return where + message[len(prefix) :]
    return message


@contextlib.contextmanager
def _loading_bars(shown: bool):
    """transformers' "Loading weights" bars (one a model) hidden for the block unless ``shown`` (--quiet)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not shown and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not shown and was:
            hf_logging.enable_progress_bar()


def check_outputs(video: str, outputs: dict[str, str | None], suffixes: dict[str, tuple[str, ...]]) -> None:
    """Refuse, before any work, an output (``{flag: path}``) that would replace the input video or another
    output, has a suffix the command does not write (``suffixes[flag]``), is a folder, or lies where
    nothing can be written: found after the whole chain, each lost the run's work (and the first two the
    user's file)."""
    given: dict[str, str] = {}
    for flag, out in outputs.items():
        if out is None:
            continue
        path = Path(out)
        allowed = suffixes.get(flag)
        if allowed and path.suffix.lower() not in allowed:
            raise PredictError(f"{flag} {out}: use a {' or '.join(allowed)} file name")
        real = os.path.realpath(path)
        # the same file under another name too: a case-insensitive file system (macOS: Clip.mp4 is clip.mp4)
        # or a hard link, which realpath does not tell
        same = path.exists() and os.path.exists(video) and os.path.samefile(path, video)
        if real == os.path.realpath(video) or same:
            raise PredictError(f"{flag} {out} is the input video; give the output another name")
        if real in given:
            raise PredictError(f"{flag} {out} is also {given[real]}'s file; give each output its own name")
        given[real] = flag
        if path.is_dir():
            raise PredictError(f"{flag} {out} is a folder; give a file name")
        folder = path.absolute().parent
        while not folder.exists():  # created on writing
            folder = folder.parent
        if not folder.is_dir():
            raise PredictError(f"{flag} {out}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PredictError(f"{flag} {out}: cannot write in {folder} (permission denied)")


def run_explain(args) -> int:
    """The ``transmodal explain`` command: Figure 4 (and, with --pose-out, Figure 3) for one window."""
    from transmodal.training.figures import plot_explanation, plot_pose_track

    check_outputs(
        args.video,
        {"--out": args.out, "--pose-out": args.pose_out},
        {"--out": (".png",), "--pose-out": (".png",)},
    )
    if args.window is not None and args.window < 0:
        raise PredictError(f"--window is {args.window}; it must be at least 0")
    prediction, model = _predict_from_args(args, explain=True)
    video_best = int(np.argmax(prediction.video_probabilities()))
    window = prediction.candidates.pick(video_best)
    if window >= len(prediction.logits):
        raise PredictError(f"--window is {window}; this video has windows 0..{len(prediction.logits) - 1}")
    explanation, crops, xy, mask = explain_window(prediction, model, window)
    label = prediction.classes[int(np.argmax(explanation.probabilities))]
    frames = prediction.windows.iloc[window]["frame_idx"]
    title = f"{Path(args.video).name}, window {window} (frames {frames[0]}-{frames[-1]}): predicted {label}"
    plot_explanation(crops, xy, mask, explanation, model.tubelet_size, Path(args.out), title)
    print(f"attention and selector maps: {args.out}")
    if args.pose_out:
        plot_pose_track(crops, xy, mask, Path(args.pose_out), title)
        print(f"pose track: {args.pose_out}")
    return 0


def model_image_size(full_patches: int) -> int:
    """The crop side the backbone's patch grid covers at 16 px patches (display only)."""
    return int(round(full_patches**0.5)) * 16


def _explain_size(model_dir: str) -> int:
    """The side of the crops explain draws: the backbone's grid at 16 px patches, at least 160."""
    return max(160, model_image_size(ModelFolder.open(Path(model_dir)).full_patches_per_group))


def run_predict(args) -> int:
    """The ``transmodal predict`` command; returns the exit code."""
    from transmodal.io import write_json

    check_outputs(args.video, {"--json": args.json, "--out": args.out}, {"--out": tuple(WRITERS)})
    prediction, _ = _predict_from_args(args)
    summary = prediction.summary()
    print(
        f"{args.video}: {len(summary['windows'])} window(s) of {prediction.windows['frame_idx'].iloc[0].size} frames"
    )
    for rank, item in enumerate(summary["video_top5"], 1):
        print(f"{rank}. {item['label']:<24} {item['probability']:.3f}")
    if args.json:
        write_json(summary, args.json)
        print(f"timeline and video-level result: {args.json}")
    if args.out:
        codec = write_annotated(prediction, Path(args.out))
        print(f"annotated video: {args.out} ({codec})")
    return 0
