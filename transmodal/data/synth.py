"""Synthetic KTH-like dataset: rendered grey-level people performing the six KTH actions.

Layout written by :func:`generate` (the real KTH release's layout and names)::

    OUT/<action>/personNN_<action>_dS_uncomp.avi   160x120, 25 fps, grey MJPG; decodes to 3 equal BGR channels
    OUT/00sequences.txt                            KTH's format: ``id<TAB..>frames<TAB>1-24, 25-50, ...``, CRLF
    OUT/annotations.parquet                        exact ground truth, one row per (video, frame, person)

Rendering. Each person is an articulated 3D skeleton (pelvis, leaning/twisting torso, head ellipsoid,
upper/lower arms, hands, thighs, shins, feet) posed per frame by an action model, projected orthographically
at a yaw angle and drawn as filled convex polygons (tapered capsules, a torso quad, head and hair ellipses)
with per-part shading (far-side limbs darker, a torso highlight). Subjects differ in height, proportions,
build, clothing intensity and personal tempo; scenarios follow KTH: ``d1`` outdoors, ``d2`` outdoors with
scale variation (camera zoom for the in-place actions, a diagonal path that grows/shrinks the walker for
locomotion), ``d3`` outdoors in different clothes (coat, striped shirt), ``d4`` indoors (wall, floor, side
lighting, dimmer person, more noise). Every frame gets smooth sub-pixel camera jitter and gaussian noise.

Actions: boxing (oblique view, alternating straight punches with torso twist), handclapping (frontal, the
hands meet in front of the chest), handwaving (frontal, both arms sweep above the head), and walking,
jogging, running (side view, crossing the frame, turning round off-screen and coming back). Locomotion speed
and cadence are per-class means times a per-subject factor, so walking/jogging/running overlap across
subjects while their means are ordered; running also has a longer stride, more knee flexion, more lean and
bent arms.

Ground truth (``annotations.parquet``, columns :data:`ANNOTATION_COLUMNS`):

- ``video_id`` (str), ``frame_idx`` (int32, 0-based frame of the avi), ``person`` (int8: 0 the actor,
  1.. extra people), box ``x1, y1, x2, y2`` and joints ``<joint>_x, <joint>_y`` (float32), ``<joint>_v`` (int8).
- Coordinates are continuous pixel coordinates: pixel column ``j`` covers ``[j, j + 1)``. The box is the
  tight box of the person's own drawn pixels (so it is clamped to the frame, and it stays whole when another
  person is drawn over it): ``x1`` = first drawn column, ``x2`` = last drawn column + 1.
- ``v`` is 2 when the joint lies inside the frame and 0 outside it; self-occlusion and occlusion by another
  person are not modelled (no ``v = 1``).
- A person has a row for a frame only when at least one of its pixels is drawn: frames in which the
  locomotion actor is out of view have NO row for person 0 (they are the gaps of ``00sequences.txt``).

Determinism: every video is seeded from ``(seed, subject, action, scenario)`` only (subject appearance from
``(seed, subject)``), so a subset of subjects/actions/scenarios renders exactly the videos of the full set,
and two runs give identical annotations and identical decoded frames.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from transmodal.data.coco import COCO_JOINTS, joint_columns
from transmodal.io import atomic_dir, durable_replace, write_parquet
from transmodal.params import KTH_ACTIONS, KTH_SCENARIOS, SynthConfig

FPS = 25
WIDTH = 160
HEIGHT = 120
# Grey MJPG through OpenCV's FFmpeg backend: intra-only (exact frame seeking), deterministic, ~1 KB/frame and
# ~0.1 ms/frame to encode. FFV1 is lossless but ~8x larger and ~3x slower here (noise is incompressible).
FOURCC = "MJPG"
LOCOMOTION = ("jogging", "running", "walking")
SEQUENCES_FILE = "00sequences.txt"
ANNOTATIONS_FILE = "annotations.parquet"
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "video_id",
    "frame_idx",
    "person",
    "x1",
    "y1",
    "x2",
    "y2",
    *joint_columns("x"),
    *joint_columns("y"),
    *joint_columns("v"),
)
VIDEO_NAME = re.compile(r"person(\d\d)_(boxing|handclapping|handwaving|jogging|running|walking)_d([1-4])")

_SHIFT = 4  # cv2 fixed-point bits: polygons are drawn with 1/16 pixel precision
_ONE = 1 << _SHIFT
_NPOLY = 12  # every drawn part is a convex polygon of 12 vertices (shorter ones repeat their last vertex)
_CAP = _NPOLY // 2
_CANVAS_W, _CANVAS_H = 320, 240  # background canvas; world (0, 0) sits at canvas (_OX, _OY)
_OX, _OY = 80, 60
_STATIC_HEIGHT = 84.0  # standing height in pixels of an average subject (in-place actions, KTH framing)
_WALK_HEIGHT = 62.0  # locomotion is filmed from further away
_METRES_PER_HEIGHT = 1.75

# Seed-sequence tags keep the random streams of one video apart, so toggling one feature (noise, extra
# people) never shifts the random numbers of another.
_TAG_SUBJECT, _TAG_VIDEO, _TAG_EXTRA, _TAG_SEQ = 0x5B1, 0x71D, 0xE47, 0x5E9


# --------------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class VideoSpec:
    """One video to render.

    ``seed`` is the dataset seed (``SynthConfig.seed``); the video's random streams mix in ``subject``,
    ``action`` and ``scenario``, and the subject's body and clothes come from ``(seed, subject)`` alone.
    ``extra_people`` adds bystanders (person 1, 2, ...), smaller than the actor and never in view longer;
    an in-place actor then stands in one half of the frame, leaving the other half to them.
    """

    subject: int
    action: str
    scenario: str
    num_frames: int
    seed: int
    extra_people: int = 0

    def __post_init__(self):
        if self.action not in KTH_ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {', '.join(KTH_ACTIONS)}")
        if self.scenario not in KTH_SCENARIOS:
            raise ValueError(
                f"unknown scenario {self.scenario!r}; expected one of {', '.join(KTH_SCENARIOS)}"
            )
        if not 1 <= self.subject <= 99:
            raise ValueError(f"subject {self.subject} is outside 1-99")
        if self.num_frames < 1:
            raise ValueError(f"num_frames is {self.num_frames}; must be >= 1")
        if self.seed < 0 or self.extra_people < 0:
            raise ValueError("seed and extra_people must be >= 0")

    @property
    def video_id(self) -> str:
        """KTH id, e.g. ``person01_boxing_d1``."""
        return f"person{self.subject:02d}_{self.action}_{self.scenario}"

    @property
    def filename(self) -> str:
        """KTH file name, e.g. ``person01_boxing_d1_uncomp.avi``."""
        return f"{self.video_id}_uncomp.avi"


def render_video(spec: VideoSpec) -> tuple[np.ndarray, pd.DataFrame]:
    """Render one video: frames (T, 120, 160, 3) uint8 BGR with equal channels, and its annotation rows
    (schema of ``annotations.parquet``, sorted by frame then person)."""
    grey, rows = _render(spec)
    return np.repeat(grey[..., None], 3, axis=-1), rows


def write_avi(frames: np.ndarray, path: Path, fps: float = float(FPS), fourcc: str = FOURCC) -> None:
    """Write frames (T, H, W) grey or (T, H, W, 3) BGR uint8 as an .avi, atomically.

    Frames whose three channels are equal are written as one grey plane (it decodes back to equal BGR
    channels, as the real KTH files do); others in colour.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(
            f"expected (T, H, W[, 3]) uint8 frames with T >= 1, got {frames.shape} {frames.dtype}"
        )
    if frames.ndim == 4:
        if frames.shape[-1] != 3:
            raise ValueError(f"expected 3 channels, got {frames.shape[-1]}")
        if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]):
            frames = frames[..., 0]
    is_color = frames.ndim == 4
    height, width = frames.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    # The container is chosen from the file extension, so the temporary name must end in .avi too.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        writer = cv2.VideoWriter(
            str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height), is_color
        )
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {fourcc!r} video to {path}")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
        writer.release()
        durable_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def dataset_specs(cfg: SynthConfig) -> list[VideoSpec]:
    """The videos of a config, in KTH order (subject, action, scenario)."""
    actions = [a for a in KTH_ACTIONS if a in cfg.actions]
    scenarios = [s for s in KTH_SCENARIOS if s in cfg.scenarios]
    return [
        VideoSpec(subject, action, scenario, cfg.frames_per_video, cfg.seed)
        for subject in range(1, cfg.subjects + 1)
        for action in actions
        for scenario in scenarios
    ]


def sequence_ranges(spec: VideoSpec, annotations: pd.DataFrame) -> list[tuple[int, int]]:
    """KTH-style 1-based inclusive frame ranges of a video.

    Locomotion: the runs of frames in which the actor is in view (has an annotation row). In-place actions:
    about four consecutive ranges covering the whole video, with seeded cut points.
    """
    t_total = spec.num_frames
    if spec.action in LOCOMOTION:
        frames = np.sort(annotations.loc[annotations["person"] == 0, "frame_idx"].to_numpy(np.int64))
        if len(frames) == 0:
            return []
        breaks = np.flatnonzero(np.diff(frames) > 1)
        starts = np.concatenate([[frames[0]], frames[breaks + 1]])
        ends = np.concatenate([frames[breaks], [frames[-1]]])
        return [(int(s) + 1, int(e) + 1) for s, e in zip(starts, ends, strict=True)]
    rng = np.random.default_rng(_entropy(spec, _TAG_SEQ))
    parts = min(4, t_total)
    cuts = np.arange(1, parts) * t_total / parts + rng.uniform(-0.12, 0.12, parts - 1) * t_total / parts
    bounds = np.concatenate([[0], np.clip(np.round(cuts), 1, t_total - 1), [t_total]]).astype(int)
    bounds = np.maximum.accumulate(bounds)
    return [(int(a) + 1, int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def format_sequences(entries: Iterable[tuple[VideoSpec, list[tuple[int, int]]]]) -> str:
    """``00sequences.txt`` text in KTH's own format: tabs up to column 32, CRLF, a blank line between
    subjects, ranges ``a-b`` joined by ``", "``."""
    lines: list[str] = []
    previous = None
    for spec, ranges in entries:
        if previous is not None and spec.subject != previous:
            lines.append("")
        previous = spec.subject
        name = spec.video_id
        tabs = "\t" * max(1, (32 - len(name) + 7) // 8)
        lines.append(f"{name}{tabs}frames\t" + ", ".join(f"{a}-{b}" for a, b in ranges))
    return "".join(line + "\r\n" for line in lines)


def generate(out_dir: Path, cfg: SynthConfig, progress: bool = True, workers: int | None = None) -> dict:
    """Render the whole dataset into ``out_dir`` (KTH layout + 00sequences.txt + annotations.parquet).

    The tree is built in a temporary folder that replaces ``out_dir`` only when complete. ``workers``
    processes render videos in parallel (default: the usable CPUs); the output does not depend on it.
    Workers are spawned, so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard (the CLI and the DVC stage have it). ``cfg.two_person_videos`` is
    not used: every generated video has the actor only (extra people come from :class:`VideoSpec`).
    Returns ``{videos, frames, seconds, ms_per_frame, annotation_rows, fourcc, workers}``.
    """
    started = time.perf_counter()
    specs = dataset_specs(cfg)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers, len(specs) // 4 or 1))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for action in {s.action for s in specs}:
            (tmp / action).mkdir()
        jobs = [(spec, tmp) for spec in specs]
        bar = tqdm(total=len(specs), desc="synth", unit="video", disable=not progress)
        results = []
        if workers == 1:
            for job in jobs:
                results.append(_render_job(job))
                bar.update()
        else:
            # spawn, not fork: forking a process whose OpenCV/Arrow thread pools already ran can deadlock.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                chunk = max(1, min(8, len(jobs) // (workers * 8)))
                for result in pool.map(_render_job, jobs, chunksize=chunk):
                    results.append(result)
                    bar.update()
        bar.close()
        text = format_sequences((spec, ranges) for spec, (ranges, _) in zip(specs, results, strict=True))
        (tmp / SEQUENCES_FILE).write_bytes(text.encode("ascii"))
        annotations = pd.concat([rows for _, rows in results], ignore_index=True)
        write_parquet(annotations, tmp / ANNOTATIONS_FILE)
    seconds = time.perf_counter() - started
    frames = sum(s.num_frames for s in specs)
    return {
        "videos": len(specs),
        "frames": frames,
        "seconds": round(seconds, 3),
        "ms_per_frame": round(1000 * seconds / max(frames, 1), 4),
        "annotation_rows": len(annotations),
        "fourcc": FOURCC,
        "workers": workers,
    }


def _init_worker() -> None:
    cv2.setNumThreads(1)  # frames are tiny; one process per core is the parallelism


def _render_job(job: tuple[VideoSpec, Path]) -> tuple[list[tuple[int, int]], pd.DataFrame]:
    spec, root = job
    grey, rows = _render(spec)
    write_avi(grey, root / spec.action / spec.filename)
    return sequence_ranges(spec, rows), rows


# ------------------------------------------------------------------------------------------ random streams


def _entropy(spec: VideoSpec, *tags: int) -> list[int]:
    return [
        spec.seed,
        spec.subject,
        KTH_ACTIONS.index(spec.action),
        KTH_SCENARIOS.index(spec.scenario),
        *tags,
    ]


def _video_rngs(spec: VideoSpec) -> dict[str, np.random.Generator]:
    names = ("motion", "camera", "background", "noise", "look", "place")
    children = np.random.SeedSequence(_entropy(spec, _TAG_VIDEO)).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


# ------------------------------------------------------------------------------------------------ people


@dataclass(frozen=True)
class _Body:
    """Segment lengths and radii as fractions of the standing height (height 1)."""

    head_h: float
    head_w: float
    head_d: float
    neck: float
    torso: float
    shoulder_w: float
    hip_w: float
    hip_joint: float
    chest_d: float
    pelvis_d: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    ankle_h: float
    foot: float
    r_neck: float
    r_shoulder: float
    r_elbow: float
    r_wrist: float
    r_hand: float
    r_hip: float
    r_knee: float
    r_ankle: float
    r_foot: float


@dataclass(frozen=True)
class _Look:
    """Grey levels (0-255) of the clothing and skin; ``coat``/``stripes`` for the d3 outfits."""

    skin: float
    hair: float
    shirt: float
    trousers: float
    shoes: float
    coat: bool = False
    coat_shade: float = 0.0
    stripes: int = 0
    stripe_shade: float = 0.0


@dataclass(frozen=True)
class _Subject:
    height: float  # relative to the average subject (1.0)
    body: _Body
    look: _Look
    look_d3: _Look
    speed: float  # personal locomotion speed factor
    cadence: float  # personal step-rate factor (on top of speed ** 0.35)
    tempo: float  # personal rate of the in-place actions
    lean: float  # personal extra forward lean, degrees


def _make_body(rng: np.random.Generator) -> _Body:
    u = rng.uniform
    head_h, neck, torso = u(0.118, 0.135), u(0.03, 0.04), u(0.27, 0.31)
    thigh, shin, ankle = u(0.23, 0.26), u(0.23, 0.26), u(0.035, 0.045)
    norm = head_h + neck + torso + thigh + shin + ankle  # so that the standing height is exactly 1
    build = u(0.85, 1.2)
    b = {
        "head_h": head_h / norm,
        "head_w": u(0.08, 0.09) * build**0.3,
        "head_d": u(0.095, 0.105),
        "neck": neck / norm,
        "torso": torso / norm,
        "shoulder_w": u(0.2, 0.245) * build**0.5,
        "hip_w": u(0.15, 0.18) * build,
        "hip_joint": 0.0,
        "chest_d": u(0.11, 0.13) * build,
        "pelvis_d": u(0.1, 0.12) * build,
        "upper_arm": u(0.155, 0.18),
        "forearm": u(0.13, 0.15),
        "hand": u(0.05, 0.06),
        "thigh": thigh / norm,
        "shin": shin / norm,
        "ankle_h": ankle / norm,
        "foot": u(0.12, 0.14),
        "r_neck": 0.026 * build**0.5,
        "r_shoulder": 0.033 * build,
        "r_elbow": 0.026 * build,
        "r_wrist": 0.02 * build,
        "r_hand": 0.024,
        "r_hip": 0.05 * build,
        "r_knee": 0.034 * build,
        "r_ankle": 0.024 * build,
        "r_foot": 0.02,
    }
    b["hip_joint"] = 0.3 * b["hip_w"]
    return _Body(**b)


def _make_look(rng: np.random.Generator) -> _Look:
    shirt = [rng.uniform(25, 75), rng.uniform(90, 140), rng.uniform(165, 225)][rng.integers(3)]
    return _Look(
        skin=rng.uniform(125, 195),
        hair=rng.uniform(15, 80),
        shirt=shirt,
        trousers=rng.uniform(25, 110),
        shoes=rng.uniform(15, 55),
    )


def _make_subject(rng: np.random.Generator) -> _Subject:
    body = _make_body(rng)
    look = _make_look(rng)
    # d3: different clothes - often a long coat, sometimes a striped shirt, other trousers.
    coat = bool(rng.random() < 0.6)
    base = look.shirt
    coat_shade = float(np.clip(255 - base + rng.uniform(-30, 30), 20, 235))
    stripes = int(rng.integers(2, 5)) if rng.random() < 0.5 else 0
    shirt_d3 = float(np.clip(255 - base + rng.uniform(-40, 40), 20, 235))
    stripe = shirt_d3 + (60 if shirt_d3 < 128 else -60)
    look_d3 = replace(
        look,
        shirt=shirt_d3,
        trousers=rng.uniform(25, 160),
        coat=coat,
        coat_shade=coat_shade,
        stripes=stripes,
        stripe_shade=stripe,
    )
    speed = float(rng.lognormal(0.0, 0.2))
    return _Subject(
        height=rng.uniform(0.9, 1.1),
        body=body,
        look=look,
        look_d3=look_d3,
        speed=speed,
        cadence=float(rng.lognormal(0.0, 0.05)),
        tempo=float(speed**0.5 * rng.lognormal(0.0, 0.08)),
        lean=rng.uniform(-2.0, 3.0),
    )


def _subject(seed: int, subject: int) -> _Subject:
    return _make_subject(np.random.default_rng([seed, subject, _TAG_SUBJECT]))


# -------------------------------------------------------------------------------------------- action models


@dataclass
class _Pose:
    """Per-frame pose angles in degrees; limb arrays are (T, 2) with column 0 the left, 1 the right side.

    A segment direction is (flex, abd): flex rotates it forward from hanging straight down (90 = pointing
    forward, 180 = up), abd swings it outward to the side (90 = horizontal sideways).
    """

    yaw: np.ndarray  # 0 faces the camera, +90 faces image right
    lean: np.ndarray  # torso pitch forward
    twist: np.ndarray  # shoulder rotation about the vertical (negative brings the left shoulder forward)
    lift: np.ndarray  # extra pelvis height (flight phase), fraction of height
    ua_f: np.ndarray
    ua_a: np.ndarray
    fa_f: np.ndarray
    fa_a: np.ndarray
    th_f: np.ndarray
    th_a: np.ndarray
    sh_f: np.ndarray
    sh_a: np.ndarray


@dataclass(frozen=True)
class _Gait:
    speed: float  # m/s
    cadence: float  # strides (full gait cycles) per second
    lean: float
    elbow: float
    arm_amp: float
    arm_off: float
    knee_swing: float
    knee_stance: float
    flight: float
    twist: float


_GAITS = {
    "walking": _Gait(1.5, 0.92, 3.0, 18.0, 22.0, 0.0, 62.0, 6.0, 0.0, 5.0),
    "jogging": _Gait(2.3, 1.28, 8.0, 78.0, 30.0, 10.0, 88.0, 16.0, 0.012, 7.0),
    "running": _Gait(3.2, 1.45, 14.0, 95.0, 42.0, 16.0, 108.0, 22.0, 0.025, 9.0),
}


def _pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.stack([np.broadcast_to(left, right.shape), right], axis=-1).astype(np.float64)


def _standing_legs(t: np.ndarray, rng: np.random.Generator, spread: float, bend: float) -> dict:
    """Legs of a person standing (weight shifting slowly)."""
    n = len(t)
    sway = 1.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.45) * t / FPS + rng.uniform(0, 2 * np.pi))
    abd = rng.uniform(spread * 0.7, spread * 1.3)
    th_a = _pair(np.full(n, abd) + sway, np.full(n, abd) - sway)
    th_f = _pair(np.full(n, 2.0), np.full(n, 1.0))
    return {"th_f": th_f, "th_a": th_a, "sh_f": th_f - bend, "sh_a": th_a - 1.5}


def _gait_pose(
    t: np.ndarray, facing: np.ndarray, cls: str, subj: _Subject, rng: np.random.Generator
) -> tuple[_Pose, float]:
    """Side-view gait; returns the pose and the walking speed in m/s."""
    g = _GAITS[cls]
    speed = g.speed * subj.speed * rng.lognormal(0.0, 0.06)
    cadence = g.cadence * subj.speed**0.35 * subj.cadence * rng.lognormal(0.0, 0.04)
    stride = speed / cadence / _METRES_PER_HEIGHT  # body heights per gait cycle
    leg = subj.body.thigh + subj.body.shin
    amp = math.degrees(math.asin(min(stride / (4 * leg), 0.72)))  # thigh swing that covers the stride
    phi = rng.uniform(0, 2 * np.pi) + 2 * np.pi * cadence * t / FPS
    phases = np.stack([phi, phi + np.pi], axis=-1)  # (T, 2) left, right leg
    th_f = amp * np.sin(phases) + 2.0
    swing = np.clip(np.cos(phases + 0.35), 0, None) ** 1.4  # knee folds while the thigh swings forward
    knee = g.knee_stance + g.knee_swing * swing
    arm_amp = g.arm_amp * rng.uniform(0.85, 1.15)
    ua_f = g.arm_off - arm_amp * np.sin(phases)  # each arm swings against its own-side leg
    elbow = g.elbow * (1 + 0.2 * np.sin(phases + 0.5))
    n = len(t)
    pose = _Pose(
        yaw=facing * rng.uniform(78, 90),
        lean=g.lean + subj.lean + 1.5 * np.sin(2 * phi),
        twist=g.twist * np.sin(phi),
        lift=g.flight * np.clip(np.cos(2 * phi), 0, None),
        ua_f=ua_f,
        ua_a=np.full((n, 2), 6.0),
        fa_f=ua_f + elbow,
        fa_a=np.full((n, 2), 4.0),
        th_f=th_f,
        th_a=np.full((n, 2), 2.0),
        sh_f=th_f - knee,
        sh_a=np.full((n, 2), 1.0),
    )
    return pose, speed


def _bump(u: np.ndarray) -> np.ndarray:
    """A fast out-and-back profile on [0, 1] (0 elsewhere)."""
    inside = (u > 0) & (u < 1)
    return np.where(inside, np.sin(np.pi * np.clip(u, 0, 1)) ** 0.8, 0.0)


def _boxing_pose(t: np.ndarray, subj: _Subject, rng: np.random.Generator) -> _Pose:
    n = len(t)
    period = 0.55 * FPS / subj.tempo * rng.lognormal(0.0, 0.08)  # frames between punches
    duration = 0.6 * period
    ext = np.zeros((n, 2))
    start, arm = rng.uniform(0, period), int(rng.integers(2))
    while start < n:
        ext[:, arm] = np.maximum(ext[:, arm], _bump((t - start) / duration) * rng.uniform(0.8, 1.0))
        start += period * rng.uniform(0.75, 1.35)
        if rng.random() > 0.15:  # mostly alternating, sometimes a double punch
            arm = 1 - arm
    facing = rng.choice([-1.0, 1.0])
    bounce = np.sin(2 * np.pi * rng.uniform(1.5, 2.2) * t / FPS)
    legs = _standing_legs(t, rng, 7.0, 14.0)
    legs["th_f"] = legs["th_f"] + np.array([12.0, -12.0])  # left foot forward: fighting stance
    legs["sh_f"] = legs["th_f"] - 14.0
    return _Pose(
        yaw=np.full(n, facing * rng.uniform(55, 80)),
        lean=np.full(n, 6.0 + subj.lean) + 1.5 * bounce,
        twist=18.0 * (ext[:, 1] - ext[:, 0]),
        lift=0.006 * (1 + bounce),
        ua_f=30.0 + 58.0 * ext,
        ua_a=22.0 - 16.0 * ext,
        fa_f=148.0 - 58.0 * ext,
        fa_a=-8.0 + 8.0 * ext,
        **legs,
    )


def _clapping_pose(t: np.ndarray, subj: _Subject, rng: np.random.Generator) -> _Pose:
    n = len(t)
    b = subj.body
    rate = 2.0 * subj.tempo * rng.lognormal(0.0, 0.08)  # claps per second
    psi = 2 * np.pi * rate * t / FPS + rng.uniform(0, 2 * np.pi)
    open_ = ((1 - np.cos(psi)) / 2) ** 0.8 * (1 + 0.1 * np.sin(0.3 * psi))
    ua_f = 25.0 + 10.0 * (1 - open_)
    ua_a = 8.0 + 18.0 * open_
    fa_f = np.full(n, rng.uniform(68, 80))
    # Solve the forearm's sideways angle so the wrist reaches the wanted distance from the midline: the hands
    # meet in front of the chest when open_ == 0.
    target = 0.35 * b.hand + open_ * rng.uniform(0.12, 0.16)
    elbow_lat = b.shoulder_w / 2 + b.upper_arm * np.sin(np.radians(ua_a))
    fa_a = np.degrees(np.arcsin(np.clip((target - elbow_lat) / b.forearm, -1, 1)))
    legs = _standing_legs(t, rng, 5.0, 4.0)
    return _Pose(
        yaw=np.full(n, rng.uniform(-22, 22)),
        lean=np.full(n, 2.0 + subj.lean),
        twist=np.zeros(n),
        lift=np.zeros(n),
        ua_f=_pair(ua_f, ua_f),
        ua_a=_pair(ua_a, ua_a),
        fa_f=_pair(fa_f, fa_f),
        fa_a=_pair(fa_a, fa_a),
        **legs,
    )


def _waving_pose(t: np.ndarray, subj: _Subject, rng: np.random.Generator) -> _Pose:
    n = len(t)
    rate = 1.15 * subj.tempo * rng.lognormal(0.0, 0.08)  # waves per second
    psi = 2 * np.pi * rate * t / FPS + rng.uniform(0, 2 * np.pi)
    mid, amp = rng.uniform(118, 126), rng.uniform(38, 48)
    ua_a = mid + amp * np.sin(psi)
    fa_a = np.minimum(ua_a + 15.0 + 20.0 * np.sin(psi - 0.8), 185.0)  # the hand lags the upper arm
    ua_f = np.full(n, rng.uniform(4, 14))
    legs = _standing_legs(t, rng, 5.0, 4.0)
    return _Pose(
        yaw=np.full(n, rng.uniform(-22, 22)),
        lean=np.full(n, 1.0 + subj.lean),
        twist=np.zeros(n),
        lift=np.zeros(n),
        ua_f=_pair(ua_f, ua_f),
        ua_a=_pair(ua_a, ua_a),
        fa_f=_pair(ua_f + 5.0, ua_f + 5.0),
        fa_a=_pair(fa_a, fa_a),
        **legs,
    )


def _idle_pose(t: np.ndarray, subj: _Subject, rng: np.random.Generator) -> _Pose:
    """A bystander standing, arms hanging, slightly swaying."""
    n = len(t)
    sway = 3.0 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t / FPS + rng.uniform(0, 2 * np.pi))
    legs = _standing_legs(t, rng, 4.0, 3.0)
    ua_f = _pair(4.0 + sway, 4.0 - sway)
    return _Pose(
        yaw=np.full(n, rng.uniform(-70, 70)),
        lean=np.full(n, 1.0 + subj.lean),
        twist=np.zeros(n),
        lift=np.zeros(n),
        ua_f=ua_f,
        ua_a=np.full((n, 2), 8.0),
        fa_f=ua_f + 12.0,
        fa_a=np.full((n, 2), 5.0),
        **legs,
    )


# ------------------------------------------------------------------------------------------ kinematics


def _rot_y(v: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Rotate (T, 3) vectors about the vertical axis by ``ang`` radians (T,)."""
    c, s = np.cos(ang), np.sin(ang)
    return np.stack([v[:, 0] * c + v[:, 2] * s, v[:, 1], -v[:, 0] * s + v[:, 2] * c], axis=-1)


def _direction(flex: np.ndarray, abd: np.ndarray, side: float) -> np.ndarray:
    """Unit vectors (T, 3) in the body frame (x = person's left, y = up, z = forward); angles in degrees."""
    f, a = np.radians(flex), np.radians(abd)
    return np.stack([side * np.sin(a), -np.cos(a) * np.cos(f), np.cos(a) * np.sin(f)], axis=-1)


def _forward_kinematics(pose: _Pose, b: _Body) -> dict[str, np.ndarray]:
    """3D joint positions (T, 3) in heights, pelvis at the origin, then lifted so the lowest foot is at 0."""
    n = len(pose.yaw)
    lean, tw = np.radians(pose.lean), np.radians(pose.twist)
    ex, ez = np.tile([1.0, 0, 0], (n, 1)), np.tile([0, 0, 1.0], (n, 1))
    up = np.stack([np.zeros(n), np.cos(lean), np.sin(lean)], axis=-1)
    lat_s, fwd_s = _rot_y(ex, tw), _rot_y(ez, tw)
    lat_p, fwd_p = _rot_y(ex, -0.35 * tw), _rot_y(ez, -0.35 * tw)
    pelvis = np.zeros((n, 3))
    shoulder_c = pelvis + b.torso * up
    j: dict[str, np.ndarray] = {"pelvis": pelvis, "shoulder_c": shoulder_c}
    j["neck_top"] = shoulder_c + b.neck * up
    j["head_c"] = j["neck_top"] + 0.5 * b.head_h * up
    vert = np.array([0.0, 1.0, 0.0])
    for k, (name, side) in enumerate((("left", 1.0), ("right", -1.0))):
        sh = shoulder_c + side * 0.5 * b.shoulder_w * lat_s
        d_ua = _rot_y(_direction(pose.ua_f[:, k], pose.ua_a[:, k], side), tw)
        d_fa = _rot_y(_direction(pose.fa_f[:, k], pose.fa_a[:, k], side), tw)
        elbow = sh + b.upper_arm * d_ua
        wrist = elbow + b.forearm * d_fa
        hip = side * b.hip_joint * lat_p
        d_th = _rot_y(_direction(pose.th_f[:, k], pose.th_a[:, k], side), -0.35 * tw)
        d_sh = _rot_y(_direction(pose.sh_f[:, k], pose.sh_a[:, k], side), -0.35 * tw)
        knee = hip + b.thigh * d_th
        ankle = knee + b.shin * d_sh
        j[f"{name}_shoulder"], j[f"{name}_elbow"], j[f"{name}_wrist"] = sh, elbow, wrist
        j[f"{name}_hand"] = wrist + b.hand * d_fa
        j[f"{name}_hip"], j[f"{name}_knee"], j[f"{name}_ankle"] = hip, knee, ankle
        j[f"{name}_heel"] = ankle - 0.8 * b.ankle_h * vert - 0.22 * b.foot * fwd_p
        j[f"{name}_toe"] = ankle - 0.85 * b.ankle_h * vert + 0.78 * b.foot * fwd_p
        j[f"{name}_eye"] = (
            j["head_c"] + 0.55 * 0.5 * b.head_d * fwd_s + side * 0.35 * 0.5 * b.head_w * lat_s
        ) + 0.15 * b.head_h * vert
        j[f"{name}_ear"] = j["head_c"] + side * 0.85 * 0.5 * b.head_w * lat_s - 0.05 * b.head_d * fwd_s
    j["nose"] = j["head_c"] + 0.75 * 0.5 * b.head_d * fwd_s - 0.1 * b.head_h * vert
    j["hair_c"] = j["head_c"] + 0.28 * b.head_h * up - 0.1 * b.head_d * fwd_s
    lowest = np.min([j[f"{s}_{p}"][:, 1] for s in ("left", "right") for p in ("heel", "toe")], axis=0)
    lift = np.stack([np.zeros(n), pose.lift - lowest, np.zeros(n)], axis=-1)
    return {name: p + lift for name, p in j.items()}


# ------------------------------------------------------------------------------------------------ tracks


@dataclass
class _Track:
    """One person's motion in world pixels (before the camera)."""

    subject: _Subject
    look: _Look
    pose: _Pose
    root_x: np.ndarray  # (T,) pelvis x
    ground_y: np.ndarray  # (T,) y of the feet
    size: np.ndarray  # (T,) standing height in world pixels
    gain: float  # lighting gain on the person's grey levels


def _locomotion_track(
    t: np.ndarray, spec: VideoSpec, subj: _Subject, rng: np.random.Generator, ground: float, height: float
) -> _Track:
    """Passes across the frame, turning round off-screen, as in KTH; d2 walks a diagonal (size changes)."""
    n = len(t)
    # Speed is only known after the pose model draws it, but facing depends on the passes: draw the pose
    # with a provisional facing, then flip yaw per pass (the gait itself is symmetric).
    pose, speed = _gait_pose(t, np.ones(n), spec.action, subj, rng)
    v_world = speed / _METRES_PER_HEIGHT * height / FPS  # pixels per frame at size factor 1
    diagonal = spec.scenario == "d2"
    a, b = (rng.uniform(0.78, 0.9), rng.uniform(1.06, 1.15)) if diagonal else (1.0, 1.0)
    if rng.random() < 0.5:
        a, b = b, a
    margin = 0.55 * height * max(a, b) + 3.0  # beyond this the whole body is out of the frame
    lo, hi = -margin, WIDTH + margin
    direction = float(rng.choice([-1.0, 1.0]))
    progress = rng.uniform(0.0, 0.35)  # KTH videos often start with the person already part-way in
    gap_left, x, size = 0, np.empty(n), np.empty(n)
    facing = np.empty(n)
    for i in range(n):
        scale = a + (b - a) * progress
        x[i] = lo + progress * (hi - lo) if direction > 0 else hi - progress * (hi - lo)
        size[i], facing[i] = scale, direction
        if gap_left > 0:  # off-screen: turn round after the pause
            gap_left -= 1
            if gap_left == 0:
                direction, progress, (a, b) = -direction, 0.0, (b, a)
            continue
        progress += v_world * scale / (hi - lo)
        if progress >= 1.0:
            progress, gap_left = 1.0, int(rng.integers(3, 16))
    pose.yaw = np.abs(pose.yaw) * facing
    horizon = ground - 70.0
    return _Track(
        subj, subj.look, pose, x, horizon + (ground - horizon) * size, height * size, _gain(spec, rng)
    )


def _gain(spec: VideoSpec, rng: np.random.Generator) -> float:
    return rng.uniform(0.78, 1.0) if spec.scenario == "d4" else rng.uniform(0.95, 1.06)


def _actor_track(
    t: np.ndarray, spec: VideoSpec, subj: _Subject, rng: np.random.Generator, x_centre: float, ground: float
) -> _Track:
    n = len(t)
    if spec.action in LOCOMOTION:
        return _locomotion_track(t, spec, subj, rng, ground, _WALK_HEIGHT * subj.height)
    model = {"boxing": _boxing_pose, "handclapping": _clapping_pose, "handwaving": _waving_pose}[spec.action]
    pose = model(t, subj, rng)
    sway = 0.6 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t / FPS + rng.uniform(0, 2 * np.pi))
    height = _STATIC_HEIGHT * subj.height
    return _Track(
        subj, subj.look, pose, x_centre + sway, np.full(n, ground), np.full(n, height), _gain(spec, rng)
    )


def _extra_track(
    t: np.ndarray, spec: VideoSpec, k: int, actor: _Track, actor_visible: int, x_side: float, ground: float
) -> _Track:
    """Bystander ``k`` (1-based): smaller than the actor and never in view longer than it."""
    rng = np.random.default_rng(_entropy(spec, _TAG_EXTRA, k))
    subj = _make_subject(rng)
    n = len(t)
    scale = rng.uniform(0.5, 0.7)
    height = actor.size.max() * scale
    g = ground - rng.uniform(8, 18)
    walker = spec.action in LOCOMOTION or rng.random() < 0.5
    if not walker:
        pose = _idle_pose(t, subj, rng)
        x = np.full(n, x_side + rng.uniform(-6, 6))
        return _Track(subj, subj.look, pose, x, np.full(n, g), np.full(n, height), _gain(spec, rng))
    direction = float(rng.choice([-1.0, 1.0]))
    pose, speed = _gait_pose(t, np.full(n, direction), "walking", subj, rng)
    v = speed / _METRES_PER_HEIGHT * height / FPS
    margin = 0.55 * height + 3.0
    crossing = (WIDTH + 2 * margin) / v  # frames to cross the frame
    target = max(1.0, math.floor(rng.uniform(0.5, 0.9) * actor_visible))
    if crossing <= target:
        t0 = rng.uniform(0, max(n - crossing, 0))
    elif rng.random() < 0.5:
        t0 = n - target  # enters late, still crossing at the end
    else:
        t0 = target - crossing  # already crossing at the start, leaves early
    x = -margin + v * (t - t0) if direction > 0 else WIDTH + margin - v * (t - t0)
    return _Track(subj, subj.look, pose, x, np.full(n, g), np.full(n, height), _gain(spec, rng))


# ---------------------------------------------------------------------------------------------- geometry


@dataclass
class _Drawable:
    """A person ready to draw: polygons in 1/16 pixels, per-frame colours and painter's order."""

    polys: np.ndarray  # (T, P, _NPOLY, 2) int32
    colours: list  # T lists of P ints (1..255; 0 marks background in the person layer)
    order: list  # T lists of part indices, far to near
    maybe_visible: np.ndarray  # (T,) bool: the polygons' extent meets the frame
    keypoints: np.ndarray  # (T, 17, 2) float64, continuous pixel coordinates


_ANG_A = np.linspace(np.pi / 2, 3 * np.pi / 2, _CAP)
_ANG_B = np.linspace(-np.pi / 2, np.pi / 2, _CAP)
_ANG_E = np.linspace(0, 2 * np.pi, _NPOLY, endpoint=False)


def _capsule(a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Tapered capsule from a to b (T, 2) with end radii (T,) as a (T, 12, 2) convex polygon."""
    d = b - a
    length = np.hypot(d[:, 0], d[:, 1])
    short = length < 1e-6
    u = np.where(short[:, None], [0.0, 1.0], d / np.where(short, 1.0, length)[:, None])
    nrm = np.stack([-u[:, 1], u[:, 0]], axis=-1)

    def arc(c, r, ang):
        offs = np.cos(ang)[None, :, None] * u[:, None, :] + np.sin(ang)[None, :, None] * nrm[:, None, :]
        return c[:, None, :] + r[:, None, None] * offs

    return np.concatenate([arc(a, ra, _ANG_A), arc(b, rb, _ANG_B)], axis=1)


def _ellipse(c: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Axis-aligned ellipse (T, 12, 2)."""
    return c[:, None, :] + np.stack(
        [ax[:, None] * np.cos(_ANG_E)[None], ay[:, None] * np.sin(_ANG_E)[None]], axis=-1
    )


def _quad(*corners: np.ndarray) -> np.ndarray:
    """Convex quad from four (T, 2) corners, padded to (T, 12, 2) by repeating the last corner."""
    q = np.stack(corners, axis=1)
    return np.concatenate([q, np.repeat(q[:, -1:], _NPOLY - 4, axis=1)], axis=1)


def _half_extent(lateral: float, depth: float, ang: np.ndarray) -> np.ndarray:
    """Horizontal half-width (T,) of an ellipse of semi-axes (lateral, depth) seen at yaw ``ang`` radians."""
    return np.hypot(lateral * np.cos(ang), depth * np.sin(ang))


def _drawable(
    track: _Track, camera: dict[str, np.ndarray], scenario: str, bg_levels: tuple[float, float]
) -> _Drawable:
    """Project a track through the camera and build its coloured polygons.

    ``bg_levels``: mean background grey behind the upper and the lower body (clothing is kept apart)."""
    pose, b = track.pose, track.subject.body
    look = track.look if scenario != "d3" else track.subject.look_d3
    joints = _forward_kinematics(pose, b)
    yaw, tw = np.radians(pose.yaw), np.radians(pose.twist)
    cy, sy = np.cos(yaw), np.sin(yaw)
    s = camera["scale"]
    px_per_height = s * track.size  # (T,) pixels per body height after the camera

    def project(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, 3) body-frame point -> (T, 2) cv2 pixel coordinates and (T,) depth towards the camera."""
        dx = p[:, 0] * cy + p[:, 2] * sy
        depth = -p[:, 0] * sy + p[:, 2] * cy
        wx = track.root_x + track.size * dx
        wy = track.ground_y - track.size * p[:, 1]
        x = s * (wx - camera["cx"]) + camera["cx"] + camera["jx"]
        y = s * (wy - camera["cy"]) + camera["cy"] + camera["jy"]
        return np.stack([x, y], axis=-1), depth

    pts, dep = {}, {}
    for name, p in joints.items():
        pts[name], dep[name] = project(p)

    def radius(r: float) -> np.ndarray:
        return np.maximum(r * px_per_height, 1.0)  # >= 1 px so thin limbs still cover their joints

    upper, lower = bg_levels
    gain = track.gain

    def contrast(grey: float, level: float) -> float:  # judged as drawn, i.e. after the lighting gain
        return _contrast(grey * gain, level) / gain

    shades = {"shirt": contrast(look.shirt, upper), "trousers": contrast(look.trousers, lower)}
    shades.update(skin=look.skin, hair=look.hair, shoes=look.shoes)
    if look.coat:
        shades["coat"] = contrast(look.coat_shade, upper)
    parts: list[tuple[np.ndarray, np.ndarray, float]] = []  # (polygon, depth, base grey)
    limb_bias = 0.03  # limbs at the torso's depth draw over it (arms hanging at the sides)

    # Torso: a quad between the shoulder line and the pelvis, as wide as the torso's ellipse cross-section.
    sp, hp = pts["shoulder_c"], pts["pelvis"]
    axis = sp - hp
    axis_len = np.maximum(np.hypot(axis[:, 0], axis[:, 1]), 1e-6)[:, None]
    unit = axis / axis_len
    nrm = np.stack([-unit[:, 1], unit[:, 0]], axis=-1)
    e_s = (_half_extent(b.shoulder_w / 2, b.chest_d / 2, yaw + tw) * px_per_height)[:, None]
    e_h = (_half_extent(b.hip_w / 2, b.pelvis_d / 2, yaw - 0.35 * tw) * px_per_height)[:, None]
    hp_low = hp - unit * (0.04 * px_per_height)[:, None]  # the seat sits a little below the hip joints
    torso_depth = 0.5 * (dep["shoulder_c"] + dep["pelvis"])
    shirt = shades["coat"] if look.coat else shades["shirt"]
    parts.append(
        (_quad(sp + e_s * nrm, sp - e_s * nrm, hp_low - e_h * nrm, hp_low + e_h * nrm), torso_depth, shirt)
    )
    # Highlight: a lighter band on one side of the torso (light from above-left of the person).
    hl = _quad(
        sp - unit * 0.1 * axis_len + 0.55 * e_s * nrm,
        sp - unit * 0.1 * axis_len - 0.1 * e_s * nrm,
        hp + unit * 0.1 * axis_len - 0.1 * e_h * nrm,
        hp + unit * 0.1 * axis_len + 0.55 * e_h * nrm,
    )
    parts.append((hl, torso_depth + 0.001, min(shirt * 1.15 + 8, 250.0)))
    if look.stripes and not look.coat:
        for u0 in np.linspace(0.2, 0.8, look.stripes):
            lo, hi = u0, u0 + 0.07
            w_lo, w_hi = 0.95 * (e_h + (e_s - e_h) * lo), 0.95 * (e_h + (e_s - e_h) * hi)
            c_lo, c_hi = hp + axis * lo, hp + axis * hi
            band = _quad(c_lo + w_lo * nrm, c_hi + w_hi * nrm, c_hi - w_hi * nrm, c_lo - w_lo * nrm)
            parts.append((band, torso_depth + 0.002, look.stripe_shade))
    thigh_depth = np.maximum(dep["left_knee"], dep["right_knee"])
    if look.coat:  # a long coat covers the thighs
        bottom = hp + (hp - sp) * 0.55
        skirt = _quad(
            hp_low + e_h * nrm, hp_low - e_h * nrm, bottom - 1.25 * e_h * nrm, bottom + 1.25 * e_h * nrm
        )
        parts.append((skirt, thigh_depth + limb_bias + 0.005, shades["coat"]))
    parts.append(
        (
            _capsule(pts["shoulder_c"], pts["neck_top"], radius(b.r_neck), radius(b.r_neck)),
            torso_depth - 0.01,
            look.skin,
        )
    )
    head_ax = _half_extent(b.head_w / 2, b.head_d / 2, yaw + tw) * px_per_height
    head_ay = 0.5 * b.head_h * px_per_height
    parts.append((_ellipse(pts["head_c"], head_ax, head_ay), dep["head_c"] + 0.02, look.skin))
    # Hair: a cap over the top and back of the head.
    parts.append((_ellipse(pts["hair_c"], 0.98 * head_ax, 0.52 * head_ay), dep["head_c"] + 0.021, look.hair))
    sleeve = shades["coat"] if look.coat else shades["shirt"]
    for side in ("left", "right"):

        def limb(a: str, c: str, ra: float, rc: float, grey: float, bias: float = limb_bias) -> None:
            poly = _capsule(pts[a], pts[c], radius(ra), radius(rc))
            parts.append((poly, 0.5 * (dep[a] + dep[c]) + bias, grey))

        limb(f"{side}_hip", f"{side}_knee", b.r_hip, b.r_knee, shades["trousers"])
        limb(f"{side}_knee", f"{side}_ankle", b.r_knee, b.r_ankle, shades["trousers"])
        limb(f"{side}_heel", f"{side}_toe", b.r_foot, 0.9 * b.r_foot, look.shoes, limb_bias + 0.004)
        limb(f"{side}_shoulder", f"{side}_elbow", b.r_shoulder, b.r_elbow, sleeve, limb_bias + 0.01)
        limb(f"{side}_elbow", f"{side}_wrist", b.r_elbow, b.r_wrist, sleeve, limb_bias + 0.011)
        limb(f"{side}_wrist", f"{side}_hand", b.r_wrist, b.r_hand, look.skin, limb_bias + 0.012)

    polys = np.stack([p for p, _, _ in parts], axis=1)  # (T, P, 12, 2)
    depth = np.stack([d for _, d, _ in parts], axis=1)  # (T, P), body heights towards the camera
    base = np.array([g for _, _, g in parts])
    # Shading: parts turned away from the camera are darker (up to 15 %), plus the scene's lighting gain.
    shade = 0.85 + 0.15 * np.clip(0.5 + depth / 0.25, 0.0, 1.0)
    colours = np.clip(np.round(base[None, :] * shade * track.gain), 1, 255).astype(np.int64)
    order = np.argsort(depth, axis=1, kind="stable")
    lo_xy, hi_xy = polys.min(axis=(1, 2)), polys.max(axis=(1, 2))
    maybe = (
        (hi_xy[:, 0] >= -0.5)
        & (lo_xy[:, 0] < WIDTH - 0.5)
        & (hi_xy[:, 1] >= -0.5)
        & (lo_xy[:, 1] < HEIGHT - 0.5)
    )
    keypoints = np.stack([pts[name] for name in COCO_JOINTS], axis=1) + 0.5  # cv2 pixel centres -> continuous
    return _Drawable(
        polys=np.round(polys * _ONE).astype(np.int32),
        colours=colours.tolist(),
        order=order.tolist(),
        maybe_visible=maybe,
        keypoints=keypoints,
    )


def _contrast(grey: float, bg_level: float, minimum: float = 40.0) -> float:
    """Push a clothing grey level away from the background's so the person never dissolves into it."""
    if abs(grey - bg_level) >= minimum:
        return grey
    pushed = bg_level + minimum if grey >= bg_level else bg_level - minimum
    if not 20 <= pushed <= 235:  # no room on that side: go the other way
        pushed = bg_level - minimum if grey >= bg_level else bg_level + minimum
    return float(np.clip(pushed, 10, 245))


# ------------------------------------------------------------------------------------ camera, background


def _camera(t: np.ndarray, spec: VideoSpec, rng: np.random.Generator, centre: tuple[float, float]) -> dict:
    """Per-frame camera: zoom ``scale`` about (cx, cy) and jitter (jx, jy), all (T,) in pixels."""
    n = len(t)
    jitter = []
    for _ in range(2):
        # Two slow sinusoids: sub-pixel shake whose per-frame change stays < 0.4 px, far below walking speed.
        amp, freq, phase = rng.uniform(0.15, 0.45, 2), rng.uniform(0.2, 1.5, 2), rng.uniform(0, 2 * np.pi, 2)
        jitter.append(
            (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] / FPS + phase[:, None])).sum(0)
        )
    scale = np.ones(n)
    if spec.scenario == "d2" and spec.action not in LOCOMOTION:
        z0, z1 = rng.uniform(0.72, 0.9), rng.uniform(1.1, 1.28)
        if rng.random() < 0.5:
            z0, z1 = z1, z0
        u = t / max(n - 1, 1)
        start, length = rng.uniform(0.0, 0.3), rng.uniform(0.5, 0.7)
        ramp = np.clip((u - start) / length, 0, 1)
        scale = z0 * (z1 / z0) ** (ramp * ramp * (3 - 2 * ramp))  # smoothstep zoom
    return {
        "scale": scale,
        "cx": np.full(n, centre[0]),
        "cy": np.full(n, centre[1]),
        "jx": jitter[0],
        "jy": jitter[1],
    }


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int]) -> np.ndarray:
    small = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(small, (_CANVAS_W, _CANVAS_H), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, scenario: str, ground: float) -> np.ndarray:
    """Background canvas (_CANVAS_H, _CANVAS_W) uint8; world (0, 0) is canvas (_OX, _OY)."""
    yy, xx = np.mgrid[0:_CANVAS_H, 0:_CANVAS_W].astype(np.float32)
    if scenario == "d4":  # indoors: lit wall, darker floor, door frames / pillars, side lighting
        floor_y = _OY + ground - rng.uniform(10, 30)
        wall = rng.uniform(130, 200) + 4 * _smooth_noise(rng, (4, 5))
        floor = rng.uniform(60, 115) + 6 * _smooth_noise(rng, (6, 8)) + (yy - floor_y) * 0.3
        canvas = np.where(yy < floor_y, wall, floor)
        for _ in range(int(rng.integers(1, 4))):
            x0, w = rng.uniform(0, _CANVAS_W), rng.uniform(6, 30)
            tone = rng.uniform(-60, 40)
            sel = (xx >= x0) & (xx < x0 + w) & (yy < floor_y)
            canvas = np.where(sel, canvas + tone, canvas)
        canvas = np.where(np.abs(yy - floor_y) < 1.5, canvas * 0.55, canvas)  # skirting board
        light = rng.uniform(-35, 35) * (xx / _CANVAS_W - 0.5) * 2
        vignette = 1 - 0.25 * (
            ((xx - _CANVAS_W / 2) / _CANVAS_W) ** 2 + ((yy - _CANVAS_H / 2) / _CANVAS_H) ** 2
        )
        canvas = (canvas + light) * vignette
    else:  # outdoors: sky and tree line above a textured grass field
        horizon = _OY + rng.uniform(-25, 35)
        sky = rng.uniform(165, 215) - (horizon - yy) * 0.15
        grass = rng.uniform(100, 150) + rng.uniform(6, 14) * _smooth_noise(rng, (5, 7))
        grass = (
            grass
            + rng.uniform(2, 5) * _smooth_noise(rng, (24, 32))
            + (yy - horizon) * rng.uniform(-0.15, 0.15)
        )
        canvas = np.where(yy < horizon, sky, grass)
        for _ in range(int(rng.integers(0, 7))):
            centre = (int(rng.uniform(0, _CANVAS_W)), int(horizon - rng.uniform(0, 6)))
            axes = (int(rng.uniform(8, 30)), int(rng.uniform(4, 16)))
            cv2.ellipse(canvas, centre, axes, 0, 180, 360, float(rng.uniform(55, 110)), -1)
    canvas = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 0.8)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _noise_lut(sigma: float) -> np.ndarray:
    """256 equiprobable gaussian quantiles: indexing it with uniform bytes gives gaussian noise cheaply."""
    from scipy.special import ndtri

    return np.round(sigma * ndtri((np.arange(256) + 0.5) / 256)).astype(np.int16)


# --------------------------------------------------------------------------------------------- rendering


def _render(spec: VideoSpec, *, noise: bool = True, people: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Render ``spec``: grey frames (T, H, W) uint8 and annotation rows.

    ``noise=False`` / ``people=False`` switch off the camera noise / the people (tests compare the drawn
    body against the bare background); everything else, jitter and zoom included, stays identical.
    """
    n = spec.num_frames
    t = np.arange(n, dtype=np.float64)
    rngs = _video_rngs(spec)
    subj = _subject(spec.seed, spec.subject)
    place = rngs["place"]
    locomotion = spec.action in LOCOMOTION
    ground = place.uniform(98, 106) if locomotion else place.uniform(106, 113)
    side = float(place.choice([-1.0, 1.0]))
    x_centre = WIDTH / 2 + place.uniform(-10, 10)
    if spec.extra_people:  # leave the other half of the frame to the bystanders
        x_centre = WIDTH / 2 + side * place.uniform(22, 32)
    actor = _actor_track(t, spec, subj, rngs["motion"], x_centre, ground)
    centre = (
        float(actor.root_x.mean()) if not locomotion else WIDTH / 2,
        ground - 0.5 * float(actor.size.max()),
    )
    camera = _camera(t, spec, rngs["camera"], centre)
    canvas = _background(rngs["background"], spec.scenario, ground)
    # Background grey levels behind the upper and lower body, for the clothing-contrast rule.
    top, mid, bottom = (int(_OY + ground - f * actor.size.max()) for f in (1.0, 0.5, 0.0))
    band = slice(_OX, _OX + WIDTH)
    bg_levels = float(canvas[top:mid, band].mean()), float(canvas[mid:bottom, band].mean())

    drawables = [_drawable(actor, camera, spec.scenario, bg_levels)]
    if spec.extra_people:
        visible = int(drawables[0].maybe_visible.sum())
        for k in range(1, spec.extra_people + 1):
            x_side = WIDTH / 2 - side * (30 + 12 * (k - 1))
            extra = _extra_track(t, spec, k, actor, visible, x_side, ground)
            drawables.append(_drawable(extra, camera, spec.scenario, bg_levels))
    # Far to near: the bystanders stand behind the actor.
    paint = list(range(len(drawables)))[::-1]

    frames = _background_frames(canvas, camera)
    layer = np.zeros((HEIGHT, WIDTH), np.uint8)
    boxes = np.zeros((len(drawables), n, 4), np.int32)
    shown = np.zeros((len(drawables), n), bool)
    for i in range(n):
        frame = frames[i] if people else None
        for p in paint:
            d = drawables[p]
            if d.maybe_visible[i]:
                box = _draw(layer, frame, d, i)
                if box is not None:
                    boxes[p, i], shown[p, i] = box, True
    if noise:
        rng = rngs["noise"]
        sigma = rng.uniform(2.5, 3.5) if spec.scenario == "d4" else rng.uniform(1.5, 2.5)
        noisy = frames.astype(np.int16)
        noisy += _noise_lut(sigma)[rng.integers(0, 256, size=frames.shape, dtype=np.uint8)]
        frames = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    return frames, _annotations(spec, drawables, boxes, shown)


def _background_frames(canvas: np.ndarray, camera: dict[str, np.ndarray]) -> np.ndarray:
    """The background of every frame (T, H, W) uint8, seen through the camera's zoom and jitter."""
    s, cx, cy, jx, jy = (camera[k] for k in ("scale", "cx", "cy", "jx", "jy"))
    frames = np.empty((len(s), HEIGHT, WIDTH), np.uint8)
    # canvas -> pixel: p = s * (q - offset - c) + c + jitter
    tx = cx + jx - s * (_OX + cx)
    ty = cy + jy - s * (_OY + cy)
    zoom = bool(np.any(s != 1.0))
    for i in range(len(s)):
        if zoom:
            m = np.array([[s[i], 0.0, tx[i]], [0.0, s[i], ty[i]]])
            cv2.warpAffine(canvas, m, (WIDTH, HEIGHT), dst=frames[i], flags=cv2.INTER_LINEAR)
        else:  # a pure sub-pixel shift: getRectSubPix is ~8x faster than warpAffine at this size
            centre = ((WIDTH - 1) / 2 - tx[i], (HEIGHT - 1) / 2 - ty[i])
            frames[i] = cv2.getRectSubPix(canvas, (WIDTH, HEIGHT), centre)
    return frames


def _draw(
    layer: np.ndarray, frame: np.ndarray | None, d: _Drawable, i: int
) -> tuple[int, int, int, int] | None:
    """Draw person ``d`` of frame ``i`` into the empty ``layer``, copy it onto ``frame`` (unless None) and
    clear the layer again; returns the drawn pixels' box (x1, y1, x2, y2), or None if nothing was drawn."""
    polys, colours = d.polys[i], d.colours[i]
    for part in d.order[i]:
        cv2.fillConvexPoly(layer, polys[part], colours[part], cv2.LINE_8, _SHIFT)
    x, y, w, h = cv2.boundingRect(layer)
    if w == 0:
        return None
    sub = layer[y : y + h, x : x + w]
    if frame is not None:
        np.copyto(frame[y : y + h, x : x + w], sub, where=sub > 0)
    sub[:] = 0
    return x, y, x + w, y + h


def _annotations(
    spec: VideoSpec, drawables: list[_Drawable], boxes: np.ndarray, shown: np.ndarray
) -> pd.DataFrame:
    tables = []
    for p, d in enumerate(drawables):
        frames = np.flatnonzero(shown[p])
        kp = d.keypoints[frames]  # (F, 17, 2)
        inside = (kp[..., 0] >= 0) & (kp[..., 0] < WIDTH) & (kp[..., 1] >= 0) & (kp[..., 1] < HEIGHT)
        cols: dict[str, object] = {
            "video_id": [spec.video_id] * len(frames),
            "frame_idx": frames.astype(np.int32),
            "person": np.full(len(frames), p, np.int8),
        }
        for c, name in enumerate(("x1", "y1", "x2", "y2")):
            cols[name] = boxes[p, frames, c].astype(np.float32)
        for j, name in enumerate(COCO_JOINTS):
            cols[f"{name}_x"] = kp[:, j, 0].astype(np.float32)
            cols[f"{name}_y"] = kp[:, j, 1].astype(np.float32)
            cols[f"{name}_v"] = np.where(inside[:, j], 2, 0).astype(np.int8)
        tables.append(pd.DataFrame(cols))
    rows = pd.concat(tables, ignore_index=True)[list(ANNOTATION_COLUMNS)]
    rows["video_id"] = rows["video_id"].astype(str)
    return rows.sort_values(["frame_idx", "person"], kind="stable", ignore_index=True)
