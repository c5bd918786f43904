"""AdaptiveSelector (paper 3.3.2, Eq. 3-4): keep the top token groups, then the top tokens in each.

Counting (docs/decisions.md, "frames vs tokens"): VideoMAE merges ``tubelet_size`` frames into one token
group, so the selector counts in frames and converts: it keeps ``ceil(top_k_frames / tubelet_size)``
groups and ``top_k_tokens * tubelet_size`` tokens per group, each clamped to what the grid has. With
16 frames (8 groups of 196 patches) and tubelet 2, (8, 12) keeps 4 groups x 24 tokens = 96 tokens,
the paper's 8 x 12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SCORINGS = ("l2", "learned")


@dataclass
class SelectorOutput:
    """What the selector kept.

    tokens: (B, G_k, P_k, D) kept tokens, groups in temporal order, patches in raster order.
    group_index: (B, G_k) indices of the kept groups into G, ascending.
    patch_index: (B, G_k, P_k) indices of the kept patches into P within each kept group, ascending.
    group_scores: (B, G) salience of every group (Eq. 3, or the learned group scorer).
    token_scores: (B, G_k, P) salience of every patch in the kept groups (Eq. 4, or the learned scorer).
    """

    tokens: torch.Tensor
    group_index: torch.Tensor
    patch_index: torch.Tensor
    group_scores: torch.Tensor
    token_scores: torch.Tensor

    @property
    def num_kept(self) -> int:
        """Tokens kept per clip: G_k * P_k."""
        return self.tokens.shape[1] * self.tokens.shape[2]


def top_k_ascending(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest ``scores`` along the last dim, returned in ascending index order.

    A stable descending sort breaks ties towards the lower index (earlier frame, upper-left patch), so the
    choice is deterministic on any device, unlike ``torch.topk`` whose tie order is unspecified.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (..., n)
    return order[..., :k].sort(dim=-1).values  # (..., k)


def straight_through(gate: torch.Tensor) -> torch.Tensor:
    """Exactly 0 in the forward pass, with the gradient of ``gate`` in the backward pass.

    Used as ``tokens + tokens * straight_through(gate)``: the forward value is the hard selection unchanged
    (bit for bit), the backward pass is that of ``tokens * gate`` (DynamicViT-style straight-through).
    """
    return gate - gate.detach()


class AdaptiveSelector(nn.Module):
    """Two-stage token pruning on a token grid (B, G, P, D).

    Stage 1 (Eq. 3) scores every group and keeps the top G_k; stage 2 (Eq. 4) scores every patch token
    inside the kept groups and keeps the top P_k per group. Kept indices are returned ascending (temporal,
    then raster order); ties go to the lower index.

    Scoring:
        ``'l2'``: parameter-free, exactly the paper's equations: group score = ||sum_p F[g, p]||_2, token
        score = ||F[g, p]||_2.
        ``'learned'``: the text's "learnable linear layer": a Linear(D, 1) group scorer on the mean of the
        group's patches and a Linear(D, 1) token scorer on each token. Hard top-k has no gradient, so each
        kept token is multiplied by a straight-through gate sigmoid(s_group) * sigmoid(s_token) whose
        forward value is exactly 1 (the output equals the hard selection, identical in train and eval, and
        "keep everything" equals "no selector") while the gradient reaching the scores is that of the soft
        gate: dL/ds_token = sigma'(s_token) sigma(s_group) <dL/dtoken, token>, i.e. "would scaling this kept
        token up lower the loss", and dL/ds_group the sum over the group's kept tokens of
        sigma'(s_group) sigma(s_token) <dL/dtoken, token>.
        Helpful tokens are pushed up (stay kept), unhelpful ones down (replaced by others). Dropped tokens
        get no gradient; that is the usual limit of straight-through top-k. A multiplicative soft gate in
        the forward pass was not chosen because it would rescale features differently in train and eval
        positions (before the fusion / FFN) and break the keep-everything equivalence.

    Args:
        top_k_frames: frames to keep (``selector.top_k_frames``), >= 1 (``SelectorConfig`` checks).
        top_k_tokens: tokens to keep per frame (``selector.top_k_tokens``), >= 1 (``SelectorConfig`` checks).
        tubelet_size: frames per token group (2 for VideoMAE).
        scoring: ``'l2'`` or ``'learned'``.
        dim: token width D; required for ``'learned'``.
    """

    def __init__(
        self,
        top_k_frames: int,
        top_k_tokens: int,
        tubelet_size: int = 2,
        scoring: str = "l2",
        dim: int | None = None,
    ):
        super().__init__()
        if tubelet_size < 1:
            raise ValueError(f"tubelet_size is {tubelet_size}; must be >= 1")
        if scoring not in SCORINGS:
            raise ValueError(f"selector.scoring is {scoring!r}; expected one of {', '.join(SCORINGS)}")
        self.top_k_frames = top_k_frames
        self.top_k_tokens = top_k_tokens
        self.tubelet_size = tubelet_size
        self.scoring = scoring
        if scoring == "learned":
            if dim is None:
                raise ValueError("AdaptiveSelector(scoring='learned') needs dim")
            self.group_scorer = nn.Linear(dim, 1)
            self.token_scorer = nn.Linear(dim, 1)

    def kept_shape(self, num_groups: int, patches_per_group: int) -> tuple[int, int]:
        """(G_k, P_k) for a (G, P) grid, each clamped to the grid (the params' ranges against the grid are
        checked once, by :meth:`~transmodal.params.SelectorConfig.check_against_grid`)."""
        kept_groups = min(math.ceil(self.top_k_frames / self.tubelet_size), num_groups)
        kept_patches = min(self.top_k_tokens * self.tubelet_size, patches_per_group)
        return kept_groups, kept_patches

    def forward(self, grid: torch.Tensor) -> SelectorOutput:
        """Select from a token grid (B, G, P, D); see :class:`SelectorOutput` for the shapes."""
        if grid.ndim != 4:
            raise ValueError(f"AdaptiveSelector expects a (B, G, P, D) grid; got {tuple(grid.shape)}")
        B, G, P, D = grid.shape
        kept_groups, kept_patches = self.kept_shape(G, P)

        # Stage 1 (Eq. 3): one score per group.
        if self.scoring == "l2":
            group_scores = grid.sum(dim=2).norm(dim=-1)  # (B, G)
        else:
            group_scores = self.group_scorer(grid.mean(dim=2)).squeeze(-1)  # (B, G)
        group_index = top_k_ascending(group_scores.detach(), kept_groups)  # (B, G_k)
        groups = grid.gather(1, group_index[:, :, None, None].expand(-1, -1, P, D))  # (B, G_k, P, D)

        # Stage 2 (Eq. 4): one score per patch token of the kept groups.
        if self.scoring == "l2":
            token_scores = groups.norm(dim=-1)  # (B, G_k, P)
        else:
            token_scores = self.token_scorer(groups).squeeze(-1)  # (B, G_k, P)
        patch_index = top_k_ascending(token_scores.detach(), kept_patches)  # (B, G_k, P_k)
        tokens = groups.gather(2, patch_index[..., None].expand(-1, -1, -1, D))  # (B, G_k, P_k, D)

        if self.scoring == "learned":
            kept_group_scores = group_scores.gather(1, group_index)  # (B, G_k)
            kept_token_scores = token_scores.gather(2, patch_index)  # (B, G_k, P_k)
            gate = kept_group_scores.sigmoid()[:, :, None] * kept_token_scores.sigmoid()  # (B, G_k, P_k)
            tokens = tokens + tokens * straight_through(gate)[..., None]  # (B, G_k, P_k, D), values unchanged

        return SelectorOutput(
            tokens=tokens,
            group_index=group_index,
            patch_index=patch_index,
            group_scores=group_scores,
            token_scores=token_scores,
        )
