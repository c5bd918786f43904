"""The ablation table (paper Table 5, the ``ablation`` stage) from the ``ablate@<variant>`` results:
accuracy with its spread over seeds and an interval, the difference to ``full``, FLOPs and latency.

Statistics (docs/decisions.md, "Ablation table: seeds, intervals, FLOPs and latency"). The unit is the paper's
(:data:`~transmodal.training.evaluate.PAPER_UNIT`, the listed sequence). Every seed of a variant classifies
every test unit right or wrong; accuracy is the mean over seeds and units, its spread the seeds' standard
deviation. Two things move it: training (the seeds, a handful) and the test set (whole test videos,
``scipy.stats.bootstrap``'s standard error, ``ablation.bootstrap_resamples``). The interval is the mean ± t x
the combined standard error, t with Welch-Satterthwaite's degrees of freedom over the seeds
(``ablation.confidence``). A difference to ``full`` pairs the rows seed by seed (seed s of every variant
starts from the same draw: the shared modules' initial weights, the batch order, dropout), so its seed term
is that of the per-seed differences, and its test set's term that of the per-unit differences (the same
videos); it is printed only when its interval excludes 0, and "no difference" otherwise. Intervals are per comparison, not corrected for the number of
rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from transmodal.features.cache import FeatureStore
from transmodal.features.keep import ABLATION_FEATURES
from transmodal.params import AblationConfig, BackboneConfig, kept_count, section
from transmodal.training.ablation import METRICS_FILE, seed_dir, variant_store
from transmodal.training.evaluate import PAPER_UNIT
from transmodal.training.latency import measure_ms
from transmodal.training.train import load_checkpoint, model_size, trained_threads
from transmodal.vision.checkpoints import load_model, pick_device, resolve_checkpoint

LATENCY_BATCH = 4  # the paper reports ms per batch of 4


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


def _correct(metrics: dict, unit_ids: list[str], variant: str) -> np.ndarray:
    """(seeds, units) 1.0 where that seed of the variant classifies that test unit right (units in
    ``unit_ids``, seeds in ``ablation.seeds`` order)."""
    rows = []
    for run in metrics["runs"]:
        if run["unit_ids"] != unit_ids:
            raise ValueError(
                f"ablation variant {variant!r} was evaluated on other test {PAPER_UNIT}s than 'full' "
                "(its results are stale); run its stage"
            )
        rows.append(np.asarray(run["actual"]) == np.asarray(run["predicted"]))
    return np.asarray(rows, dtype=np.float64)


def video_variance(values: np.ndarray, videos: list[str], cfg: AblationConfig) -> float:
    """Bootstrap variance of the mean of the per-unit ``values`` (units,) when the test set is drawn again:
    whole VIDEOS resampled (the sequences of one video share a subject and a scene, so they are not
    independent draws), each mean pooled over the drawn units; seeded, so the same table every run."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if np.all(values == values[0]):  # no spread to resample (e.g. identical predictions)
        return 0.0
    _, video_index = np.unique(np.asarray(videos, dtype=object), return_inverse=True)
    if video_index.max() == 0:  # one video: nothing to resample
        return 0.0
    sums = np.bincount(video_index, weights=values)
    counts = np.bincount(video_index).astype(np.float64)
    result = bootstrap(
        (sums, counts),
        _pooled_mean,
        paired=True,
        n_resamples=cfg.bootstrap_resamples,
        batch=1000,  # resamples held at once: 1000 x the test videos, not all of them
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    return float(result.standard_error) ** 2


def _pooled_mean(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def t_interval(
    centre: float, seed_terms: list[tuple[float, int]], video_var: float, confidence: float
) -> tuple[float, float]:
    """``centre`` ± t x standard error, the error's square the sum of the seed terms (each a variance of a
    mean over seeds and its degrees of freedom, seeds - 1) and ``video_var``; the degrees of freedom of t by
    Welch-Satterthwaite, the video term counted as known (many videos; infinite degrees of freedom: the
    normal quantile when no seed term has spread)."""
    from scipy.stats import t

    total = sum(var for var, _ in seed_terms) + video_var
    if total <= 0:
        return centre, centre
    spread = sum(var * var / df for var, df in seed_terms if var > 0 and df > 0)
    dof = total * total / spread if spread > 0 else np.inf
    half = float(t.ppf(0.5 + confidence / 2, dof)) * float(np.sqrt(total))
    return centre - half, centre + half


def _seed_term(correct: np.ndarray) -> tuple[float, int]:
    """(variance of the mean accuracy over seeds, seeds - 1); (0, 0) with one seed (no spread to measure)."""
    per_seed = correct.mean(axis=1)
    if len(per_seed) < 2:
        return 0.0, 0
    return float(per_seed.var(ddof=1)) / len(per_seed), len(per_seed) - 1


def accuracy_interval(correct: np.ndarray, videos: list[str], cfg: AblationConfig) -> tuple[float, float]:
    """Interval of a row's accuracy from its (seeds, units) ``correct``: what training (the spread of the
    seeds' accuracies) and what the test set (:func:`video_variance` of the units' seed-averaged scores) can
    move it, with t over the seeds' degrees of freedom; clipped to [0, 1]."""
    low, high = t_interval(
        float(correct.mean()),
        [_seed_term(correct)],
        video_variance(correct.mean(axis=0), videos, cfg),
        cfg.confidence,
    )
    return max(low, 0.0), min(high, 1.0)


def difference_interval(
    correct: np.ndarray, full: np.ndarray, videos: list[str], cfg: AblationConfig
) -> tuple[float, float]:
    """Interval of a row's accuracy minus ``full``'s, both (seeds, units) in ``ablation.seeds`` order. Seed s
    of every variant trains from the same draw (``train.seed`` = s: the initial weights of the modules the
    rows share, the batch order, dropout), so two rows' seed-s runs move together and the seed term is that
    of the per-seed differences (paired by seed, seeds - 1 degrees of freedom); both are scored on the same
    test videos, so the test set's term is that of the per-unit differences (paired by unit)."""
    if correct.shape != full.shape:
        raise ValueError(
            f"a variant's results {correct.shape} and full's {full.shape} are not the same seeds and units"
        )
    return t_interval(
        float(correct.mean() - full.mean()),
        [_seed_term(correct - full)],
        video_variance(correct.mean(axis=0) - full.mean(axis=0), videos, cfg),
        cfg.confidence,
    )


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
    full_correct = _correct(results["full"], unit_ids, "full")

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
        correct = _correct(metrics, unit_ids, variant)
        low, high = accuracy_interval(correct, videos, cfg)
        row = {key: value for key, value in metrics.items() if key != "runs"}
        row["seed_accuracies"] = [run["accuracy"][PAPER_UNIT] for run in metrics["runs"]]
        row["test_units"] = len(unit_ids)
        row["interval"] = [low, high]
        if variant != "full":
            d_low, d_high = difference_interval(correct, full_correct, videos, cfg)
            row["delta_vs_full"] = float(correct.mean() - full_correct.mean())
            row["delta_interval"] = [d_low, d_high]
            row["delta_significant"] = bool(d_low > 0 or d_high < 0)
        model, config = load_checkpoint(seed_dir(ablation_dir / variant, cfg.seeds[0]) / "model", device)
        tokens, pose = inputs[model.model_cfg.pose_scores]

        @torch.inference_mode()
        def forward(model=model, tokens=tokens, pose=pose):
            return model(tokens, pose).logits

        # on the thread count the head runs on in evaluate and predict (train.threads), the backbone's on the
        # process's, as predict runs them
        head_threads = config["train"].get("threads")
        with trained_threads(head_threads):
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
                "device": _device_name(device, head_threads),
            }
        )
        table[variant] = row
    return table


def _device_name(device: torch.device, head_threads: int | None = None) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    if head_threads and head_threads != threads:
        return f"cpu (backbone {threads} threads, head {head_threads})"
    return f"cpu ({threads} threads)"
