"""Stage evaluate: test-split clip/video top-1, per-class report, confusion matrix (DVC plot + PNG)."""

from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.io import write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.evaluate import evaluate_model, plot_confusion


def main(params: dict) -> None:
    cfg = section(params, "eval")
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    metrics, videos = evaluate_model(Path("models/transmodal"), store, "test", cfg.batch_size, cfg.device)
    write_text(videos.to_csv(index=False), "metrics/confusion.csv")
    title = f"TransMODAL, test split: video top-1 {metrics['video_accuracy']:.3f}"
    plot_confusion(metrics["confusion_matrix"], metrics["classes"], Path("metrics/confusion.png"), title)
    write_json(metrics, "metrics/eval.json")


if __name__ == "__main__":
    run_stage("evaluate", main)
