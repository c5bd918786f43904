"""COCO-17 keypoint layout shared by annotations, pose estimation and the PoseEncoder."""

COCO_JOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_JOINTS = len(COCO_JOINTS)
# COCO-17 limbs as pairs of joint names, the skeleton drawn on figures and annotated videos.
_LIMB_NAMES = (
    ("left_ankle", "left_knee"),
    ("left_knee", "left_hip"),
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
    ("left_eye", "right_eye"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
)
COCO_LIMBS: tuple[tuple[int, int], ...] = tuple(
    (COCO_JOINTS.index(a), COCO_JOINTS.index(b)) for a, b in _LIMB_NAMES
)


def joint_columns(suffix: str) -> list[str]:
    """Wide column names for one per-joint quantity, e.g. ``joint_columns('x') -> ['nose_x', ...]``."""
    return [f"{name}_{suffix}" for name in COCO_JOINTS]
