"""Stage ablate_features@<variant>: the feature cache an ablation variant trains on -> data/ablation_features/<v>/.

A variant that varies ``backbone.keep*`` gets its own cache there (the features stage's code, on the same
frames, tracks and keypoints); any other variant trains on ``data/features``, which ``shared.json`` says.
A stage of its own, so an experiment on the head (``dvc exp run -S selector.top_k_frames=4``) re-runs the
ablate stages' training without encoding the dataset again."""

import sys

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.features.keep import ABLATION_FEATURES, ABLATION_PARTIAL, SHARED_FILE, own_features
from transmodal.features.store import build_features
from transmodal.io import discard_parts, write_json
from transmodal.params import section, variant_params
from transmodal.stage import run_stage


def main(params: dict) -> None:
    variant = sys.argv[1]
    out_dir = ABLATION_FEATURES / variant
    own = own_features(params, variant, out_dir)
    if own is None:
        why = "the variant changes no backbone.keep* key: it trains on the features stage's cache"
        write_json({"variant": variant, "features": "data/features", "why": why}, out_dir / SHARED_FILE)
    else:
        encode(params, variant, own)
    discard_parts(ABLATION_PARTIAL / variant)  # complete (or shared): the shards of an earlier own cache go


def encode(params: dict, variant: str, own: tuple) -> None:
    build_features(  # its counts are the features stage's (metrics/features.json): the same clips
        pd.read_parquet("data/index.parquet"),
        FrameStore("data/frames"),
        pd.read_parquet("data/tracks.parquet"),
        pd.read_parquet("data/keypoints.parquet"),
        section(params, "clips"),
        section(variant_params(params, variant), "backbone"),
        *own,
        partial_dir=ABLATION_PARTIAL / variant,  # an interrupted run resumes: not inside out_dir
    )


if __name__ == "__main__":
    run_stage(f"ablate_features@{sys.argv[1]}", main)
