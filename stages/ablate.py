"""Stage ablate@<variant>: train and evaluate one ablation variant -> data/ablation/<variant>/.

It trains on the cache of ``ablate_features@<variant>``: the variant's own (a variant that varies
``backbone.keep*``) or the features stage's."""

import sys
from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.features.keep import ABLATION_FEATURES
from transmodal.io import discard_parts, stage_parts
from transmodal.stage import run_stage
from transmodal.training.ablation import run_variant, variant_store


def main(params: dict) -> None:
    variant = sys.argv[1]
    shared = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    store = variant_store(params, variant, ABLATION_FEATURES / variant, shared)
    parts = stage_parts("ablate") / variant  # each seed's training state after its last epoch
    run_variant(params, variant, store, Path("data/ablation") / variant, resume_dir=parts)
    discard_parts(parts)  # the output is complete


if __name__ == "__main__":
    run_stage(f"ablate@{sys.argv[1]}", main)
