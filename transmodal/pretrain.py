"""Masked-autoencoder pretraining of the backbone on the training split's person crops (stage pretrain).

VideoMAE's recipe at the demo's size: ``VideoMAEForPreTraining`` (the encoder of ``pretrain.init`` and a new
decoder of ``pretrain.decoder_layers`` layers as wide as the encoder) learns to reconstruct the pixels of the
tubes it does not see: each clip hides ``pretrain.mask_ratio`` of every frame's patches, the same patches in
every frame group (tube masking). The clips are those the features stage would crop around the primary
track (``clips.length`` frames, ``clips.crop_margin``), ``pretrain.clips_per_video`` spread over each training
video; validation and test videos are never seen. AdamW with a linear warm-up and a cosine decay, one loss
per step in ``metrics/pretrain_curve.csv``. The encoder is written with ``save_pretrained`` beside the
processor of ``pretrain.init``, so the features stage loads it as any other VideoMAE.

The crops are held in memory as uint8 (the demo's: 1,200 clips of 16 x 64 x 64, 0.24 GB) and normalised a
batch at a time; a training split whose crops would not fit is refused before any work, naming
``pretrain.clips_per_video``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from transmodal.data.frames import FrameStore
from transmodal.determinism import deterministic_attention, leaves_torch_settings_as_found, seed_everything
from transmodal.features.backbone import processor_class
from transmodal.features.clips import make_clips
from transmodal.features.crops import CROP_COLUMNS, PixelNormalizer
from transmodal.features.store import crop_batches, crop_boxes
from transmodal.io import atomic_dir
from transmodal.memory import available_memory
from transmodal.params import CheckpointError, ClipsConfig, PretrainConfig
from transmodal.stage import StageInputError
from transmodal.vision.checkpoints import first_line, load_processor, pick_device, resolve_checkpoint

INIT_PARAM = "pretrain.init"
NEW_WEIGHTS = ("decoder.", "encoder_to_decoder.", "mask_token")  # drawn anew, whatever pretrain.init holds
CURVE_COLUMNS = ("step", "epoch", "loss", "lr")
MEMORY_SHARE = 0.5  # of the memory available when the stage starts, at most, for the crops


def tube_masks(
    batch: int, groups: int, patches: int, masked: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, groups * patches) bool, time-major as VideoMAE's tokens: in each clip the same ``masked``
    patches of every frame group are True (hidden), drawn with ``generator``."""
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    tube = torch.zeros(batch, patches, dtype=torch.bool)
    tube.scatter_(1, order[:, :masked], True)
    return tube.repeat(1, groups)


def learning_rate(step: int, steps: int, cfg: PretrainConfig) -> float:
    """``pretrain.lr`` times a linear warm-up over the first ``pretrain.warmup`` of the steps (none when that
    rounds to no step), then a cosine decay towards 0 (the last step's rate is that of ``steps - 1``)."""
    warm = int(cfg.warmup * steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def training_clips(
    index: pd.DataFrame, store: FrameStore, tracks: pd.DataFrame, clips: ClipsConfig, per_video: int
) -> tuple[pd.DataFrame, int]:
    """The training split's clips (``per_video`` a video, spread over it as the features stage spreads its
    training clips) with their crop boxes, and the number of them without a primary-track box."""
    train = index[index["split"] == "train"]
    sampling = ClipsConfig(
        length=clips.length,
        per_video_train=per_video,
        per_video_test=clips.per_video_test,
        per_sequence_test=clips.per_sequence_test,
        crop_margin=clips.crop_margin,
    )
    table = make_clips(train, store.videos, store.frames, sampling)
    boxes, without_track = crop_boxes(table, store.videos, tracks, clips.crop_margin)
    for i, name in enumerate(CROP_COLUMNS):
        table[name] = boxes[:, i].astype(np.float32)
    return table, without_track


def read_crops(store: FrameStore, table: pd.DataFrame, size: int, length: int) -> np.ndarray:
    """(N, T, S, S, 3) uint8: every clip's crop, read once. Refused when it would take more than
    :data:`MEMORY_SHARE` of the memory available."""
    need = len(table) * length * size * size * 3
    free = available_memory()
    if need > MEMORY_SHARE * free:
        raise StageInputError(
            f"pretrain: the {len(table)} training clips' crops take {need / 2**30:.1f} GB, more than half of "
            f"the {free / 2**30:.1f} GB available; lower pretrain.clips_per_video"
        )
    crops = np.empty((len(table), length, size, size, 3), np.uint8)
    filled = 0
    batches = crop_batches(store, table, size, batch_size=64, normalizer=None)
    for batch in tqdm(batches, total=-(-len(table) // 64), desc="pretrain: crops", unit="batch", leave=False):
        crops[filled : filled + len(batch)] = batch.numpy()
        filled += len(batch)
    return crops


def check_init(cfg: PretrainConfig) -> int:
    """Check ``pretrain.init`` before any crop is read (its patch grid against ``pretrain.mask_ratio``, its
    processor's resizing) and return the frame size it takes (its config.json's ``image_size``)."""
    from transmodal.features.backbone import check_resample

    folder = resolve_checkpoint(cfg.init, INIT_PARAM)
    config = _init_config(folder, cfg)
    cfg.masked_count((config.image_size // config.patch_size) ** 2)
    check_resample(load_processor(processor_class(), folder, INIT_PARAM), cfg.init)
    return int(config.image_size)


@dataclass
class Pretrained:
    """What :func:`pretrain` returns: the summary for ``metrics/pretrain.json`` and the loss per step."""

    summary: dict
    curve: pd.DataFrame


@leaves_torch_settings_as_found
def pretrain(
    crops: np.ndarray, cfg: PretrainConfig, out: Path, device: torch.device | None = None
) -> Pretrained:
    """Pretrain ``pretrain.init``'s encoder on ``crops`` (N, T, S, S, 3) uint8 and write it to ``out`` (a
    VideoMAEModel folder with the init's processor). Same params, crops and thread count: the same bytes."""
    from transformers import VideoMAEForPreTraining

    device = device or pick_device(cfg.device)
    folder = resolve_checkpoint(cfg.init, INIT_PARAM)
    processor = load_processor(processor_class(), folder, INIT_PARAM)
    normalizer = PixelNormalizer.from_processor(processor)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the decoder's initial weights, then the masks and batches
    model = _load(VideoMAEForPreTraining, folder, cfg).to(device).train()
    config = model.config
    if tuple(crops.shape[1:]) != (config.num_frames, config.image_size, config.image_size, 3):
        raise StageInputError(
            f"pretrain: crops of shape {tuple(crops.shape[1:])}; {cfg.init!r} takes "
            f"({config.num_frames}, {config.image_size}, {config.image_size}, 3)"
        )
    groups = config.num_frames // config.tubelet_size
    patches = (config.image_size // config.patch_size) ** 2
    masked = cfg.masked_count(patches)
    with deterministic_attention(device):
        curve = _train(model, crops, normalizer, cfg, (groups, patches, masked), device)
    with atomic_dir(out) as tmp:
        model.videomae.eval().to("cpu").save_pretrained(tmp)
        processor.save_pretrained(tmp)
    epochs = curve.groupby("epoch")["loss"].mean()
    summary = {
        "clips": len(crops),
        "epochs": cfg.epochs,
        "steps": len(curve),
        "mask_ratio": cfg.mask_ratio,
        "masked_patches_per_group": masked,
        "patches_per_group": patches,
        "first_epoch_loss": round(float(epochs.iloc[0]), 6),
        "last_epoch_loss": round(float(epochs.iloc[-1]), 6),
        "device": device.type,
        "threads": cfg.threads,
        "init": cfg.init,
    }
    return Pretrained(summary, curve)


def _init_config(folder: str, cfg: PretrainConfig):
    """``pretrain.init``'s VideoMAEConfig with the decoder of ``pretrain.decoder_layers`` layers as wide as
    the encoder and the loss of ``pretrain.norm_pix_loss``."""
    from transformers import VideoMAEConfig

    try:
        config = VideoMAEConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"params.yaml: {INIT_PARAM} is {cfg.init!r}: {first_line(err)}") from None
    config.decoder_hidden_size = config.hidden_size
    config.decoder_num_hidden_layers = cfg.decoder_layers
    config.decoder_num_attention_heads = config.num_attention_heads
    config.decoder_intermediate_size = config.intermediate_size
    config.norm_pix_loss = cfg.norm_pix_loss
    return config


def _load(model_cls, folder: str, cfg: PretrainConfig):
    """The init checkpoint's encoder under a new decoder as wide as it (``pretrain.decoder_layers``)."""
    from safetensors import SafetensorError

    config = _init_config(folder, cfg)
    try:
        # the decoder is new: transformers lists each of its weights as missing, and a pretraining
        # checkpoint's own decoder (MCG-NJU/videomae-base's is 384 wide) as mismatched; both are drawn anew
        with _quiet_loading():
            model, info = model_cls.from_pretrained(
                folder,
                config=config,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(
            f"params.yaml: {INIT_PARAM} is {cfg.init!r}: cannot load as {model_cls.__name__} ({first_line(err)})"
        ) from None
    mismatched = [
        entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys", [])
    ]
    unloaded = sorted(
        key for key in [*info.get("missing_keys", []), *mismatched] if not key.startswith(NEW_WEIGHTS)
    )
    if unloaded:  # an encoder weight not in the checkpoint would start random, in silence
        raise CheckpointError(
            f"params.yaml: {INIT_PARAM} is {cfg.init!r}: {len(unloaded)} encoder weight(s) not in it or of "
            f"another shape ({', '.join(unloaded[:3])}{', ...' if len(unloaded) > 3 else ''}); expected a "
            "VideoMAE of the architecture its config.json names"
        )
    # transformers leaves the mask token as allocated (it is not a layer its initialisation visits)
    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.mask_token, std=0.02)  # as VideoMAE initialises it
    return model


@contextlib.contextmanager
def _quiet_loading():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _train(
    model, crops: np.ndarray, normalizer: PixelNormalizer, cfg: PretrainConfig, grid: tuple, device
) -> pd.DataFrame:
    groups, patches, masked = grid
    generator = torch.Generator().manual_seed(cfg.seed)
    per_epoch = -(-len(crops) // cfg.batch_size)
    steps = cfg.epochs * per_epoch
    # no weight decay on biases, norms and the mask token, as in MAE
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim > 1 and n != "mask_token"]
    rest = [p for n, p in named if not (p.ndim > 1 and n != "mask_token")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    rows = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc="pretrain", unit="epoch")
    for epoch in bar:
        order = torch.randperm(len(crops), generator=generator).numpy()
        for start in range(0, len(crops), cfg.batch_size):
            chosen = np.sort(order[start : start + cfg.batch_size])
            pixels = normalizer(crops[chosen]).to(device)
            mask = tube_masks(len(chosen), groups, patches, masked, generator).to(device)
            lr = learning_rate(step, steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(pixel_values=pixels, bool_masked_pos=mask).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise StageInputError(
                    f"pretrain: the loss is {value} at step {step} (epoch {epoch}); lower pretrain.lr"
                )
            rows.append({"step": step, "epoch": epoch, "loss": round(value, 6), "lr": lr})
            step += 1
        bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows[-per_epoch:]]):.4f}")
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
