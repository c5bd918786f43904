"""Pose-guided token dropping before the frozen backbone (``backbone.keep``, docs/decisions.md 39).

VideoMAE cuts a clip into G = num_frames / tubelet_size frame groups of P = (image_size / patch_size)^2
patches (raster order, as its Conv3d flattens them). With ``backbone.keep < 1`` the encoder sees only
K = round(keep * P) patches of EVERY group, the same K in each, so a batch stays rectangular: transformers'
``VideoMAEModel(pixel_values, bool_masked_pos=...)`` embeds the whole clip, adds the position embeddings,
then drops the masked tokens (True = dropped), and its encoder runs on the G * K kept ones, which come out
in ascending index order: a (G, K) grid, time-major.

Which K patches (:func:`kept_patches`), per clip and group, from the person's box in the crop:
1. the box is the union of the primary track's boxes over the group's frames, in the crop's unit square; a
   group without a box takes the union over the clip; a clip without any box (the whole-frame fallback) takes
   the whole crop;
2. it is dilated by ``backbone.keep_margin`` times its larger side on each side;
3. every patch gets ``r = max(|x - cx| / hw, |y - cy| / hh)`` from its centre (x, y) to the dilated box's
   centre (cx, cy) and half-sides (hw, hh): ``r <= 1`` exactly for the patches whose centre lies in it;
4. ``keep_by: box`` ranks the patches by ``r``; ``keep_by: joints`` ranks those inside the dilated box by their
   centre's distance to the nearest visible keypoint of the group's frames (by ``r`` where the group has none),
   then those outside by ``r``;
5. the first K in that order are kept (ties: the lower patch index first), returned in ascending order.

So every patch inside the dilated box is kept whenever the box holds at most K patch centres, and every
dropped patch then lies outside it; when it holds more, the ones farthest from its centre (or from the
joints) go. At keep 1 nothing is dropped and no mask is passed: the tokens are those of the plain forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transmodal.io import stage_parts
from transmodal.params import variant_params, varies_backbone_keep

ABLATION_FEATURES = Path("data/ablation_features")
"""ablate_features@<variant> writes ``<variant>/`` here: the variant's own cache, or :data:`SHARED_FILE`."""
SHARED_FILE = "shared.json"  # a variant without a cache of its own: it trains on data/features
ABLATION_PARTIAL = stage_parts("ablate_features")
"""Where ablate_features@<variant> keeps ``<variant>/``'s finished shards while it runs: outside its DVC
output (``ABLATION_FEATURES / variant``), which DVC deletes before it runs the stage again."""


def own_features(params: dict, variant: str, out_dir: Path) -> tuple[Path, Path] | None:
    """Where a variant that varies ``backbone.keep*`` keeps its own feature cache (``<out_dir>/features``,
    ``<out_dir>/clips.parquet``; ``out_dir`` is ``ABLATION_FEATURES / variant`` in the pipeline); None for a
    variant that trains on the features stage's cache."""
    varied = variant_params(params, variant)
    if not varies_backbone_keep(params, varied):
        return None
    return Path(out_dir) / "features", Path(out_dir) / "clips.parquet"


OUTSIDE = 1000.0  # added to an outside patch's rank key, so that every inside patch ranks first


def patch_centres(image_size: int, patch_size: int) -> np.ndarray:
    """(P, 2) x, y centres of the patch grid in the crop's unit square, raster order (row-major)."""
    side = image_size // patch_size
    centres = (np.arange(side, dtype=np.float64) + 0.5) * patch_size / image_size
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def group_boxes(boxes: np.ndarray, crops: np.ndarray, tubelet_size: int) -> np.ndarray:
    """Per clip and frame group, the person's box in the crop's unit square (step 1 above).

    Args:
        boxes: (N, T, 4) primary-track boxes x1, y1, x2, y2 in frame pixels, NaN where a frame has none.
        crops: (N, 4) each clip's square crop box in pixels.
        tubelet_size: frames per group.

    Returns:
        (N, G, 4) float64: the union over the group's frames, else over the clip's, else the whole crop
        (0, 0, 1, 1).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    n, t = boxes.shape[:2]
    crops = np.asarray(crops, dtype=np.float64).reshape(n, 1, 4)
    side = crops[..., 2:3] - crops[..., 0:1]  # (N, 1, 1)
    unit = (boxes - crops[..., [0, 1, 0, 1]]) / side  # (N, T, 4)
    grouped = unit.reshape(n, t // tubelet_size, tubelet_size, 4)

    def union(values: np.ndarray, axis: int) -> np.ndarray:
        valid = np.isfinite(values).all(axis=-1, keepdims=True)
        low = np.where(valid, values, np.inf).min(axis=axis)[..., :2]
        high = np.where(valid, values, -np.inf).max(axis=axis)[..., 2:]
        return np.concatenate([low, high], axis=-1)  # inf where nothing was valid

    per_group = union(grouped, axis=2)  # (N, G, 4)
    per_clip = union(unit, axis=1)[:, None, :]  # (N, 1, 4)
    whole = np.array([0.0, 0.0, 1.0, 1.0])
    per_clip = np.where(np.isfinite(per_clip).all(axis=-1, keepdims=True), per_clip, whole)
    return np.where(np.isfinite(per_group).all(axis=-1, keepdims=True), per_group, per_clip)


def kept_patches(
    boxes: np.ndarray,
    centres: np.ndarray,
    count: int,
    margin: float,
    by: str = "box",
    joints: np.ndarray | None = None,
    joints_visible: np.ndarray | None = None,
) -> np.ndarray:
    """The K = ``count`` kept patches of each clip's groups (steps 2-5 above), ascending.

    Args:
        boxes: (N, G, 4) :func:`group_boxes`.
        centres: (P, 2) :func:`patch_centres`.
        count: K, 1 to P.
        margin: ``backbone.keep_margin``.
        by: ``backbone.keep_by``, ``box`` or ``joints``.
        joints: (N, G, M, 2) the keypoints of each group's frames in the crop's unit square (``joints``).
        joints_visible: (N, G, M) bool, the keypoints that are present.

    Returns:
        (N, G, K) int16 patch indices, ascending in each group.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    half_patch = 0.5 * float(np.min(np.diff(np.unique(centres[:, 0])), initial=1.0))
    grow = margin * np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])  # (N, G)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    hw = np.maximum((boxes[..., 2] - boxes[..., 0]) / 2 + grow, half_patch)  # a box thinner than a patch
    hh = np.maximum((boxes[..., 3] - boxes[..., 1]) / 2 + grow, half_patch)  # still holds its centre patch
    x, y = centres[:, 0], centres[:, 1]
    r = np.maximum(
        np.abs(x - cx[..., None]) / hw[..., None], np.abs(y - cy[..., None]) / hh[..., None]
    )  # (N, G, P)
    inside = r <= 1.0
    key = r
    if by == "joints":
        if joints is None or joints_visible is None:
            raise ValueError("keep_by 'joints' needs the keypoints of each group")
        joints = np.asarray(joints, dtype=np.float64)
        visible = np.asarray(joints_visible, dtype=bool) & np.isfinite(joints).all(axis=-1)
        d = np.linalg.norm(centres[None, None, :, None, :] - joints[:, :, None, :, :], axis=-1)  # N,G,P,M
        nearest = np.where(visible[:, :, None, :], d, np.inf).min(axis=-1, initial=np.inf)  # (N, G, P)
        key = np.where(np.isfinite(nearest), nearest, r)
    key = np.where(inside, key, OUTSIDE + r)
    order = np.argsort(key, axis=-1, kind="stable")[..., :count]
    return np.sort(order, axis=-1).astype(np.int16)


def masked_positions(kept: np.ndarray, patches_per_group: int) -> np.ndarray:
    """``bool_masked_pos`` (N, G * P) for VideoMAE: True = dropped, False at the kept patches of each group."""
    kept = np.asarray(kept, dtype=np.int64)
    n, groups, _ = kept.shape
    mask = np.ones((n, groups, patches_per_group), dtype=bool)
    np.put_along_axis(mask, kept, False, axis=-1)
    return mask.reshape(n, groups * patches_per_group)


def on_full_grid(values: np.ndarray, kept: np.ndarray, patches_per_group: int) -> np.ndarray:
    """A (G, K) map on the kept patches scattered onto the whole (G, P) grid, NaN at the dropped ones."""
    out = np.full((values.shape[0], patches_per_group), np.nan)
    np.put_along_axis(out, np.asarray(kept, dtype=np.int64), values, axis=-1)
    return out
