"""Stage ablate@<variant>: train and evaluate one ablation variant -> data/ablation/<variant>/."""

import sys
from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.stage import run_stage
from transmodal.training.ablation import run_variant


def main(params: dict) -> None:
    variant = sys.argv[1]
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    run_variant(params, variant, store, Path("data/ablation") / variant)


if __name__ == "__main__":
    run_stage(f"ablate@{sys.argv[1]}", main)
