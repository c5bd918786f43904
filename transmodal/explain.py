"""What the head looked at in one clip (paper Figures 3 and 4): selector scores and co-attention weights on
the crop's patch grid.

Per clip, on the (G, P) token grid (G = frame groups of ``tubelet_size`` frames, P = patches, raster order):

- ``token_scores``: the AdaptiveSelector's patch saliences (Eq. 4) in each kept group, NaN in the groups it
  dropped; ``kept``: True for the tokens that reached the pooling.
- ``rgb_to_pose``: RGB queries over pose (the last fusion block's ``attn_rgb``): the share of each RGB
  token's attention that falls on the pose tokens of its own frames. Uniform attention gives
  ``tubelet_size / T``; more means the token reads the pose of the moment it shows.
- ``pose_to_rgb``: pose queries over RGB (``attn_pose``): the attention the pose tokens pay to each RGB
  token, averaged over the clip's pose tokens (a distribution over the tokens the fusion saw; sums to 1).

With ``selector.position: before_fusion`` the fusion sees only the kept tokens, so both attention maps are
NaN elsewhere. Without a pose stream (``model.use_pose: false``) they are absent; without a selector so are
the scores. :func:`heat_in_box` measures how much of a map lies on the person: the mass of its heat (the map
above its baseline, :meth:`ClipExplanation.heat`) inside a box against the box's share of the grid; :func:`box_share_of_frame` gives the share the same box has of the
whole frame, the mass a map spread evenly over the frame would put on the person. :class:`PersonTokens` asks
what the maps can find at all: whether the frozen tokens tell the person's patches from the background's,
and whether the class can be read from either.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from transmodal.features.crops import CROP_COLUMNS
from transmodal.model import TransModal


@dataclass
class ClipExplanation:
    probabilities: np.ndarray  # (C,)
    group_index: np.ndarray | None  # (G_k,) kept groups
    kept: np.ndarray  # (G, P) bool
    token_scores: np.ndarray | None  # (G, P), NaN outside the kept groups
    rgb_to_pose: np.ndarray | None  # (G, P)
    pose_to_rgb: np.ndarray | None  # (G, P)

    def maps(self) -> dict[str, np.ndarray]:
        named = {
            "selector token scores": self.token_scores,
            "RGB queries over pose (own-frame share)": self.rgb_to_pose,
            "pose queries over RGB": self.pose_to_rgb,
        }
        return {name: value for name, value in named.items() if value is not None}

    def heat(self, uniform_share: float) -> dict[str, tuple[np.ndarray, str]]:
        """Each map above its baseline, clipped at 0, and what the baseline is: the selector's scores above
        each group's least (L2 norms of about 6 varying by 2 put a flat-looking mass on any box, though the
        selector ranks the patches in a group by them), the own-frame share above ``uniform_share`` (what
        uniform attention gives, ``tubelet_size / T``), and the pose tokens' attention (a distribution) as
        it is."""
        baselines = {
            "selector token scores": ("each group's least score", _group_minimum),
            "RGB queries over pose (own-frame share)": (
                f"the uniform share {uniform_share:.4g}",
                lambda values: np.full_like(values, uniform_share),
            ),
            "pose queries over RGB": ("none (a distribution)", np.zeros_like),
        }
        out = {}
        for name, values in self.maps().items():
            said, baseline = baselines[name]
            with np.errstate(invalid="ignore"):
                out[name] = (np.clip(values - baseline(values), 0, None), said)
        return out


@contextmanager
def recording(model: TransModal):
    """Make the last fusion block's two cross-attentions keep their weights while the block runs."""
    modules = []
    if model.fusion is not None:
        block = model.fusion.blocks[-1]
        modules = [block.attn_rgb] + ([block.attn_pose] if block.update_pose else [])
    for module in modules:
        module.record, module.weights = True, None
    try:
        yield
    finally:
        for module in modules:
            module.record = False


def _fused_positions(model: TransModal, out, batch: int) -> torch.Tensor:
    """(B, N_f) flat grid positions (g * P + p) of the tokens the last fusion block saw, in its order."""
    G, P = model.num_groups, model.patches_per_group
    if (
        model.selector_cfg.enabled
        and model.selector_cfg.position == "before_fusion"
        and out.group_index is not None
    ):
        return (out.group_index[:, :, None] * P + out.patch_index).flatten(1)
    return torch.arange(G * P).expand(batch, -1)


def explain_clips(
    model: TransModal,
    tokens: torch.Tensor,
    pose: torch.Tensor,
    kept: np.ndarray | None = None,
    full_patches: int | None = None,
) -> list[ClipExplanation]:
    """Explanations of a batch: tokens (B, G, K, D), pose (B, T, J, C) on the model's device.

    ``kept`` (B, G, K) and ``full_patches`` P: with ``backbone.keep`` < 1, which patch of the whole grid each
    token is (:meth:`~transmodal.features.cache.FeatureStore.kept_patches`); the maps are then placed on the
    whole (G, P) grid, NaN (and not kept) at the patches the backbone never saw."""
    explanations = _explain(model, tokens, pose)
    if kept is None:
        return explanations
    from transmodal.features.keep import on_full_grid

    def whole(values: np.ndarray | None, patches: np.ndarray) -> np.ndarray | None:
        return None if values is None else on_full_grid(values, patches, full_patches)

    out = []
    for explanation, patches in zip(explanations, kept, strict=True):
        seen = whole(explanation.kept.astype(np.float64), patches)
        out.append(
            ClipExplanation(
                probabilities=explanation.probabilities,
                group_index=explanation.group_index,
                kept=np.nan_to_num(seen) > 0,
                token_scores=whole(explanation.token_scores, patches),
                rgb_to_pose=whole(explanation.rgb_to_pose, patches),
                pose_to_rgb=whole(explanation.pose_to_rgb, patches),
            )
        )
    return out


@torch.inference_mode()
def _explain(model: TransModal, tokens: torch.Tensor, pose: torch.Tensor) -> list[ClipExplanation]:
    model.eval()
    with recording(model):
        out = model(tokens, pose)
        block = model.fusion.blocks[-1] if model.fusion is not None else None
        to_pose = block.attn_rgb.weights if block is not None else None  # (B, N_f, T)
        to_rgb = block.attn_pose.weights if block is not None and block.update_pose else None  # (B, T, N_f)
    B, G, P = tokens.shape[0], model.num_groups, model.patches_per_group
    positions = _fused_positions(model, out, B).cpu()
    frames_of_group = torch.arange(model.num_frames) // model.tubelet_size  # (T,) group of each pose token
    explanations = []
    for b in range(B):
        kept = np.zeros((G, P), bool)
        token_scores = group_index = None
        if out.group_index is not None:
            group_index = out.group_index[b].cpu().numpy()
            token_scores = np.full((G, P), np.nan)
            token_scores[group_index] = out.token_scores[b].float().cpu().numpy()
            for k, g in enumerate(group_index):
                kept[g, out.patch_index[b, k].cpu().numpy()] = True
        else:
            kept[:] = True
        rgb_to_pose = pose_to_rgb = None
        if to_pose is not None:
            weights = to_pose[b].float().cpu()  # (N_f, T)
            group = positions[b] // P  # (N_f,)
            own = (frames_of_group[None, :] == group[:, None]).float()  # (N_f, T)
            rgb_to_pose = _on_grid((weights * own).sum(-1), positions[b], G, P)
        if to_rgb is not None:
            pose_to_rgb = _on_grid(to_rgb[b].float().cpu().mean(0), positions[b], G, P)
        explanations.append(
            ClipExplanation(
                probabilities=out.logits[b].float().softmax(-1).cpu().numpy(),
                group_index=group_index,
                kept=kept,
                token_scores=token_scores,
                rgb_to_pose=rgb_to_pose,
                pose_to_rgb=pose_to_rgb,
            )
        )
    return explanations


def _group_minimum(values: np.ndarray) -> np.ndarray:
    """Each row's least finite value, broadcast over the row (NaN rows stay NaN)."""
    out = np.full_like(values, np.nan)
    finite = np.isfinite(values).any(axis=1)
    out[finite] = np.nanmin(values[finite], axis=1, keepdims=True)
    return out


def _on_grid(values: torch.Tensor, positions: torch.Tensor, G: int, P: int) -> np.ndarray:
    grid = np.full(G * P, np.nan)
    grid[positions.numpy()] = values.numpy()
    return grid.reshape(G, P)


def patch_centres(P: int) -> np.ndarray:
    """(P, 2) x, y centres of a square patch grid in the crop's unit square, raster order."""
    side = int(round(P**0.5))
    if side * side != P:
        raise ValueError(f"{P} patches do not form a square grid")
    centres = (np.arange(side) + 0.5) / side
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def patches_in_box(boxes: np.ndarray, P: int) -> np.ndarray:
    """(G, P) True for the patches whose centre lies in the group's box (``boxes`` (G, 4) x1, y1, x2, y2 in the
    crop's unit square; a NaN box holds no patch)."""
    centres = patch_centres(P)
    boxes = np.asarray(boxes, np.float64)[:, None, :]  # (G, 1, 4)
    return (
        (centres[None, :, 0] >= boxes[..., 0])
        & (centres[None, :, 0] <= boxes[..., 2])
        & (centres[None, :, 1] >= boxes[..., 1])
        & (centres[None, :, 1] <= boxes[..., 3])
    )


def patches_clear_of_box(boxes: np.ndarray, P: int) -> np.ndarray:
    """(G, P) True for the patches whose square does not meet the group's box (``boxes`` as
    :func:`patches_in_box`; a NaN box is clear of nothing)."""
    side = int(round(P**0.5))
    low = patch_centres(P) - 0.5 / side  # (P, 2) each patch's upper-left corner
    high = low + 1.0 / side
    boxes = np.asarray(boxes, np.float64)[:, None, :]  # (G, 1, 4)
    meets = (
        (low[None, :, 0] < boxes[..., 2])
        & (high[None, :, 0] > boxes[..., 0])
        & (low[None, :, 1] < boxes[..., 3])
        & (high[None, :, 1] > boxes[..., 1])
    )
    return ~meets & np.isfinite(boxes).all(axis=-1)


def heat_in_box(heat: np.ndarray, boxes: np.ndarray) -> tuple[float, float]:
    """(mass of ``heat`` on the patches whose centre lies in the box, the share of such patches).

    Args:
        heat: (G, P) non-negative map (NaN = no value, left out): a map above its baseline
            (:meth:`ClipExplanation.heat`), since a large common offset puts the box's share on any box.
        boxes: (G, 4) x1, y1, x2, y2 per group in the crop's unit square (the person's box).

    A map that sits on the person has a mass above the box's share; a flat map has them equal.
    """
    heat = np.asarray(heat, np.float64)
    valid = np.isfinite(heat)
    inside = patches_in_box(boxes, heat.shape[1])
    values = np.where(valid, np.clip(heat, 0, None), 0.0)
    total = values.sum()
    mass = float(values[inside].sum() / total) if total > 0 else float("nan")
    share = float(inside[valid].mean()) if valid.any() else float("nan")
    return mass, share


def boxes_in_crop(
    tracks, video_id: str, frame_idx: np.ndarray, crop: np.ndarray, tubelet_size: int
) -> np.ndarray:
    """(G, 4) the union of the primary track's boxes over each group's frames, in the crop's unit square
    (NaN for a group without a box)."""
    primary = tracks[(tracks["video_id"] == video_id) & tracks["is_primary"].astype(bool)]
    primary = primary.drop_duplicates("frame_idx").set_index("frame_idx")
    x1, y1, x2, _ = (float(v) for v in crop)
    side = x2 - x1
    out = np.full((len(frame_idx) // tubelet_size, 4), np.nan)
    for g in range(len(out)):
        frames = [f for f in frame_idx[g * tubelet_size : (g + 1) * tubelet_size] if f in primary.index]
        if not frames:
            continue
        rows = primary.loc[frames, ["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        union = np.r_[rows[:, :2].min(0), rows[:, 2:].max(0)]
        out[g] = (union - [x1, y1, x1, y1]) / side
    return out


def box_share_of_frame(
    tracks, video_id: str, frame_idx: np.ndarray, frame_size: tuple[int, int], tubelet_size: int
) -> float:
    """Mean over the frame groups with a box of the primary track's box union (as :func:`boxes_in_crop`)
    clipped to the frame, as a share of the frame's area (``frame_size`` = height, width); NaN without a box.
    """
    height, width = frame_size
    shares = []
    whole = np.asarray([0.0, 0.0, float(width), float(height)])
    # boxes_in_crop scales x and y by the crop's width: with the whole frame as the crop, x width = pixels
    for union in boxes_in_crop(tracks, video_id, frame_idx, whole, tubelet_size):
        if not np.isfinite(union).all():
            continue
        x1, y1, x2, y2 = np.clip(union * width, 0, [width, height, width, height])
        shares.append(max(x2 - x1, 0.0) * max(y2 - y1, 0.0) / (width * height))
    return float(np.mean(shares)) if shares else float("nan")


class PersonTokens:
    """What the frozen tokens themselves say about the person, from a sample of each test clip's tokens: can a
    linear probe tell a token on the primary track's box from one clear of it, and read the class from the
    person's tokens and from the background's? A map can sit on the person only where the tokens differ
    there, so this is what :func:`heat_over_test_clips`'s masses are read against.

    Per clip, from the frame groups with a box: up to :attr:`PER_SIDE` tokens on the box (patch centre
    inside, as :func:`heat_in_box` counts) and as many clear of it (the patch does not meet the box; the
    patches it only grazes are in neither), drawn with the clip's row as the seed, and the mean token on and
    clear of the box. Probes are logistic regressions on standardised tokens, scored out of fold over
    :attr:`FOLDS` folds that keep each group's clips together (``groups``); the box probe's score is
    balanced accuracy (0.5 for tokens that say nothing of the box, however few lie on it), the class
    probes' plain accuracy, beside the commonest class's share."""

    PER_SIDE = 8
    FOLDS = 5

    def __init__(self, groups: Mapping[str, object] | None = None):
        """``groups``: video_id -> its group (``data/index.parquet``'s ``group``, clips that must not straddle
        a split: KTH's subject, UCF101's ``gXX``, HMDB51's source video), so that no fold is scored on a group
        it was fitted on; None: each video is its own."""
        self.groups = groups
        # per clip: (tokens (n, D), on box (n,), group) and (mean on (D,), mean clear (D,), label, group)
        self.samples: list[tuple[np.ndarray, np.ndarray, object]] = []
        self.means: list[tuple[np.ndarray, np.ndarray, int, object]] = []
        self.without_both = 0  # clips with a box but no token on it, or none clear of it

    def add(
        self, tokens: np.ndarray, on_box: np.ndarray, clear: np.ndarray, label: int, video_id: str, seed: int
    ) -> None:
        """One clip: its tokens (G, K, D) in the frame groups with a box, and which of them lie on the box and
        which clear of it (G, K)."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        on_rows, clear_rows = np.flatnonzero(on_box.reshape(-1)), np.flatnonzero(clear.reshape(-1))
        if not (len(on_rows) and len(clear_rows)):
            self.without_both += 1
            return
        rng = np.random.default_rng(seed)
        on_pick, clear_pick = (
            rng.choice(r, min(self.PER_SIDE, len(r)), replace=False) for r in (on_rows, clear_rows)
        )
        group = video_id if self.groups is None else self.groups[video_id]
        chosen = np.concatenate([on_pick, clear_pick])
        self.samples.append((flat[chosen].astype(np.float32), np.arange(len(chosen)) < len(on_pick), group))
        means = (flat[on_rows].mean(0, dtype=np.float64), flat[clear_rows].mean(0, dtype=np.float64))
        self.means.append((*means, int(label), group))

    def summary(self) -> dict:
        """``clips`` probed, ``clips_without_tokens_on_and_clear_of_box`` (left out), ``groups``,
        ``tokens`` and ``tokens_on_box`` sampled, ``folds``, ``on_box_balanced_accuracy``,
        ``class_from_person_tokens``, ``class_from_background_tokens`` (None where a probe could not be
        fitted: ``skipped`` says why) and ``class_majority_share``."""
        from sklearn.metrics import accuracy_score, balanced_accuracy_score

        groups = {group for *_, group in self.means}
        out = {
            "clips": len(self.means),
            "clips_without_tokens_on_and_clear_of_box": self.without_both,
            "groups": len(groups),
        }
        if len(groups) < 2:
            return out | {"skipped": [f"the clips probed come from {len(groups)} group(s); folds need 2"]}
        folds = min(self.FOLDS, len(groups))
        x = np.concatenate([tokens for tokens, _, _ in self.samples])
        on_box = np.concatenate([where for _, where, _ in self.samples])
        token_groups = np.asarray([str(g) for tokens, _, g in self.samples for _ in range(len(tokens))])
        on, clear, labels, clip_groups = (list(column) for column in zip(*self.means, strict=True))
        labels, clip_groups = np.asarray(labels), np.asarray([str(g) for g in clip_groups])
        out |= {"tokens": int(len(x)), "tokens_on_box": int(on_box.sum()), "folds": folds}
        skipped = []
        probes = {
            "on_box_balanced_accuracy": (x, on_box, token_groups, balanced_accuracy_score),
            "class_from_person_tokens": (np.stack(on), labels, clip_groups, accuracy_score),
            "class_from_background_tokens": (np.stack(clear), labels, clip_groups, accuracy_score),
        }
        for name, (features, target, by, score) in probes.items():
            predicted = _out_of_fold(features, target, by, folds)
            if predicted is None:
                skipped.append(f"{name}: the clips fitted in some fold are all of one class")
            out[name] = None if predicted is None else float(score(target, predicted))
        out["class_majority_share"] = float(np.unique(labels, return_counts=True)[1].max() / len(labels))
        return out | ({"skipped": skipped} if skipped else {})


def _out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> np.ndarray | None:
    """Each sample's prediction by a standardised logistic regression fitted on the other folds (grouped by
    ``groups``); None when the samples fitted in some fold are all of one class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splits = list(GroupKFold(n_splits=folds).split(x, y, groups))
    if any(np.unique(y[fitted]).size < 2 for fitted, _ in splits):
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return cross_val_predict(probe, x, y, cv=splits)


def heat_over_test_clips(
    model: TransModal, store, tracks, batch_size: int, person_tokens: PersonTokens | None = None
) -> dict[str, dict]:
    """Per map, over every test clip with a box in some group: the mean of :func:`heat_in_box`'s mass (the
    heat above the map's ``baseline``, :meth:`ClipExplanation.heat`) and of the box's share of the crop,
    and the share of clips whose mass exceeds their box's share (``clips_above_share``; half for maps that
    prefer the person no more than the background). Six drawn clips say little; this is the whole split.
    ``person_tokens``: also hand each clip's tokens to it, read once for both (a cache that re-encodes its
    tokens when read, ``backbone.store``, runs the backbone again at each read)."""
    from transmodal.training.data import pose_input

    clips = store.clips
    test = np.flatnonzero((clips["split"] == "test").to_numpy())
    primary = tracks[tracks["is_primary"].astype(bool)]
    by_video = dict(tuple(primary.groupby("video_id", sort=False)))
    none = primary.iloc[:0]
    device = next(model.parameters()).device
    uniform = model.tubelet_size / model.num_frames
    found: dict[str, list[tuple[float, float]]] = {}
    baselines: dict[str, str] = {}
    for start in range(0, len(test), batch_size):
        rows = test[start : start + batch_size].tolist()
        xy, score, mask = store.pose(rows)
        pose = pose_input(xy, score, mask, model.model_cfg.pose_scores).to(device)
        tokens = store.tokens(rows).float()
        kept = store.kept_patches(rows)
        explained = explain_clips(model, tokens.to(device), pose, kept, store.full_patches_per_group)
        for b, (where, explanation) in enumerate(zip(rows, explained, strict=True)):
            row = clips.iloc[where]
            crop = np.asarray([row[c] for c in CROP_COLUMNS], np.float64)
            boxes = boxes_in_crop(
                by_video.get(row["video_id"], none), row["video_id"], np.asarray(row["frame_idx"]), crop,
                model.tubelet_size,
            )  # fmt: skip
            usable = np.isfinite(boxes).all(axis=1)
            if not usable.any():
                continue
            if person_tokens is not None:
                P = store.full_patches_per_group
                on_box, clear = patches_in_box(boxes, P), patches_clear_of_box(boxes, P)  # (G, P)
                if kept is not None:  # the tokens are the kept patches (G, K)
                    on_box, clear = (np.take_along_axis(m, kept[b], axis=1) for m in (on_box, clear))
                person_tokens.add(
                    tokens[b].numpy()[usable], on_box[usable], clear[usable], int(row["label_idx"]),
                    row["video_id"], where,
                )  # fmt: skip
            for name, (values, baseline) in explanation.heat(uniform).items():
                mass, share = heat_in_box(values[usable], boxes[usable])
                baselines[name] = baseline
                if np.isfinite(mass) and np.isfinite(share):
                    found.setdefault(name, []).append((mass, share))
    summary = {}
    for name, pairs in found.items():
        mass, share = np.asarray(pairs).T
        summary[name] = {
            "clips": len(pairs),
            "mass_in_box": float(mass.mean()),
            "box_share": float(share.mean()),
            "clips_above_share": float((mass > share).mean()),
            "baseline": baselines[name],
        }
    return summary


def explain_test_clips(
    model: TransModal, store, frames, tracks, classes: list[str], out_dir, count: int
) -> dict:
    """Figures 3 and 4 for the first test clip of each of the first ``count`` classes, into ``out_dir``;
    returns, per clip, the label, prediction and each map's :func:`heat_in_box` of its heat above its
    ``baseline`` on the primary track's box, with the box's share of the crop (``box_share``) and of the whole
    frame (``box_share_of_frame``)."""
    from pathlib import Path

    from transmodal.features.crops import crop_frames
    from transmodal.io import atomic_dir
    from transmodal.training.data import pose_input
    from transmodal.training.figures import plot_explanation, plot_pose_track

    clips = store.clips
    test = clips[clips["split"] == "test"]
    rows = test.groupby("label_idx", sort=True).head(1).head(count)
    device = next(model.parameters()).device
    size = max(160, int(store.backbone["image_size"]))
    report = {}
    with atomic_dir(Path(out_dir)) as tmp:
        for position, row in zip(rows.index, rows.itertuples(index=False), strict=True):
            where = clips.index.get_loc(position)
            xy, score, mask = store.pose([where])
            pose = pose_input(xy, score, mask, model.model_cfg.pose_scores).to(device)
            tokens = store.tokens([where]).float().to(device)
            kept = store.kept_patches([where])  # None unless the backbone dropped tokens
            (explanation,) = explain_clips(model, tokens, pose, kept, store.full_patches_per_group)
            wanted = np.asarray(row.frame_idx, np.int64)
            frame_idx, pixels = frames.read(row.video_id, int(wanted.min()), int(wanted.max()))
            crop = np.asarray([getattr(row, c) for c in CROP_COLUMNS], np.float64)
            crops = crop_frames(
                pixels, tuple(int(v) for v in crop), size, np.searchsorted(frame_idx, wanted).tolist()
            )
            predicted = classes[int(np.argmax(explanation.probabilities))]
            title = f"{row.clip_id}: true {row.label}, predicted {predicted}"
            name = row.clip_id.replace("#", "-")
            plot_explanation(
                crops, xy[0], mask[0], explanation, model.tubelet_size, tmp / f"{name}-attention.png", title
            )
            plot_pose_track(crops, xy[0], mask[0], tmp / f"{name}-pose.png", title)
            boxes = boxes_in_crop(tracks, row.video_id, wanted, crop, model.tubelet_size)
            of_frame = box_share_of_frame(tracks, row.video_id, wanted, pixels.shape[1:3], model.tubelet_size)
            heat = {}
            uniform = model.tubelet_size / model.num_frames
            for map_name, (values, baseline) in explanation.heat(uniform).items():
                usable = np.isfinite(boxes).all(axis=1)
                mass, share = heat_in_box(values[usable], boxes[usable]) if usable.any() else (None, None)
                heat[map_name] = {
                    "mass_in_box": None if mass is None or not np.isfinite(mass) else mass,  # no heat at all
                    "box_share": share,
                    "box_share_of_frame": of_frame,
                    "baseline": baseline,
                }
            report[row.clip_id] = {"label": row.label, "predicted": predicted, "heat_in_box": heat}
    return report
