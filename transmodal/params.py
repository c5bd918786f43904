"""Typed, validated views of ``params.yaml``.

Every section of ``params.yaml`` maps to a frozen dataclass. Unknown or misspelt keys and out-of-range
values raise :class:`ParamError` with the full key name (``selector.top_k_frames``) before a stage does
any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
SOURCES = ("model", "annotations")
DATASETS = ("synthetic", "kth", "ucf101", "hmdb51", "folder")  # folder: one's own <class>/<video> tree
KTH_ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
KTH_SCENARIOS = ("d1", "d2", "d3", "d4")


class ParamError(ValueError):
    """A bad value in params.yaml; the message names the key and what is allowed."""


class CheckpointError(RuntimeError):
    """A checkpoint param (``detect.checkpoint``, ``pose.checkpoint``, ``backbone.checkpoint``) that cannot be
    found or loaded; the message is one line naming the param and how to provide it. Defined here, beside
    :class:`ParamError`, so that every stage can catch it without importing torch or the models."""


def _fail(section: str, key: str, message: str) -> None:
    raise ParamError(f"params.yaml: {section}.{key} {message}")


def _check_choice(section: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(section, key, f"is {value!r}; expected one of {', '.join(map(str, choices))}")


def _check_int(section: str, key: str, value: Any, minimum: int | None = None, maximum: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(section, key, f"is {value!r}; expected an integer")
    if minimum is not None and value < minimum:
        _fail(section, key, f"is {value}; must be >= {minimum}")
    if maximum is not None and value > maximum:
        _fail(section, key, f"is {value}; must be <= {maximum}")


def _check_float(section: str, key: str, value: Any, low: float, high: float, *, low_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(section, key, f"is {value!r}; expected a number")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        _fail(section, key, f"is {value}; must be in {bracket}{low}, {high}]")


def _check_bool(section: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(section, key, f"is {value!r}; expected true or false")


def _check_str(section: str, key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        _fail(section, key, f"is {value!r}; expected a non-empty string")


def is_hub_id(checkpoint: str) -> bool:
    """Whether a checkpoint param names a Hugging Face hub repo (``name`` or ``owner/name``) rather than a
    folder here: not an existing folder, no leading ``.``, ``/`` or ``~``, at most one ``/``."""
    return (
        not Path(checkpoint).is_dir()
        and not checkpoint.startswith((".", "/", "~"))
        and checkpoint.strip("/").count("/") <= 1
    )


def _check_revision(section: str, checkpoint: str, revision: Any) -> None:
    """``<section>.revision``: null (whatever snapshot the cache holds, else the hub's main) or the hub
    commit, branch or tag to load ``<section>.checkpoint`` at; only a hub id has one."""
    if revision is None:
        return
    if not isinstance(revision, str) or not revision:
        quoted = f"'{section}.revision=\"{revision}\"'"
        _fail(
            section,
            "revision",
            f"is {revision!r}; expected null or a hub commit (all 40 hex digits), branch or tag, as a "
            f'string (an all-digit one quoted: {section}.revision: "{revision}" in params.yaml, '
            f"-S {quoted} on the command line)",
        )
    if any(c.isspace() for c in revision) or revision.startswith("/") or ".." in revision.split("/"):
        _fail(section, "revision", f"is {revision!r}; expected a hub commit, branch or tag")
    if not is_hub_id(checkpoint):
        what = "a folder" if Path(checkpoint).is_dir() else "not a hub id (a folder path)"
        _fail(
            section,
            "revision",
            f"is {revision!r}, but {section}.checkpoint {checkpoint!r} is {what}, which has no hub "
            f"revision; set {section}.revision to null",
        )


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic KTH-like dataset (``transmodal synth``)."""

    seed: int = 0
    subjects: int = 25
    scenarios: tuple[str, ...] = KTH_SCENARIOS
    actions: tuple[str, ...] = KTH_ACTIONS
    frames_per_video: int = 96

    def __post_init__(self):
        s = "synth"
        _check_int(s, "seed", self.seed, 0)
        _check_int(s, "subjects", self.subjects, 1, 99)
        for key in ("scenarios", "actions"):
            values = getattr(self, key)
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                _fail(s, key, f"is {values!r}; expected a list of names")
            object.__setattr__(self, key, tuple(values))
        if not self.scenarios:
            _fail(s, "scenarios", "is empty")
        for v in self.scenarios:
            _check_choice(s, "scenarios", v, KTH_SCENARIOS)
        if not self.actions:
            _fail(s, "actions", "is empty")
        for v in self.actions:
            _check_choice(s, "actions", v, KTH_ACTIONS)
        _check_int(s, "frames_per_video", self.frames_per_video, 8, 10000)


@dataclass(frozen=True)
class TinyConfig:
    """The tiny random checkpoints of the offline demo (stage checkpoints)."""

    seed: int = 0

    def __post_init__(self):
        _check_int("tiny", "seed", self.seed, 0)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str = "data/synthetic"
    split: str | int = "paper"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        s = "data"
        _check_choice(s, "dataset", self.dataset, DATASETS)
        _check_str(s, "root", self.root)
        if self.dataset in ("synthetic", "kth"):
            _check_choice(s, "split", self.split, ("paper", "schuldt"))
        elif self.dataset == "folder":
            _check_choice(s, "split", self.split, ("random", "file"))
        else:
            _check_choice(s, "split", self.split, (1, 2, 3))
        _check_float(s, "val_fraction", self.val_fraction, 0.0, 0.5)
        _check_float(s, "test_fraction", self.test_fraction, 0.0, 0.5, low_open=True)
        _check_int(s, "seed", self.seed, 0)

    def root_path(self) -> Path:
        """The dataset root; fails with a one-line message naming the param when it is unusable."""
        root = Path(self.root)
        if not root.is_dir():
            raise ParamError(
                f"params.yaml: data.root is {self.root!r}, which does not exist or is not a folder"
            )
        return root


FRAME_STORES = ("pixels", "source")  # frames.store: the kept frames in shards | decoded again from the source


@dataclass(frozen=True)
class FramesConfig:
    stride: int = 2
    reference_fps: float | None = 25.0
    videos_per_shard: int = 64
    store: str = "pixels"
    by_time: bool = False
    max_side: int | None = 1280

    def __post_init__(self):
        _check_int("frames", "stride", self.stride, 1, 64)
        if self.max_side is not None:
            _check_int("frames", "max_side", self.max_side, 64)
        _check_bool("frames", "by_time", self.by_time)
        if self.by_time and self.reference_fps is None:
            _fail("frames", "by_time", "is true but frames.reference_fps is null: time sampling needs a rate")
        _check_choice("frames", "store", self.store, FRAME_STORES)
        if self.reference_fps is not None:
            _check_float("frames", "reference_fps", self.reference_fps, 0.0, 1000.0, low_open=True)
        _check_int("frames", "videos_per_shard", self.videos_per_shard, 1)


@dataclass(frozen=True)
class RuntimeMixin:
    """Device, precision and batch size, shared by every model-running stage."""

    def _check_runtime(self, s: str) -> None:
        _check_choice(s, "device", self.device, DEVICES)
        _check_choice(s, "precision", self.precision, PRECISIONS)
        _check_int(s, "batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class DetectConfig(RuntimeMixin):
    source: str = "annotations"
    checkpoint: str = "PekingU/rtdetr_r50vd_coco_o365"
    revision: str | None = None  # the hub commit, branch or tag of a hub id; null: the cached or newest one
    score_threshold: float = 0.5
    low_score_threshold: float = 0.1  # boxes from here up to score_threshold only extend tracks (ByteTrack)
    person_label: str = "person"
    batch_size: int = 16
    device: str = "auto"
    precision: str = "fp32"
    track_activation_threshold: float = 0.5
    lost_track_buffer: int = 30
    minimum_matching_threshold: float = 0.8
    minimum_consecutive_frames: int = 1
    stitch_tracks: bool = True
    stitch_max_scale: float | None = 2.0

    def __post_init__(self):
        s = "detect"
        _check_choice(s, "source", self.source, SOURCES)
        _check_str(s, "checkpoint", self.checkpoint)
        _check_revision(s, self.checkpoint, self.revision)
        _check_float(s, "score_threshold", self.score_threshold, 0.0, 1.0)
        _check_float(s, "low_score_threshold", self.low_score_threshold, 0.0, 1.0)
        if self.low_score_threshold > self.score_threshold:
            _fail(
                s,
                "low_score_threshold",
                f"is {self.low_score_threshold}, above detect.score_threshold ({self.score_threshold}): the "
                "low boxes are those below it (set them equal to pass no low box to the tracker)",
            )
        _check_str(s, "person_label", self.person_label)
        self._check_runtime(s)
        _check_float(s, "track_activation_threshold", self.track_activation_threshold, 0.0, 1.0)
        _check_int(s, "lost_track_buffer", self.lost_track_buffer, 0)
        _check_float(s, "minimum_matching_threshold", self.minimum_matching_threshold, 0.0, 1.0)
        _check_int(s, "minimum_consecutive_frames", self.minimum_consecutive_frames, 1)
        _check_bool(s, "stitch_tracks", self.stitch_tracks)
        if self.stitch_max_scale is not None:  # None: no height gate
            _check_float(s, "stitch_max_scale", self.stitch_max_scale, 1.0, math.inf)


@dataclass(frozen=True)
class PoseConfig(RuntimeMixin):
    source: str = "annotations"
    checkpoint: str = "usyd-community/vitpose-plus-base"
    revision: str | None = None
    dataset_index: int = 0
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"

    def __post_init__(self):
        s = "pose"
        _check_choice(s, "source", self.source, SOURCES)
        _check_str(s, "checkpoint", self.checkpoint)
        _check_revision(s, self.checkpoint, self.revision)
        _check_int(s, "dataset_index", self.dataset_index, 0, 5)
        self._check_runtime(s)


@dataclass(frozen=True)
class ClipsConfig:
    length: int = 16
    per_video_train: int = 4
    per_video_test: int = 2
    per_sequence_test: int = 1
    crop_margin: float = 0.15

    def __post_init__(self):
        s = "clips"
        _check_int(s, "length", self.length, 2, 256)
        _check_int(s, "per_video_train", self.per_video_train, 1)
        _check_int(s, "per_video_test", self.per_video_test, 1)
        _check_int(s, "per_sequence_test", self.per_sequence_test, 0)
        _check_float(s, "crop_margin", self.crop_margin, 0.0, 2.0)


@dataclass(frozen=True)
class BackboneConfig(RuntimeMixin):
    checkpoint: str = "MCG-NJU/videomae-base-finetuned-kinetics"
    revision: str | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"
    clips_per_shard: int = 256
    keep: float = 1.0  # share of each frame group's patch tokens the encoder sees (pose-guided dropping)
    keep_margin: float = 0.1  # the person box is dilated by this share of its larger side on each side
    keep_by: str = "box"  # box: nearest the box centre first | joints: inside the box, nearest a joint first
    store: str = "tokens"  # tokens: cached in data/features | recompute: encoded again whenever they are read

    def __post_init__(self):
        s = "backbone"
        _check_str(s, "checkpoint", self.checkpoint)
        _check_revision(s, self.checkpoint, self.revision)
        self._check_runtime(s)
        _check_int(s, "clips_per_shard", self.clips_per_shard, 1)
        _check_float(s, "keep", self.keep, 0.0, 1.0, low_open=True)
        _check_float(s, "keep_margin", self.keep_margin, 0.0, 2.0)
        _check_choice(s, "keep_by", self.keep_by, KEEP_BY)
        _check_choice(s, "store", self.store, TOKEN_STORES)

    def kept_count(self, patches_per_group: int) -> int:
        """K, the patches of each frame group the encoder keeps: ``round(keep * P)`` (P itself at keep 1)."""
        return kept_count(self.keep, patches_per_group)


PRETRAINED_BACKBONE = "models/pretrain/backbone"
"""What the pretrain stage writes: ``backbone.checkpoint`` set to it runs the stage (else it is skipped)."""


def is_pretrained(checkpoint: str) -> bool:
    """Whether ``backbone.checkpoint`` names what the pretrain stage writes (``./models/pretrain/backbone/``
    does): the stage runs, and its params are checked, exactly when this holds."""
    return os.path.abspath(checkpoint) == os.path.abspath(PRETRAINED_BACKBONE)


@dataclass(frozen=True)
class PretrainConfig:
    """Masked-autoencoder pretraining of the backbone on the training split's person crops (stage pretrain),
    run only when ``backbone.checkpoint`` is :data:`PRETRAINED_BACKBONE`."""

    init: str = "models/tiny/backbone"  # the VideoMAE the encoder starts from (architecture and weights)
    clips_per_video: int = 16
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.1  # share of the steps with a linear warm-up; a cosine decay to 0 after it
    mask_ratio: float = 0.9  # share of each frame's patches masked, the same ones in every frame (tubes)
    norm_pix_loss: bool = False  # the loss on each patch's standardised pixels (VideoMAE's) or the pixels
    decoder_layers: int = 1
    seed: int = 0
    threads: int = 2  # CPU threads: torch splits sums by thread, so another count gives other weights
    device: str = "auto"

    def __post_init__(self):
        s = "pretrain"
        _check_str(s, "init", self.init)
        _check_int(s, "clips_per_video", self.clips_per_video, 1, 1024)
        _check_int(s, "epochs", self.epochs, 1)
        _check_int(s, "batch_size", self.batch_size, 1)
        _check_float(s, "lr", self.lr, 0.0, 1.0, low_open=True)
        _check_float(s, "weight_decay", self.weight_decay, 0.0, 10.0)
        _check_float(s, "warmup", self.warmup, 0.0, 0.99)
        _check_float(s, "mask_ratio", self.mask_ratio, 0.0, 0.99, low_open=True)
        _check_bool(s, "norm_pix_loss", self.norm_pix_loss)
        _check_int(s, "decoder_layers", self.decoder_layers, 1, 48)
        _check_int(s, "seed", self.seed, 0)
        _check_int(s, "threads", self.threads, 1, 1024)
        _check_choice(s, "device", self.device, DEVICES)

    def masked_count(self, patches_per_group: int) -> int:
        """Patches masked in each frame group: ``round(mask_ratio * P)``, at least 1 and at most P - 1."""
        count = round(self.mask_ratio * patches_per_group)
        if not 1 <= count < patches_per_group:
            raise ParamError(
                f"params.yaml: pretrain.mask_ratio {self.mask_ratio} masks {count} of the {patches_per_group} "
                "patches of a frame group; it must mask at least one and leave at least one"
            )
        return count


KEEP_BY = ("box", "joints")
TOKEN_STORES = ("tokens", "recompute")  # backbone.store: the token grids cached | encoded again when read
VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")  # ablation.variants names: DVC stage names, folder names
BACKBONE_KEEP_KEYS = ("backbone.keep", "backbone.keep_margin", "backbone.keep_by")
"""The backbone params an ablation variant may vary: each variant that does gets its own feature cache."""


def varies_backbone_keep(params: dict, varied: dict) -> bool:
    """Whether an ablation variant's params change a ``backbone.keep*`` key (it then gets its own cache)."""
    base, mine = section(params, "backbone"), section(varied, "backbone")
    return any(
        getattr(base, k.partition(".")[2]) != getattr(mine, k.partition(".")[2]) for k in BACKBONE_KEEP_KEYS
    )


def variant_params(params: dict, variant: str) -> dict:
    """params.yaml with the named ablation variant's overrides applied (validated, naming the key)."""
    cfg = section(params, "ablation")
    if variant not in cfg.variants:
        raise KeyError(f"ablation variant {variant!r} is not in params.yaml ablation.variants")
    return apply_overrides(params, cfg.variants[variant] or {})


def kept_count(keep: float, patches_per_group: int) -> int:
    """``round(keep * P)`` patches per frame group (at least 1); ``P`` at keep 1."""
    if keep >= 1.0:
        return patches_per_group
    return max(1, int(math.floor(keep * patches_per_group + 0.5)))


@dataclass(frozen=True)
class ModelConfig:
    """The trainable head. ``dim`` and ``num_classes`` come from the feature cache, not params."""

    use_pose: bool = True
    pose_scores: bool = False
    fusion_depth: int = 1
    num_heads: int = 8
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pool: str = "rgb_and_pose"
    classifier: str = "mlp"
    token_norm: str = "none"  # none (checkpoints from before it existed) | batch

    def __post_init__(self):
        s = "model"
        _check_bool(s, "use_pose", self.use_pose)
        _check_bool(s, "pose_scores", self.pose_scores)
        _check_int(s, "fusion_depth", self.fusion_depth, 1, 24)
        _check_int(s, "num_heads", self.num_heads, 1, 64)
        _check_float(s, "mlp_ratio", self.mlp_ratio, 0.0, 16.0, low_open=True)
        _check_float(s, "dropout", self.dropout, 0.0, 0.9)
        _check_choice(s, "pool", self.pool, ("rgb", "rgb_and_pose"))
        _check_choice(s, "classifier", self.classifier, ("mlp", "linear"))
        _check_choice(s, "token_norm", self.token_norm, ("none", "batch"))


SELECTOR_POSITIONS = ("after_fusion", "before_ffn", "before_fusion")


@dataclass(frozen=True)
class SelectorConfig:
    enabled: bool = True
    top_k_frames: int = 8
    top_k_tokens: int = 12
    scoring: str = "l2"
    position: str = "after_fusion"

    def __post_init__(self):
        s = "selector"
        _check_bool(s, "enabled", self.enabled)
        _check_int(s, "top_k_frames", self.top_k_frames, 1)
        _check_int(s, "top_k_tokens", self.top_k_tokens, 1)
        _check_choice(s, "scoring", self.scoring, ("l2", "learned"))
        _check_choice(s, "position", self.position, SELECTOR_POSITIONS)

    def check_against_grid(
        self, num_frames: int, patches_per_group: int | None, frames_from: str = "", tokens_from: str = ""
    ) -> None:
        """Fail, naming the key, when the selector asks for more frames or tokens than the grid has.

        ``patches_per_group`` None: not known yet (a hub checkpoint before the features stage), not checked.
        ``frames_from`` / ``tokens_from`` name where the counts come from (``clips.length``, a config.json)."""
        if self.top_k_frames > num_frames:
            source = f" ({frames_from})" if frames_from else ""
            _fail(
                "selector",
                "top_k_frames",
                f"is {self.top_k_frames}; the clip has only {num_frames} frames{source}; "
                f"expected 1 to {num_frames}",
            )
        if patches_per_group is not None and self.top_k_tokens > patches_per_group:
            source = f" ({tokens_from})" if tokens_from else ""
            _fail(
                "selector",
                "top_k_tokens",
                f"is {self.top_k_tokens}; a frame has only {patches_per_group} patch tokens{source}; "
                f"expected 1 to {patches_per_group}",
            )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    seed: int = 0
    device: str = "auto"
    label_smoothing: float = 0.0
    threads: int = 1  # CPU threads of the head's training and evaluation: the weights depend on the count

    def __post_init__(self):
        s = "train"
        _check_int(s, "epochs", self.epochs, 1)
        _check_int(s, "batch_size", self.batch_size, 1)
        _check_float(s, "lr", self.lr, 0.0, 1.0, low_open=True)
        _check_float(s, "weight_decay", self.weight_decay, 0.0, 10.0)
        _check_int(s, "seed", self.seed, 0)
        _check_choice(s, "device", self.device, DEVICES)
        _check_float(s, "label_smoothing", self.label_smoothing, 0.0, 0.9)
        _check_int(s, "threads", self.threads, 1, 1024)


@dataclass(frozen=True)
class ComputeConfig:
    """Processes per machine and machines for the stages that run under torchrun (detect, pose, features,
    train)."""

    nproc: int = 1  # processes per machine (one per GPU on CUDA); > 1: torchrun, gloo on CPU, NCCL on CUDA
    nnodes: int = 1  # machines; > 1 also needs MASTER_ADDR, MASTER_PORT and NODE_RANK (README)
    videos_per_unit: int = (
        64  # detect/pose: the videos a batch may span, and the unit shared out to processes
    )

    def __post_init__(self):
        _check_int("compute", "nproc", self.nproc, 1, 1024)
        _check_int("compute", "nnodes", self.nnodes, 1, 1024)
        _check_int("compute", "videos_per_unit", self.videos_per_unit, 1)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 16
    device: str = "auto"
    explain_clips: int = 6

    def __post_init__(self):
        _check_int("eval", "batch_size", self.batch_size, 1)
        _check_choice("eval", "device", self.device, DEVICES)
        _check_int("eval", "explain_clips", self.explain_clips, 0, 100)


@dataclass(frozen=True)
class AblationConfig:
    variants: dict = field(default_factory=dict)
    seeds: tuple = (0, 1, 2)
    workers: Any = "auto"
    bootstrap_resamples: int = 10000
    confidence: float = 0.95
    latency_warmup: int = 3
    latency_repeats: int = 20
    device: str = "auto"

    def __post_init__(self):
        s = "ablation"
        seeds = self.seeds
        if not isinstance(seeds, list | tuple) or not seeds:
            _fail(s, "seeds", f"is {seeds!r}; expected a non-empty list of train.seed values, e.g. [0, 1, 2]")
        for seed in seeds:
            _check_int(s, "seeds", seed, 0)
        if len(set(seeds)) != len(seeds):
            _fail(s, "seeds", f"is {list(seeds)}; the seeds must be distinct")
        object.__setattr__(self, "seeds", tuple(seeds))
        if self.workers != "auto":
            _check_int(s, "workers", self.workers, 1, 64)
        _check_int(s, "bootstrap_resamples", self.bootstrap_resamples, 100)
        _check_float(s, "confidence", self.confidence, 0.5, 0.999)
        if not isinstance(self.variants, dict) or not self.variants:
            _fail(s, "variants", "must be a non-empty mapping of variant name -> param overrides")
        if "full" not in self.variants:
            _fail(s, "variants", "must contain 'full' (the reference row of the table)")
        for name, overrides in self.variants.items():
            if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
                _fail(
                    s,
                    "variants",
                    f"has a variant named {name!r}; a name is letters, digits, _ and - (it names the DVC "
                    "stages ablate@<name> and their folders, and DVC reads a dot as a nested key)",
                )
            overrides = overrides or {}
            if not isinstance(overrides, dict):
                _fail(s, f"variants.{name}", "must be a mapping of 'section.key: value' overrides")
            for key in overrides:
                if not isinstance(key, str):
                    _fail(
                        s,
                        f"variants.{name}",
                        f"overrides {key!r}; a key is a dotted name like 'model.use_pose'",
                    )
                if key == "train.seed":
                    _fail(s, f"variants.{name}", "overrides 'train.seed'; the seeds are ablation.seeds")
                if key.split(".")[0] not in ("model", "selector", "train") and key not in BACKBONE_KEEP_KEYS:
                    _fail(
                        s,
                        f"variants.{name}",
                        f"overrides {key!r}; only model.*, selector.*, train.* and "
                        f"{', '.join(BACKBONE_KEEP_KEYS)} may vary",
                    )
        _check_int(s, "latency_warmup", self.latency_warmup, 0)
        _check_int(s, "latency_repeats", self.latency_repeats, 1)
        _check_choice(s, "device", self.device, DEVICES)


SECTIONS: dict[str, type] = {
    "synth": SynthConfig,
    "tiny": TinyConfig,
    "data": DataConfig,
    "frames": FramesConfig,
    "detect": DetectConfig,
    "pose": PoseConfig,
    "clips": ClipsConfig,
    "backbone": BackboneConfig,
    "pretrain": PretrainConfig,
    "model": ModelConfig,
    "selector": SelectorConfig,
    "train": TrainConfig,
    "compute": ComputeConfig,
    "eval": EvalConfig,
    "ablation": AblationConfig,
}


def yaml_error_line(err: Exception, path: str | Path) -> str:
    """A YAML syntax error (PyYAML's or ruamel's, which carry the same marks) as one line naming the file,
    the line and the problem."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    return f"{where}: not valid YAML ({problem})"


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml as a plain dict; a YAML syntax error is one line naming the file and the line."""
    with open(path) as f:
        try:
            params = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ParamError(yaml_error_line(err, path)) from None
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections at the top level")
    return params


def check_sections(params: dict) -> None:
    """Every top-level key is a known section: a misspelt one (``selectr:``, or ``dvc exp run -S
    +selectr.top_k_frames=4``) would otherwise be ignored and the stage run on the defaults."""
    for name in params:
        if name not in SECTIONS:
            raise ParamError(
                f"params.yaml: {name!r} is not a known section (sections: {', '.join(SECTIONS)})"
            )


def validate_all(params: dict) -> None:
    """:func:`validate_stage` for every stage of the pipeline, each ablation variant's included: what a
    params.yaml written for ``dvc repro`` must pass (``transmodal preset`` checks its result with it)."""
    for stage in STAGE_SECTIONS:
        if stage in ("ablate", "ablate_features"):
            for variant in section(params, "ablation").variants:
                validate_stage(f"{stage}@{variant}", params)
        else:
            validate_stage(stage, params)


def section(params: dict, name: str):
    """Build the dataclass of one section; unknown keys are an error naming them."""
    cls = SECTIONS[name]
    raw = params.get(name)
    if raw is None:
        raise ParamError(f"params.yaml: section {name!r} is missing")
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml: {name} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ParamError(
                f"params.yaml: {name}.{key} is not a known key (known: {', '.join(sorted(known))})"
            )
    return cls(**raw)


def apply_overrides(params: dict, overrides: dict) -> dict:
    """Return a copy of ``params`` with ``{'selector.top_k_frames': 4, ...}`` applied (ablation variants)."""
    import copy

    result = copy.deepcopy(params)
    for dotted, value in (overrides or {}).items():
        sect, _, key = dotted.partition(".")
        if sect not in result or not isinstance(result[sect], dict):
            raise ParamError(f"params.yaml: override {dotted!r} names an unknown section")
        result[sect][key] = value
        section(result, sect)  # validate the changed section now, naming the key
    return result


# --- Validation when a stage starts -----------------------------------------------------------------------
# run_stage calls validate_stage(name, params) before the stage's body: every section the stage reads is
# built (types, ranges, unknown keys), then the relations between sections and against the checkpoints'
# config.json / the feature cache's backbone.json are checked. Nothing here imports torch or transformers.

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "checkpoints": ("tiny",),
    "prepare": ("data",),
    "frames": ("data", "frames", "clips"),
    "detect": ("data", "detect", "compute"),
    "pose": ("data", "pose", "compute"),
    "pretrain": ("pretrain", "clips", "backbone"),
    "features": ("clips", "backbone", "compute"),
    "train": ("model", "selector", "train", "frames", "clips", "detect", "pose", "compute"),
    "evaluate": ("eval",),
    "ablate_features": ("ablation", "clips", "backbone"),  # ablate_features@<variant>
    # ablate@<variant>; frames, detect and pose recorded in each seed's model folder, as train records them
    "ablate": (
        "model",
        "selector",
        "train",
        "eval",
        "ablation",
        "clips",
        "backbone",
        "frames",
        "detect",
        "pose",
    ),
    "ablation": ("ablation", "backbone"),
}
"""The sections of params.yaml each stage of dvc.yaml reads (``ablate@<variant>`` is ``ablate``)."""

FEATURES_BACKBONE = Path("data/features") / "backbone.json"
"""The grid the features stage recorded (``transmodal.features.cache.BACKBONE_FILE`` in its output folder),
relative to the project root a stage runs in: what the head trains on."""

# model_type values of config.json each checkpoint param accepts, and a line saying what is expected.
CHECKPOINT_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "detect.checkpoint": (("rt_detr", "rt_detr_v2"), "RT-DETR, e.g. PekingU/rtdetr_r50vd_coco_o365"),
    "pose.checkpoint": (("vitpose",), "ViTPose++, e.g. usyd-community/vitpose-plus-base"),
    "backbone.checkpoint": (("videomae",), "VideoMAE, e.g. MCG-NJU/videomae-base-finetuned-kinetics"),
    "pretrain.init": (("videomae",), "VideoMAE, e.g. models/tiny/backbone or MCG-NJU/videomae-base"),
}

# VideoMAEConfig's defaults, for a config.json that leaves a key out.
VIDEOMAE_DEFAULTS = {"image_size": 224, "patch_size": 16, "num_frames": 16, "tubelet_size": 2}


def check_clip_length(
    clip_length: int, num_frames: int, checkpoint: str, param: str = "backbone.checkpoint"
) -> None:
    """The clip length must be the checkpoint's ``num_frames`` (its temporal position embedding is fixed)."""
    if clip_length != num_frames:
        raise ParamError(
            f"params.yaml: clips.length is {clip_length}, but {param} {checkpoint!r} takes clips "
            f"of num_frames={num_frames}; set clips.length to {num_frames}"
        )


def local_checkpoint_config(checkpoint: Any, param: str, strict: bool = True) -> dict | None:
    """The config.json of a checkpoint param that is a local folder; None for a hub id (or anything that is
    not an existing folder: the loader resolves and reports those).

    ``strict``: a folder without a readable config.json is a :class:`CheckpointError` (the stage loads it);
    otherwise None."""
    if not isinstance(checkpoint, str) or not checkpoint or not Path(checkpoint).is_dir():
        return None
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if not strict:
            return None
        what = "without config.json" if not path.is_file() else f"whose config.json is unreadable ({err})"
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}, a folder {what} "
            "(expected a Hugging Face save_pretrained folder)"
        ) from None
    if not isinstance(config, dict):
        if strict:
            raise CheckpointError(f"params.yaml: {param} is {checkpoint!r}: its config.json is not a mapping")
        return None
    return config


def check_checkpoint_type(param: str, checkpoint: str) -> dict | None:
    """A local checkpoint folder's ``model_type`` must be the architecture ``param`` loads; returns its
    config.json (None for a hub id, checked when the model loads)."""
    config = local_checkpoint_config(checkpoint, param)
    if config is None:
        return None
    expected, what = CHECKPOINT_TYPES[param]
    model_type = config.get("model_type")
    if model_type not in expected:
        found = f"a {model_type} checkpoint" if model_type else "a checkpoint without model_type"
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}, {found}; expected a {' or '.join(expected)} "
            f"checkpoint ({what})"
        )
    return config


def _videomae_value(config: dict, key: str) -> int | None:
    value = config.get(key, VIDEOMAE_DEFAULTS[key])
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _patches_per_group(params: dict, varied: dict | None = None) -> tuple[int, str] | None:
    """Patch tokens per frame group the head will see, and where that number comes from: the feature
    cache's backbone.json when present and made with these params' checkpoint and keep (what the head
    trains on), else the backbone checkpoint's config.json when it is a local VideoMAE folder; None when
    neither is known (a hub id).

    ``varied``: an ablation variant's params. When it changes a ``backbone.keep*`` key the variant gets its
    own cache, of ``round(backbone.keep * P)`` patches a group, P being the backbone's whole grid."""
    own_cache = varied is not None and varies_backbone_keep(params, varied)
    if FEATURES_BACKBONE.is_file():
        try:
            record = json.loads(FEATURES_BACKBONE.read_text())
            # a cache of another checkpoint or keep (the demo's, before a preset's features stage runs)
            # says nothing of this run's grid: it was read, and a keep variant refused in a wrong line
            if record.get("checkpoint") != _backbone_value(params, "backbone.checkpoint"):
                raise ValueError("another backbone's cache")
            keep = _backbone_value(params, "backbone.keep")
            if not own_cache and record.get("keep", 1.0) != (1.0 if keep is None else keep):
                raise ValueError("another keep's cache")
            if not own_cache:
                return int(record["patches_per_group"]), str(FEATURES_BACKBONE)
            full = int(record.get("full_patches_per_group", record["patches_per_group"]))
            keep = section(varied, "backbone").keep
            return kept_count(keep, full), f"{FEATURES_BACKBONE} at backbone.keep {keep}"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: the stage's own reading of the cache fails, naming it
    full = _checkpoint_patches(params)
    if full is None:
        return None
    keep = _backbone_value(varied if own_cache else params, "backbone.keep")
    keep = float(keep) if isinstance(keep, int | float) and 0 < keep <= 1 else 1.0  # else: features fails
    patches, source = full
    return kept_count(keep, patches), source + (f" at backbone.keep {keep}" if keep < 1 else "")


def _backbone_value(params: dict, dotted: str) -> Any:
    backbone = params.get("backbone")
    return backbone.get(dotted.partition(".")[2]) if isinstance(backbone, dict) else None


def _checkpoint_patches(params: dict) -> tuple[int, str] | None:
    """The backbone checkpoint's whole patch grid per frame group, from a local folder's config.json."""
    backbone = params.get("backbone")
    checkpoint = backbone.get("checkpoint") if isinstance(backbone, dict) else None
    config = local_checkpoint_config(checkpoint, "backbone.checkpoint", strict=False)
    if config is None or config.get("model_type") != "videomae":
        return None
    image_size, patch_size = _videomae_value(config, "image_size"), _videomae_value(config, "patch_size")
    if image_size is None or patch_size is None:
        return None
    return (
        image_size // patch_size
    ) ** 2, f"{Path(checkpoint) / 'config.json'}: ({image_size} // {patch_size})**2"


def _check_head(params: dict, grid: tuple[int, str] | None) -> None:
    """The selector of a (possibly varied) params against the clip length and the backbone's patch grid."""
    selector = section(params, "selector")
    if not selector.enabled:
        return  # no selector is built, so nothing is selected (as when the model is built)
    patches, source = grid if grid is not None else (None, "")
    selector.check_against_grid(
        section(params, "clips").length, patches, frames_from="clips.length", tokens_from=source
    )


def _check_variant(params: dict, name: str, overrides: Any) -> None:
    """One ablation variant: its overrides give valid sections and a head that fits its grid."""
    try:
        varied = apply_overrides(params, overrides or {})
        for sect in ("model", "selector", "train", "backbone"):
            section(varied, sect)
        _check_head(varied, _patches_per_group(params, varied))
    except ParamError as err:
        detail = str(err).removeprefix("params.yaml: ")
        raise ParamError(f"params.yaml: ablation.variants.{name}: {detail}") from None


def _check_backbone(params: dict, param: str = "backbone.checkpoint") -> None:
    """The backbone checkpoint (or pretraining's start, ``param`` pretrain.init) is a VideoMAE whose clip
    length is ``clips.length`` (when it is local)."""
    name, _, key = param.partition(".")
    checkpoint = getattr(section(params, name), key)
    config = check_checkpoint_type(param, checkpoint)
    num_frames = _videomae_value(config, "num_frames") if config is not None else None
    if num_frames is not None:
        check_clip_length(section(params, "clips").length, num_frames, checkpoint, param)


def validate_stage(stage: str, params: dict) -> None:
    """Check everything ``stage`` (a dvc.yaml stage name; ``ablate@<variant>``) reads from ``params`` before
    it does any work: each section of :data:`STAGE_SECTIONS`, then the relations between them, the local
    checkpoints' architecture and config.json, and every ablation variant it runs. Raises
    :class:`ParamError` or :class:`CheckpointError`, one line naming the key and what is allowed."""
    base, _, variant = stage.partition("@")
    if base not in STAGE_SECTIONS:
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGE_SECTIONS)})")
    check_sections(params)
    for name in STAGE_SECTIONS[base]:
        section(params, name)

    if base == "detect" and section(params, "detect").source == "model":
        check_checkpoint_type("detect.checkpoint", section(params, "detect").checkpoint)
    elif base == "pose" and section(params, "pose").source == "model":
        check_checkpoint_type("pose.checkpoint", section(params, "pose").checkpoint)
    elif base == "pretrain" and is_pretrained(section(params, "backbone").checkpoint):
        _check_backbone(params, "pretrain.init")
    elif base == "features":
        _check_backbone(params)
    elif base == "train":
        _check_head(params, _patches_per_group(params))
    elif base in ("ablate", "ablate_features"):
        variants = section(params, "ablation").variants
        if variant not in variants:
            raise ParamError(
                f"params.yaml: ablation.variants has no variant {variant!r} (stage {stage}); "
                f"expected one of {', '.join(variants)}"
            )
        _check_variant(params, variant, variants[variant])  # the whole variant, before its features
        if base == "ablate_features" and varies_backbone_keep(
            params, apply_overrides(params, variants[variant])
        ):
            _check_backbone(params)  # it builds its own cache
    elif base == "ablation":
        check_checkpoint_type("backbone.checkpoint", section(params, "backbone").checkpoint)
        for name, overrides in section(params, "ablation").variants.items():
            _check_variant(params, name, overrides)
