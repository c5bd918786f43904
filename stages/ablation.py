"""Stage ablation: Table 5 (accuracy over seeds with intervals, difference to full, FLOPs, head and
backbone + head latency) for the variants in params, as JSON, Markdown and a bar chart."""

from pathlib import Path

from transmodal.features.cache import FeatureStore
from transmodal.features.keep import ABLATION_PARTIAL
from transmodal.io import discard_parts_except, stage_parts, write_json, write_text
from transmodal.params import section
from transmodal.stage import run_stage
from transmodal.training.evaluate import PAPER_UNIT
from transmodal.training.figures import ablation_markdown, plot_ablation
from transmodal.training.table import aggregate


def main(params: dict) -> None:
    store = FeatureStore(Path("data/features"), Path("data/clips.parquet"))
    table = aggregate(params, store, Path("data/ablation"))
    cfg = section(params, "ablation")
    markdown = ablation_markdown(table, store.backbone, cfg)
    write_json(table, "metrics/ablation.json")
    write_text(markdown, "metrics/ablation.md")
    plot_ablation(table, PAPER_UNIT, Path("metrics/ablation.png"), cfg.confidence)
    print(markdown)
    # a variant removed from params.yaml (or renamed) after an interrupted run: no stage of its own is left
    # to remove what it kept (here, once every listed variant's stage has run)
    for base in (stage_parts("ablate"), ABLATION_PARTIAL):
        discard_parts_except(base, cfg.variants)


if __name__ == "__main__":
    run_stage("ablation", main)
