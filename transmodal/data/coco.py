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


def joint_columns(suffix: str) -> list[str]:
    """Wide column names for one per-joint quantity, e.g. ``joint_columns('x') -> ['nose_x', ...]``."""
    return [f"{name}_{suffix}" for name in COCO_JOINTS]
