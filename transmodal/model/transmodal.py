"""TransMODAL head: PoseEncoder + CoAttentionFusion + AdaptiveSelector + Classifier.

The frozen VideoMAE backbone is not part of this module: it takes the cached token grid (B, G, P, D),
time-major, with VideoMAE's own position embeddings already added (none are added here).

Where the selector sits (``selector.position``, docs/decisions.md "where pruning saves compute"):
    after_fusion   fuse all G*P RGB tokens with the pose tokens, then select, then pool (paper Figure 1).
                   Pruning saves only the mean-pool.
    before_ffn     in the LAST fusion block: cross-attention on all tokens, select, then the RGB FFN on the
                   kept tokens only (earlier blocks, if any, see all tokens).
    before_fusion  select on the backbone grid first, then fuse only the kept tokens.
With ``model.use_pose: false`` there is no fusion, and every position reduces to "select, then pool".

The FFN acts per token, so before_ffn computes the same function as after_fusion except that the selector
scores the cross-attended tokens before the last FFN rather than after it; it skips that FFN for the
pruned tokens (most of the head's FLOPs at D=768). before_fusion also lets the pose tokens attend to the
kept RGB tokens only, so it changes the function more and saves the most.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from transmodal.model.classifier import Classifier
from transmodal.model.fusion import CoAttentionFusion
from transmodal.model.pose_encoder import PoseEncoder
from transmodal.model.selector import AdaptiveSelector, SelectorOutput
from transmodal.params import ModelConfig, SelectorConfig


@dataclass
class TransModalOutput:
    """The same type in train and eval.

    logits: (B, num_classes).
    pooled: (B, D) the averaged tokens fed to the classifier.
    kept_tokens: RGB tokens per clip that reached the pooling (G*P without a selector, G_k*P_k with one).
    group_index: (B, G_k) kept token groups, ascending; None when the selector is off.
    patch_index: (B, G_k, P_k) kept patches within each kept group, ascending; None when off.
    group_scores: (B, G) group saliences; None when off.
    token_scores: (B, G_k, P) patch saliences in the kept groups; None when off.
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    kept_tokens: int
    group_index: torch.Tensor | None = None
    patch_index: torch.Tensor | None = None
    group_scores: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None


def _init_weights(module: nn.Module) -> None:
    # ViT/timm convention: small truncated-normal linear weights, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransModal(nn.Module):
    """The trainable TransMODAL head.

    Args:
        model_cfg: ``params.yaml`` section ``model``.
        selector_cfg: ``params.yaml`` section ``selector``.
        dim: token width D of the backbone (768 for VideoMAE-Base).
        num_classes: number of action classes.
        num_frames: frames per clip T (pose tokens; the RGB grid has T / tubelet_size groups).
        tubelet_size: frames per RGB token group.
        patches_per_group: P, spatial patches per token group (196 at 224 px).
        num_joints: J keypoints per frame.

    ``model.use_pose: false`` builds no PoseEncoder and no fusion; the pose input is then ignored.
    ``selector.enabled: false`` builds no selector and every token is pooled.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        selector_cfg: SelectorConfig,
        *,
        dim: int,
        num_classes: int,
        num_frames: int = 16,
        tubelet_size: int = 2,
        patches_per_group: int,
        num_joints: int = 17,
    ):
        super().__init__()
        if num_frames % tubelet_size != 0:
            raise ValueError(f"num_frames {num_frames} is not a multiple of tubelet_size {tubelet_size}")
        if dim % model_cfg.num_heads != 0:
            raise ValueError(
                f"model.num_heads is {model_cfg.num_heads}; the width {dim} must be divisible by it"
            )
        self.model_cfg = model_cfg
        self.selector_cfg = selector_cfg
        self.dim = dim
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.num_groups = num_frames // tubelet_size
        self.patches_per_group = patches_per_group
        self.num_joints = num_joints
        self.in_channels = 3 if model_cfg.pose_scores else 2

        # Per-channel standardisation of the frozen tokens (model.token_norm: batch; no parameters, running
        # statistics of the training tokens at eval), as MAE's linear probe does before its classifier:
        # VideoMAE's un-normalised residual stream carries a large offset common to every clip.
        self.token_norm = nn.BatchNorm1d(dim, affine=False) if model_cfg.token_norm == "batch" else None
        self.pose_encoder: PoseEncoder | None = None
        self.fusion: CoAttentionFusion | None = None
        if model_cfg.use_pose:
            self.pose_encoder = PoseEncoder(
                num_joints=num_joints,
                in_channels=self.in_channels,
                dim=dim,
                num_frames=num_frames,
                num_heads=model_cfg.num_heads,
                mlp_ratio=model_cfg.mlp_ratio,
                dropout=model_cfg.dropout,
            )
            self.fusion = CoAttentionFusion(
                dim,
                depth=model_cfg.fusion_depth,
                num_heads=model_cfg.num_heads,
                mlp_ratio=model_cfg.mlp_ratio,
                dropout=model_cfg.dropout,
                pose_output=model_cfg.pool == "rgb_and_pose",
            )
        self.selector: AdaptiveSelector | None = None
        if selector_cfg.enabled:
            selector_cfg.check_against_grid(num_frames, patches_per_group)
            self.selector = AdaptiveSelector(
                selector_cfg.top_k_frames,
                selector_cfg.top_k_tokens,
                tubelet_size=tubelet_size,
                scoring=selector_cfg.scoring,
                dim=dim,
            )
        self.classifier = Classifier(dim, num_classes, model_cfg.classifier, model_cfg.dropout)
        self.apply(_init_weights)

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor | None = None) -> TransModalOutput:
        """RGB token grid (B, G, P, D) and keypoints (B, T, J, C) -> :class:`TransModalOutput`."""
        expected = (self.num_groups, self.patches_per_group, self.dim)
        if rgb.ndim != 4 or tuple(rgb.shape[1:]) != expected:
            raise ValueError(f"rgb must be (B, {', '.join(map(str, expected))}); got {tuple(rgb.shape)}")
        B, G, P, D = rgb.shape
        if pose is not None and len(pose) != B:  # attention and residuals would broadcast one over the other
            raise ValueError(f"pose has {len(pose)} clips but rgb has {B}; give one pose track per clip")
        if self.token_norm is not None:
            rgb = self.token_norm(rgb.reshape(B * G * P, D)).reshape(B, G, P, D)

        pose_tokens = None
        if self.pose_encoder is not None:
            if pose is None:
                raise ValueError("model.use_pose is true but no pose input was given")
            pose_tokens = self.pose_encoder(pose)  # (B, T, D)

        def select(tokens: torch.Tensor) -> SelectorOutput:
            return self.selector(rearrange(tokens, "b (g p) d -> b g p d", g=G, p=P))

        selection: SelectorOutput | None = None
        position = self.selector_cfg.position
        if self.fusion is None:
            # No pose stream: every position is "select on the grid, then pool".
            if self.selector is not None:
                selection = self.selector(rgb)
                tokens = selection.tokens.flatten(1, 2)  # (B, G_k * P_k, D)
            else:
                tokens = rgb.flatten(1, 2)  # (B, G * P, D)
        elif self.selector is None:
            fused = self.fusion(rgb.flatten(1, 2), pose_tokens)
            tokens, pose_tokens = fused.rgb, fused.pose  # (B, G * P, D), (B, T, D)
        elif position == "before_fusion":
            selection = self.selector(rgb)
            fused = self.fusion(selection.tokens.flatten(1, 2), pose_tokens)
            tokens, pose_tokens = fused.rgb, fused.pose  # (B, G_k * P_k, D), (B, T, D)
        elif position == "before_ffn":
            fused = self.fusion(rgb.flatten(1, 2), pose_tokens, select=select)
            selection = fused.selection
            tokens, pose_tokens = fused.rgb, fused.pose  # (B, G_k * P_k, D), (B, T, D)
        else:  # after_fusion
            fused = self.fusion(rgb.flatten(1, 2), pose_tokens)
            selection = select(fused.rgb)
            tokens, pose_tokens = selection.tokens.flatten(1, 2), fused.pose  # (B, G_k * P_k, D), (B, T, D)

        kept_tokens = tokens.shape[1]
        if self.model_cfg.pool == "rgb_and_pose" and pose_tokens is not None:
            tokens = torch.cat([tokens, pose_tokens], dim=1)  # (B, N_k + T, D)
        pooled = tokens.mean(dim=1)  # (B, D)
        logits = self.classifier(pooled)  # (B, num_classes)

        return TransModalOutput(
            logits=logits,
            pooled=pooled,
            kept_tokens=kept_tokens,
            group_index=None if selection is None else selection.group_index,
            patch_index=None if selection is None else selection.patch_index,
            group_scores=None if selection is None else selection.group_scores,
            token_scores=None if selection is None else selection.token_scores,
        )

    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (JSON-serialisable); see :meth:`from_config_dict`."""
        return {
            "model": dataclasses.asdict(self.model_cfg),
            "selector": dataclasses.asdict(self.selector_cfg),
            "dim": self.dim,
            "num_classes": self.num_classes,
            "num_frames": self.num_frames,
            "tubelet_size": self.tubelet_size,
            "patches_per_group": self.patches_per_group,
            "num_joints": self.num_joints,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> TransModal:
        """Rebuild a model (fresh weights) from :meth:`config_dict`; load the state dict afterwards."""
        model = cls(
            ModelConfig(**d["model"]),
            SelectorConfig(**d["selector"]),
            dim=d["dim"],
            num_classes=d["num_classes"],
            num_frames=d["num_frames"],
            tubelet_size=d["tubelet_size"],
            patches_per_group=d["patches_per_group"],
            num_joints=d["num_joints"],
        )
        if "in_channels" in d and d["in_channels"] != model.in_channels:
            raise ValueError(
                f"config in_channels {d['in_channels']} disagrees with model.pose_scores "
                f"{model.model_cfg.pose_scores} (which gives {model.in_channels})"
            )
        return model


def parameter_counts(model: TransModal) -> dict[str, int]:
    """Trainable parameters per module: pose_encoder, fusion, selector, classifier, total (0 if absent)."""

    def count(module: nn.Module | None) -> int:
        if module is None:
            return 0
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    counts = {
        "pose_encoder": count(model.pose_encoder),
        "fusion": count(model.fusion),
        "selector": count(model.selector),
        "classifier": count(model.classifier),
    }
    counts["total"] = count(model)
    return counts
