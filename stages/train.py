"""Stage train: fit the fusion head on the cached features -> models/transmodal/ + curves."""

from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.io import write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.train import complexity_report, pipeline_record, train_model


def main(params: dict) -> None:
    model_cfg = section(params, "model")
    selector_cfg = section(params, "selector")
    train_cfg = section(params, "train")
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    pipeline = pipeline_record(params)
    metrics, history = train_model(
        store, model_cfg, selector_cfg, train_cfg, Path("models/transmodal"), pipeline=pipeline
    )
    write_text(history.to_csv(index=False, float_format="%.6g"), "metrics/train_curve.csv")
    metrics["complexity"] = complexity_report(store, model_cfg, selector_cfg)
    write_json(metrics, "metrics/train.json")


if __name__ == "__main__":
    run_stage("train", main)
