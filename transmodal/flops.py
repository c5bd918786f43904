"""FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device.

What is counted: matrix products (linear layers, attention, convolutions) at 2 FLOPs per multiply-add, for
ONE clip in eval mode. Element-wise work (norms, GELU, the selector's L2 scores, the top-k sort) is not.
Models are built on ``meta``, so counting VideoMAE-B or the head at D=768 allocates nothing and takes a
second or two. The features stage uses it for the backbone, the head's Table 1 report
(:mod:`transmodal.model.complexity`) for both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(module: nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, int]:
    """FLOPs of ``module(*args, **kwargs)`` per submodule (dotted names below ``module``; "" is the total)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args, **kwargs)
    counts = counter.get_flop_counts()
    root = type(module).__name__
    flops = {"": int(sum(counts.get("Global", {}).values()))}
    for name, by_op in counts.items():
        if name.startswith(root + "."):
            flops[name[len(root) + 1 :]] = int(sum(by_op.values()))
    return flops


def videomae_complexity(config: Any, kept_per_group: int | None = None) -> dict[str, int]:
    """Parameters and FLOPs per clip of a ``VideoMAEModel`` with this ``VideoMAEConfig`` (frozen: all of
    its parameters, none of them trainable here).

    ``kept_per_group`` (``backbone.keep`` < 1): the encoder runs on that many patches of each frame group;
    the patch embedding still runs on the whole clip (transformers drops the tokens after it)."""
    from transformers import VideoMAEModel

    with torch.device("meta"):
        model = VideoMAEModel(config).eval()
        pixels = torch.empty(1, config.num_frames, config.num_channels, config.image_size, config.image_size)
    if kept_per_group is None:
        flops = count_flops(model, pixel_values=pixels)[""]
    else:
        groups = config.num_frames // config.tubelet_size
        with torch.device("meta"):
            hidden = torch.empty(1, groups * kept_per_group, config.hidden_size)
        flops = (
            count_flops(model.embeddings.patch_embeddings, pixels)[""]
            + count_flops(model.encoder, hidden)[""]
        )
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": flops}
