"""The synthetic KTH-like dataset: layout, KTH sequence format, exact ground truth, motion, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from transmodal.data import synth
from transmodal.data.coco import COCO_JOINTS
from transmodal.data.synth import (
    ANNOTATION_COLUMNS,
    FPS,
    HEIGHT,
    WIDTH,
    VideoSpec,
    generate,
    render_video,
    write_avi,
)
from transmodal.params import KTH_ACTIONS, SynthConfig

FRAMES = 24
CFG = SynthConfig(
    seed=0, subjects=2, scenarios=("d1", "d2", "d4"), actions=KTH_ACTIONS, frames_per_video=FRAMES
)
AVI_NAME = re.compile(
    r"person(\d\d)_(boxing|handclapping|handwaving|jogging|running|walking)_d([1-4])_uncomp\.avi"
)
# One line of KTH's 00sequences.txt (the real file pads some ids with spaces before the tabs).
SEQ_LINE = re.compile(r"(?P<id>person\d\d_[a-z]+_d[1-4])[ \t]+frames\t(?P<ranges>\d+-\d+(?:, \d+-\d+)*)")
REAL_KTH_SEQUENCES = Path("/work/shared/data/kth/00sequences.txt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synthetic"
    summary = generate(out, CFG, progress=False, workers=1)
    assert summary["videos"] == 2 * 3 * 6 and summary["frames"] == 2 * 3 * 6 * FRAMES
    return out


@pytest.fixture(scope="module")
def annotations(dataset: Path) -> pd.DataFrame:
    return pd.read_parquet(dataset / "annotations.parquet")


def read_avi(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames)


def parse_sequences(text: str, allow_missing: bool = False) -> dict[str, list[tuple[int, int]]]:
    """Strict parser of KTH's format: every non-blank line must match; returns id -> 1-based ranges.

    The real file also marks absent videos ``<id>\t*missing*``; ours lists every video it wrote."""
    out = {}
    for line in text.split("\r\n"):
        if not line.strip() or (allow_missing and line.endswith("*missing*")):
            continue
        match = SEQ_LINE.fullmatch(line)
        assert match, f"not a KTH sequences line: {line!r}"
        out[match["id"]] = [tuple(int(v) for v in r.split("-")) for r in match["ranges"].split(", ")]
    return out


def hip_x(rows: pd.DataFrame) -> np.ndarray:
    return ((rows["left_hip_x"] + rows["right_hip_x"]) / 2).to_numpy()


def runs(frames: np.ndarray) -> list[np.ndarray]:
    """Split sorted frame numbers into runs of consecutive frames."""
    return np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1)


# ------------------------------------------------------------------------------------------------ layout


def test_layout_and_names_match_kth(dataset: Path):
    avis = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.avi"))
    expected = sorted(
        f"{a}/person{s:02d}_{a}_{d}_uncomp.avi" for s in (1, 2) for a in KTH_ACTIONS for d in CFG.scenarios
    )
    assert avis == expected
    for rel in avis:
        folder, name = rel.split("/")
        match = AVI_NAME.fullmatch(name)
        assert match and match[2] == folder
    assert {p.name for p in dataset.iterdir()} == {*KTH_ACTIONS, "00sequences.txt", "annotations.parquet"}
    capture = cv2.VideoCapture(str(dataset / avis[0]))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    capture.release()
    assert read_avi(dataset / avis[0]).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_sequences_file_is_in_kth_format(dataset: Path, annotations: pd.DataFrame):
    raw = (dataset / "00sequences.txt").read_bytes()
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF like the real file
    text = raw.decode("ascii")
    blocks = text.split("\r\n\r\n")  # a blank line between subjects
    assert len(blocks) == 2 and all(f"person{s:02d}_" in b for s, b in zip((1, 2), blocks, strict=True))
    for line in text.split("\r\n"):
        if line:  # ids are tab-padded to column 32, as in KTH
            name = line.split("\t")[0]
            assert len(name.expandtabs(8)) < 32 and len(line.split("frames")[0].expandtabs(8)) == 32
    sequences = parse_sequences(text)
    assert sorted(sequences) == sorted(
        f"person{s:02d}_{a}_{d}" for s in (1, 2) for a in KTH_ACTIONS for d in CFG.scenarios
    )
    for video_id, ranges in sequences.items():
        flat = [v for r in ranges for v in r]
        assert all(1 <= v <= FRAMES for v in flat) and flat == sorted(flat), (video_id, ranges)
        assert all(a <= b for a, b in ranges)
        action = video_id.split("_")[1]
        if action in synth.LOCOMOTION:  # exactly the runs of frames in which the actor is in view
            frames = np.sort(
                annotations.query("video_id == @video_id and person == 0")["frame_idx"].to_numpy()
            )
            assert ranges == [(int(r[0]) + 1, int(r[-1]) + 1) for r in runs(frames)], video_id
        else:  # consecutive ranges covering the whole video
            assert len(ranges) == 4 and ranges[0][0] == 1 and ranges[-1][1] == FRAMES
            assert all(b + 1 == c for (_, b), (c, _) in zip(ranges[:-1], ranges[1:], strict=True))


@pytest.mark.skipif(not REAL_KTH_SEQUENCES.is_file(), reason="real KTH 00sequences.txt not available")
def test_sequences_parser_accepts_the_real_kth_file():
    # The parser that accepts our file also accepts KTH's own, so the formats agree.
    sequences = parse_sequences(REAL_KTH_SEQUENCES.read_bytes().decode("ascii"), allow_missing=True)
    assert len(sequences) > 500


# ------------------------------------------------------------------------------------------ ground truth


def test_annotation_schema(dataset: Path, annotations: pd.DataFrame):
    assert tuple(annotations.columns) == ANNOTATION_COLUMNS
    assert annotations["frame_idx"].dtype == np.int32 and annotations["person"].dtype == np.int8
    for c in ("x1", "y1", "x2", "y2", "nose_x", "right_ankle_y"):
        assert annotations[c].dtype == np.float32
    assert all(annotations[f"{j}_v"].dtype == np.int8 for j in COCO_JOINTS)
    assert set(annotations["video_id"]) == {
        p.name.removesuffix("_uncomp.avi") for p in dataset.rglob("*.avi")
    }
    assert annotations["frame_idx"].between(0, FRAMES - 1).all()
    assert not annotations.duplicated(["video_id", "frame_idx", "person"]).any()
    assert (annotations["person"] == 0).all()  # generate() renders no bystanders
    a = annotations
    assert (
        (0 <= a.x1) & (a.x1 < a.x2) & (a.x2 <= WIDTH) & (0 <= a.y1) & (a.y1 < a.y2) & (a.y2 <= HEIGHT)
    ).all()
    # In-place actions: the actor is in every frame.
    static = a[~a["video_id"].str.split("_").str[1].isin(synth.LOCOMOTION)]
    assert (static.groupby("video_id").size() == FRAMES).all()
    for j in COCO_JOINTS:
        x, y, v = a[f"{j}_x"], a[f"{j}_y"], a[f"{j}_v"]
        inside = (x >= 0) & (x < WIDTH) & (y >= 0) & (y < HEIGHT)
        assert set(v.unique()) <= {0, 2} and ((v == 2) == inside).all(), j


def test_box_contains_the_visible_keypoints(annotations: pd.DataFrame):
    a = annotations
    checked = 0
    for j in COCO_JOINTS:
        vis = a[a[f"{j}_v"] == 2]
        x, y = vis[f"{j}_x"], vis[f"{j}_y"]
        assert ((vis.x1 <= x) & (x <= vis.x2) & (vis.y1 <= y) & (y <= vis.y2)).all(), j
        checked += len(vis)
    assert checked > 0.9 * len(a) * len(COCO_JOINTS)


@pytest.mark.parametrize(
    ("action", "scenario", "extra"),
    [("boxing", "d2", 0), ("running", "d1", 0), ("handwaving", "d4", 1), ("walking", "d3", 1)],
)
def test_box_matches_the_drawn_pixels(action: str, scenario: str, extra: int):
    spec = VideoSpec(3, action, scenario, 40, seed=0, extra_people=extra)
    with_people, rows = synth._render(spec, noise=False)
    background, rows_bare = synth._render(spec, noise=False, people=False)
    pd.testing.assert_frame_equal(rows, rows_bare)
    drawn = with_people != background
    tight = 0
    for i in range(spec.num_frames):
        boxes = rows[rows.frame_idx == i][["x1", "y1", "x2", "y2"]].to_numpy().astype(int)
        inside = np.zeros_like(drawn[i])
        for x1, y1, x2, y2 in boxes:
            inside[y1:y2, x1:x2] = True
        assert not (drawn[i] & ~inside).any(), f"frame {i}: drawn pixels outside every box"
        assert drawn[i].any() == (len(boxes) > 0)
        if len(boxes) == 1:  # one person: the box is the drawn pixels' extent (within 2 px)
            ys, xs = np.nonzero(drawn[i])
            extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(extent - boxes[0]).max() <= 2
            tight += bool((extent == boxes[0]).all())
    assert tight >= 0.8 * (rows.groupby("frame_idx").size() == 1).sum()


def test_avi_holds_the_rendered_frames_in_grey(dataset: Path, tmp_path: Path):
    frames, _ = render_video(VideoSpec(1, "handclapping", "d4", FRAMES, seed=0))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 0] == frames[..., 2]).all()
    decoded = read_avi(dataset / "handclapping" / "person01_handclapping_d4_uncomp.avi")
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 0] == decoded[..., 2]).all()
    # MJPG is lossy, but close: the avi holds what render_video produced.
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0
    other, _ = render_video(VideoSpec(2, "handclapping", "d4", FRAMES, seed=0))
    assert np.abs(decoded.astype(int) - other).mean() > 5.0


def test_write_avi_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.integers(0, 255, (6, 48, 64), dtype=np.uint8).transpose(1, 2, 0), (0, 0), 3)
    grey = np.ascontiguousarray(grey.transpose(2, 0, 1))
    write_avi(grey, tmp_path / "g.avi")
    back = read_avi(tmp_path / "g.avi")
    assert back.shape == (6, 48, 64, 3) and np.abs(back[..., 0].astype(int) - grey).mean() < 3
    colour = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    write_avi(colour, tmp_path / "c.avi")
    back = read_avi(tmp_path / "c.avi")
    assert np.abs(back.astype(int) - colour).mean() < 6 and not (back[..., 0] == back[..., 1]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.avi", "g.avi"]  # no temporary files left
    with pytest.raises(ValueError):
        write_avi(grey.astype(np.float32), tmp_path / "bad.avi")


# ----------------------------------------------------------------------------------------------- motion


def test_locomotion_crosses_the_frame_and_comes_back():
    _, rows = render_video(VideoSpec(2, "running", "d1", 150, seed=0))
    actor = rows[rows.person == 0]
    frames = actor["frame_idx"].to_numpy()
    passes = runs(frames)
    assert len(passes) >= 2 and len(frames) < 150  # the runner leaves the frame and comes back
    directions = []
    full_crossing = False
    for run in passes:
        sub = actor.set_index("frame_idx").loc[run]
        x = hip_x(sub)
        if len(run) < 5:
            continue
        steps = np.diff(x)
        assert (steps > 0).all() or (steps < 0).all(), "hip x must move monotonically within a pass"
        directions.append(np.sign(steps[0]))
        # A full pass enters at one edge and leaves at the other.
        first, last = sub.iloc[0], sub.iloc[-1]
        touches = (first.x1 == 0 and last.x2 == WIDTH) or (first.x2 == WIDTH and last.x1 == 0)
        full_crossing |= bool(touches and run[0] > 0 and run[-1] < 149)
    assert full_crossing
    assert all(a == -b for a, b in zip(directions[:-1], directions[1:], strict=True))  # turns round


def test_locomotion_speeds_overlap_across_subjects_but_means_are_ordered():
    speed: dict[str, list[float]] = {}
    for action in ("walking", "jogging", "running"):
        for subject in range(1, 13):
            _, rows = render_video(VideoSpec(subject, action, "d1", 32, seed=0))
            actor = rows[rows.person == 0].sort_values("frame_idx")
            consecutive = np.diff(actor["frame_idx"].to_numpy()) == 1
            speed.setdefault(action, []).append(float(np.median(np.abs(np.diff(hip_x(actor)))[consecutive])))
    walk, jog, run = (np.array(speed[a]) for a in ("walking", "jogging", "running"))
    assert walk.mean() < jog.mean() < run.mean()
    # No single speed separates the classes: their per-subject ranges overlap.
    assert walk.max() > jog.min() and jog.max() > run.min()


def test_handclapping_hands_meet_in_front_of_the_chest():
    _, rows = render_video(VideoSpec(1, "handclapping", "d1", 50, seed=0))
    gap = np.hypot(rows.left_wrist_x - rows.right_wrist_x, rows.left_wrist_y - rows.right_wrist_y).to_numpy()
    height = (rows.y2 - rows.y1).to_numpy()
    assert gap.min() < 0.04 * height.mean() and gap.max() > 0.15 * height.mean()  # they close and open
    closed = rows[gap < 0.06 * height]
    chest_top = (closed.left_shoulder_y + closed.right_shoulder_y) / 2
    chest_bottom = (closed.left_hip_y + closed.right_hip_y) / 2
    wrist_y = (closed.left_wrist_y + closed.right_wrist_y) / 2
    assert ((wrist_y > chest_top) & (wrist_y < chest_bottom)).all()
    assert (np.diff((gap < 0.06 * height).astype(int)) == 1).sum() >= 2  # several claps in 2 s


def test_handwaving_raises_both_arms_above_the_head():
    _, rows = render_video(VideoSpec(1, "handwaving", "d1", 50, seed=0))
    above = (rows.left_wrist_y < rows.nose_y) & (rows.right_wrist_y < rows.nose_y)
    assert 0.3 < above.mean() < 1.0  # they sweep up over the head and back down
    assert (np.diff(above.astype(int).to_numpy()) != 0).sum() >= 2  # repeatedly, not a single raise
    # ...sweeping out sideways, far beyond the shoulders.
    spread = (rows.left_wrist_x - rows.right_wrist_x).abs()
    assert spread.max() > 2.5 * (rows.left_shoulder_x - rows.right_shoulder_x).abs().mean()


def test_boxing_punches_alternate():
    _, rows = render_video(VideoSpec(1, "boxing", "d1", 75, seed=0))
    reach: dict[str, np.ndarray] = {}
    for side in ("left", "right"):
        reach[side] = (rows[f"{side}_wrist_x"] - rows[f"{side}_shoulder_x"]).abs().to_numpy()
    extended = {
        s: r > np.percentile(r, 50) + 0.5 * (r.max() - np.percentile(r, 50)) for s, r in reach.items()
    }
    assert extended["left"].any() and extended["right"].any()
    assert (extended["left"] & extended["right"]).mean() < 0.1  # rarely both arms out at once
    onsets = sorted(
        (f, s) for s in ("left", "right") for f in np.flatnonzero(np.diff(extended[s].astype(int)) == 1)
    )
    switches = sum(a[1] != b[1] for a, b in zip(onsets[:-1], onsets[1:], strict=True))
    assert len(onsets) >= 3 and switches >= len(onsets) // 2


# ---------------------------------------------------------------------------------------- extra people


@pytest.mark.parametrize("action", ["boxing", "walking"])
def test_extra_people_are_annotated_and_less_prominent(action: str):
    _, rows = render_video(VideoSpec(4, action, "d1", 48, seed=0, extra_people=2))
    assert set(rows["person"].unique()) <= {0, 1, 2} and {0, 1} <= set(rows["person"].unique())
    area = (rows.x2 - rows.x1) * (rows.y2 - rows.y1)
    per_person = area.groupby(rows["person"]).agg(["mean", "sum", "size"])
    assert per_person.loc[0, "mean"] > per_person.loc[1:, "mean"].max()  # the actor is the largest
    assert per_person.loc[0, "size"] >= per_person.loc[1:, "size"].max()  # and in view the longest
    assert per_person.loc[0, "sum"] == per_person["sum"].max()
    _, alone = render_video(VideoSpec(4, action, "d1", 48, seed=0))
    assert set(alone["person"].unique()) == {0}


# ------------------------------------------------------------------------------------------ determinism


def test_generation_is_deterministic_and_independent_of_workers(
    dataset: Path, annotations: pd.DataFrame, tmp_path
):
    again = tmp_path / "again"
    generate(again, CFG, progress=False, workers=2)
    pd.testing.assert_frame_equal(pd.read_parquet(again / "annotations.parquet"), annotations)
    assert (again / "00sequences.txt").read_bytes() == (dataset / "00sequences.txt").read_bytes()
    for path in sorted(dataset.rglob("*.avi")):
        other = again / path.relative_to(dataset)
        assert np.array_equal(read_avi(path), read_avi(other)), path.name


def test_a_subset_renders_the_same_videos(dataset: Path, annotations: pd.DataFrame, tmp_path: Path):
    subset = SynthConfig(seed=0, subjects=1, scenarios=("d2",), actions=("walking",), frames_per_video=FRAMES)
    out = tmp_path / "subset"
    generate(out, subset, progress=False)
    rows = pd.read_parquet(out / "annotations.parquet")
    expected = annotations[annotations.video_id == "person01_walking_d2"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected)
    name = "walking/person01_walking_d2_uncomp.avi"
    assert np.array_equal(read_avi(out / name), read_avi(dataset / name))
    # ...and a different seed renders a different video.
    _, other = render_video(VideoSpec(1, "walking", "d2", FRAMES, seed=1))
    assert not np.allclose(other["x1"].to_numpy()[:5], expected["x1"].to_numpy()[:5])


def test_an_interrupted_generation_leaves_no_output(tmp_path: Path, monkeypatch):
    out = tmp_path / "synthetic"
    calls = []
    render_job = synth._render_job

    def failing(job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return render_job(job)

    monkeypatch.setattr(synth, "_render_job", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate(
            out, SynthConfig(subjects=1, scenarios=("d1",), frames_per_video=8), progress=False, workers=1
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_video_spec_is_validated():
    with pytest.raises(ValueError, match="action"):
        VideoSpec(1, "dancing", "d1", 10, 0)
    with pytest.raises(ValueError, match="scenario"):
        VideoSpec(1, "boxing", "d5", 10, 0)
    assert VideoSpec(7, "boxing", "d3", 10, 0).filename == "person07_boxing_d3_uncomp.avi"
