"""Transformer primitives shared by the pose encoder and the fusion blocks.

``Attention`` serves both self-attention (``context=None``) and cross-attention, through
``F.scaled_dot_product_attention``. ``FeedForward`` is the per-token MLP of a Transformer block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Multi-head attention: queries from ``x``, keys and values from ``context`` (or ``x``).

    Args:
        dim: token width D (must be divisible by ``num_heads``).
        num_heads: number of heads H.
        dropout: dropout on the attention weights (training only) and on the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"model.num_heads is {num_heads}; the width {dim} must be divisible by it")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)
        # ``record = True`` (``transmodal explain``): forward also keeps the head-averaged attention weights
        # (B, N, M) in ``weights``; off in training and evaluation, where only the fused kernel runs.
        self.record = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B, N, D) to ``context`` (B, M, D), or to ``x`` itself; returns (B, N, D)."""
        context = x if context is None else context
        q = rearrange(self.q_proj(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, H, N, D/H)
        k = rearrange(self.k_proj(context), "b m (h d) -> b h m d", h=self.num_heads)  # (B, H, M, D/H)
        v = rearrange(self.v_proj(context), "b m (h d) -> b h m d", h=self.num_heads)  # (B, H, M, D/H)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, N, D/H)
        if self.record:
            scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5  # (B, H, N, M)
            self.weights = scores.softmax(dim=-1).mean(dim=1).detach()  # (B, N, M)
        out = rearrange(out, "b h n d -> b n (h d)")  # (B, N, D)
        return self.out_dropout(self.out_proj(out))


class FeedForward(nn.Module):
    """Per-token MLP: Linear(D, mlp_ratio * D) -> GELU -> Linear(mlp_ratio * D, D), with dropout."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.net(x)
