"""The paper's Table 5 as DVC stages: each variant trained over ``ablation.seeds`` and evaluated (the
``ablate@<variant>`` stages); the table itself, with intervals, FLOPs and latency, is
:mod:`transmodal.training.table` (the ``ablation`` stage), so a change to the table trains nothing again."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from transmodal.features.cache import FeatureStore
from transmodal.features.keep import own_features
from transmodal.features.store import available_cores
from transmodal.io import write_json
from transmodal.params import AblationConfig, section, variant_params
from transmodal.training.evaluate import PAPER_UNIT, UNITS, evaluate_model
from transmodal.training.train import pipeline_record, train_model
from transmodal.vision.checkpoints import pick_device

METRICS_FILE = "metrics.json"


def variant_store(params: dict, variant: str, out_dir: Path, features: FeatureStore) -> FeatureStore:
    """The cache a variant trained on: its own (:func:`own_features`) or ``features``, the stage's."""
    own = own_features(params, variant, out_dir)
    return features if own is None else FeatureStore(*own)


def seed_dir(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"seed-{seed}"


def _run_seed(
    variant: str,
    varied: dict,
    seed: int,
    store: FeatureStore,
    out_dir: Path,
    progress: bool,
    resume_dir: Path | None,
) -> dict:
    """Train and evaluate one seed of a variant; its model goes to ``out_dir/seed-<seed>/model``, its
    training state after each epoch to ``resume_dir/seed-<seed>`` (none when None)."""
    model_dir = seed_dir(out_dir, seed) / "model"
    train_cfg = dataclasses.replace(section(varied, "train"), seed=seed)
    train_metrics, _ = train_model(
        store,
        section(varied, "model"),
        section(varied, "selector"),
        train_cfg,
        model_dir,
        progress=progress,
        pipeline=pipeline_record(varied),  # so `transmodal predict --model` runs a variant's model too
        resume_dir=None if resume_dir is None else seed_dir(resume_dir, seed),
        name=f"ablate@{variant} seed {seed}",
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


def _seed_worker(
    variant: str,
    varied: dict,
    seed: int,
    features_dir: Path,
    clips_path: Path,
    out_dir: Path,
    resume_dir: Path | None,
):
    """:func:`_run_seed` in a worker process, on its own store handle (training sets ``train.threads``; a
    recomputed cache's backbone keeps to them too, as the workers share the cores)."""
    store = FeatureStore(features_dir, clips_path, backbone_threads=section(varied, "train").threads)
    return _run_seed(variant, varied, seed, store, out_dir, False, resume_dir)


def worker_count(cfg: AblationConfig, device: torch.device, threads: int = 1) -> int:
    """Seeds trained at once: ``ablation.workers``, or with ``auto`` one per seed up to the CPU cores over
    ``train.threads`` (each worker's threads) on the CPU and 1 on an accelerator (its kernels, not Python,
    are then the limit). The count changes only the time: each seed trains on ``train.threads`` threads."""
    if cfg.workers != "auto":
        return min(cfg.workers, len(cfg.seeds))
    if device.type != "cpu":
        return 1
    return max(1, min(len(cfg.seeds), available_cores() // threads))


def run_variant(
    params: dict,
    variant: str,
    store: FeatureStore,
    out_dir: Path,
    progress: bool = True,
    resume_dir: Path | None = None,
) -> dict:
    """Train and evaluate one variant for every seed into ``out_dir`` (seed-<s>/model/, metrics.json); with
    ``resume_dir`` each seed's training goes on from its last epoch after an interruption."""
    varied = variant_params(params, variant)
    cfg = section(params, "ablation")
    train_cfg = section(varied, "train")
    workers = worker_count(cfg, pick_device(train_cfg.device), train_cfg.threads)
    if workers == 1:
        runs = [_run_seed(variant, varied, seed, store, out_dir, progress, resume_dir) for seed in cfg.seeds]
    else:
        by_seed = {}
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(
                    _seed_worker,
                    variant,
                    varied,
                    seed,
                    store.directory,
                    store.clips_path,
                    out_dir,
                    resume_dir,
                ): seed
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
        "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else None,  # one seed: no spread
        **{
            f"{unit}_accuracy_mean": float(np.mean([run["accuracy"][unit] for run in runs])) for unit in UNITS
        },
        "parameters": runs[0]["parameters"],
        "runs": runs,
    }
    write_json(metrics, Path(out_dir) / METRICS_FILE)
    return metrics
