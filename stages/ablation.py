"""Stage ablation: Table 5 (accuracy, delta vs full, head and end-to-end latency) for the variants in params."""

from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.io import write_json, write_text
from transmodal.stage import run_stage
from transmodal.training.ablation import aggregate


def main(params: dict) -> None:
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    table, markdown = aggregate(params, store, Path("data/ablation"))
    write_json(table, "metrics/ablation.json")
    write_text(markdown, "metrics/ablation.md")
    print(markdown)


if __name__ == "__main__":
    run_stage("ablation", main)
