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
    pose: (B, T, D) fused pose tokens, or None when the last block does not update them (nothing reads them);
    selection: what the ``select`` hook kept, or None."""

    rgb: torch.Tensor
    pose: torch.Tensor | None
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

    ``update_pose=False`` builds only the RGB half (RGB queries pose, RGB FFN) and returns ``pose=None``: the
    last block when the classifier pools RGB tokens only, where a pose update would feed nothing
    (docs/decisions.md, "What is averaged before the classifier").
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        update_pose: bool = True,
    ):
        super().__init__()
        self.update_pose = update_pose
        self.norm_rgb = nn.LayerNorm(dim)
        self.norm_pose = nn.LayerNorm(dim)
        self.attn_rgb = Attention(dim, num_heads, dropout)  # RGB queries pose
        self.norm_ffn_rgb = nn.LayerNorm(dim)
        self.ffn_rgb = FeedForward(dim, mlp_ratio, dropout)
        if update_pose:
            self.attn_pose = Attention(dim, num_heads, dropout)  # pose queries RGB
            self.norm_ffn_pose = nn.LayerNorm(dim)
            self.ffn_pose = FeedForward(dim, mlp_ratio, dropout)

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, select: SelectFn | None = None) -> FusionOutput:
        """rgb (B, N, D), pose (B, T, D) -> FusionOutput (rgb (B, N or N_k, D), pose (B, T, D) or None)."""
        rgb_normed = self.norm_rgb(rgb)  # (B, N, D)
        pose_normed = self.norm_pose(pose)  # (B, T, D)
        new_rgb = rgb + self.attn_rgb(rgb_normed, context=pose_normed)  # (B, N, D)
        new_pose = None
        if self.update_pose:
            new_pose = pose + self.attn_pose(pose_normed, context=rgb_normed)  # (B, T, D)
            new_pose = new_pose + self.ffn_pose(self.norm_ffn_pose(new_pose))  # (B, T, D)
        selection = None
        if select is not None:
            selection = select(new_rgb)
            new_rgb = selection.tokens.flatten(1, 2)  # (B, G_k * P_k, D)
        new_rgb = new_rgb + self.ffn_rgb(self.norm_ffn_rgb(new_rgb))  # (B, N or N_k, D)
        return FusionOutput(rgb=new_rgb, pose=new_pose, selection=selection)


class CoAttentionFusion(nn.Module):
    """``depth`` stacked :class:`CoAttentionBlock`; ``select`` is used in the LAST block only.

    ``pose_output=False``: the caller reads only the RGB tokens, so the last block has no pose half (every
    earlier block keeps it: the next block's RGB stream attends to the updated pose tokens).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        pose_output: bool = True,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            CoAttentionBlock(dim, num_heads, mlp_ratio, dropout, update_pose=pose_output or i < depth - 1)
            for i in range(depth)
        )

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, select: SelectFn | None = None) -> FusionOutput:
        """rgb (B, N, D), pose (B, T, D) -> FusionOutput after all blocks."""
        out = FusionOutput(rgb=rgb, pose=pose)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            out = block(out.rgb, out.pose, select=select if i == last else None)
        return out
