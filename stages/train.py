"""Stage train: fit the fusion head on the cached features -> models/transmodal/ + curves.

With ``compute.nproc`` x ``compute.nnodes`` > 1 it re-runs itself under torchrun and trains with
DistributedDataParallel (transmodal.distributed); rank 0 writes every output."""

from pathlib import Path

from transmodal.distributed import launch, process_group
from transmodal.features.cache import FeatureStore
from transmodal.io import discard_parts, stage_parts, write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.train import complexity_report, pipeline_record, train_model
from transmodal.vision.checkpoints import pick_device

PARTS = stage_parts("train")  # the training state after the last epoch of an interrupted run


def main(params: dict) -> None:
    train_cfg = section(params, "train")
    inputs = ("data/features", "data/clips.parquet")
    if launch(section(params, "compute"), "train", train_cfg.device, "train.device", inputs):
        return  # the workers trained and wrote the outputs
    model_cfg = section(params, "model")
    selector_cfg = section(params, "selector")
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    pipeline = pipeline_record(params)
    with process_group(pick_device(train_cfg.device).type) as world:
        metrics, history = train_model(
            store, model_cfg, selector_cfg, train_cfg, Path("models/transmodal"), pipeline=pipeline,
            resume_dir=PARTS,
        )  # fmt: skip
    if world.is_main:
        write_text(history.to_csv(index=False, float_format="%.6g"), "metrics/train_curve.csv")
        metrics["complexity"] = complexity_report(store, model_cfg, selector_cfg)
        write_json(metrics, "metrics/train.json")
        discard_parts(PARTS)  # the outputs are complete


if __name__ == "__main__":
    run_stage("train", main)
