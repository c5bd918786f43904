"""Stage prepare: one row per video of the dataset named by data.* -> data/index.parquet."""

from transmodal.data.index import ARROW_SCHEMA, build_index
from transmodal.io import write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage


def main(params: dict) -> None:
    cfg = section(params, "data")
    cfg.root_path()  # fails early, naming data.root
    index, summary = build_index(cfg)
    write_parquet(index, "data/index.parquet", schema=ARROW_SCHEMA)
    write_json({**summary, "dataset": cfg.dataset, "split": cfg.split}, "metrics/prepare.json")


if __name__ == "__main__":
    run_stage("prepare", main)
