"""Stage evaluate: test-split top-1 and per-class report per clip, sequence and video; the confusion matrix
at the paper's unit (sequence) as a DVC plot and a PNG."""

from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.io import write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.evaluate import PAPER_UNIT, evaluate_model
from transmodal.training.figures import plot_confusion


def main(params: dict) -> None:
    cfg = section(params, "eval")
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    metrics, predictions = evaluate_model(
        Path("models/transmodal"), store, "test", cfg.batch_size, cfg.device
    )
    table = predictions[PAPER_UNIT].rename(columns={"unit_id": f"{PAPER_UNIT}_id"})
    write_text(table.to_csv(index=False), "metrics/confusion.csv")
    unit = metrics["units"][PAPER_UNIT]
    title = (
        f"TransMODAL, test split: {PAPER_UNIT}-level top-1 {unit['accuracy']:.3f} "
        f"({unit['count']} {PAPER_UNIT}s)"
    )
    plot_confusion(unit["confusion_matrix"], metrics["classes"], Path("metrics/confusion.png"), title)
    write_json(metrics, "metrics/eval.json")


if __name__ == "__main__":
    run_stage("evaluate", main)
