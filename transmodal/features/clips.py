"""Clip sampling: which kept frames of each video form the ``clips.length``-frame clips fed to VideoMAE.

Frame numbers. The frames stage keeps one frame per time sample (every ``frames.stride``-th frame of a
25 fps video; :mod:`transmodal.data.frames`) and records each kept frame's ORIGINAL 0-based frame number
(``frame_idx``; tracks and keypoints use the same numbers). A clip is ``clips.length`` CONSECUTIVE time
samples (:func:`time_samples`), so it spans ``length * stride / reference_fps`` seconds whatever the video's
frame rate; in a video slower than the sampling a frame fills several samples of a clip. KTH's
``00sequences.txt`` ranges in the index are 1-based inclusive: kept frame ``f`` lies in ``[start, end]``
when ``start <= f + 1 <= end``.

Valid windows. For a video with sequences (KTH and the synthetic KTH-like set), a window is valid when all
its frames lie in ONE sequence: KTH defines the action only inside them (the gaps hold the person walking
out of view, or nothing). This holds for train, val and test alike. A video without sequences (UCF101,
HMDB51, or a KTH file absent from the list) uses all its kept frames. A video with no sequence long enough
for one clip gets a single clip from its longest sequence, padded by repeating that sequence's last kept
frame; a video shorter than one clip likewise gets one padded clip.

Spreading. ``n`` clips take the start positions at the centres of ``n`` equal bins over the list of valid
start positions (``floor((k + 1/2) * m / n)`` for ``k < n`` of ``m`` starts): evenly spread, distinct, the
middle window when ``n == 1``, and deterministic. Fewer valid starts than asked gives fewer clips, never
duplicates. Train uses ``clips.per_video_train`` clips per video. Val and test use
``clips.per_sequence_test`` clips inside each listed sequence on its own (a sequence shorter than a clip
gives one padded clip), so that every sequence, the paper's evaluation unit, is scored; or
``clips.per_video_test`` per video when the video lists no sequences or ``per_sequence_test`` is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from transmodal.params import ClipsConfig

CLIP_COLUMNS = ("clip_id", "video_id", "label", "label_idx", "split", "frame_idx", "padded", "sequence")
WHOLE_VIDEO = -1  # the ``sequence`` of a clip from a video without listed sequences


def skipped_videos(index: pd.DataFrame, videos: pd.DataFrame) -> list[str]:
    """Videos of ``index`` without decoded frames (not ``ok`` in the frames stage, or absent), in order."""
    ok = set(videos.loc[videos["status"] == "ok", "video_id"])
    return [video_id for video_id in index["video_id"] if video_id not in ok]


def _as_ranges(sequences) -> list[tuple[int, int]]:
    """The index's ``sequences`` cell (list/array of [start, end], or None) as a list of int pairs."""
    if sequences is None or (isinstance(sequences, float) and np.isnan(sequences)):
        return []
    return [(int(start), int(end)) for start, end in sequences]


def sequence_segments(
    frame_idx: np.ndarray, sequences: Sequence[tuple[int, int]]
) -> list[tuple[int, np.ndarray]]:
    """``(sequence number, positions into the kept frames)`` of each sequence holding a kept frame.

    Args:
        frame_idx: (T,) sorted original 0-based frame numbers of the kept frames.
        sequences: 1-based inclusive original frame ranges; empty means the whole video is one segment.

    The sequence number is the range's 0-based position in the video's list (``00sequences.txt`` order), or
    ``WHOLE_VIDEO`` (-1) when the whole video stands for one segment.
    """
    everything = [(WHOLE_VIDEO, np.arange(len(frame_idx)))]
    if not sequences:
        return everything
    numbers = np.asarray(frame_idx, dtype=np.int64) + 1  # 1-based, as in 00sequences.txt
    segments = [
        (number, np.flatnonzero((numbers >= start) & (numbers <= end)))
        for number, (start, end) in enumerate(sequences)
    ]
    segments = [(number, segment) for number, segment in segments if len(segment)]
    # Sequences beyond the decoded frames (a file shorter than its listing): fall back to the whole video.
    return segments or everything


def spread(num_starts: int, count: int) -> np.ndarray:
    """Indices of ``count`` evenly spread items among ``num_starts`` (all of them when there are fewer)."""
    if num_starts <= count:
        return np.arange(num_starts)
    return np.floor((np.arange(count) + 0.5) * num_starts / count).astype(np.int64)


def _windows(segment: np.ndarray, length: int, count: int) -> list[tuple[np.ndarray, bool]]:
    """Up to ``count`` spread windows of one segment, or one padded window when it is shorter than a clip."""
    if len(segment) < length:
        return [(np.concatenate([segment, np.full(length - len(segment), segment[-1])]), True)]
    # A segment is contiguous in the kept frames (frame_idx is sorted), so windows are start..start+length-1.
    starts = np.arange(segment[0], segment[-1] - length + 2)
    return [(np.arange(start, start + length), False) for start in starts[spread(len(starts), count)]]


def clip_positions(
    frame_idx: np.ndarray,
    sequences: Sequence[tuple[int, int]],
    length: int,
    count: int,
    per_sequence: int = 0,
) -> list[tuple[np.ndarray, bool, int]]:
    """Clips of one video as ``(positions (length,) into the kept frames, padded, sequence)``, ``sequence``
    being the number of the listed sequence that holds the whole clip, or -1.

    ``per_sequence == 0``: up to ``count`` clips spread over all valid windows of the video (a window inside
    several overlapping sequences belongs to the first listed). ``per_sequence > 0`` (evaluation splits, when
    the video lists sequences): up to that many clips spread inside EACH sequence on its own, and one padded
    clip for a sequence shorter than a clip, so every listed sequence with a decoded frame is scored."""
    if len(frame_idx) == 0:
        return []
    segments = sequence_segments(frame_idx, sequences)
    if per_sequence and segments[0][0] != WHOLE_VIDEO:
        return [
            (positions, padded, number)
            for number, segment in segments
            for positions, padded in _windows(segment, length, per_sequence)
        ]
    long_enough = [(number, seg) for number, seg in segments if len(seg) >= length]
    if not long_enough:
        number, longest = max(segments, key=lambda item: len(item[1]))  # first of the longest on ties
        ((positions, padded),) = _windows(longest, length, 1)
        return [(positions, padded, number)]
    # Each start with the first sequence that holds its window (overlapping KTH sequences repeat starts).
    owner: dict[int, int] = {}
    for number, seg in long_enough:
        for start in range(int(seg[0]), int(seg[-1]) - length + 2):
            owner.setdefault(start, number)
    valid = np.array(sorted(owner))
    return [
        (np.arange(start, start + length), False, owner[int(start)])
        for start in valid[spread(len(valid), count)]
    ]


def time_samples(videos: pd.DataFrame, frame_table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per decoded video, the original frame number of each time sample (sorted, int64).

    The samples are :func:`~transmodal.data.frames.sample_numbers` of the video's decoded frame count and
    step, or with ``frames.by_time`` those the frames stage matched by timestamp (``sample_idx``); where the
    video is slower than the sampling a frame stands for several samples, so a clip of ``clips.length``
    samples always spans the same time. Their distinct values are exactly the kept frames.
    """
    from transmodal.data.frames import sample_numbers

    kept = {
        video_id: np.sort(group.to_numpy(np.int64))
        for video_id, group in frame_table.groupby("video_id", sort=False)["frame_idx"]
    }
    ok = videos[videos["status"] == "ok"]
    if "step" not in ok.columns:  # a frame table without time sampling: one sample per kept frame
        return kept
    samples = {}
    stored = ok["sample_idx"] if "sample_idx" in ok.columns else [None] * len(ok)
    for video_id, decoded, step, by_time in zip(
        ok["video_id"], ok["frames_decoded"], ok["step"], stored, strict=True
    ):
        if by_time is not None:
            numbers = np.asarray(by_time, np.int64)
        else:
            numbers = sample_numbers(int(decoded), float(step))
        have = kept.get(video_id, np.zeros(0, np.int64))
        if not np.array_equal(np.unique(numbers), have):
            raise ValueError(f"video {video_id!r}: the frame table does not hold its time samples")
        samples[video_id] = numbers
    return samples


def make_clips(
    index: pd.DataFrame, videos: pd.DataFrame, frame_table: pd.DataFrame, cfg: ClipsConfig
) -> pd.DataFrame:
    """One row per clip, videos in index order, clips in time order.

    Args:
        index: ``data/index.parquet`` (video_id, label, label_idx, split, sequences).
        videos: ``FrameStore.videos`` (video_id, status); videos not ``ok`` get no clips.
        frame_table: ``FrameStore.frames`` (video_id, frame_idx): the kept frames.
        cfg: the ``clips`` params.

    Returns:
        Columns ``clip_id`` (``<video_id>#<n>``), video_id, label, label_idx, split, ``frame_idx``
        (int32 array of ``cfg.length`` original 0-based frame numbers), ``padded`` (bool), ``sequence`` (the
        0-based number of the listed sequence that holds the clip, -1 for a video without sequences: the
        evaluation unit of the paper's KTH numbers, docs/decisions.md "Accuracy units").
    """
    skipped = set(skipped_videos(index, videos))
    samples = time_samples(videos, frame_table)
    rows = []
    for video in index.itertuples(index=False):
        if video.video_id in skipped:
            continue
        frame_idx = samples.get(video.video_id, np.zeros(0, np.int64))
        train = video.split == "train"
        count = cfg.per_video_train if train else cfg.per_video_test
        per_sequence = 0 if train else cfg.per_sequence_test
        for n, (positions, padded, sequence) in enumerate(
            clip_positions(frame_idx, _as_ranges(video.sequences), cfg.length, count, per_sequence)
        ):
            rows.append(
                {
                    "clip_id": f"{video.video_id}#{n}",
                    "video_id": video.video_id,
                    "label": video.label,
                    "label_idx": int(video.label_idx),
                    "split": video.split,
                    "frame_idx": frame_idx[positions].astype(np.int32),
                    "padded": padded,
                    "sequence": sequence,
                }
            )
    clips = pd.DataFrame(rows, columns=list(CLIP_COLUMNS))
    return clips.astype({"label_idx": np.int64, "padded": bool, "sequence": np.int64})


def sequence_coverage(index: pd.DataFrame, videos: pd.DataFrame, frame_table: pd.DataFrame) -> dict:
    """Listed sequences of the evaluation videos (val, test) that hold no kept frame (a listing past the end
    of the decoded video), and the videos scored as one whole-video unit because none of theirs holds one
    (:func:`sequence_segments`). Counted in ``metrics/features.json``: the accuracies leave them out.
    ``videos``, ``frame_table``: as for :func:`make_clips`; skipped videos are counted as skipped."""
    listing = [
        (video.video_id, _as_ranges(video.sequences))
        for video in index[index["split"] != "train"].itertuples(index=False)
    ]
    listing = [(video_id, listed) for video_id, listed in listing if listed]  # none for UCF101, HMDB51
    skipped = set(skipped_videos(index, videos))
    samples = time_samples(videos, frame_table) if listing else {}
    dropped, whole = [], []
    for video_id, listed in listing:
        if video_id in skipped or video_id not in samples:
            continue
        held = {number for number, _ in sequence_segments(samples[video_id], listed)}
        if held == {WHOLE_VIDEO}:
            whole.append(video_id)
        dropped += [f"{video_id}:{n}" for n in range(len(listed)) if n not in held]
    return {
        "sequences_without_frames": len(dropped),
        "sequences_without_frames_ids": dropped,
        "videos_scored_whole": len(whole),
        "videos_scored_whole_ids": whole,
    }
