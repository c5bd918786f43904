"""ActionClassifier: LayerNorm + Linear on the pooled token (the model does the pooling)."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Pooled features (B, D) -> class logits (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, num_classes) logits."""
        return self.head(self.norm(pooled))
