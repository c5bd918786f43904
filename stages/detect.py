"""Stage detect: RT-DETR person boxes linked by ByteTrack, one primary track per video -> data/tracks.parquet."""

from transmodal.data.annotations import load_annotations
from transmodal.data.frames import FrameStore
from transmodal.io import write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.vision.detect import run_detect


def main(params: dict) -> None:
    data = section(params, "data")
    cfg = section(params, "detect")
    annotations = load_annotations(data.root_path(), cfg.source, "detect.source")
    tracks, metrics = run_detect(FrameStore("data/frames"), cfg, annotations)
    write_parquet(tracks, "data/tracks.parquet")
    write_json({**metrics, "source": cfg.source}, "metrics/detect.json")


if __name__ == "__main__":
    run_stage("detect", main)
