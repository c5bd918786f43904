"""Stage pose: ViTPose++ COCO-17 keypoints on each video's primary track -> data/keypoints.parquet.

With ``compute.nproc`` x ``compute.nnodes`` > 1 it re-runs itself under torchrun: each process estimates the
pose in its units of videos and rank 0 merges them and writes the outputs."""

import pandas as pd

from transmodal.data.annotations import load_annotations
from transmodal.data.frames import FrameStore
from transmodal.distributed import launch, process_group
from transmodal.io import discard_parts, stage_parts, write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.vision.checkpoints import pick_device
from transmodal.vision.pose import run_pose

PARTS = stage_parts("pose")  # the units of videos an interrupted run finished (outside DVC's outputs)


def main(params: dict) -> None:
    compute = section(params, "compute")
    cfg = section(params, "pose")
    if launch(compute, "pose", cfg.device, "pose.device", ("data/frames", "data/tracks.parquet")):
        return  # the workers estimated the pose and rank 0 wrote the outputs
    data = section(params, "data")
    annotations = load_annotations(data.root_path(), cfg.source, "pose.source")
    tracks = pd.read_parquet("data/tracks.parquet")
    with process_group(pick_device(cfg.device).type) as world:
        keypoints, metrics = run_pose(
            FrameStore("data/frames"), tracks, cfg, annotations, parts_dir=PARTS,
            videos_per_unit=compute.videos_per_unit,
        )  # fmt: skip
    if world.is_main:
        write_parquet(keypoints, "data/keypoints.parquet")
        write_json({**metrics, "source": cfg.source, "processes": world.size}, "metrics/pose.json")
        discard_parts(PARTS)  # the output is complete


if __name__ == "__main__":
    run_stage("pose", main)
