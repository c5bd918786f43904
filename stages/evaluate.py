"""Stage evaluate: test-split top-1 and per-class report per clip, sequence and video; the confusion matrix
at the paper's unit (sequence) as a DVC plot and a PNG; the training curves as a PNG; paper Figures 3 and 4
for ``eval.explain_clips`` test clips (metrics/explain/), with the maps' heat on the person over every test
clip and what the frozen tokens say of the person (linear probes, ``person_in_tokens``)."""

import sys
from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.explain import PersonTokens, explain_test_clips, heat_over_test_clips
from transmodal.features.cache import FeatureStore
from transmodal.io import write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.evaluate import PAPER_UNIT, evaluate_model, split_coverage
from transmodal.training.figures import plot_confusion, plot_curves
from transmodal.training.train import load_checkpoint, trained_threads
from transmodal.vision.checkpoints import pick_device


def main(params: dict) -> None:
    cfg = section(params, "eval")
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    metrics, predictions = evaluate_model(
        Path("models/transmodal"), store, "test", cfg.batch_size, cfg.device
    )
    frames = FrameStore("data/frames")
    index = pd.read_parquet("data/index.parquet")
    coverage = split_coverage(index, frames.videos, predictions["video"]["video_id"])
    metrics.update(coverage)
    if coverage["test_videos_not_scored"]:
        print(
            f"evaluate: note: {len(coverage['test_videos_not_scored'])} of the "
            f"{coverage['test_videos_indexed']} test videos are not in the accuracies "
            "(metrics/eval.json: test_videos_not_scored, with each one's reason)",
            file=sys.stderr,
        )
    table = predictions[PAPER_UNIT].rename(columns={"unit_id": f"{PAPER_UNIT}_id"})
    write_text(table.to_csv(index=False), "metrics/confusion.csv")
    unit = metrics["units"][PAPER_UNIT]
    title = (
        f"TransMODAL, test split: {PAPER_UNIT}-level top-1 {unit['accuracy']:.3f} "
        f"({unit['count']} {PAPER_UNIT}s)"
    )
    plot_confusion(unit["confusion_matrix"], metrics["classes"], Path("metrics/confusion.png"), title)
    model, config = load_checkpoint(Path("models/transmodal"), pick_device(cfg.device))
    tracks = pd.read_parquet("data/tracks.parquet")
    with trained_threads(config["train"].get("threads")):  # the head's logits, as evaluate_model's
        person_tokens = PersonTokens(dict(zip(index["video_id"], index["group"], strict=True)))
        metrics["heat_on_test_clips"] = heat_over_test_clips(
            model, store, tracks, cfg.batch_size, person_tokens
        )
        metrics["person_in_tokens"] = person_tokens.summary()
        metrics["explained_clips"] = explain_test_clips(
            model,
            store,
            frames,
            tracks,
            metrics["classes"],
            Path("metrics/explain"),
            cfg.explain_clips,
        )
    history = pd.read_csv("metrics/train_curve.csv")
    plot_curves(
        history,
        Path("metrics/curves.png"),
        "TransMODAL head: training curves (models/transmodal)",
        config["best_epoch"],
        config["train"]["label_smoothing"],
    )
    write_json(metrics, "metrics/eval.json")


if __name__ == "__main__":
    run_stage("evaluate", main)
