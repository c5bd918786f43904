"""What ``backbone.store: recompute`` costs the head's training, against the cached tokens, side by side.

    python benchmarks/recompute.py [--epochs 2] [--rounds 3]

Needs the demo's outputs (``dvc repro`` first): ``data/features``, ``data/clips.parquet`` and
``data/frames``, and params.yaml's ``backbone`` and ``clips``. Writes a recomputed cache of the same clips
(``backbone.json`` and ``clips.parquet`` only) in a temporary folder, then trains the head from params.yaml
for ``--epochs`` epochs on each store, alternating the two in every round, and prints the seconds of each
and their ratio (the median over rounds, and its range). It also checks that both runs wrote the same
weights, byte for byte: the recomputed tokens are the cached ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.features.cache import FeatureStore
from transmodal.features.store import build_features
from transmodal.params import load_params, section
from transmodal.training.train import train_model


def recomputed_store(params: dict, out: Path) -> FeatureStore:
    """The demo's clips as a ``backbone.store: recompute`` cache under ``out``."""
    backbone = dataclasses.replace(section(params, "backbone"), store="recompute")
    build_features(
        pd.read_parquet("data/index.parquet"), FrameStore("data/frames"), pd.read_parquet("data/tracks.parquet"),
        pd.read_parquet("data/keypoints.parquet"), section(params, "clips"), backbone, out / "features",
        out / "clips.parquet", progress=False,
    )  # fmt: skip
    return FeatureStore(out / "features", out / "clips.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = load_params(Path("params.yaml"))
    train_cfg = dataclasses.replace(section(params, "train"), epochs=args.epochs)
    with tempfile.TemporaryDirectory(prefix="recompute-bench-") as tmp:
        tmp = Path(tmp)
        stores = {
            "tokens": FeatureStore(Path("data/features"), Path("data/clips.parquet")),
            "recompute": recomputed_store(params, tmp),
        }
        clips = int((stores["tokens"].clips["split"] != "test").sum())
        print(f"{args.epochs} epochs of the head on {clips} train + val clips, {args.rounds} rounds")
        seconds: dict[str, list[float]] = {name: [] for name in stores}
        weights: dict[str, bytes] = {}
        for round_ in range(args.rounds):
            for name, store in stores.items():
                out = tmp / f"{name}-{round_}"
                started = time.perf_counter()
                train_model(
                    store,
                    section(params, "model"),
                    section(params, "selector"),
                    train_cfg,
                    out,
                    progress=False,
                )
                seconds[name].append(time.perf_counter() - started)
                weights[name] = (out / "model.safetensors").read_bytes()
        for name, values in seconds.items():
            print(
                f"{name:>9}: median {statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"
            )
        ratios = [r / t for r, t in zip(seconds["recompute"], seconds["tokens"], strict=True)]
        print(
            f"recompute / tokens: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); "
            f"same weights: {weights['tokens'] == weights['recompute']}"
        )


if __name__ == "__main__":
    main()
