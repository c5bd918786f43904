"""The figures of the evaluate and ablation stages and of ``transmodal explain`` (transmodal.training.figures)."""

import subprocess
import sys

import numpy as np

from tests.conftest import REPO_ROOT
from transmodal.explain import ClipExplanation
from transmodal.training.figures import heat_range, plot_confusion, plot_explanation, row_shares

PNG = b"\x89PNG\r\n\x1a\n"


def _explanation(dropped: bool) -> ClipExplanation:
    """8 frame groups of 16 patches, groups 0, 2, 5 kept; the scores peak in group 7, which is not drawn."""
    rng = np.random.default_rng(0)
    kept = np.zeros((8, 16), bool)
    kept[[0, 2, 5]] = True
    if dropped:
        kept[2, [0, 5]] = False
    scores = np.full((8, 16), np.nan)
    scores[[0, 2, 5]] = rng.uniform(0.2, 0.4, (3, 16))
    attention = rng.uniform(0.12, 0.13, (8, 16))
    attention[7] = 5.0
    return ClipExplanation(
        probabilities=np.full(6, 1 / 6),
        group_index=np.array([0, 2, 5]),
        kept=kept,
        token_scores=scores,
        rgb_to_pose=attention,
        pose_to_rgb=attention / attention.sum(),
    )


def test_a_confusion_row_without_items_is_not_a_row_of_zeros():
    shares, counts = row_shares([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    assert counts.tolist() == [4, 0, 4]
    np.testing.assert_allclose(shares[0], [0.75, 0.25, 0.0])
    assert np.isnan(shares[1]).all() and shares[2].tolist() == [0.25, 0.25, 0.5]


def test_a_map_is_scaled_over_the_groups_drawn():
    explanation = _explanation(dropped=False)
    low, high = heat_range(explanation.rgb_to_pose, [0, 2, 5])
    assert 0.12 <= low < high <= 0.13  # group 7's 5.0 is not drawn, so it does not flatten the others
    assert heat_range(explanation.token_scores, [0, 2, 5])[0] >= 0.2  # NaN outside the kept groups
    flat = np.full((2, 4), 0.5)
    low, high = heat_range(flat, [0, 1])
    assert low == 0.5 and high > low
    assert heat_range(np.full((2, 4), np.nan), [0]) == (0.0, 1.0)


def test_figures_are_written_and_the_same_bytes_twice(tmp_path):
    crops = np.zeros((16, 64, 64, 3), np.uint8)
    xy = np.full((16, 17, 2), 0.5, np.float32)
    mask = np.ones((16, 17), bool)
    for dropped in (False, True):
        paths = [tmp_path / f"{dropped}-{n}.png" for n in range(2)]
        for path in paths:
            plot_explanation(crops, xy, mask, _explanation(dropped), 2, path, "clip")
        assert paths[0].read_bytes()[:8] == PNG and paths[0].read_bytes() == paths[1].read_bytes()
    plot_confusion([[3, 1], [0, 0]], ["a", "b"], tmp_path / "confusion.png", "top-1")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG


def test_the_figures_leave_pyplot_alone(tmp_path):
    """No pyplot: a notebook's backend is not switched and its figures are not closed."""
    script = f"""
import sys
import numpy as np, pandas as pd
from transmodal.training.figures import plot_confusion, plot_curves
plot_confusion([[1, 0], [0, 1]], ["a", "b"], {str(tmp_path / "c.png")!r}, "t")
history = pd.DataFrame({{"epoch": [1, 2], "train_loss": [1.0, 0.5], "train_acc": [0.2, 0.6],
                         "val_loss": [1.1, 0.7], "val_acc": [0.1, 0.5]}})
plot_curves(history, {str(tmp_path / "k.png")!r}, "t", 2)
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG and (tmp_path / "k.png").read_bytes()[:8] == PNG
