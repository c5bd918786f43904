"""Ground truth shipped with a dataset (the synthetic set has per-frame boxes and COCO-17 keypoints)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from transmodal.params import ParamError

ANNOTATIONS_FILE = "annotations.parquet"


def load_annotations(root: str | Path, source: str, source_key: str) -> pd.DataFrame | None:
    """The dataset's ground truth, or None when it has none.

    ``source == 'annotations'`` requires it: its absence is an error naming ``source_key`` and the root.
    """
    path = Path(root) / ANNOTATIONS_FILE
    if path.is_file():
        return pd.read_parquet(path)
    if source == "annotations":
        raise ParamError(
            f"params.yaml: {source_key} is 'annotations' but {path} does not exist "
            "(only the synthetic dataset ships ground truth; use source: model)"
        )
    return None
