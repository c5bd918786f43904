"""Parameters and FLOPs per module, as the paper's Table 1 reports them, counted rather than estimated.

FLOPs are counted by :mod:`transmodal.flops` (``FlopCounterMode``, one clip, eval mode, on the ``meta``
device).

``PAPER_SIZE`` is the paper's setting (section 3, Figure 1): D=768, 16 frames in 8 groups of 196 patches,
17 joints, 6 KTH classes. ``TABLE1`` is the paper's Table 1 (millions of parameters, GFLOPs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from transmodal.flops import count_flops, videomae_complexity
from transmodal.model.transmodal import TransModal, parameter_counts
from transmodal.params import SELECTOR_POSITIONS, ModelConfig, SelectorConfig

MODULES = ("pose_encoder", "fusion", "selector", "classifier")

PAPER_SIZE = {
    "dim": 768,
    "num_classes": 6,
    "num_frames": 16,
    "tubelet_size": 2,
    "patches_per_group": 196,
    "num_joints": 17,
}

# Paper Table 1: module -> (parameters in millions, GFLOPs); "<0.01" is written as 0.01 with less_than.
TABLE1 = {
    "backbone": {"parameters_m": 87.0, "gflops": None},
    "pose_encoder": {"parameters_m": 0.22, "gflops": 0.02},
    "fusion": {"parameters_m": 9.45, "gflops": 0.81},
    "selector": {"parameters_m": 0.05, "gflops": 0.01, "gflops_less_than": True},
    "classifier": {"parameters_m": 0.60, "gflops": 0.01, "gflops_less_than": True},
    "total": {"parameters_m": 10.32, "gflops": 0.83},
}

# Why a count cannot equal Table 1 with any setting of the params (checked by tests/test_complexity.py).
TABLE1_GAPS = {
    "backbone": (
        "the encoder that produces the cached tokens; the checkpoint's Kinetics-400 head (fc_norm + "
        "Linear(768, 400), 0.31M) is not used"
    ),
    "pose_encoder": (
        "0.22M cannot hold the 'single Transformer encoder layer' of section 3.2.2 at D=768: its attention "
        "alone is 4 x 768 x 769 = 2.36M; the Eq. 1 embedding and temporal embedding are 0.04M"
    ),
    "selector": (
        "Eq. 3-4 have no parameters (selector.scoring l2); the 'learnable linear layers' of the text "
        "(selector.scoring learned) are two Linear(768, 1), 1,538 parameters; no reading gives 0.05M"
    ),
    "total": (
        "the sum of the rows above, 4.50M more than the paper's: the PoseEncoder's layer (+4.55M) less "
        "the selector's 0.05M"
    ),
}


def head_complexity(model_cfg: ModelConfig, selector_cfg: SelectorConfig, **size: int) -> dict[str, Any]:
    """Trainable parameters and FLOPs per clip of the head, per module and total, at ``size`` (the keyword
    arguments of :class:`TransModal`: dim, num_classes, num_frames, tubelet_size, patches_per_group,
    num_joints)."""
    with torch.device("meta"):
        model = TransModal(model_cfg, selector_cfg, **size).eval()
        groups = size["num_frames"] // size["tubelet_size"]
        rgb = torch.empty(1, groups, size["patches_per_group"], size["dim"])
        pose = torch.empty(1, size["num_frames"], size.get("num_joints", 17), model.in_channels)
    flops = count_flops(model, rgb, pose)
    return {
        "parameters": parameter_counts(model),
        "flops": {**{name: flops.get(name, 0) for name in MODULES}, "total": flops[""]},
    }


def paper_size_complexity(model_cfg: ModelConfig, selector_cfg: SelectorConfig) -> dict[str, Any]:
    """This head's architecture at the paper's size, VideoMAE-B beside it, and the head's total FLOPs for
    every selector position (``none``: the selector off)."""
    from transformers import VideoMAEConfig

    head = head_complexity(model_cfg, selector_cfg, **PAPER_SIZE)
    by_position = {
        position: head_complexity(
            model_cfg, dataclasses.replace(selector_cfg, enabled=True, position=position), **PAPER_SIZE
        )["flops"]["total"]
        for position in SELECTOR_POSITIONS
    }
    by_position["none"] = head_complexity(
        model_cfg, dataclasses.replace(selector_cfg, enabled=False), **PAPER_SIZE
    )["flops"]["total"]
    return {
        **head,
        "size": dict(PAPER_SIZE),
        "backbone": {
            "checkpoint": "VideoMAE-B 16x224 (VideoMAEConfig defaults)",
            **videomae_complexity(VideoMAEConfig()),
        },
        "head_flops_by_selector_position": by_position,
    }


def table1_rows(paper: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 1 beside this implementation's counts (``paper``: :func:`paper_size_complexity`)."""
    rows = []
    for name in ("backbone", *MODULES, "total"):
        ours = (
            paper["backbone"]
            if name == "backbone"
            else {
                "parameters": paper["parameters"][name],
                "flops": paper["flops"][name],
            }
        )
        reference = TABLE1[name]
        rows.append(
            {
                "module": name,
                "paper_parameters_m": reference["parameters_m"],
                "parameters": ours["parameters"],
                "parameters_match": round(ours["parameters"] / 1e6, 2) == reference["parameters_m"],
                "paper_gflops": reference["gflops"],
                "paper_gflops_less_than": reference.get("gflops_less_than", False),
                "gflops": ours["flops"] / 1e9,
                "gap": TABLE1_GAPS.get(name, ""),
            }
        )
    return rows


LABELS = {
    "backbone": "VideoMAE backbone (frozen)",
    "pose_encoder": "PoseEncoder",
    "fusion": "CoAttentionFusion",
    "selector": "AdaptiveSelector",
    "classifier": "ActionClassifier",
    "total": "Total trainable",
}


def table1_markdown(paper: dict[str, Any]) -> str:
    """The README's Table 1 comparison, generated (tests/test_complexity.py checks the README holds it)."""
    lines = [
        "| module | paper params (M) | ours (params) | paper GFLOPs | ours GFLOPs (one clip) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in table1_rows(paper):
        if row["paper_gflops"] is None:
            paper_flops = "n/a"
        else:
            paper_flops = ("<" if row["paper_gflops_less_than"] else "") + f"{row['paper_gflops']:.2f}"
        mark = "" if row["parameters_match"] else " (differs)"
        lines.append(
            f"| {LABELS[row['module']]} | {row['paper_parameters_m']:.2f} | {row['parameters']:,}{mark} | "
            f"{paper_flops} | {row['gflops']:.2f} |"
        )
    by_position = paper["head_flops_by_selector_position"]
    lines += [
        "",
        "| head GFLOPs per clip, by `selector.position` | after_fusion | before_ffn | before_fusion | "
        "no selector |",
        "|---|---:|---:|---:|---:|",
        "| this head at the paper's size | "
        + " | ".join(f"{by_position[p] / 1e9:.2f}" for p in (*SELECTOR_POSITIONS, "none"))
        + " |",
    ]
    return "\n".join(lines) + "\n"
