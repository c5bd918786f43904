"""The frozen VideoMAE backbone (paper 3.2.1): uint8 person crops -> fp16 token grids (B, G, P, D).

VideoMAE embeds tubelets of ``tubelet_size`` frames x ``patch_size``^2 pixels, so a ``num_frames`` clip at
``image_size`` gives G = num_frames / tubelet_size token groups of P = (image_size / patch_size)^2 patches.
``last_hidden_state`` (B, G * P, D) is time-major, so it reshapes to (B, G, P, D) directly.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from transmodal.features.crops import PixelNormalizer
from transmodal.params import (  # torch-free: checked at start
    BackboneConfig,
    CheckpointError,
    check_clip_length,
)
from transmodal.stage import StageInputError
from transmodal.vision.checkpoints import (
    hub_revision,
    load_model,
    load_processor,
    pick_device,
    pick_dtype,
    resolve_checkpoint,
)

CHECKPOINT_PARAM = "backbone.checkpoint"


def processor_class():
    """``VideoMAEImageProcessor`` needs torchvision in transformers 5; else its PIL twin (same config).
    Only the one used is imported: importing the other without torchvision prints a warning every run."""
    if importlib.util.find_spec("torchvision"):
        from transformers import VideoMAEImageProcessor

        return VideoMAEImageProcessor
    from transformers import VideoMAEImageProcessorPil

    return VideoMAEImageProcessorPil


BILINEAR = 2  # PIL's resampling filter number, as an image processor's ``resample`` names it


def check_resample(processor, checkpoint: str) -> None:
    """The crops are resized bilinearly (:func:`~transmodal.features.crops.resize_squares`), as every VideoMAE
    checkpoint's processor resizes: a processor asking for another filter would see other pixels than it
    was trained on, so it is refused rather than resized otherwise in silence."""
    resample = getattr(processor, "resample", BILINEAR)
    if resample is not None and int(resample) != BILINEAR:
        from PIL import Image

        try:
            name = Image.Resampling(int(resample)).name
        except ValueError:
            name = str(resample)
        raise CheckpointError(
            f"backbone.checkpoint {checkpoint!r}: its image processor resizes with filter {name} "
            f"(preprocessor_config.json resample {int(resample)}); the crops are resized bilinearly "
            f"(resample {BILINEAR}), as VideoMAE's processors do"
        )


class FrozenBackbone:
    """A VideoMAEModel in eval mode with the checkpoint's own pixel normalisation.

    Args:
        cfg: the ``backbone`` params (checkpoint, device, precision, batch_size).
        clip_length: ``clips.length``; must equal the checkpoint's ``num_frames`` (else ParamError).
    """

    def __init__(self, cfg: BackboneConfig, clip_length: int):
        from transformers import VideoMAEModel

        self.checkpoint = cfg.checkpoint
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.precision, self.device)
        # the files it loads, once: the snapshot at backbone.revision for a hub id
        self.folder = resolve_checkpoint(cfg.checkpoint, CHECKPOINT_PARAM, cfg.revision)
        self.pinned = cfg.revision  # backbone.revision: the commit, branch or tag asked for (None: any)
        self.revision = hub_revision(self.folder)  # the hub commit of a hub id, None for a local folder
        self.model = load_model(VideoMAEModel, self.folder, CHECKPOINT_PARAM, self.device, self.dtype)
        self.model.requires_grad_(False)
        config = self.model.config
        check_clip_length(clip_length, config.num_frames, cfg.checkpoint)
        self.processor = load_processor(processor_class(), self.folder, CHECKPOINT_PARAM)
        check_resample(self.processor, cfg.checkpoint)
        self.normalizer = PixelNormalizer.from_processor(self.processor)
        self.model_type = config.model_type
        self.num_frames = int(config.num_frames)
        self.tubelet_size = int(config.tubelet_size)
        self.image_size = int(
            config.image_size
        )  # the position embedding fixes it, whatever the processor says
        self.patch_size = int(config.patch_size)
        self.hidden_size = int(config.hidden_size)
        groups, patches = self.num_frames // self.tubelet_size, (self.image_size // self.patch_size) ** 2
        self.full_patches_per_group = patches  # P: the whole patch grid of a frame group
        self.keep, self.keep_margin, self.keep_by = cfg.keep, cfg.keep_margin, cfg.keep_by
        self.grid = (groups, cfg.kept_count(patches))  # (G, K): what the encoder returns (K = P at keep 1)

    def pixel_values(self, crops: np.ndarray) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 crops -> (B, T, 3, S, S) float32 normalised pixel_values (CPU)."""
        return self.normalizer(crops)

    @property
    def host_normalizer(self) -> PixelNormalizer | None:
        """The normaliser the host applies before :meth:`forward`, or None on an accelerator, which takes
        the uint8 crops and normalises them itself (bit for bit the same values, a quarter of the bytes)."""
        return None if self.device.type == "cuda" else self.normalizer

    @property
    def drops(self) -> bool:
        """Whether the encoder sees only some patches (``backbone.keep`` < 1; :mod:`~transmodal.features.keep`)."""
        return self.grid[1] < self.full_patches_per_group

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, kept: np.ndarray | None = None) -> torch.Tensor:
        """(B, T, 3, S, S) float32 pixel_values, or (B, T, S, S, 3) uint8 crops (normalised where the model
        runs), -> (B, G, K, D) float16 tokens on the CPU.

        ``kept`` (B, G, K): the patches each clip keeps (:func:`~transmodal.features.keep.kept_patches`),
        required when ``backbone.keep`` < 1 and not allowed at keep 1 (where K = P and no mask is passed)."""
        from transmodal.features.keep import masked_positions

        b = pixel_values.shape[0]
        if self.drops != (kept is not None):
            raise ValueError(
                f"backbone.keep is {self.keep}: kept patches must {'' if self.drops else 'not '}be given"
            )
        masked = None
        if kept is not None:
            if tuple(kept.shape) != (b, *self.grid):
                raise ValueError(f"kept patches {tuple(kept.shape)}; expected {(b, *self.grid)}")
            masked = torch.from_numpy(masked_positions(kept, self.full_patches_per_group)).to(self.device)
        if pixel_values.dtype == torch.uint8:  # crops: normalised on the device
            crops = pixel_values.to(self.device, non_blocking=True)
            pixel_values = self.normalizer.on_device(crops).to(self.dtype)
        else:
            pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        hidden = self.model(
            pixel_values=pixel_values, bool_masked_pos=masked
        ).last_hidden_state  # (B, G*K, D)
        tokens = hidden.reshape(b, *self.grid, self.hidden_size).to(torch.float16)  # (B, G, K, D), time-major
        if not bool(torch.isfinite(tokens).all()):  # checked where the model runs: one flag crosses
            raise StageInputError(
                f"backbone.checkpoint {self.checkpoint!r} gave tokens beyond float16's range (|x| > 65504) or "
                "NaN; the cache stores float16, so these clips cannot be cached as they are"
            )
        return tokens.cpu()

    def encode(self, crops: np.ndarray, kept: np.ndarray | None = None) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 crops -> (B, G, K, D) float16 tokens."""
        return self.forward(self.pixel_values(crops), kept)

    def describe(self) -> dict:
        """What training needs to know about the cached grids (written to ``backbone.json``), and the
        backbone's size and FLOPs per clip (reported beside the head's)."""
        from transmodal.flops import videomae_complexity

        complexity = videomae_complexity(self.model.config, self.grid[1] if self.drops else None)
        dropping = {  # only when tokens are dropped: at keep 1 backbone.json reads as it always has
            "keep": self.keep,
            "keep_margin": self.keep_margin,
            "keep_by": self.keep_by,
            "full_patches_per_group": self.full_patches_per_group,
        }
        return {
            "checkpoint": self.checkpoint,
            **({"revision": self.pinned} if self.pinned else {}),  # predict loads it at the same one
            **({"checkpoint_revision": self.revision} if self.revision else {}),
            "model_type": self.model_type,
            "num_frames": self.num_frames,
            "tubelet_size": self.tubelet_size,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "patches_per_group": self.grid[1],
            "grid": list(self.grid),
            "hidden_size": self.hidden_size,
            "image_mean": list(self.normalizer.image_mean),
            "image_std": list(self.normalizer.image_std),
            "rescale_factor": self.normalizer.rescale_factor,
            "dtype": "float16",
            "model_dtype": str(self.dtype).removeprefix("torch."),
            "parameters": complexity["parameters"],
            "flops_per_clip": complexity["flops"],
        } | (dropping if self.drops else {})
