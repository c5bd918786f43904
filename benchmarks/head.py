"""Forward latency of the TransMODAL head (pose encoder, fusion, selector, classifier) per selector position.

    python benchmarks/head.py [--quick]

Batch 4, eval mode under ``torch.inference_mode``, fp32 on CPU, all variants in one process on the same
input tensors; the median of repeated runs after warm-up. Two widths: the paper's (D=768, 8 x 196 RGB
tokens, 16 pose tokens, 8 heads, depth 1, 6 classes) and a demo width (D=64, 8 x 16 RGB tokens).
The frozen VideoMAE backbone is not timed: the head starts from its cached token grid.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from transmodal.model import TransModal, parameter_counts
from transmodal.params import ModelConfig, SelectorConfig

BATCH = 4
NUM_FRAMES = 16
TUBELET = 2
NUM_JOINTS = 17
NUM_CLASSES = 6
TOP_K_FRAMES, TOP_K_TOKENS = 8, 12
VARIANTS: dict[str, dict] = {
    "no selector": {"enabled": False},
    "after_fusion": {"position": "after_fusion"},
    "before_ffn": {"position": "before_ffn"},
    "before_fusion": {"position": "before_fusion"},
}


@dataclass(frozen=True)
class Width:
    name: str
    dim: int
    patches_per_group: int
    warmup: int
    repeats: int


def build(width: Width, selector: dict) -> TransModal:
    """The head for one variant; the same seed, so every variant shares its pose/fusion/classifier weights."""
    torch.manual_seed(0)
    model = TransModal(
        ModelConfig(fusion_depth=1, num_heads=8),
        SelectorConfig(top_k_frames=TOP_K_FRAMES, top_k_tokens=TOP_K_TOKENS, **selector),
        dim=width.dim,
        num_classes=NUM_CLASSES,
        num_frames=NUM_FRAMES,
        tubelet_size=TUBELET,
        patches_per_group=width.patches_per_group,
        num_joints=NUM_JOINTS,
    )
    return model.eval()


def median_ms(
    models: dict[str, TransModal], rgb: torch.Tensor, pose: torch.Tensor, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time of one forward pass per variant, in milliseconds per batch.

    The variants are timed round-robin (one pass of each per repeat), so drift in the machine's speed
    (other processes, frequency scaling) hits every variant alike instead of whichever ran last.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(rgb, pose)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(rgb, pose)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000.0 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer warm-up runs and repeats")
    args = parser.parse_args()

    widths = [
        Width(
            "paper",
            dim=768,
            patches_per_group=196,
            warmup=1 if args.quick else 3,
            repeats=3 if args.quick else 15,
        ),
        Width(
            "demo",
            dim=64,
            patches_per_group=16,
            warmup=3 if args.quick else 10,
            repeats=10 if args.quick else 100,
        ),
    ]
    groups = NUM_FRAMES // TUBELET
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, fp32, eval, "
        "inference_mode"
    )
    print(f"selector top_k_frames={TOP_K_FRAMES}, top_k_tokens={TOP_K_TOKENS}, scoring=l2\n")
    header = f"{'width':<18} {'variant':<14} {'rgb tokens':>10} {'ms/batch':>10} {'vs no sel.':>10}"
    print(header)
    print("-" * len(header))
    for width in widths:
        gen = torch.Generator().manual_seed(0)
        rgb = torch.randn(BATCH, groups, width.patches_per_group, width.dim, generator=gen)  # (B, G, P, D)
        pose = torch.rand(BATCH, NUM_FRAMES, NUM_JOINTS, 2, generator=gen)  # (B, T, J, 2)
        label = f"{width.name} D={width.dim} {groups}x{width.patches_per_group}"
        models = {name: build(width, selector) for name, selector in VARIANTS.items()}
        with torch.inference_mode():
            kept = {name: model(rgb, pose).kept_tokens for name, model in models.items()}
        ms = median_ms(models, rgb, pose, width.warmup, width.repeats)
        baseline = ms["no selector"]
        for name in models:
            print(f"{label:<18} {name:<14} {kept[name]:>10} {ms[name]:>10.2f} {ms[name] / baseline:>9.2f}x")
        counts = parameter_counts(models["no selector"])
        print(f"{'':<18} params: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        print(f"{'':<18} ({width.repeats} repeats after {width.warmup} warm-up runs, median)\n")


if __name__ == "__main__":
    main()
