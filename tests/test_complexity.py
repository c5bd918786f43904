"""Table 1 at the paper's size: parameter counts where they can be matched, the recorded gap where not,
and FLOPs counted by FlopCounterMode (checked against a hand count of the matrix products)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import REPO_ROOT
from transmodal.model.complexity import (
    PAPER_SIZE,
    TABLE1,
    TABLE1_GAPS,
    head_complexity,
    paper_size_complexity,
    table1_markdown,
    table1_rows,
)
from transmodal.params import ModelConfig, SelectorConfig, load_params, section


@pytest.fixture(scope="module")
def defaults() -> tuple[ModelConfig, SelectorConfig]:
    params = load_params(REPO_ROOT / "params.yaml")
    return section(params, "model"), section(params, "selector")


@pytest.fixture(scope="module")
def paper(defaults) -> dict:
    return paper_size_complexity(*defaults)


def test_table1_parameter_counts_at_the_paper_size(paper):
    counts = paper["parameters"]
    # Two 768-wide multi-head attentions, two FFNs of hidden 1536 (model.mlp_ratio 2) and 4 LayerNorms.
    attention, ffn, norm = 4 * (768 * 768 + 768), 768 * 1536 + 1536 + 1536 * 768 + 768, 2 * 768
    assert counts["fusion"] == 2 * attention + 2 * ffn + 4 * norm == 9_454_080
    assert counts["classifier"] == 768 * 768 + 768 + 768 * 6 + 6 == 595_206  # model.classifier mlp
    # Not reachable: the encoder layer of section 3.2.2 alone exceeds Table 1's 0.22M (gap recorded).
    embed = 17 * 2 * 768 + 768 + 16 * 768
    assert counts["pose_encoder"] == embed + 2 * norm + attention + ffn == 4_766_208
    assert counts["selector"] == 0  # selector.scoring l2: Eq. 3-4 have no parameters
    assert counts["total"] == sum(
        counts[name] for name in ("pose_encoder", "fusion", "selector", "classifier")
    )
    rows = {row["module"]: row for row in table1_rows(paper)}
    assert rows["fusion"]["parameters_match"] and rows["classifier"]["parameters_match"]
    for name in ("backbone", "pose_encoder", "selector", "total"):
        assert not rows[name]["parameters_match"], name
        assert rows[name]["gap"] == TABLE1_GAPS[name] != ""
    assert paper["backbone"]["parameters"] == 86_225_664  # VideoMAE-B encoder; Table 1 says 87M
    assert set(TABLE1) == set(rows)


def test_learned_scoring_counts_two_linear_scorers(defaults):
    model_cfg, selector_cfg = defaults
    learned = head_complexity(model_cfg, dataclasses.replace(selector_cfg, scoring="learned"), **PAPER_SIZE)
    assert learned["parameters"]["selector"] == 2 * (768 + 1)


def test_fusion_flops_equal_a_hand_count_of_its_matrix_products(paper):
    N, T, D, H = 8 * 196, 16, 768, 1536  # RGB tokens, pose tokens, width, FFN hidden
    projections = 2 * D * D * (N + 2 * T + N) + 2 * D * D * (T + 2 * N + T)  # q, k, v, out of both attentions
    attention = 2 * 2 * (2 * N * T * D)  # scores and weighted sum, in both directions
    ffns = 2 * 2 * D * H * (N + T)
    assert paper["flops"]["fusion"] == projections + attention + ffns
    assert paper["flops"]["total"] == sum(
        paper["flops"][name] for name in ("pose_encoder", "fusion", "classifier")
    )
    assert paper["flops"]["classifier"] == 2 * (768 * 768 + 768 * 6)


def test_backbone_flops_and_selector_positions(paper):
    # VideoMAE-B on 16 x 224^2: 1568 tokens through 12 layers; about 180 G multiply-adds.
    assert 355e9 < paper["backbone"]["flops"] < 365e9
    by_position = paper["head_flops_by_selector_position"]
    assert by_position["after_fusion"] == by_position["none"] == paper["flops"]["total"]
    assert by_position["before_fusion"] < by_position["before_ffn"] < by_position["after_fusion"]
    assert paper["flops"]["total"] < 0.05 * paper["backbone"]["flops"]


def test_readme_shows_the_generated_table1(paper):
    readme = (REPO_ROOT / "README.md").read_text()
    assert table1_markdown(paper) in readme, "README's Table 1 comparison is stale: paste table1_markdown()"
