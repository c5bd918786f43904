"""CoAttentionFusion (paper 3.3.1, Eq. 2): RGB and pose tokens attend to each other, block by block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from transmodal.model.attention import Attention, FeedForward
from transmodal.model.selector import SelectorOutput

SelectFn = Callable[[torch.Tensor], SelectorOutput]


@dataclass
class FusionOutput:
    """rgb: (B, N_rgb, D) fused RGB tokens (N_rgb = G_k * P_k when a selection ran inside);
    pose: (B, T, D) fused pose tokens; selection: what the ``select`` hook kept, or None."""

    rgb: torch.Tensor
    pose: torch.Tensor
    selection: SelectorOutput | None = None


class CoAttentionBlock(nn.Module):
    """One co-attention block, pre-norm.

    Both cross-attentions read the SAME (block-input) tokens, so they are parallel, not sequential:
        rgb'  = rgb  + Attn_rgb(LN(rgb),  context=LN(pose))
        pose' = pose + Attn_pose(LN(pose), context=LN(rgb))
    then a per-stream FFN with a residual: x'' = x' + FFN(LN(x')).

    ``select`` (optional) is applied to the RGB tokens (B, N, D) after the cross-attention and before the
    FFN, and must return a :class:`SelectorOutput`; the RGB FFN then runs on the kept tokens only
    (``selector.position: before_ffn``).
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_rgb = nn.LayerNorm(dim)
        self.norm_pose = nn.LayerNorm(dim)
        self.attn_rgb = Attention(dim, num_heads, dropout)  # RGB queries pose
        self.attn_pose = Attention(dim, num_heads, dropout)  # pose queries RGB
        self.norm_ffn_rgb = nn.LayerNorm(dim)
        self.norm_ffn_pose = nn.LayerNorm(dim)
        self.ffn_rgb = FeedForward(dim, mlp_ratio, dropout)
        self.ffn_pose = FeedForward(dim, mlp_ratio, dropout)

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, select: SelectFn | None = None) -> FusionOutput:
        """rgb (B, N, D), pose (B, T, D) -> FusionOutput (rgb (B, N or N_k, D), pose (B, T, D))."""
        rgb_normed = self.norm_rgb(rgb)  # (B, N, D)
        pose_normed = self.norm_pose(pose)  # (B, T, D)
        rgb = rgb + self.attn_rgb(rgb_normed, context=pose_normed)  # (B, N, D)
        pose = pose + self.attn_pose(pose_normed, context=rgb_normed)  # (B, T, D)
        selection = None
        if select is not None:
            selection = select(rgb)
            rgb = selection.tokens.flatten(1, 2)  # (B, G_k * P_k, D)
        rgb = rgb + self.ffn_rgb(self.norm_ffn_rgb(rgb))  # (B, N or N_k, D)
        pose = pose + self.ffn_pose(self.norm_ffn_pose(pose))  # (B, T, D)
        return FusionOutput(rgb=rgb, pose=pose, selection=selection)


class CoAttentionFusion(nn.Module):
    """``depth`` stacked :class:`CoAttentionBlock`; ``select`` is used in the LAST block only."""

    def __init__(
        self, dim: int, depth: int = 1, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            CoAttentionBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, select: SelectFn | None = None) -> FusionOutput:
        """rgb (B, N, D), pose (B, T, D) -> FusionOutput after all blocks."""
        out = FusionOutput(rgb=rgb, pose=pose)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            out = block(out.rgb, out.pose, select=select if i == last else None)
        return out
