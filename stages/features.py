"""Stage features: person-centric clips through the frozen VideoMAE -> data/features/ + data/clips.parquet."""

from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.features.store import build_features
from transmodal.io import write_json
from transmodal.params import section
from transmodal.stage import run_stage


def main(params: dict) -> None:
    clips = section(params, "clips")
    backbone = section(params, "backbone")
    index = pd.read_parquet("data/index.parquet")
    tracks = pd.read_parquet("data/tracks.parquet")
    keypoints = pd.read_parquet("data/keypoints.parquet")
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
    write_json(summary, "metrics/features.json")


if __name__ == "__main__":
    run_stage("features", main)
