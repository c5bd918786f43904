"""ActionClassifier: the pooled token -> class logits (the model does the pooling).

``model.classifier`` (docs/decisions.md, "Parameter counts and FLOPs (Table 1)"):
    mlp     Linear(D, D) -> GELU -> Dropout -> Linear(D, classes); 595,206 parameters at D=768 and 6 classes,
            Table 1's 0.60M.
    linear  Linear(D, classes): the linear probe (the ``linear_probe`` ablation row).
Both start with a LayerNorm without affine parameters: the pooled backbone tokens are not normalised
(VideoMAE with mean pooling has no final norm), and an affine norm would only add parameters that the first
linear layer can absorb.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSIFIERS = ("mlp", "linear")


class Classifier(nn.Module):
    """Pooled features (B, D) -> class logits (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int, kind: str = "mlp", dropout: float = 0.0):
        super().__init__()
        if kind not in CLASSIFIERS:
            raise ValueError(f"model.classifier is {kind!r}; expected one of {', '.join(CLASSIFIERS)}")
        self.kind = kind
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        if kind == "mlp":
            self.head = nn.Sequential(
                nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes)
            )
        else:
            self.head = nn.Linear(dim, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, num_classes) logits."""
        return self.head(self.norm(pooled))
