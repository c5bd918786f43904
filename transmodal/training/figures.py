"""What the evaluate and ablation stages show: PNG figures (headless matplotlib, written atomically) and the
ablation table as Markdown. Only those two stages import this, so changing a figure or a table's layout
re-runs nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transmodal.io import atomic_path
from transmodal.params import AblationConfig
from transmodal.training.evaluate import PAPER_UNIT, UNITS


def new_figure(**kwargs):
    """A matplotlib Figure of its own, drawn by Agg when saved: no pyplot, so no backend is switched and no
    figure of the user's session (a notebook calling ``transmodal`` functions) is touched or closed."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG (no software tag, so identical figures give identical bytes)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def row_shares(matrix) -> tuple[np.ndarray, np.ndarray]:
    """(shares, counts): each row of a confusion matrix divided by its count; NaN for a row without any
    item (no sample of that class, which a share of 0 would show as no recall)."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / totals, np.nan)
    return shares, totals[:, 0].astype(int)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Confusion matrix PNG normalised per row (rows actual, with their count; columns predicted; each cell
    the share of the actual class on a fixed 0-1 scale with its colour bar, as the paper's Figure 2), written
    atomically. A class without any item is a row of "n/a"."""
    shares, totals = row_shares(matrix)
    n = len(classes)
    fig = new_figure(figsize=(1.1 * n + 3.2, 1.1 * n + 1.5), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{name} ({total})" for name, total in zip(classes, totals, strict=True)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual (count)")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(shares):
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.text(j, i, text, ha="center", va="center", color="white" if value > 0.5 else "black")
    fig.tight_layout()
    save_png(fig, path)


def plot_curves(history, path: Path, title: str, best_epoch: int, label_smoothing: float = 0.0) -> None:
    """Loss and top-1 per epoch (train, and val where there is a val split) from ``metrics/train_curve.csv``,
    with the epoch the model was kept at (``best_epoch`` of its ``config.json``) marked, as a PNG. With
    ``train.label_smoothing`` the training loss is the smoothed one the head minimised, the val loss plain
    cross-entropy: the legend says so."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(10, 3.6), dpi=100)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = history["epoch"].to_numpy()
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    for ax, metric, label in ((loss_ax, "loss", "cross-entropy"), (acc_ax, "acc", "clip top-1 (fraction)")):
        for split, style in (("train", "-"), ("val", "--")):
            column = f"{split}_{metric}"
            if column in history:
                name = split + (smoothed if metric == "loss" and split == "train" else "")
                ax.plot(epochs, history[column].to_numpy(), style, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left" if metric == "acc" else "upper right")
    for ax in (loss_ax, acc_ax):
        ax.axvline(best_epoch, color="grey", linewidth=0.8)
    late = best_epoch > (epochs.min() + epochs.max()) / 2  # the label on the side with room
    rule = (
        "best val top-1"
        if "val_acc" in history and history["val_acc"].notna().any()
        else "last: no val split"
    )
    acc_ax.annotate(
        f"kept: epoch {best_epoch} ({rule})",
        (best_epoch, 0.03),
        xycoords=("data", "axes fraction"),
        xytext=(-4 if late else 4, 0),
        textcoords="offset points",
        ha="right" if late else "left",
        fontsize=8,
        color="grey",
    )
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def _skeleton(ax, xy: np.ndarray, mask: np.ndarray, size: int) -> None:
    """Draw one frame's COCO skeleton: xy (J, 2) in the crop's unit square, mask (J,) present joints."""
    from transmodal.data.coco import COCO_LIMBS

    points = np.asarray(xy, np.float64) * size
    for a, b in COCO_LIMBS:
        if mask[a] and mask[b]:
            ax.plot(points[[a, b], 0], points[[a, b], 1], color="lime", linewidth=1.2)
    ax.scatter(points[mask, 0], points[mask, 1], s=6, color="red", zorder=3)


def plot_pose_track(
    crops: np.ndarray, xy: np.ndarray, mask: np.ndarray, path: Path, title: str, count: int = 6
) -> None:
    """Paper Figure 3: the pose track drawn on ``count`` evenly sampled frames of a clip's crop.

    crops (T, S, S, 3) uint8; xy (T, J, 2) in the crop's unit square; mask (T, J) bool.
    """
    frames = np.unique(np.linspace(0, len(crops) - 1, min(count, len(crops))).round().astype(int))
    size = crops.shape[1]
    fig = new_figure(figsize=(max(2.0 * len(frames), 6.0), 2.5), dpi=100)
    axes = fig.subplots(1, len(frames), squeeze=False)
    for ax, t in zip(axes[0], frames, strict=True):
        ax.imshow(crops[t])
        _skeleton(ax, xy[t], mask[t], size)
        ax.set_title(f"frame {t}", fontsize=8)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.axis("off")
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    save_png(fig, path)


def heat_range(heat: np.ndarray, groups) -> tuple[float, float]:
    """(low, high) of a map over the frame groups drawn (finite values only; (0, 1) if none): the colour
    scale of its row, so a group not drawn cannot set it."""
    shown = np.asarray(heat)[list(groups)]
    finite = shown[np.isfinite(shown)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return low, high if high > low else low + 1e-9


MAX_GROUPS_SHOWN = 8


def plot_explanation(
    crops: np.ndarray,
    xy: np.ndarray,
    mask: np.ndarray,
    explanation,
    tubelet_size: int,
    path: Path,
    title: str,
) -> None:
    """Paper Figure 4: per kept frame group (columns, at most :data:`MAX_GROUPS_SHOWN`), the crop with its
    pose, then each map of :class:`~transmodal.explain.ClipExplanation` over the patch grid on the crop.

    Each map's row has one colour scale over the groups drawn, with its colour bar: the maps of a random
    backbone are nearly flat, and a scale without numbers would show noise as structure. For RGB queries over
    pose the bar marks the share uniform attention gives (``tubelet_size / T``). Tokens the selector dropped
    are hatched; the title says when it dropped none in the groups drawn."""
    from matplotlib.patches import Rectangle

    maps = explanation.maps()
    groups = (
        explanation.group_index if explanation.group_index is not None else np.arange(len(explanation.kept))
    )
    groups = [int(g) for g in list(groups)[:MAX_GROUPS_SHOWN]]
    size = crops.shape[1]
    side = int(round(explanation.kept.shape[1] ** 0.5))
    patch = size / side
    rows = 1 + len(maps)
    fig = new_figure(
        figsize=(max(2.0 * len(groups), 4.0) + 1.0, 2.0 * rows + 0.8), dpi=100, layout="constrained"
    )
    # one more, narrow column for the rows' colour bars, so every column of frames lines up
    grid = fig.subplots(
        rows, len(groups) + 1, squeeze=False, gridspec_kw={"width_ratios": [1.0] * len(groups) + [0.07]}
    )
    axes, bars = grid[:, :-1], grid[:, -1]
    bars[0].axis("off")
    scales = {name: heat_range(heat, groups) for name, heat in maps.items()}
    dropped_any = False
    for column, g in enumerate(groups):
        t = g * tubelet_size
        ax = axes[0, column]
        ax.imshow(crops[t])
        _skeleton(ax, xy[t], mask[t], size)
        ax.set_title(f"group {g} (clip frames {t}-{t + tubelet_size - 1})", fontsize=7)
        dropped = np.flatnonzero(~np.asarray(explanation.kept[g], bool))
        dropped_any = dropped_any or dropped.size > 0
        for row, (name, heat) in enumerate(maps.items(), start=1):
            ax = axes[row, column]
            ax.imshow(crops[t], alpha=0.55)
            low, high = scales[name]
            image = ax.imshow(
                heat[g].reshape(side, side),
                cmap="inferno",
                alpha=0.6,
                extent=(0, size, size, 0),
                vmin=low,
                vmax=high,
                interpolation="nearest",
            )
            for p in dropped:
                y, x = divmod(int(p), side)
                ax.add_patch(
                    Rectangle(
                        (x * patch, y * patch), patch, patch, fill=False, hatch="xx", edgecolor="cyan",
                        linewidth=0.0,
                    )
                )  # fmt: skip
            if column == 0:
                ax.set_ylabel(name.replace(" (", "\n("), fontsize=7)
            if column == len(groups) - 1:
                bar = fig.colorbar(image, cax=bars[row])
                bar.ax.tick_params(labelsize=6)
                if name.startswith("RGB queries over pose"):
                    uniform = tubelet_size / len(crops)
                    if low <= uniform <= high:
                        bar.ax.axhline(uniform, color="cyan", linewidth=1.0)
                    bar.set_label(f"uniform: {uniform:.3g}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
    kept_note = (
        "hatched: tokens the selector dropped"
        if dropped_any
        else "no token of these groups was dropped by the selector"
    )
    fig.suptitle(f"{title}  ({kept_note}; each row its own colour scale)", fontsize=9, wrap=True)
    save_png(fig, path)


def plot_ablation(table: dict[str, dict], unit: str, path: Path, confidence: float) -> None:
    """Accuracy (mean over seeds, its interval, each seed) and backbone + head latency per variant, as a
    PNG whose title says what the bar, the whiskers, the dots and the latency are."""
    names = list(table)
    first = table[names[0]]
    y = np.arange(len(names))[::-1]
    fig = new_figure(figsize=(11, 0.5 * len(names) + 2.2), dpi=100)
    acc_ax, lat_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    means = np.array([100 * table[n]["accuracy_mean"] for n in names])
    intervals = np.array([[100 * v for v in table[n]["interval"]] for n in names])
    acc_ax.barh(y, means, color=["tab:blue" if n == "full" else "tab:gray" for n in names], alpha=0.6)
    # the interval as it is, wherever the mean lies (a percentile interval need not hold it)
    acc_ax.hlines(y, intervals[:, 0], intervals[:, 1], color="black", linewidth=1.2)
    for end in (0, 1):
        acc_ax.scatter(intervals[:, end], y, marker="|", s=60, color="black", zorder=3)
    for yi, name in zip(y, names, strict=True):
        seeds = 100 * np.asarray(table[name]["seed_accuracies"])
        acc_ax.scatter(seeds, np.full(len(seeds), yi), color="tab:red", s=10, zorder=4)
    acc_ax.set_yticks(y, names)
    acc_ax.set_xlabel(f"{unit}-level top-1 on the test split (%)")
    acc_ax.set_xlim(0, 100)
    lat_ax.barh(y, [table[n]["e2e_latency_ms"] for n in names], color="tab:orange", alpha=0.7)
    lat_ax.set_xlabel("backbone + head latency (ms per clip)")
    seeds = len(first["seed_accuracies"])
    fig.suptitle(
        f"Ablations (Table 5): bar = mean over {seeds} seed{'s' if seeds > 1 else ''}, whiskers = "
        f"{100 * confidence:g} % interval (seeds and test videos), red dots = each seed; "
        f"latency on {first['device']}: median of "
        f"{first['latency_repeats']} runs, batch {first['latency_batch']}",
        fontsize=9,
        wrap=True,
    )
    fig.tight_layout()
    save_png(fig, path)


def _delta(row: dict) -> str:
    if "delta_vs_full" not in row:
        return "-"
    low, high = (100 * v for v in row["delta_interval"])
    verdict = f"{100 * row['delta_vs_full']:+.1f}" if row["delta_significant"] else "no difference"
    return f"{verdict} [{low:+.1f}, {high:+.1f}]"


def _spread(row: dict) -> str:
    """The seeds' standard deviation; none with one seed (a spread of one value is undefined, not 0)."""
    std = row["accuracy_std"]
    return "n/a" if std is None else f"{100 * std:.1f}"


def ablation_markdown(table: dict[str, dict], backbone: dict, cfg: AblationConfig) -> str:
    """Table 5 as Markdown (``metrics/ablation.md``) from :func:`~transmodal.training.table.aggregate`."""
    first = next(iter(table.values()))
    confidence = f"{100 * cfg.confidence:g} %"
    lines = [
        "# Ablations (paper Table 5), as measured by this pipeline",
        "",
        f"Backbone: `{backbone.get('checkpoint')}` (grid {backbone['grid'][0]} x {backbone['grid'][1]} tokens, "
        f"D={backbone['hidden_size']}, {backbone.get('model_dtype', 'float32')}), "
        f"{first['backbone_flops'] / 1e9:.3g} GFLOPs per clip here; VideoMAE-B "
        f"at the paper's size: {first['backbone_flops_paper_size'] / 1e9:.0f} GFLOPs per clip.",
        "",
        f"Accuracy: {PAPER_UNIT}-level top-1 on the test split ({first['test_units']} {PAPER_UNIT}s; "
        f"{UNITS[PAPER_UNIT]}), mean ± std over seeds {list(cfg.seeds)} (n/a with one seed), with a "
        f"{confidence} interval that covers what training and what the test set can move: mean ± t x "
        "standard error, the error combining the spread of the seeds' accuracies and a bootstrap over whole "
        f"test videos ({cfg.bootstrap_resamples} resamples), t with Welch-Satterthwaite's degrees of freedom "
        f"over the seeds. vs full: the difference and its {confidence} interval (paired by seed, as seed s of "
        "every row starts from the same draw, and by test unit), the value printed only when the interval "
        "excludes 0 (per comparison, uncorrected).",
        "",
        f"FLOPs: FlopCounterMode, one clip, the head and the backbone (at this run's size and at the paper's, "
        "D=768 and 8 x 196 tokens; a variant with backbone.keep < 1 runs the encoder on its kept tokens only). "
        "Each row's head is counted with that row's own params, at the paper's size too: a row that also "
        "lowers selector.top_k_tokens is counted with the lower value. "
        f"Latency on {first['device']}: median of {first['latency_repeats']} runs after warm-up, "
        f"batch of {first['latency_batch']}, the same input batch for every variant of one feature cache; "
        "backbone + head per clip (detection and pose not included), every row measured in this one run.",
        "",
        f"| variant | overrides | top-1 (%) | {confidence} interval | vs full (pts) | head MFLOPs | "
        "head GFLOPs, paper size | backbone GFLOPs, paper size | head latency (ms/batch) | "
        "backbone + head latency (ms/clip) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "-"
        low, high = (100 * v for v in row["interval"])
        lines.append(
            f"| {name} | {overrides} | {100 * row['accuracy_mean']:.1f} ± {_spread(row)} | "
            f"[{low:.1f}, {high:.1f}] | {_delta(row)} | {row['head_flops'] / 1e6:.3g} | "
            f"{row['head_flops_paper_size'] / 1e9:.3g} | {row['backbone_flops_paper_size'] / 1e9:.0f} | "
            f"{row['head_latency_ms']:.2f} | "
            f"{row['e2e_latency_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"
