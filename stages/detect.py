"""Stage detect: RT-DETR person boxes linked by ByteTrack, one primary track per video -> data/tracks.parquet.

With ``compute.nproc`` x ``compute.nnodes`` > 1 it re-runs itself under torchrun: each process detects and
tracks its units of videos and rank 0 merges them and writes the outputs."""

from transmodal.data.annotations import load_annotations
from transmodal.data.frames import FrameStore
from transmodal.distributed import launch, process_group
from transmodal.io import discard_parts, stage_parts, write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.vision.checkpoints import pick_device
from transmodal.vision.detect import run_detect

PARTS = stage_parts("detect")  # the units of videos an interrupted run finished (outside DVC's outputs)


def main(params: dict) -> None:
    compute = section(params, "compute")
    cfg = section(params, "detect")
    if launch(compute, "detect", cfg.device, "detect.device", ("data/frames",)):
        return  # the workers detected and rank 0 wrote the outputs
    data = section(params, "data")
    annotations = load_annotations(data.root_path(), cfg.source, "detect.source")
    with process_group(pick_device(cfg.device).type) as world:
        tracks, metrics = run_detect(
            FrameStore("data/frames"),
            cfg,
            annotations,
            parts_dir=PARTS,
            videos_per_unit=compute.videos_per_unit,
        )
    if world.is_main:
        write_parquet(tracks, "data/tracks.parquet")
        write_json({**metrics, "source": cfg.source, "processes": world.size}, "metrics/detect.json")
        discard_parts(PARTS)  # the output is complete


if __name__ == "__main__":
    run_stage("detect", main)
