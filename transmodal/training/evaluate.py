"""Evaluate a trained head: top-1, per-class report and confusion matrix per clip, sequence and video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from transmodal.features.cache import FeatureStore
from transmodal.training.data import SplitData, load_split
from transmodal.training.train import load_checkpoint, predict, trained_threads
from transmodal.vision.checkpoints import pick_device

UNITS = {
    "clip": "one clip of clips.length frames",
    "sequence": (
        "one listed sequence of 00sequences.txt (KTH, the synthetic set; the whole video where none are "
        "listed), predicted from the mean of its clips' logits"
    ),
    "video": "one video, predicted from the mean of its clips' logits",
}
# The unit of the paper's KTH numbers and of the ablation table (docs/decisions.md, "Accuracy units").
PAPER_UNIT = "sequence"


def mean_logits_by_unit(logits: torch.Tensor, unit_ids: list[str]) -> pd.DataFrame:
    """The mean of each unit's clip logits (one row per unit id, sorted; one column per class): how every
    unit, and ``transmodal predict``'s whole video, is scored from its clips."""
    return pd.DataFrame(logits.numpy()).groupby(np.asarray(unit_ids, dtype=object), sort=True).mean()


def unit_level(logits: torch.Tensor, labels: torch.Tensor, unit_ids: list[str]) -> pd.DataFrame:
    """One row per unit (sorted by id): its label and the argmax of the MEAN of its clips' logits."""
    mean_logits = mean_logits_by_unit(logits, unit_ids)
    labels_by_unit = pd.Series(labels.numpy()).groupby(np.asarray(unit_ids, dtype=object), sort=True).first()
    return pd.DataFrame(
        {
            "unit_id": mean_logits.index.to_numpy(),
            "label": labels_by_unit.loc[mean_logits.index].to_numpy(),
            "prediction": mean_logits.to_numpy().argmax(axis=1),
        }
    )


def video_level(logits: torch.Tensor, labels: torch.Tensor, video_ids: list[str]) -> pd.DataFrame:
    """:func:`unit_level` over videos, with the id column named ``video_id``."""
    return unit_level(logits, labels, video_ids).rename(columns={"unit_id": "video_id"})


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Top-1, per-class precision/recall/F1/support and the confusion matrix (rows = actual). The macro F1
    averages the classes with at least one unit here (a class absent from the split, e.g. its folder
    missing, would count as F1 0 otherwise)."""
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0
    )
    present = support > 0
    return {
        "accuracy": float(accuracy_score(labels, predictions)) if len(labels) else None,
        "macro_f1": float(np.mean(f1[present])) if present.any() else None,
        "macro_f1_classes": int(present.sum()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
    }


def unit_ids(data: SplitData) -> dict[str, list[str]]:
    """The id of every clip's unit, for each of :data:`UNITS`."""
    return {"clip": data.clip_ids, "sequence": data.sequence_ids, "video": data.video_ids}


def evaluate_logits(
    logits: torch.Tensor, data: SplitData, classes: list[str]
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Top-1, per-class P/R/F1 and confusion matrix at clip, sequence and video level, and the predictions
    of each unit (unit_id, video_id, actual, predicted as class names)."""
    metrics: dict = {"units": {}, "paper_unit": PAPER_UNIT}
    predictions = {}
    for unit, ids in unit_ids(data).items():
        frame = unit_level(logits, data.labels, ids)
        video_of = dict(zip(ids, data.video_ids, strict=True))
        result = classification_metrics(frame["label"].to_numpy(), frame["prediction"].to_numpy(), classes)
        metrics[f"{unit}_accuracy"] = result["accuracy"]
        metrics[f"{unit}s"] = int(len(frame))
        metrics["units"][unit] = {"description": UNITS[unit], "count": int(len(frame)), **result}
        predictions[unit] = pd.DataFrame(
            {
                "unit_id": frame["unit_id"],
                "video_id": [video_of[unit_id] for unit_id in frame["unit_id"]],
                "actual": [classes[i] for i in frame["label"]],
                "predicted": [classes[i] for i in frame["prediction"]],
            }
        )
    return metrics, predictions


def evaluate_model(
    model_dir: Path, store: FeatureStore, split: str, batch_size: int, device: str = "auto"
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Metrics on ``split`` at every unit (see :func:`evaluate_logits`) and each unit's predictions."""
    torch_device = pick_device(device)
    store.encode_on(torch_device.type)  # backbone.store: recompute: the backbone runs where the head does
    model, config = load_checkpoint(model_dir, torch_device)
    classes = config["classes"]
    data = load_split(store, split, model.model_cfg.pose_scores)
    if len(data) == 0:
        raise ValueError(f"no {split} clips in the feature cache")
    # the count it trained with (on the CPU the logits depend on it too), for the head only: the process's
    # count is restored after (the evaluate stage's figures run the backbone on all of them)
    with trained_threads(config["train"].get("threads")):
        logits = predict(model, data, batch_size, torch_device)
    metrics, predictions = evaluate_logits(logits, data, classes)
    return {"split": split, **metrics, "classes": classes}, predictions


def split_coverage(index: pd.DataFrame, videos: pd.DataFrame, scored: pd.Series, split: str = "test") -> dict:
    """How many of the split's indexed videos were scored, and why each other one was not: skipped by the
    frames stage (its reason), or no clip in the feature cache. ``videos``: the frame store's video table;
    ``scored``: the video ids the accuracies count."""
    listed = index.loc[index["split"] == split, "video_id"]
    skipped = videos.loc[videos["status"] != "ok"].set_index("video_id")["reason"].to_dict()
    missing = sorted(set(listed) - set(scored))
    return {
        f"{split}_videos_indexed": int(len(listed)),
        f"{split}_videos_scored": int(listed.isin(set(scored)).sum()),
        f"{split}_videos_not_scored": [
            {
                "video_id": video_id,
                "reason": f"skipped by the frames stage: {skipped[video_id]}"
                if video_id in skipped
                else "no clip in the feature cache",
            }
            for video_id in missing
        ],
    }
