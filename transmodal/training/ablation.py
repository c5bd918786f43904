"""The paper's Table 5 as DVC stages: each variant trained over ``ablation.seeds`` and evaluated, then one
table with intervals, FLOPs and latency.

Statistics (docs/decisions.md, "Ablation table: seeds, intervals, FLOPs and latency"). The unit is the paper's
(:data:`~transmodal.training.evaluate.PAPER_UNIT`, the listed sequence). For each variant and test unit, the
share of seeds that classify it correctly is that unit's score; accuracy is the mean score. Its interval is a
percentile bootstrap that resamples whole test videos (``ablation.bootstrap_resamples``,
``ablation.confidence``); the seeds' spread is their standard deviation. A difference to ``full`` is a
PAIRED bootstrap of the per-unit score differences (same resampled videos); it is printed only when its
interval excludes 0, and "no difference" otherwise. Intervals are per comparison, not corrected for the
number of rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from transmodal.features.cache import FeatureStore
from transmodal.features.keep import ABLATION_FEATURES, own_features
from transmodal.io import write_json
from transmodal.params import AblationConfig, BackboneConfig, kept_count, section, variant_params
from transmodal.training.evaluate import PAPER_UNIT, UNITS, evaluate_model
from transmodal.training.latency import measure_ms
from transmodal.training.train import load_checkpoint, model_size, train_model
from transmodal.vision.checkpoints import load_model, pick_device, resolve_checkpoint

LATENCY_BATCH = 4  # the paper reports ms per batch of 4
METRICS_FILE = "metrics.json"


def variant_store(params: dict, variant: str, out_dir: Path, features: FeatureStore) -> FeatureStore:
    """The cache a variant trained on: its own (:func:`own_features`) or ``features``, the stage's."""
    own = own_features(params, variant, out_dir)
    return features if own is None else FeatureStore(*own)


def seed_dir(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"seed-{seed}"


def _run_seed(varied: dict, seed: int, store: FeatureStore, out_dir: Path, progress: bool) -> dict:
    """Train and evaluate one seed of a variant; its model goes to ``out_dir/seed-<seed>/model``."""
    model_dir = seed_dir(out_dir, seed) / "model"
    train_cfg = dataclasses.replace(section(varied, "train"), seed=seed)
    train_metrics, _ = train_model(
        store, section(varied, "model"), section(varied, "selector"), train_cfg, model_dir, progress=progress
    )
    eval_cfg = section(varied, "eval")
    test, predictions = evaluate_model(model_dir, store, "test", eval_cfg.batch_size, eval_cfg.device)
    units = predictions[PAPER_UNIT]
    return {
        "seed": seed,
        "accuracy": {unit: test[f"{unit}_accuracy"] for unit in UNITS},
        "test_counts": {unit: test[f"{unit}s"] for unit in UNITS},
        "val_accuracy": train_metrics["val_acc"],
        "best_epoch": train_metrics["best_epoch"],
        "parameters": train_metrics["parameters"]["total"],
        "unit_ids": units["unit_id"].tolist(),
        "video_ids": units["video_id"].tolist(),
        "actual": units["actual"].tolist(),
        "predicted": units["predicted"].tolist(),
    }


def _seed_worker(varied: dict, seed: int, features_dir: Path, clips_path: Path, out_dir: Path):
    """:func:`_run_seed` in a worker process, on its own store handle (training sets ``train.threads``)."""
    return _run_seed(varied, seed, FeatureStore(features_dir, clips_path), out_dir, progress=False)


def worker_count(cfg: AblationConfig, device: torch.device, threads: int = 1) -> int:
    """Seeds trained at once: ``ablation.workers``, or with ``auto`` one per seed up to the CPU cores over
    ``train.threads`` (each worker's threads) on the CPU and 1 on an accelerator (its kernels, not Python,
    are then the limit). The count changes only the time: each seed trains on ``train.threads`` threads."""
    if cfg.workers != "auto":
        return min(cfg.workers, len(cfg.seeds))
    if device.type != "cpu":
        return 1
    return max(1, min(len(cfg.seeds), available_cores() // threads))


def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_variant(
    params: dict, variant: str, store: FeatureStore, out_dir: Path, progress: bool = True
) -> dict:
    """Train and evaluate one variant for every seed into ``out_dir`` (seed-<s>/model/, metrics.json)."""
    varied = variant_params(params, variant)
    cfg = section(params, "ablation")
    train_cfg = section(varied, "train")
    workers = worker_count(cfg, pick_device(train_cfg.device), train_cfg.threads)
    if workers == 1:
        runs = [_run_seed(varied, seed, store, out_dir, progress) for seed in cfg.seeds]
    else:
        by_seed = {}
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(_seed_worker, varied, seed, store.directory, store.clips_path, out_dir): seed
                for seed in cfg.seeds
            }
            done = tqdm(
                as_completed(futures), total=len(futures), desc=variant, unit="seed", disable=not progress
            )
            for future in done:
                by_seed[futures[future]] = future.result()
        runs = [by_seed[seed] for seed in cfg.seeds]
    accuracy = np.array([run["accuracy"][PAPER_UNIT] for run in runs])
    metrics = {
        "variant": variant,
        "overrides": cfg.variants[variant] or {},
        "unit": PAPER_UNIT,
        "seeds": list(cfg.seeds),
        "accuracy_mean": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
        **{
            f"{unit}_accuracy_mean": float(np.mean([run["accuracy"][unit] for run in runs])) for unit in UNITS
        },
        "parameters": runs[0]["parameters"],
        "runs": runs,
    }
    write_json(metrics, Path(out_dir) / METRICS_FILE)
    return metrics


def _latency_batch(store: FeatureStore, pose_scores: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same real input batch for every variant: the first test clips (repeated up to 4)."""
    from transmodal.training.data import load_split

    data = load_split(store, "test", pose_scores)
    positions = torch.arange(LATENCY_BATCH) % len(data)
    tokens, pose, _ = data.batch(positions.numpy())
    return tokens, pose


def backbone_latency(
    params: BackboneConfig, backbone: dict, device: torch.device, warmup: int, repeats: int
) -> dict:
    """VideoMAE forward on a batch of 4 clips at its input size (content does not change its cost), in the
    dtype the cache was made with (``model_dtype`` of backbone.json: fp16 on CUDA with the paper presets);
    with a cache that dropped tokens (``backbone.keep`` < 1), on K patches of each group (which K does not
    change the cost either: the first K)."""
    from transformers import VideoMAEModel

    from transmodal.features.keep import masked_positions

    dtype = getattr(torch, backbone.get("model_dtype", "float32"))
    folder = resolve_checkpoint(params.checkpoint, "backbone.checkpoint", params.revision)
    model = load_model(VideoMAEModel, folder, "backbone.checkpoint", device, dtype)
    size = backbone["image_size"]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(LATENCY_BATCH, backbone["num_frames"], 3, size, size, generator=generator)
    pixels = pixels.to(device, dtype)
    masked = None
    if "full_patches_per_group" in backbone:
        groups, count = backbone["grid"]
        kept = np.broadcast_to(np.arange(count), (LATENCY_BATCH, groups, count))
        masked = torch.from_numpy(masked_positions(kept, backbone["full_patches_per_group"])).to(device)

    @torch.inference_mode()
    def forward():
        return model(pixel_values=pixels, bool_masked_pos=masked).last_hidden_state

    return measure_ms(forward, device, warmup, repeats)


def _scores(metrics: dict, unit_ids: list[str], variant: str) -> np.ndarray:
    """Per test unit, the share of the variant's seeds that classify it correctly (units in ``unit_ids``)."""
    scores = []
    for run in metrics["runs"]:
        if run["unit_ids"] != unit_ids:
            raise ValueError(
                f"ablation variant {variant!r} was evaluated on other test {PAPER_UNIT}s than 'full' "
                "(its results are stale); run its stage"
            )
        scores.append(np.asarray(run["actual"]) == np.asarray(run["predicted"]))
    return np.mean(scores, axis=0)


def _pooled_mean(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def bootstrap_interval(values: np.ndarray, videos: list[str], cfg: AblationConfig) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the per-unit ``values``, resampling whole VIDEOS (the
    sequences of one video share a subject and a scene, so they are not independent draws); seeded, so the
    same table every run."""
    from scipy.stats import bootstrap

    if np.all(values == values[0]):  # no spread to resample (e.g. identical predictions)
        return float(values[0]), float(values[0])
    _, video_index = np.unique(np.asarray(videos, dtype=object), return_inverse=True)
    sums = np.bincount(video_index, weights=values)
    counts = np.bincount(video_index).astype(np.float64)
    result = bootstrap(
        (sums, counts),
        _pooled_mean,
        paired=True,
        n_resamples=cfg.bootstrap_resamples,
        confidence_level=cfg.confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _paper_kept(record: dict) -> int | None:
    """Patches a group the paper's VideoMAE-B (196 a group) keeps at the cache's ``backbone.keep``; None
    when the cache holds every patch."""
    from transmodal.model.complexity import PAPER_SIZE

    if "full_patches_per_group" not in record:
        return None
    return kept_count(record["keep"], PAPER_SIZE["patches_per_group"])


def _complexity(model, store: FeatureStore) -> dict:
    from transmodal.model.complexity import PAPER_SIZE, head_complexity

    run = head_complexity(model.model_cfg, model.selector_cfg, **model_size(store))
    paper_kept = _paper_kept(store.backbone)  # a keep < 1 row: the head sees K of the 196 patches
    paper_size = PAPER_SIZE | ({} if paper_kept is None else {"patches_per_group": paper_kept})
    paper = head_complexity(model.model_cfg, model.selector_cfg, **paper_size)
    return {"head_flops": run["flops"]["total"], "head_flops_paper_size": paper["flops"]["total"]}


def aggregate(
    params: dict, store: FeatureStore, ablation_dir: Path, features_dir: Path = ABLATION_FEATURES
) -> dict[str, dict]:
    """Read the variants that params names (never a stale folder); intervals, FLOPs and latency per variant."""
    from transformers import VideoMAEConfig

    from transmodal.flops import videomae_complexity

    cfg = section(params, "ablation")
    results = {}
    for variant in cfg.variants:
        path = ablation_dir / variant / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"ablation variant {variant!r} has no results at {path}; run its stage")
        results[variant] = json.loads(path.read_text())
        if results[variant]["seeds"] != list(cfg.seeds):
            raise ValueError(
                f"ablation variant {variant!r} ran seeds {results[variant]['seeds']}, but ablation.seeds is "
                f"{list(cfg.seeds)}; run its stage"
            )
    unit_ids = results["full"]["runs"][0]["unit_ids"]
    videos = results["full"]["runs"][0]["video_ids"]
    full_scores = _scores(results["full"], unit_ids, "full")

    device = pick_device(cfg.device)
    backbone_params = section(params, "backbone")  # its checkpoint and revision
    backbones: dict[tuple, dict] = {}  # per grid: latency and FLOPs, each measured once
    table: dict[str, dict] = {}
    for variant, metrics in results.items():
        variant_cache = variant_store(params, variant, features_dir / variant, store)
        record = variant_cache.backbone
        grid = (tuple(record["grid"]), record.get("full_patches_per_group"))
        if grid not in backbones:
            paper_kept = _paper_kept(record)
            backbones[grid] = {
                "latency": backbone_latency(
                    backbone_params, record, device, cfg.latency_warmup, cfg.latency_repeats
                ),
                "flops": record["flops_per_clip"],
                "paper_size": videomae_complexity(VideoMAEConfig(), paper_kept)["flops"],
                "inputs": {
                    scores: tuple(t.to(device) for t in _latency_batch(variant_cache, scores))
                    for scores in (False, True)
                },
            }
        backbone = backbones[grid]["latency"]
        inputs = backbones[grid]["inputs"]
        backbone_flops = {"run": backbones[grid]["flops"], "paper_size": backbones[grid]["paper_size"]}
        scores = _scores(metrics, unit_ids, variant)
        low, high = bootstrap_interval(scores, videos, cfg)
        row = {key: value for key, value in metrics.items() if key != "runs"}
        row["seed_accuracies"] = [run["accuracy"][PAPER_UNIT] for run in metrics["runs"]]
        row["test_units"] = len(unit_ids)
        row["interval"] = [low, high]
        if variant != "full":
            difference = scores - full_scores
            d_low, d_high = bootstrap_interval(difference, videos, cfg)
            row["delta_vs_full"] = float(difference.mean())
            row["delta_interval"] = [d_low, d_high]
            row["delta_significant"] = bool(d_low > 0 or d_high < 0)
        model, _ = load_checkpoint(seed_dir(ablation_dir / variant, cfg.seeds[0]) / "model", device)
        tokens, pose = inputs[model.model_cfg.pose_scores]

        @torch.inference_mode()
        def forward(model=model, tokens=tokens, pose=pose):
            return model(tokens, pose).logits

        head = measure_ms(forward, device, cfg.latency_warmup, cfg.latency_repeats)
        row.update(_complexity(model, variant_cache))
        row["backbone_keep"] = record.get("keep", 1.0)
        row.update(
            {
                "backbone_flops": backbone_flops["run"],
                "backbone_flops_paper_size": backbone_flops["paper_size"],
                "head_latency_ms": head["median_ms"],
                "e2e_latency_ms": (backbone["median_ms"] + head["median_ms"]) / LATENCY_BATCH,
                "backbone_latency_ms": backbone["median_ms"],
                "latency_batch": LATENCY_BATCH,
                "latency_repeats": cfg.latency_repeats,
                "device": _device_name(device),
            }
        )
        table[variant] = row
    return table


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
