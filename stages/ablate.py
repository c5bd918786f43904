"""Stage ablate@<variant>: train and evaluate one ablation variant -> data/ablation/<variant>/.

A variant that varies ``backbone.keep*`` first builds its own feature cache there (the features stage's code,
on the same frames, tracks and keypoints)."""

import sys
from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.features.cache import FeatureStore
from transmodal.features.store import build_features
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.ablation import own_features, run_variant, variant_params


def main(params: dict) -> None:
    variant = sys.argv[1]
    out_dir = Path("data/ablation") / variant
    own = own_features(params, variant, out_dir)
    if own is None:
        store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    else:
        build_features(
            pd.read_parquet("data/index.parquet"),
            FrameStore("data/frames"),
            pd.read_parquet("data/tracks.parquet"),
            pd.read_parquet("data/keypoints.parquet"),
            section(params, "clips"),
            section(variant_params(params, variant), "backbone"),
            *own,
        )
        store = FeatureStore(*own)
    run_variant(params, variant, store, out_dir)


if __name__ == "__main__":
    run_stage(f"ablate@{sys.argv[1]}", main)
