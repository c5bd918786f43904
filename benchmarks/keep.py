"""End-to-end cost of dropping RGB tokens before the frozen backbone: VideoMAE-B + the TransMODAL head per keep.

    python benchmarks/keep.py [--keep 1.0 0.5 0.25] [--batch 1|4] [--repeats R] [--warmup W]
                              [--device auto|cpu|cuda] [--precision fp32|fp16|bf16] [--threads N]
                              [--json PATH]

Models, random weights (nothing is downloaded): VideoMAE-B from the ``VideoMAEConfig`` defaults (16 frames,
224 px, patch 16, tubelet 2, 768 wide, 12 layers, mean pooling: no final LayerNorm), a grid of G=8 groups x
P=196 patches; and per keep ratio the head ``TransModal(ModelConfig(), SelectorConfig(), dim=768,
num_classes=6, num_frames=16, tubelet_size=2, patches_per_group=K)`` with the default params of
``transmodal.params`` (the same seed for every K: no weight depends on K), where K = round(keep * 196).
Eval mode, ``torch.inference_mode``; fp32 on the CPU (fp16 by default on CUDA). Inputs: random pixel values
(B, 16, 3, 224, 224) and keypoints (B, 16, 17, 2), the same for every keep.

Dropping: for keep < 1, ``bool_masked_pos`` (B, G*P), True = dropped, keeps in EVERY group the same K patches,
those the pipeline keeps for a person box (``transmodal.features.keep.kept_patches``, ``backbone.keep_by:
box`` without margin: nearest the box centre in distances scaled by its half-sides, the larger of the two
axes; ties broken by patch index). The box is fixed and centred:
the middle 50 % of the crop's width x 80 % of its height (x 56-168, y 22-202 px of 224). transformers'
``VideoMAEEmbeddings`` drops the masked tokens after the patch embedding (a Conv3d on the whole clip) and
the position embeddings, so the 12 encoder layers run on G*K tokens, each with its own position embedding;
the kept tokens come out in ascending index order (time-major), i.e. as a (B, G, K, D) grid. Keep 1.0 runs
without a mask. Checked (assertions) before timing: at keep 1.0 the grid equals the plain forward's output
bit for bit, as does the output with an all-False mask; a masked forward returns G*K tokens.

Timed, per keep, each run ``transmodal.training.latency.measure_ms`` once (CUDA synchronised): the backbone
(pixels -> (B, G, K, D) tokens), the head (on that keep's cached tokens -> logits) and end to end (backbone,
then head, in one timed call). ``--warmup`` rounds, then ``--repeats`` rounds; in each round every keep is
run once, in the listed order in odd rounds and reversed in even ones, so a drift of the machine's speed does
not favour one keep. Reported per clip (ms per batch / batch): the median over the rounds, the speed-up
against keep 1.0 (ratio of the medians) and the min-max of the per-round ratios (each keep against keep 1.0
of the same round). FLOPs per clip (``transmodal.flops``, FlopCounterMode on the meta device: matrix
products at 2 FLOPs per multiply-add): the backbone's patch embedding on the whole clip plus its encoder on
G*K tokens; the head's from ``head_complexity``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from transmodal.features.keep import kept_patches, masked_positions, patch_centres
from transmodal.flops import videomae_complexity
from transmodal.model import TransModal
from transmodal.model.complexity import head_complexity
from transmodal.params import ModelConfig, SelectorConfig
from transmodal.training.latency import measure_ms

sys.path.insert(0, str(Path(__file__).parent))
from real_size import cpu_name  # noqa: E402  (the sibling benchmark; run as a script)

NUM_CLASSES = 6
NUM_JOINTS = 17
BOX = (0.25, 0.10, 0.75, 0.90)  # x0, y0, x1, y1 as fractions of the 224 px crop: the middle 50 % x 80 %
KINDS = ("backbone", "head", "end_to_end")
TARGET = 2.0  # end-to-end speed-up at keep 0.5 (the goal)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_REPEATS, CUDA_REPEATS = 5, 20


def resolve_device(device: str) -> torch.device:
    return torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )


def masked(batch: int, groups: int, config, keep_count: int) -> torch.Tensor:
    """``bool_masked_pos`` (batch, groups * P): True = dropped; in every group the K patches the pipeline
    keeps for the fixed box (:func:`transmodal.features.keep.kept_patches`, ``keep_by: box``, no margin)."""
    centres = patch_centres(config.image_size, config.patch_size)
    kept = kept_patches(np.array([[BOX] * groups]), centres, keep_count, margin=0.0)  # (1, G, K)
    mask = masked_positions(np.broadcast_to(kept, (batch, groups, keep_count)), len(centres))
    return torch.from_numpy(mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="must include 1.0")
    parser.add_argument("--batch", type=int, default=1, help="clips per forward (1; 4 also fits)")
    parser.add_argument("--repeats", type=int, help=f"timed rounds (CPU {CPU_REPEATS}, CUDA {CUDA_REPEATS})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=tuple(DTYPES), help="default fp16 on CUDA, fp32 on the CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import transformers
    from transformers import VideoMAEConfig, VideoMAEModel

    device = resolve_device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[precision]
    repeats = args.repeats or (CUDA_REPEATS if device.type == "cuda" else CPU_REPEATS)
    if args.threads:
        torch.set_num_threads(args.threads)
    keeps = list(dict.fromkeys(args.keep))
    if 1.0 not in keeps:
        parser.error("--keep must include 1.0 (the reference of the speed-ups)")

    config = VideoMAEConfig()
    groups = config.num_frames // config.tubelet_size
    side = config.image_size // config.patch_size
    patches = side * side
    counts = {keep: round(keep * patches) for keep in keeps}
    selector_cfg = SelectorConfig()
    for keep, k in counts.items():
        if not 1 <= k <= patches:
            parser.error(f"--keep {keep} gives K={k} patches per group; expected 1 to {patches}")
        if k < selector_cfg.top_k_tokens:
            parser.error(f"--keep {keep} gives K={k} < selector.top_k_tokens {selector_cfg.top_k_tokens}")

    torch.manual_seed(args.seed)
    backbone = VideoMAEModel(config).eval().to(device, dtype)
    heads, masks = {}, {}
    for keep, k in counts.items():
        torch.manual_seed(args.seed + 1)  # the same head weights for every K
        heads[keep] = (
            TransModal(
                ModelConfig(),
                selector_cfg,
                dim=config.hidden_size,
                num_classes=NUM_CLASSES,
                num_frames=config.num_frames,
                tubelet_size=config.tubelet_size,
                patches_per_group=k,
                num_joints=NUM_JOINTS,
            )
            .eval()
            .to(device, dtype)
        )
        mask = None if keep == 1.0 else masked(args.batch, groups, config, k)
        masks[keep] = None if mask is None else mask.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, config.num_frames, config.num_channels, config.image_size, config.image_size)
    pixels = torch.randn(*shape, generator=gen).to(device, dtype)
    pose = torch.rand(args.batch, config.num_frames, NUM_JOINTS, 2, generator=gen).to(device, dtype)
    setup_s = time.perf_counter() - started

    def encode(keep: float) -> torch.Tensor:
        """pixels -> (B, G, K, D) tokens, time-major (the kept tokens in ascending index order)."""
        hidden = backbone(pixel_values=pixels, bool_masked_pos=masks[keep]).last_hidden_state
        return hidden.reshape(args.batch, groups, counts[keep], config.hidden_size)

    # checks, before any timing
    mark = time.perf_counter()
    with torch.inference_mode():
        plain = backbone(pixel_values=pixels).last_hidden_state
        assert torch.equal(encode(1.0).flatten(1, 2), plain), "keep 1.0 differs from the plain forward"
        none_masked = torch.zeros(args.batch, groups * patches, dtype=torch.bool, device=device)
        unmasked = backbone(pixel_values=pixels, bool_masked_pos=none_masked).last_hidden_state
        assert torch.equal(unmasked, plain), "an all-False bool_masked_pos changes the output"
        tokens = {}
        for keep in keeps:
            if masks[keep] is None:
                hidden = plain  # keep 1.0, checked above
            else:
                hidden = backbone(pixel_values=pixels, bool_masked_pos=masks[keep]).last_hidden_state
            expected = (args.batch, groups * counts[keep], config.hidden_size)
            assert tuple(hidden.shape) == expected, f"keep {keep}: {tuple(hidden.shape)}, not {expected}"
            tokens[keep] = hidden.reshape(args.batch, groups, counts[keep], config.hidden_size)
            out = heads[keep](tokens[keep], pose)
            assert out.logits.shape == (args.batch, NUM_CLASSES) and torch.isfinite(out.logits).all()
    check_s = time.perf_counter() - mark
    print(f"setup {setup_s:.0f} s, checks {check_s:.0f} s (passed)", file=sys.stderr, flush=True)

    runs = {
        "backbone": lambda keep: encode(keep),
        "head": lambda keep: heads[keep](tokens[keep], pose).logits,
        "end_to_end": lambda keep: heads[keep](encode(keep), pose).logits,
    }
    times: dict[float, dict[str, list[float]]] = {keep: {kind: [] for kind in KINDS} for keep in keeps}
    mark = time.perf_counter()
    with torch.inference_mode():
        for round_ in range(args.warmup + repeats):
            order = keeps if round_ % 2 == 0 else keeps[::-1]
            for keep in order:
                for kind in KINDS:
                    ms = measure_ms(lambda kind=kind, keep=keep: runs[kind](keep), device, 0, 1)["median_ms"]
                    if round_ >= args.warmup:
                        times[keep][kind].append(ms / args.batch)
            if round_ < args.warmup:
                line = f"warm-up {round_ + 1} done ({time.perf_counter() - mark:.0f} s)"
            else:
                line = f"round {round_ - args.warmup + 1}/{repeats}: end to end " + ", ".join(
                    f"keep {keep:g} {times[keep]['end_to_end'][-1]:.0f} ms" for keep in keeps
                )
            print("  " + line, file=sys.stderr, flush=True)
    timing_s = time.perf_counter() - mark

    head_size = {"dim": config.hidden_size, "num_classes": NUM_CLASSES, "num_frames": config.num_frames}
    head_size |= {"tubelet_size": config.tubelet_size, "num_joints": NUM_JOINTS}
    full_flops = videomae_complexity(config)["flops"]
    rows = []
    for keep in keeps:
        k = counts[keep]
        flops = videomae_complexity(config, None if keep == 1.0 else k)["flops"]
        if keep == 1.0:
            assert flops == full_flops, (flops, full_flops)
        head_flops = head_complexity(ModelConfig(), selector_cfg, **head_size, patches_per_group=k)
        row = {
            "keep": keep,
            "patches_per_group": k,
            "tokens": groups * k,
            "backbone_gflops": flops / 1e9,
            "head_gflops": head_flops["flops"]["total"] / 1e9,
        }
        for kind in KINDS:
            ref, mine = times[1.0][kind], times[keep][kind]
            row[f"{kind}_ms"] = statistics.median(mine)
            row[f"{kind}_ms_range"] = [min(mine), max(mine)]
            row[f"{kind}_ms_rounds"] = mine
            row[f"{kind}_speedup"] = statistics.median(ref) / statistics.median(mine)
            row[f"{kind}_speedup_rounds"] = [r / m for r, m in zip(ref, mine, strict=True)]
        rows.append(row)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": f"{device.type}: {device_name}",
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": repeats,
        "box": BOX,
        "grid": [groups, patches],
        "kept_patches": {
            str(keep): np.flatnonzero(~masked(1, 1, config, k)[0].numpy()).tolist()
            for keep, k in counts.items()
        },
        "checks": "passed",
        "rows": rows,
        "wall_seconds": {"setup": setup_s, "checks": check_s, "timing": timing_s},
    }
    report["wall_seconds"]["total"] = time.perf_counter() - started
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_report(report: dict) -> None:
    print()
    print(
        f"{report['date']}  torch {report['torch']}, transformers {report['transformers']}, "
        f"{report['device']}, {report['precision']}, {report['torch_threads']} torch threads of "
        f"{report['cores']} cores; batch {report['batch']}, warm-up {report['warmup']} + "
        f"{report['repeats']} rounds"
    )
    print()
    header = ["keep", "K", "tokens", "backbone GFLOP", "head GFLOP", "backbone ms", "head ms"]
    header += ["end-to-end ms", "backbone speed-up", "head speed-up", "end-to-end speed-up"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in report["rows"]:
        cells = [f"{row['keep']:g}", str(row["patches_per_group"]), str(row["tokens"])]
        cells += [f"{row['backbone_gflops']:.1f}", f"{row['head_gflops']:.2f}"]
        cells += [f"{row[f'{kind}_ms']:.0f}" for kind in KINDS]
        for kind in KINDS:
            ratios = row[f"{kind}_speedup_rounds"]
            cells.append(f"{row[f'{kind}_speedup']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "ms per clip: median of the rounds; speed-up: median at keep 1.0 / median at this keep "
        "(min-max of the per-round ratios); GFLOP per clip, matrix products only"
    )
    half = next((row for row in report["rows"] if row["keep"] == 0.5), None)
    if half is not None:
        met = "met" if half["end_to_end_speedup"] >= TARGET else "NOT met"
        print(f"goal: end-to-end >= {TARGET:g}x at keep 0.5: {half['end_to_end_speedup']:.2f}x, {met}")
    print("wall: " + ", ".join(f"{name} {s:.0f} s" for name, s in report["wall_seconds"].items()))


if __name__ == "__main__":
    sys.exit(main())
