"""The ablation table (paper Table 5, the ``ablation`` stage) from the ``ablate@<variant>`` results:
accuracy with its spread over seeds and a bootstrap interval, the difference to ``full``, FLOPs and latency.

Statistics (docs/decisions.md, "Ablation table: seeds, intervals, FLOPs and latency"). The unit is the paper's
(:data:`~transmodal.training.evaluate.PAPER_UNIT`, the listed sequence). Every seed of a variant classifies
every test unit right or wrong; accuracy is the mean over seeds and units, its spread the seeds' standard
deviation. Its interval is a two-level percentile bootstrap (``ablation.bootstrap_resamples``,
``ablation.confidence``) that draws the seeds and whole test videos with replacement, so it holds what
training and what the choice of test videos can move. A difference to ``full`` is the same bootstrap of the
per-seed differences (seed s of the variant against seed s of ``full``, on the same drawn videos); it is
printed only when its interval excludes 0, and "no difference" otherwise. Intervals are per comparison, not
corrected for the number of rows.
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
from transmodal.training.train import load_checkpoint, model_size
from transmodal.vision.checkpoints import load_model, pick_device, resolve_checkpoint

LATENCY_BATCH = 4  # the paper reports ms per batch of 4
BOOTSTRAP_CHUNK = 1000  # resamples drawn at once (memory: chunk x test videos)


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


def bootstrap_interval(values: np.ndarray, videos: list[str], cfg: AblationConfig) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeds, units), or (units,) for one seed.

    Each resample draws the seeds with replacement and whole test VIDEOS with replacement (the sequences
    of one video share a subject and a scene, so they are not independent draws), and takes the mean over
    the drawn seeds of each one's mean over the drawn units: the interval covers what training (the seed)
    and what the choice of test videos can move the number. A difference of two rows passes their
    per-seed differences, so both rows get the same draws. Seeded: the same table every run. Two levels
    of resampling are more than ``scipy.stats.bootstrap`` does, hence the few lines here."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if np.all(values == values.flat[0]):  # no spread to resample (e.g. identical predictions)
        return float(values.flat[0]), float(values.flat[0])
    _, video_index = np.unique(np.asarray(videos, dtype=object), return_inverse=True)
    n_videos, n_seeds = int(video_index.max()) + 1, len(values)
    sums = np.stack([np.bincount(video_index, weights=row, minlength=n_videos) for row in values])
    counts = np.bincount(video_index, minlength=n_videos).astype(np.float64)
    rng = np.random.default_rng(0)
    means = []
    for start in range(0, cfg.bootstrap_resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, cfg.bootstrap_resamples - start)
        video_draws = rng.multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=size)  # (b, videos)
        seed_draws = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)  # (b, seeds)
        per_seed = (video_draws @ sums.T) / (video_draws @ counts)[:, None]  # (b, seeds)
        means.append((per_seed * seed_draws).sum(axis=1) / n_seeds)
    tail = (1 - cfg.confidence) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


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
        low, high = bootstrap_interval(correct, videos, cfg)
        row = {key: value for key, value in metrics.items() if key != "runs"}
        row["seed_accuracies"] = [run["accuracy"][PAPER_UNIT] for run in metrics["runs"]]
        row["test_units"] = len(unit_ids)
        row["interval"] = [low, high]
        if variant != "full":
            difference = correct - full_correct  # per seed: seed s of the variant against seed s of full
            d_low, d_high = bootstrap_interval(difference, videos, cfg)
            row["delta_vs_full"] = float(difference.mean())
            row["seed_deltas_vs_full"] = difference.mean(axis=1).tolist()
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
