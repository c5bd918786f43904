"""PoseEncoder (paper 3.2.2): a keypoint sequence (B, T, J, C) becomes pose tokens (B, T, D)."""

from __future__ import annotations

import torch
from torch import nn

from transmodal.model.attention import Attention, FeedForward


class EncoderLayer(nn.Module):
    """One pre-norm Transformer encoder layer: x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm_attn(x))  # (B, N, D)
        return x + self.ffn(self.norm_ffn(x))  # (B, N, D)


class PoseEncoder(nn.Module):
    """Embed each frame's joints with one linear layer (Eq. 1), add a learnable temporal position
    embedding, and run ONE Transformer encoder layer over time.

    Args:
        num_joints: J (17 for COCO).
        in_channels: C per joint: 2 for (x, y), 3 for (x, y, score) (``model.pose_scores``).
        dim: output width D (the RGB token width, so the streams can attend to each other).
        num_frames: T, the length of the temporal position embedding; inputs must have exactly T frames.
        num_heads, mlp_ratio, dropout: of the encoder layer.

    Missing joints arrive zeroed by the data code; no masking is done here.
    """

    def __init__(
        self,
        num_joints: int = 17,
        in_channels: int = 2,
        dim: int = 768,
        num_frames: int = 16,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.num_joints = num_joints
        self.in_channels = in_channels
        self.num_frames = num_frames
        self.embed = nn.Linear(num_joints * in_channels, dim)  # W_pose, b_pose of Eq. 1
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, dim))  # E_temp
        nn.init.trunc_normal_(self.temporal_embed, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.layer = EncoderLayer(dim, num_heads, mlp_ratio, dropout)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """Keypoints (B, T, J, C) in the units the data code gives -> pose tokens (B, T, D)."""
        if pose.ndim != 4 or pose.shape[1:] != (self.num_frames, self.num_joints, self.in_channels):
            raise ValueError(
                f"pose must be (B, {self.num_frames}, {self.num_joints}, {self.in_channels}); "
                f"got {tuple(pose.shape)}"
            )
        x = self.embed(pose.flatten(2))  # (B, T, J*C) -> (B, T, D)
        x = self.dropout(x + self.temporal_embed)  # (B, T, D)
        return self.layer(x)  # (B, T, D)
