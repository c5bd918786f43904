"""Features stage: clip sampling, person-centric crops, frozen VideoMAE token grids and their cache."""

from transmodal.features.clips import make_clips, skipped_videos
from transmodal.features.crops import PixelNormalizer, align_pose, crop_frames, square_crop_box
from transmodal.features.store import FeatureStore, build_features

__all__ = [
    "FeatureStore",
    "PixelNormalizer",
    "align_pose",
    "build_features",
    "crop_frames",
    "make_clips",
    "skipped_videos",
    "square_crop_box",
]
