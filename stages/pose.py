"""Stage pose: ViTPose++ COCO-17 keypoints on each video's primary track -> data/keypoints.parquet."""

import pandas as pd

from transmodal.data.annotations import load_annotations
from transmodal.data.frames import FrameStore
from transmodal.io import write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.vision.pose import run_pose


def main(params: dict) -> None:
    data = section(params, "data")
    cfg = section(params, "pose")
    annotations = load_annotations(data.root_path(), cfg.source, "pose.source")
    tracks = pd.read_parquet("data/tracks.parquet")
    keypoints, metrics = run_pose(FrameStore("data/frames"), tracks, cfg, annotations)
    write_parquet(keypoints, "data/keypoints.parquet")
    write_json({**metrics, "source": cfg.source}, "metrics/pose.json")


if __name__ == "__main__":
    run_stage("pose", main)
