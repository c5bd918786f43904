"""Stage frames: decode every indexed video, one frame per time sample -> data/frames/ (Parquet shards)."""

from pathlib import Path

import pandas as pd

from transmodal.data.frames import extract_frames
from transmodal.io import write_json
from transmodal.params import section
from transmodal.stage import run_stage


def main(params: dict) -> None:
    data = section(params, "data")
    frames = section(params, "frames")
    clips = section(params, "clips")
    root = data.root_path()
    index = pd.read_parquet("data/index.parquet")
    summary = extract_frames(
        index,
        root,
        Path("data/frames"),
        stride=frames.stride,
        clip_length=clips.length,
        videos_per_shard=frames.videos_per_shard,
        reference_fps=frames.reference_fps,
        store=frames.store,
        by_time=frames.by_time,
        max_side=frames.max_side,
    )
    write_json(summary, "metrics/frames.json")


if __name__ == "__main__":
    run_stage("frames", main)
