"""Stage features: person-centric clips through the frozen VideoMAE -> data/features/ + data/clips.parquet.

With ``compute.nproc`` x ``compute.nnodes`` > 1 it re-runs itself under torchrun: each process encodes every
world-size-th feature shard and rank 0 assembles the output, byte for byte the single process's."""

from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.distributed import launch, process_group
from transmodal.features.store import build_features
from transmodal.io import write_json
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.vision.checkpoints import pick_device


def main(params: dict) -> None:
    backbone = section(params, "backbone")
    inputs = ("data/index.parquet", "data/frames", "data/tracks.parquet", "data/keypoints.parquet")
    if launch(section(params, "compute"), "features", backbone.device, "backbone.device", inputs):
        return  # the workers encoded the clips and rank 0 wrote the outputs
    clips = section(params, "clips")
    index = pd.read_parquet("data/index.parquet")
    tracks = pd.read_parquet("data/tracks.parquet")
    keypoints = pd.read_parquet("data/keypoints.parquet")
    with process_group(pick_device(backbone.device).type) as world:
        summary = build_features(
            index,
            FrameStore("data/frames"),
            tracks,
            keypoints,
            clips,
            backbone,
            Path("data/features"),
            Path("data/clips.parquet"),
        )
    if world.is_main:
        write_json(summary | {"processes": world.size}, "metrics/features.json")


if __name__ == "__main__":
    run_stage("features", main)
