"""The trainable TransMODAL head (the frozen VideoMAE backbone lives in ``transmodal.features``)."""

from transmodal.model.attention import Attention, FeedForward
from transmodal.model.classifier import Classifier
from transmodal.model.fusion import CoAttentionBlock, CoAttentionFusion, FusionOutput
from transmodal.model.pose_encoder import PoseEncoder
from transmodal.model.selector import AdaptiveSelector, SelectorOutput
from transmodal.model.transmodal import TransModal, TransModalOutput, parameter_counts

__all__ = [
    "AdaptiveSelector",
    "Attention",
    "Classifier",
    "CoAttentionBlock",
    "CoAttentionFusion",
    "FeedForward",
    "FusionOutput",
    "PoseEncoder",
    "SelectorOutput",
    "TransModal",
    "TransModalOutput",
    "parameter_counts",
]
