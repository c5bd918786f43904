"""Stage prepare: one row per video of the dataset named by data.* -> data/index.parquet."""

import sys

from transmodal.data.index import ARROW_SCHEMA, build_index
from transmodal.io import write_json, write_parquet
from transmodal.params import section
from transmodal.stage import run_stage

# What the dataset folder and its lists disagree on: counted in metrics/prepare.json, and said when not zero.
DISAGREEMENTS = {
    "listed_missing_on_disk": "videos named in the split or sequence lists are not on disk",
    "classes_missing_on_disk": "classes have a split file but no videos on disk",
    "unlisted_on_disk": "videos on disk are in no split file (left out)",
    "unrecognised": "files on disk are not named as the dataset names its videos (left out)",
    "classes_without_test": "classes have no test videos (one group only, or none marked test in splits.csv)",
    "names_without_source": "HMDB51 names give no source video (each is its own group when val is drawn)",
    "videos_without_sequences": "KTH videos have no line in 00sequences.txt (each is scored as one sequence)",
}


def main(params: dict) -> None:
    cfg = section(params, "data")
    cfg.root_path()  # fails early, naming data.root
    index, summary = build_index(cfg)
    write_parquet(index, "data/index.parquet", schema=ARROW_SCHEMA)
    write_json({**summary, "dataset": cfg.dataset, "split": cfg.split}, "metrics/prepare.json")
    for key, what in DISAGREEMENTS.items():
        value = summary.get(key)
        count = len(value) if isinstance(value, list) else value
        if count:
            print(f"prepare: note: {count} {what} (metrics/prepare.json: {key})", file=sys.stderr)


if __name__ == "__main__":
    run_stage("prepare", main)
