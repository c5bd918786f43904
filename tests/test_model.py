"""Unit tests for the TransMODAL head (CPU, tiny widths)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests.conftest import REPO_ROOT
from transmodal.model import (
    AdaptiveSelector,
    Attention,
    Classifier,
    CoAttentionBlock,
    CoAttentionFusion,
    PoseEncoder,
    TransModal,
    TransModalOutput,
    parameter_counts,
)
from transmodal.params import ModelConfig, ParamError, SelectorConfig

B, T, TUBELET, G, P, D, J, C_CLASSES = 2, 16, 2, 8, 16, 32, 17, 6
POSITIONS = ("after_fusion", "before_ffn", "before_fusion")


def make_model(seed: int = 0, *, selector: dict | None = None, **model_kwargs) -> TransModal:
    torch.manual_seed(seed)
    return build(ModelConfig(num_heads=4, dropout=0.1, **model_kwargs), SelectorConfig(**(selector or {})))


def build(model_cfg: ModelConfig, selector_cfg: SelectorConfig) -> TransModal:
    """The head at the test widths."""
    return TransModal(
        model_cfg,
        selector_cfg,
        dim=D,
        num_classes=C_CLASSES,
        num_frames=T,
        tubelet_size=TUBELET,
        patches_per_group=P,
    )


def make_inputs(seed: int = 1, channels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(B, G, P, D, generator=gen)
    pose = torch.rand(B, T, J, channels, generator=gen)
    return rgb, pose


def gather_kept(grid: torch.Tensor, group_index: torch.Tensor, patch_index: torch.Tensor) -> torch.Tensor:
    """Index a (B, G, P, D) grid with the selector's indices, one clip at a time, by plain indexing."""
    clips = []
    for b in range(grid.shape[0]):
        clips.append(
            torch.stack([grid[b, g, p] for g, p in zip(group_index[b], patch_index[b], strict=True)])
        )
    return torch.stack(clips)  # (B, G_k, P_k, D)


# --- Attention -------------------------------------------------------------------------------------------


def manual_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    h = attn.num_heads
    q = attn.q_proj(x)
    k = attn.k_proj(context)
    v = attn.v_proj(context)
    bsz, n, d = q.shape
    m = k.shape[1]
    q = q.view(bsz, n, h, d // h).transpose(1, 2)
    k = k.view(bsz, m, h, d // h).transpose(1, 2)
    v = v.view(bsz, m, h, d // h).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(bsz, n, d)
    return attn.out_proj(out)


def test_attention_matches_manual_softmax_self_and_cross():
    torch.manual_seed(0)
    attn = Attention(D, num_heads=4, dropout=0.5).eval()
    x = torch.randn(B, 10, D)
    context = torch.randn(B, 7, D)
    self_out = attn(x)
    cross_out = attn(x, context=context)
    assert self_out.shape == (B, 10, D) and cross_out.shape == (B, 10, D)
    torch.testing.assert_close(self_out, manual_attention(attn, x, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cross_out, manual_attention(attn, x, context), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(self_out, cross_out)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(D, num_heads=4, dropout=0.5)
    x = torch.randn(B, 10, D)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="model.num_heads"):
        Attention(30, num_heads=4)


# --- PoseEncoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 3])
def test_pose_encoder_shape(channels):
    encoder = PoseEncoder(num_joints=J, in_channels=channels, dim=D, num_frames=T, num_heads=4)
    assert encoder.embed.in_features == J * channels
    assert encoder.temporal_embed.shape == (1, T, D)
    _, pose = make_inputs(channels=channels)
    assert encoder(pose).shape == (B, T, D)
    with pytest.raises(ValueError, match="pose must be"):
        encoder(pose[:, : T - 1])


def test_pose_encoder_uses_temporal_position():
    # The same pose in every frame must still give different tokens per frame (E_temp).
    encoder = PoseEncoder(num_joints=J, in_channels=2, dim=D, num_frames=T, num_heads=4).eval()
    pose = torch.rand(1, 1, J, 2).expand(1, T, J, 2)
    tokens = encoder(pose)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])


def test_pose_encoder_layer_is_pre_norm_with_the_fusion_s_ffn_ratio():
    """Decision 5: x + SelfAttn(LN(x)), then x + FFN(LN(x)), FFN width mlp_ratio x D, no final norm."""
    encoder = PoseEncoder(num_joints=J, in_channels=2, dim=D, num_frames=T, num_heads=4, mlp_ratio=2.0).eval()
    x = torch.randn(2, T, D)
    layer = encoder.layer
    after_attn = x + layer.attn(layer.norm_attn(x))
    expected = after_attn + layer.ffn(layer.norm_ffn(after_attn))
    torch.testing.assert_close(layer(x), expected)
    widths = [m.out_features for m in layer.ffn.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [2 * D, D]


# --- Fusion ----------------------------------------------------------------------------------------------


def test_fusion_shapes_and_depth():
    fusion = CoAttentionFusion(D, depth=3, num_heads=4)
    assert len(fusion.blocks) == 3
    rgb, pose = torch.randn(B, G * P, D), torch.randn(B, T, D)
    out = fusion(rgb, pose)
    assert out.rgb.shape == (B, G * P, D) and out.pose.shape == (B, T, D)
    assert out.selection is None


def test_co_attention_is_parallel_on_block_inputs():
    # Both cross-attentions must read the block's INPUT tokens (Eq. 2), not the other's updated stream.
    torch.manual_seed(0)
    block = CoAttentionBlock(D, num_heads=4).eval()
    rgb, pose = torch.randn(B, 20, D), torch.randn(B, T, D)
    seen = {}
    block.attn_rgb.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(rgb=kwargs), with_kwargs=True
    )
    block.attn_pose.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(pose=kwargs), with_kwargs=True
    )
    block(rgb, pose)
    torch.testing.assert_close(seen["rgb"]["context"], block.norm_pose(pose))
    torch.testing.assert_close(seen["pose"]["context"], block.norm_rgb(rgb))


# --- AdaptiveSelector ------------------------------------------------------------------------------------


def test_selector_counts_paper_grid():
    grid = torch.randn(1, 8, 196, 8)
    out = AdaptiveSelector(8, 12, tubelet_size=2)(grid)
    assert out.tokens.shape == (1, 4, 24, 8)
    assert out.num_kept == 96
    assert out.group_index.shape == (1, 4) and out.patch_index.shape == (1, 4, 24)
    for frames, groups in ((4, 2), (12, 6), (16, 8), (1, 1), (3, 2)):
        assert AdaptiveSelector(frames, 12, tubelet_size=2)(grid).tokens.shape[1] == groups


def test_selector_clamps_tokens_per_group():
    # 12 tokens per frame x tubelet 2 = 24 > 16 patches: keeps all 16.
    out = AdaptiveSelector(8, 12, tubelet_size=2)(torch.randn(B, G, P, D))
    assert out.tokens.shape == (B, 4, P, D)


def direct_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, k, dim=-1).indices.sort(dim=-1).values


@pytest.mark.parametrize("scoring", ["l2", "learned"])
def test_selector_choices_equal_direct_top_k(scoring):
    torch.manual_seed(0)
    selector = AdaptiveSelector(6, 5, tubelet_size=2, scoring=scoring, dim=D)
    grid = torch.randn(B, G, P, D) * torch.rand(B, G, P, 1) * 3
    out = selector(grid)
    with torch.no_grad():
        if scoring == "l2":
            group_scores = torch.linalg.vector_norm(grid.sum(dim=2), dim=-1)
        else:
            group_scores = grid.mean(dim=2) @ selector.group_scorer.weight[0] + selector.group_scorer.bias
    groups = direct_top_k(group_scores, 3)
    torch.testing.assert_close(out.group_index, groups)
    for b in range(B):
        for i, g in enumerate(groups[b].tolist()):
            with torch.no_grad():
                if scoring == "l2":
                    token_scores = torch.linalg.vector_norm(grid[b, g], dim=-1)
                else:
                    token_scores = grid[b, g] @ selector.token_scorer.weight[0] + selector.token_scorer.bias
            patches = direct_top_k(token_scores, 10)
            assert out.patch_index[b, i].tolist() == patches.tolist()
            torch.testing.assert_close(out.tokens[b, i], grid[b, g, patches])


def test_selector_ties_are_deterministic_and_ordered():
    out = AdaptiveSelector(8, 3, tubelet_size=2)(torch.zeros(B, G, P, D))
    assert out.group_index.tolist() == [[0, 1, 2, 3]] * B
    assert out.patch_index.tolist() == [[[0, 1, 2, 3, 4, 5]] * 4] * B


def test_selector_out_of_range_names_the_key():
    """One check per range, in SelectorConfig: at load (>= 1) and against the grid when the head is built."""
    with pytest.raises(ParamError, match="selector.top_k_frames is 0"):
        SelectorConfig(top_k_frames=0)
    with pytest.raises(ParamError, match="selector.top_k_tokens is 0"):
        SelectorConfig(top_k_tokens=0)
    with pytest.raises(ParamError, match="selector.top_k_frames"):
        make_model(selector={"top_k_frames": T + 1})
    with pytest.raises(ParamError, match="selector.top_k_tokens"):
        make_model(selector={"top_k_tokens": P + 1})


def test_l2_selector_has_no_parameters_and_learned_has_two_scorers():
    assert sum(p.numel() for p in AdaptiveSelector(8, 12).parameters()) == 0
    learned = AdaptiveSelector(8, 12, scoring="learned", dim=D)
    assert sum(p.numel() for p in learned.parameters()) == 2 * (D + 1)


# --- TransModal ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_pose", [True, False])
@pytest.mark.parametrize("scoring", ["l2", "learned"])
@pytest.mark.parametrize("position", POSITIONS)
def test_selector_keeping_everything_equals_no_selector(position, scoring, use_pose):
    keep_all = {"top_k_frames": T, "top_k_tokens": P, "scoring": scoring, "position": position}
    plain = make_model(selector={"enabled": False}, use_pose=use_pose).eval()
    selecting = make_model(seed=5, selector=keep_all, use_pose=use_pose).eval()
    missing, unexpected = selecting.load_state_dict(plain.state_dict(), strict=False)
    assert all(key.startswith("selector.") for key in missing) and not unexpected
    rgb, pose = make_inputs()
    out_plain, out_selecting = plain(rgb, pose), selecting(rgb, pose)
    assert out_selecting.kept_tokens == out_plain.kept_tokens == G * P
    torch.testing.assert_close(out_selecting.logits, out_plain.logits, atol=1e-5, rtol=1e-5)


def test_selector_changes_logits_when_it_prunes():
    plain = make_model(selector={"enabled": False}).eval()
    pruning = make_model(selector={"top_k_frames": 8, "top_k_tokens": 4}).eval()
    pruning.load_state_dict(plain.state_dict())
    rgb, pose = make_inputs()
    assert not torch.allclose(plain(rgb, pose).logits, pruning(rgb, pose).logits)


def test_model_output_shapes_and_counts():
    model = make_model(selector={"top_k_frames": 8, "top_k_tokens": 4})
    rgb, pose = make_inputs()
    for mode in (model.train, model.eval):
        mode()
        out = model(rgb, pose)
        assert isinstance(out, TransModalOutput)
        assert out.logits.shape == (B, C_CLASSES) and out.pooled.shape == (B, D)
        assert out.kept_tokens == 4 * 8
        assert out.group_index.shape == (B, 4) and out.patch_index.shape == (B, 4, 8)
        assert out.group_scores.shape == (B, G) and out.token_scores.shape == (B, 4, P)
    off = make_model(selector={"enabled": False})
    out = off(rgb, pose)
    assert off.selector is None and out.group_index is None and out.patch_index is None
    assert out.kept_tokens == G * P


def test_model_rejects_wrong_grid():
    model = make_model()
    rgb, pose = make_inputs()
    with pytest.raises(ValueError, match="rgb must be"):
        model(rgb[:, :, :-1], pose)
    with pytest.raises(ValueError, match="no pose input"):
        model(rgb, None)
    # one pose track for a batch of clips would broadcast through the attention and the residuals
    with pytest.raises(ValueError, match=r"pose has 1 clips but rgb has \d+"):
        model(rgb, pose[:1])
    with pytest.raises(ValueError, match=r"pose has \d+ clips but rgb has 1"):
        model(rgb[:1], pose)


@pytest.mark.parametrize("position", POSITIONS)
def test_learned_scorer_receives_gradient(position):
    model = make_model(
        selector={"top_k_frames": 8, "top_k_tokens": 4, "scoring": "learned", "position": position}
    )
    rgb, pose = make_inputs()
    loss = torch.nn.functional.cross_entropy(model(rgb, pose).logits, torch.tensor([0, 3]))
    loss.backward()
    for scorer in (model.selector.group_scorer, model.selector.token_scorer):
        assert scorer.weight.grad is not None
        assert scorer.weight.grad.abs().sum() > 0


def test_learned_gate_does_not_change_forward_values():
    torch.manual_seed(0)
    grid = torch.randn(B, G, P, D)
    out = AdaptiveSelector(8, 4, scoring="learned", dim=D)(grid)
    assert torch.equal(out.tokens, gather_kept(grid, out.group_index, out.patch_index))


def test_no_pose_has_no_pose_parameters_and_ignores_pose():
    model = make_model(use_pose=False, selector={"top_k_frames": 8, "top_k_tokens": 4}).eval()
    names = [name for name, _ in model.named_parameters()]
    assert model.pose_encoder is None and model.fusion is None
    assert not any(name.startswith(("pose_encoder", "fusion")) for name in names)
    counts = parameter_counts(model)
    assert counts["pose_encoder"] == 0 and counts["fusion"] == 0
    assert counts["total"] == counts["classifier"] == (D * D + D) + (D * C_CLASSES + C_CLASSES)
    rgb, pose = make_inputs()
    reference = model(rgb, None).logits
    torch.testing.assert_close(model(rgb, pose).logits, reference)
    torch.testing.assert_close(model(rgb, torch.randn_like(pose)).logits, reference)


def test_pose_changes_logits_when_used():
    model = make_model().eval()
    rgb, pose = make_inputs()
    assert not torch.allclose(model(rgb, pose).logits, model(rgb, torch.rand_like(pose)).logits)


def test_positions_differ_in_compute():
    selector = {"top_k_frames": 8, "top_k_tokens": 4}
    kept = 4 * 8
    expected = {  # tokens seen by the last block's RGB cross-attention and RGB FFN
        "after_fusion": (G * P, G * P),
        "before_ffn": (G * P, kept),
        "before_fusion": (kept, kept),
    }
    rgb, pose = make_inputs()
    logits = {}
    for position, (attn_tokens, ffn_tokens) in expected.items():
        model = make_model(selector={**selector, "position": position}).eval()
        block = model.fusion.blocks[-1]
        seen = {}
        block.attn_rgb.register_forward_hook(lambda m, args, out, seen=seen: seen.update(attn=args[0].shape))
        block.ffn_rgb.register_forward_hook(lambda m, args, out, seen=seen: seen.update(ffn=args[0].shape))
        out = model(rgb, pose)
        assert seen["attn"] == (B, attn_tokens, D), position
        assert seen["ffn"] == (B, ffn_tokens, D), position
        assert out.logits.shape == (B, C_CLASSES)
        assert out.kept_tokens == kept
        logits[position] = out.logits
    assert not torch.allclose(logits["after_fusion"], logits["before_fusion"])


def test_before_ffn_scores_the_pre_ffn_tokens():
    # The FFN is per token, so before_ffn differs from after_fusion only in WHICH features are scored:
    # the cross-attended tokens before the FFN. Check the selection against a direct top-k on them.
    selector = {"top_k_frames": 8, "top_k_tokens": 4, "position": "before_ffn"}
    model = make_model(selector=selector).eval()
    block = model.fusion.blocks[-1]
    seen = {}
    block.register_forward_pre_hook(lambda m, args: seen.update(rgb=args[0]))
    block.attn_rgb.register_forward_hook(lambda m, args, out: seen.update(attn=out))
    out = model(*make_inputs())
    pre_ffn = (seen["rgb"] + seen["attn"]).view(B, G, P, D)
    groups = direct_top_k(torch.linalg.vector_norm(pre_ffn.sum(dim=2), dim=-1), 4)
    torch.testing.assert_close(out.group_index, groups)
    for b in range(B):
        for i, g in enumerate(groups[b].tolist()):
            patches = direct_top_k(torch.linalg.vector_norm(pre_ffn[b, g], dim=-1), 8)
            assert out.patch_index[b, i].tolist() == patches.tolist()


def test_before_ffn_selects_only_in_last_block():
    model = make_model(
        fusion_depth=2, selector={"top_k_frames": 8, "top_k_tokens": 4, "position": "before_ffn"}
    )
    shapes = []
    for block in model.fusion.blocks:
        block.ffn_rgb.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape[1]))
    model(*make_inputs())
    assert shapes == [G * P, 32]


@pytest.mark.parametrize("pool", ["rgb", "rgb_and_pose"])
def test_pool_averages_the_kept_tokens(pool):
    model = make_model(pool=pool, selector={"top_k_frames": 8, "top_k_tokens": 4}).eval()
    fused = {}
    model.fusion.register_forward_hook(lambda m, args, out: fused.update(out=out))
    out = model(*make_inputs())
    grid = fused["out"].rgb.view(B, G, P, D)
    kept = gather_kept(grid, out.group_index, out.patch_index).flatten(1, 2)
    if pool == "rgb_and_pose":
        kept = torch.cat([kept, fused["out"].pose], dim=1)
    torch.testing.assert_close(out.pooled, kept.mean(dim=1))
    torch.testing.assert_close(out.logits, model.classifier(kept.mean(dim=1)))


def test_classifier_shape():
    assert Classifier(D, C_CLASSES)(torch.randn(B, D)).shape == (B, C_CLASSES)


def test_same_seed_same_model_and_output():
    rgb, pose = make_inputs()
    first, second = make_model(seed=3), make_model(seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(7)
    out_first = first(rgb, pose).logits  # train mode: dropout draws from the global RNG
    torch.manual_seed(7)
    out_second = second(rgb, pose).logits
    assert torch.equal(out_first, out_second)
    other = make_model(seed=4)
    assert not torch.equal(first.classifier.head[0].weight, other.classifier.head[0].weight)


def test_config_dict_round_trip_rebuilds_identical_model():
    model = make_model(
        pose_scores=True,
        fusion_depth=2,
        pool="rgb_and_pose",
        selector={"top_k_frames": 4, "top_k_tokens": 3, "scoring": "learned", "position": "before_ffn"},
    ).eval()
    config = json.loads(json.dumps(model.config_dict()))
    assert config["in_channels"] == 3
    torch.manual_seed(123)
    rebuilt = TransModal.from_config_dict(config).eval()
    assert rebuilt.config_dict() == model.config_dict()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rgb, pose = make_inputs(channels=3)
    torch.testing.assert_close(rebuilt(rgb, pose).logits, model(rgb, pose).logits, atol=0, rtol=0)
    bad = {**config, "in_channels": 2}
    with pytest.raises(ValueError, match="in_channels"):
        TransModal.from_config_dict(bad)
    assert dataclasses.asdict(rebuilt.selector_cfg)["position"] == "before_ffn"


@pytest.mark.parametrize(
    "pool, classifier", [("rgb_and_pose", "mlp"), ("rgb", "mlp"), ("rgb_and_pose", "linear")]
)
def test_parameter_counts_are_real(pool, classifier):
    model = make_model(
        pool=pool,
        classifier=classifier,
        selector={"scoring": "learned", "top_k_frames": 8, "top_k_tokens": 4},
    )
    counts = parameter_counts(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["total"] == trainable
    assert counts["pose_encoder"] + counts["fusion"] + counts["selector"] + counts["classifier"] == trainable
    hidden = 2 * D  # model.mlp_ratio 2
    attention = 4 * (D * D + D)
    ffn = D * hidden + hidden + hidden * D + D
    norm = 2 * D
    assert counts["selector"] == 2 * (D + 1)
    head = D * C_CLASSES + C_CLASSES
    assert counts["classifier"] == (D * D + D + head if classifier == "mlp" else head)  # norm has no affine
    assert counts["pose_encoder"] == (J * 2 * D + D) + T * D + 2 * norm + attention + ffn
    if pool == "rgb_and_pose":
        assert counts["fusion"] == 2 * attention + 2 * ffn + 4 * norm
    else:  # depth 1: no pose half in the last block (it would feed nothing)
        assert counts["fusion"] == attention + ffn + 3 * norm
    model.classifier.requires_grad_(False)
    assert parameter_counts(model)["classifier"] == 0
    assert parameter_counts(model)["total"] == trainable - counts["classifier"]


def _configs_under_test() -> dict[str, tuple[ModelConfig, SelectorConfig]]:
    """params.yaml's model and selector, and those of every ablation variant it lists, plus the other
    choices of the params whose layouts differ (pool, depth, learned scoring)."""
    from transmodal.params import apply_overrides, load_params, section

    params = load_params(REPO_ROOT / "params.yaml")
    variants = dict(section(params, "ablation").variants)
    variants.update(
        {
            "pool_rgb": {"model.pool": "rgb"},
            "pool_rgb_depth_2": {"model.pool": "rgb", "model.fusion_depth": 2},
            "depth_2": {"model.fusion_depth": 2},
            "learned_scoring": {"selector.scoring": "learned"},
            "learned_before_fusion": {"selector.scoring": "learned", "selector.position": "before_fusion"},
            "pose_scores": {"model.pose_scores": True},
        }
    )
    configs = {}
    for name, overrides in variants.items():
        varied = apply_overrides(params, overrides or {})
        configs[name] = (section(varied, "model"), section(varied, "selector"))
    return configs


CONFIGS = _configs_under_test()


def _model_of(name: str) -> TransModal:
    """The head of one configuration under test at the test widths (4 heads for D=32)."""
    model_cfg, selector_cfg = CONFIGS[name]
    return build(dataclasses.replace(model_cfg, num_heads=4), selector_cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_trainable_parameter_receives_a_gradient(name):
    model_cfg, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = _model_of(name).train()
    rgb, pose = make_inputs(channels=3 if model_cfg.pose_scores else 2)
    loss = torch.nn.functional.cross_entropy(model(rgb, pose).logits, torch.arange(B) % C_CLASSES)
    loss.backward()
    dead = [
        param_name
        for param_name, param in model.named_parameters()
        if param.requires_grad and (param.grad is None or not torch.any(param.grad != 0))
    ]
    assert dead == [], f"{name}: parameters without gradient: {dead}"


def test_linear_probe_is_a_linear_layer_on_the_mean_of_the_standardised_frozen_tokens():
    model = _model_of("linear_probe")
    assert model.pose_encoder is None and model.fusion is None and model.selector is None
    assert parameter_counts(model)["total"] == D * C_CLASSES + C_CLASSES  # one Linear(D, classes)
    rgb, pose = make_inputs()
    model.train()(rgb, pose)  # one training batch: the running statistics move towards its per-channel ones
    model.eval()
    norm = model.token_norm
    assert norm is not None and not norm.affine
    tokens = (rgb - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    pooled = tokens.flatten(1, 2).mean(dim=1)  # every token of the grid
    expected = model.classifier.head(torch.nn.functional.layer_norm(pooled, (D,)))
    torch.testing.assert_close(model(rgb, pose).logits, expected)


@pytest.mark.parametrize("name", ["full", "linear_probe"])
def test_token_norm_removes_a_per_channel_offset_and_scale_of_the_frozen_tokens(name):
    """model.token_norm: batch: in training, a per-channel affine change of every token changes nothing (the
    same dropout masks: the same seed before each forward); without it, it does."""
    assert CONFIGS[name][0].token_norm == "batch"  # the params.yaml default
    model = _model_of(name)
    rgb, pose = make_inputs()
    gen = torch.Generator().manual_seed(5)
    shifted = rgb * (1 + torch.rand(D, generator=gen)) + 10 * torch.randn(D, generator=gen)
    torch.manual_seed(0)
    before = model.train()(rgb, pose).logits
    torch.manual_seed(0)
    after = model.train()(shifted, pose).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    without = build(dataclasses.replace(CONFIGS[name][0], num_heads=4, token_norm="none"), CONFIGS[name][1])
    assert without.token_norm is None
    torch.manual_seed(0)
    plain = without.train()(rgb, pose).logits
    torch.manual_seed(0)
    assert not torch.allclose(without.train()(shifted, pose).logits, plain, atol=1e-2)


def test_token_norm_is_synced_over_the_processes_on_cuda_only():
    """Under DistributedDataParallel on CUDA the token norm becomes a SyncBatchNorm (the global batch's
    statistics); its state keeps the plain head's names, so the checkpoint loads into it. On the CPU, and
    without a token norm, the head is left as it is."""
    from transmodal.training.train import sync_token_norm

    model = make_model(token_norm="batch")
    assert sync_token_norm(model, torch.device("cpu")).token_norm.__class__ is torch.nn.BatchNorm1d
    plain = make_model(token_norm="none")
    assert sync_token_norm(plain, torch.device("cuda")) is plain
    synced = sync_token_norm(make_model(token_norm="batch"), torch.device("cuda"))
    assert isinstance(synced.token_norm, torch.nn.SyncBatchNorm)
    assert list(synced.state_dict()) == list(model.state_dict())
    model.load_state_dict(synced.state_dict(), strict=True)
    rgb, pose = make_inputs()
    synced.eval(), model.eval()  # outside a process group both normalise with their running statistics
    torch.testing.assert_close(synced(rgb, pose).logits, model(rgb, pose).logits, rtol=0, atol=0)
