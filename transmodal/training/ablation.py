"""The paper's Table 5 as DVC stages: one trained/evaluated head per variant, then one latency table."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transmodal.features.cache import FeatureStore
from transmodal.io import write_json
from transmodal.params import apply_overrides, section
from transmodal.training.evaluate import evaluate_model
from transmodal.training.latency import measure_ms
from transmodal.training.train import load_checkpoint, train_model
from transmodal.vision.checkpoints import load_model, pick_device

LATENCY_BATCH = 4  # the paper reports ms per batch of 4


def variant_params(params: dict, variant: str) -> dict:
    """params.yaml with the named variant's overrides applied (validated, naming the key)."""
    cfg = section(params, "ablation")
    if variant not in cfg.variants:
        raise KeyError(f"ablation variant {variant!r} is not in params.yaml ablation.variants")
    return apply_overrides(params, cfg.variants[variant] or {})


def run_variant(
    params: dict, variant: str, store: FeatureStore, out_dir: Path, progress: bool = True
) -> dict:
    """Train and evaluate one variant into ``out_dir`` (model/ and metrics.json); returns its metrics."""
    varied = variant_params(params, variant)
    model_dir = out_dir / "model"
    train_metrics, _ = train_model(
        store,
        section(varied, "model"),
        section(varied, "selector"),
        section(varied, "train"),
        model_dir,
        progress=progress,
    )
    eval_cfg = section(varied, "eval")
    test, _ = evaluate_model(model_dir, store, "test", eval_cfg.batch_size, eval_cfg.device)
    metrics = {
        "variant": variant,
        "overrides": section(params, "ablation").variants[variant] or {},
        "accuracy": test["video_accuracy"],
        "clip_accuracy": test["clip_accuracy"],
        "val_accuracy": train_metrics["val_acc"],
        "best_epoch": train_metrics["best_epoch"],
        "parameters": train_metrics["parameters"]["total"],
        "test_videos": test["videos"],
    }
    write_json(metrics, out_dir / "metrics.json")
    return metrics


def _latency_batch(store: FeatureStore, pose_scores: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same real input batch for every variant: the first test clips (repeated up to 4)."""
    from transmodal.training.data import load_split

    data = load_split(store, "test", pose_scores)
    positions = torch.arange(LATENCY_BATCH) % len(data)
    tokens, pose, _ = data.batch(positions.numpy())
    return tokens, pose


def backbone_latency(
    checkpoint: str, backbone: dict, device: torch.device, warmup: int, repeats: int
) -> dict:
    """VideoMAE forward on a batch of 4 clips at its input size (content does not change its cost)."""
    from transformers import VideoMAEModel

    model = load_model(VideoMAEModel, checkpoint, "backbone.checkpoint", device, torch.float32)
    size = backbone["image_size"]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(LATENCY_BATCH, backbone["num_frames"], 3, size, size, generator=generator).to(device)

    @torch.inference_mode()
    def forward():
        return model(pixel_values=pixels).last_hidden_state

    return measure_ms(forward, device, warmup, repeats)


def aggregate(params: dict, store: FeatureStore, ablation_dir: Path) -> tuple[dict, str]:
    """Read the variants that params names (never a stale folder), time each head on one shared batch."""
    cfg = section(params, "ablation")
    device = pick_device(cfg.device)
    backbone = backbone_latency(
        section(params, "backbone").checkpoint,
        store.backbone,
        device,
        cfg.latency_warmup,
        cfg.latency_repeats,
    )
    inputs = {scores: tuple(t.to(device) for t in _latency_batch(store, scores)) for scores in (False, True)}
    table: dict[str, dict] = {}
    for variant in cfg.variants:
        folder = ablation_dir / variant
        metrics_path = folder / "metrics.json"
        if not metrics_path.is_file():
            raise FileNotFoundError(
                f"ablation variant {variant!r} has no results at {metrics_path}; run its stage"
            )
        metrics = json.loads(metrics_path.read_text())
        model, _ = load_checkpoint(folder / "model", device)
        tokens, pose = inputs[model.model_cfg.pose_scores]

        @torch.inference_mode()
        def forward(model=model, tokens=tokens, pose=pose):
            return model(tokens, pose).logits

        head = measure_ms(forward, device, cfg.latency_warmup, cfg.latency_repeats)
        table[variant] = {
            **metrics,
            "head_latency_ms": head["median_ms"],
            "e2e_latency_ms": (backbone["median_ms"] + head["median_ms"]) / LATENCY_BATCH,
            "backbone_latency_ms": backbone["median_ms"],
            "latency_batch": LATENCY_BATCH,
            "latency_repeats": cfg.latency_repeats,
            "device": _device_name(device),
        }
    full = table["full"]["accuracy"]
    for row in table.values():
        row["delta_vs_full"] = row["accuracy"] - full
    return table, _markdown(table, store.backbone)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _markdown(table: dict[str, dict], backbone: dict) -> str:
    first = next(iter(table.values()))
    lines = [
        "# Ablations (paper Table 5), as measured by this pipeline",
        "",
        f"Backbone: `{backbone.get('checkpoint')}` (grid {backbone['grid'][0]} x {backbone['grid'][1]} tokens, "
        f"D={backbone['hidden_size']}). Accuracy: video-level top-1 on the test split. Latency on "
        f"{first['device']}: median of {first['latency_repeats']} runs after warm-up, batch of "
        f"{first['latency_batch']}, the same input batch for every variant; end-to-end = (backbone + head) "
        "per clip.",
        "",
        "| variant | overrides | top-1 (%) | delta vs full (pts) | head latency (ms/batch) | e2e latency (ms/clip) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "-"
        delta = "-" if name == "full" else f"{100 * row['delta_vs_full']:+.1f}"
        lines.append(
            f"| {name} | {overrides} | {100 * row['accuracy']:.1f} | {delta} | "
            f"{row['head_latency_ms']:.2f} | {row['e2e_latency_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"
