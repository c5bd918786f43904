"""Which tracks stitching joins: primary coverage and identity switches per ``detect.stitch_max_scale``.

    python benchmarks/stitching.py [--videos N] [--frames T] [--scales none 2.0 1.5 1.3]
                                   [--actions locomotion|in_place] [--bystanders K] [--json PATH]

Videos: the synthetic renderer's locomotion actions (walking, jogging, running), its four scenarios in turn
(d2: a diagonal path that grows or shrinks the walker), each with one bystander (``extra_people=1``: 0.5-0.7x
the actor's height, walking through, never longer in view than the actor), ``--frames`` frames (160) at 25 fps
kept at stride 2, subjects 1..N. The walker leaves the frame and comes back (a pause of 3-15 frames), and
ByteTrack gives each return a new id: what stitching is for. ``--actions in_place`` (boxing, handclapping,
handwaving) with ``--bystanders 3`` is the crowd case instead: an actor in view throughout while bystanders
walk through one after another, where a chain of their time-disjoint tracks must not win over the actor.

Detections: every ground-truth box of every person in view, the actor scored 0.9 and the bystander 0.8, so
that what is measured is the tracker and the stitching rule, not a detector. One fresh ByteTrack per video
(``track_video``, the detect params' defaults), then ``finalize_tracks`` with stitching off and on at each
``--scales`` value (``none``: no height gate, as before the gate). Scored by
``transmodal.vision.quality.detection_quality`` against the actor's ground truth: ``primary_coverage`` (kept
frames with the actor in view whose primary box overlaps the actor at IoU >= 0.5) and ``identity_switches``
(changes of the person the primary box overlaps), with the tracks joined and refused.

This is a rule on synthetic boxes: the renderer's bystanders are 0.5-0.7x the actor by construction, and a
real dataset's are whatever they are. It says what each value costs in coverage and in switches, not which
value is best on KTH or UCF101.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transmodal.data.synth import HEIGHT, WIDTH, VideoSpec, render_video  # noqa: E402
from transmodal.params import DetectConfig  # noqa: E402
from transmodal.vision.quality import detection_quality  # noqa: E402
from transmodal.vision.track import (  # noqa: E402
    BOX_COLUMNS,
    DetectedRows,
    VideoDetections,
    finalize_tracks,
    track_video,  # noqa: E402
)

ACTIONS = {
    "locomotion": ("walking", "jogging", "running"),
    "in_place": ("boxing", "handclapping", "handwaving"),
}
SCENARIOS = ("d1", "d2", "d3", "d4")
STRIDE = 2
FPS = 25.0


def videos(
    count: int, frames: int, actions: str = "locomotion", bystanders: int = 1
) -> list[tuple[str, pd.DataFrame]]:
    """(video id, ground-truth rows) of ``count`` videos of an actor and ``bystanders`` others."""
    made = []
    for i in range(count):
        spec = VideoSpec(
            subject=i + 1,
            action=ACTIONS[actions][i % len(ACTIONS[actions])],
            scenario=SCENARIOS[i % len(SCENARIOS)],
            num_frames=frames,
            seed=0,
            extra_people=bystanders,
        )
        _, rows = render_video(spec)
        made.append((f"{spec.action}_{spec.scenario}_{i + 1:02d}", rows))
    return made


def detected(rows: pd.DataFrame, kept: np.ndarray, cfg: DetectConfig) -> DetectedRows:
    """ByteTrack over the ground-truth boxes of the kept frames (actor 0.9, bystander 0.8)."""
    boxes, scores = [], []
    for frame_idx in kept:
        frame = rows[rows["frame_idx"] == frame_idx]
        boxes.append(frame[BOX_COLUMNS].to_numpy(np.float32))
        scores.append(np.where(frame["person"] == 0, 0.9, 0.8).astype(np.float32))
    return DetectedRows.from_table(track_video(boxes, scores, kept, cfg, frame_rate=FPS / STRIDE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--scales", nargs="+", default=["none", "2.0", "1.5", "1.3"])
    parser.add_argument("--actions", choices=sorted(ACTIONS), default="locomotion")
    parser.add_argument("--bystanders", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scales = [None if s == "none" else float(s) for s in args.scales]

    cfg = DetectConfig(source="model")
    kept = np.arange(0, args.frames, STRIDE)
    made = videos(args.videos, args.frames, args.actions, args.bystanders)
    inputs = [VideoDetections(name, detected(rows, kept, cfg), kept, WIDTH, HEIGHT) for name, rows in made]
    truth = pd.concat([rows.assign(video_id=name) for name, rows in made], ignore_index=True)
    frames = pd.DataFrame(
        {"video_id": np.repeat([name for name, _ in made], len(kept)), "frame_idx": np.tile(kept, len(made))}
    )

    settings = [("off", False, None)] + [(f"on, max_scale {s}", True, s) for s in scales]
    results = []
    for label, stitch, scale in settings:
        finalized = finalize_tracks(inputs, stitch=stitch, max_scale=scale)
        quality = detection_quality(finalized.tracks, truth, frames)
        primary = finalized.tracks[finalized.tracks["is_primary"]]
        joined = int((primary.groupby("video_id")["track_id"].nunique() - 1).sum())
        results.append(
            {
                "stitching": label,
                "primary_coverage": round(quality["primary_coverage"], 4),
                "identity_switches": quality["identity_switches"],
                "videos_with_identity_switches": quality["videos_with_identity_switches"],
                "tracks_joined": joined,
                "tracks_refused": int(sum(finalized.stitch_refused.values())),
            }
        )
    tracks = sum(len(set(v.rows.track_id)) for v in inputs)
    print(
        f"{len(made)} {args.actions.replace('_', '-')} videos with {args.bystanders} bystander(s), {len(kept)} "
        f"kept frames each, {tracks} ByteTrack tracks "
        "on ground-truth boxes\n"
    )
    print("| stitching | primary coverage | identity switches (videos) | tracks joined | tracks refused |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['stitching']} | {r['primary_coverage']:.4f} | {r['identity_switches']} "
            f"({r['videos_with_identity_switches']}) | {r['tracks_joined']} | {r['tracks_refused']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "videos": len(made),
                    "frames": args.frames,
                    "actions": args.actions,
                    "bystanders": args.bystanders,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
