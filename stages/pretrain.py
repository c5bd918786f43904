"""Stage pretrain: masked-autoencoder pretraining of the backbone on the training split -> models/pretrain/.

It runs when ``backbone.checkpoint`` is ``models/pretrain/backbone`` (what it writes; the demo's default); with
any other backbone (the paper's VideoMAE, the random ``models/tiny/backbone``) it writes only a note saying why
it did nothing."""

from pathlib import Path

import pandas as pd

from transmodal.data.frames import FrameStore
from transmodal.io import atomic_dir, write_json, write_text
from transmodal.params import PRETRAINED_BACKBONE, is_pretrained, section
from transmodal.pretrain import CURVE_COLUMNS, check_init, pretrain, read_crops, training_clips
from transmodal.stage import StageInputError, run_stage

OUT = Path("models/pretrain")
METRICS = Path("metrics/pretrain.json")
CURVE = Path("metrics/pretrain_curve.csv")


def main(params: dict) -> None:
    cfg = section(params, "pretrain")
    backbone = section(params, "backbone")
    if not is_pretrained(backbone.checkpoint):
        reason = f"backbone.checkpoint is {backbone.checkpoint!r}, not {PRETRAINED_BACKBONE!r}"
        with atomic_dir(OUT) as tmp:
            write_json({"skipped": reason}, tmp / "skipped.json")
        write_json({"skipped": reason}, METRICS)
        write_text(",".join(CURVE_COLUMNS) + "\n", CURVE)
        print(f"pretrain: skipped: {reason}")
        return
    clips = section(params, "clips")
    image_size = check_init(cfg)  # before any crop is read
    store = FrameStore("data/frames")
    index = pd.read_parquet("data/index.parquet")
    table, without_track = training_clips(
        index, store, pd.read_parquet("data/tracks.parquet"), clips, cfg.clips_per_video
    )
    if table.empty:
        raise StageInputError("pretrain: the training split has no clip (data/index.parquet, data/frames)")
    crops = read_crops(store, table, image_size, clips.length)
    with atomic_dir(OUT) as tmp:
        result = pretrain(crops, cfg, tmp / "backbone")
    summary = result.summary | {
        "videos": int(table["video_id"].nunique()),
        "clips_without_track": without_track,
    }
    write_text(result.curve.to_csv(index=False, float_format="%.6g"), CURVE)
    write_json(summary, METRICS)
    print(
        f"pretrain: {summary['clips']} clips of {summary['videos']} training videos, {summary['steps']} steps; "
        f"loss {summary['first_epoch_loss']:.4f} in the first epoch, {summary['last_epoch_loss']:.4f} in the last"
    )


if __name__ == "__main__":
    run_stage("pretrain", main)
