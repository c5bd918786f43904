"""Tiny, seeded, random-initialised checkpoints of the three architectures, written with save_pretrained.

They exercise exactly the real loading path (``from_pretrained`` on a folder) without any download.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transmodal.io import atomic_dir

COCO_LABELS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()


def write_detector(out: Path, seed: int) -> None:
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    id2label = {i: name.replace("_", " ") for i, name in enumerate(COCO_LABELS)}
    config = RTDetrConfig(
        backbone_config=backbone,
        encoder_in_channels=[32, 64, 128],
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        d_model=32,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        num_queries=30,
        num_denoising=0,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = RTDetrForObjectDetection(config).eval()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        RTDetrImageProcessor(size={"height": 128, "width": 128}).save_pretrained(tmp)


def write_pose(out: Path, seed: int) -> None:
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        image_size=[64, 48],
        patch_size=[16, 16],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        num_experts=6,
        part_features=8,
        out_indices=[2],
    )
    # num_labels: one heatmap per COCO-17 joint (the config default is 2)
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    model = VitPoseForPoseEstimation(config).eval()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(tmp)


def write_backbone(
    out: Path,
    seed: int,
    image_size: int = 64,
    hidden_size: int = 64,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
) -> None:
    """A random 2-layer VideoMAE (16 frames, tubelet 2, 16 px patches) and its processor config. The
    defaults are the tiny demo backbone; the benchmarks also build a 224 px one (the paper's 8 x 196 grid)."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    torch.manual_seed(seed)
    config = VideoMAEConfig(
        image_size=image_size,
        patch_size=16,
        num_frames=16,
        tubelet_size=2,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        use_mean_pooling=True,
    )
    model = VideoMAEModel(config).eval()
    # ImageNet statistics, as the Kinetics-finetuned VideoMAE checkpoints ship them.
    processor = VideoMAEImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def write_tiny_checkpoints(out_dir: Path, seed: int = 0) -> dict[str, str]:
    """Write ``out_dir/{detector,pose,backbone}``; returns the folder of each."""
    out_dir = Path(out_dir)
    write_detector(out_dir / "detector", seed)
    write_pose(out_dir / "pose", seed + 1)
    write_backbone(out_dir / "backbone", seed + 2)
    return {name: str(out_dir / name) for name in ("detector", "pose", "backbone")}
