"""Evaluate a trained head: clip- and video-level top-1, per-class report, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from transmodal.features.cache import FeatureStore
from transmodal.training.data import load_split
from transmodal.training.train import load_checkpoint, predict
from transmodal.vision.checkpoints import pick_device


def video_level(logits: torch.Tensor, labels: torch.Tensor, video_ids: list[str]) -> pd.DataFrame:
    """One row per video: its label and the argmax of the MEAN of its clips' logits."""
    frame = pd.DataFrame({"video_id": video_ids, "label": labels.numpy()})
    mean_logits = pd.DataFrame(logits.numpy()).groupby(frame["video_id"].to_numpy(), sort=True).mean()
    labels_by_video = frame.groupby("video_id", sort=True)["label"].first()
    return pd.DataFrame(
        {
            "video_id": mean_logits.index.to_numpy(),
            "label": labels_by_video.loc[mean_logits.index].to_numpy(),
            "prediction": mean_logits.to_numpy().argmax(axis=1),
        }
    )


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Top-1, per-class precision/recall/F1/support and the confusion matrix (rows = actual)."""
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)) if len(labels) else None,
        "macro_f1": float(np.mean(f1)) if len(labels) else None,
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


def evaluate_model(
    model_dir: Path, store: FeatureStore, split: str, batch_size: int, device: str = "auto"
) -> tuple[dict, pd.DataFrame]:
    """Metrics on ``split`` and the per-video predictions (video_id, label, prediction as names)."""
    torch_device = pick_device(device)
    model, config = load_checkpoint(model_dir, torch_device)
    classes = config["classes"]
    data = load_split(store, split, model.model_cfg.pose_scores)
    if len(data) == 0:
        raise ValueError(f"no {split} clips in the feature cache")
    logits = predict(model, data, batch_size, torch_device)
    clip_predictions = logits.argmax(-1).numpy()
    videos = video_level(logits, data.labels, data.video_ids)
    video_metrics = classification_metrics(
        videos["label"].to_numpy(), videos["prediction"].to_numpy(), classes
    )
    metrics = {
        "split": split,
        "clips": len(data),
        "videos": int(len(videos)),
        "clip_accuracy": float((clip_predictions == data.labels.numpy()).mean()),
        "video_accuracy": video_metrics.pop("accuracy"),
        **video_metrics,
        "classes": classes,
    }
    videos["actual"] = [classes[i] for i in videos["label"]]
    videos["predicted"] = [classes[i] for i in videos["prediction"]]
    return metrics, videos[["video_id", "actual", "predicted"]]


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Confusion matrix PNG (rows actual, columns predicted), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transmodal.io import atomic_path

    counts = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.1 * len(classes) + 1.5), dpi=100)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(
            j, i, str(value), ha="center", va="center", color="white" if value > counts.max() / 2 else "black"
        )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
