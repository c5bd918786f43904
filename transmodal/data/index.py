"""The dataset index (stage ``prepare``): one row per video, with its label, group, split and KTH sequences.

Columns (see :data:`INDEX_COLUMNS`), rows sorted by ``video_id``:

- ``video_id`` (str, unique): KTH ``person01_boxing_d1``; UCF101 ``v_ApplyEyeMakeup_g08_c01``; HMDB51 the
  file stem (``<class>__<stem>`` only for a stem found in two class folders; real HMDB51 stems are unique).
- ``path`` (str): the video relative to the dataset root, POSIX separators.
- ``label`` (str), ``label_idx`` (int64): KTH/synthetic index in ``KTH_ACTIONS``; UCF101 ``classInd.txt``
  number - 1; HMDB51 index in the sorted class names of the split files and class folders.
- ``group`` (int64): clips sharing a group come from one recording and must not straddle train and val.
  KTH the subject number; UCF101 the ``gXX`` number (per class: g08 of two classes are unrelated);
  HMDB51 the id of the source video, ``<source>`` in ``<source>_<class>_<flags>_<n>.avi``, numbered 0.. in
  sorted order of the source names of every video on disk (so ids do not change with the split). Groups are
  kept apart per class: ``(label, group)`` pairs are never in both train and val.
- ``scenario`` (str): KTH ``d1``..``d4``; ``""`` otherwise.
- ``split`` (str): ``train`` | ``val`` | ``test``.
- ``sequences`` (list of ``[start, end]``): KTH's 1-based inclusive frame ranges from ``00sequences.txt``;
  empty for UCF101/HMDB51 and for KTH videos the file does not list.

The frame's ``attrs["class_names"]`` (written into the Parquet file by pandas) lists every class of the
dataset by ``label_idx``, including a class none of whose videos is on disk: the head keeps an output for
it, and its name, whatever later stage loses its videos.

The indexer never opens a video; it reads file names and the official split and sequence lists only.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import math
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from transmodal.params import KTH_ACTIONS, DataConfig, ParamError
from transmodal.stage import StageInputError

INDEX_COLUMNS = ("video_id", "path", "label", "label_idx", "group", "scenario", "split", "sequences")
SPLITS = ("train", "val", "test")

# Pandas infers list<null> for a column of empty lists (UCF101/HMDB51); write with this schema to keep the
# Parquet type the same for every dataset.
ARROW_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("label_idx", pa.int64()),
        ("group", pa.int64()),
        ("scenario", pa.string()),
        ("split", pa.string()),
        ("sequences", pa.list_(pa.list_(pa.int64()))),
    ]
)

KTH_SUBJECTS = tuple(range(1, 26))
# paper: section 4.1 of the TransMODAL preprint; schuldt: Schuldt et al. 2004 (ICPR), the standard KTH split.
KTH_SPLITS: dict[str, dict[str, tuple[int, ...]]] = {
    "paper": {
        "train": tuple(range(1, 17)),
        "val": (17,),
        "test": tuple(range(18, 26)),
    },
    "schuldt": {
        "train": tuple(range(11, 19)),
        "val": (19, 20, 21, 23, 24, 25, 1, 4),
        "test": (22, 2, 3, 5, 6, 7, 8, 9, 10),
    },
}
_KTH_SUBJECT_SPLIT = {
    name: {subject: part for part, subjects in parts.items() for subject in subjects}
    for name, parts in KTH_SPLITS.items()
}
for _name, _table in _KTH_SUBJECT_SPLIT.items():
    # Each split must put every subject in exactly one part.
    assert sorted(_table) == list(KTH_SUBJECTS), _name
    assert sum(len(s) for s in KTH_SPLITS[_name].values()) == len(KTH_SUBJECTS), _name

KTH_SEQUENCES_FILE = "00sequences.txt"
_KTH_ID = re.compile(r"person(?P<subject>\d{2})_(?P<action>[a-z]+)_(?P<scenario>d[1-4])")
_KTH_FILE = re.compile(_KTH_ID.pattern + r"_uncomp\.(?i:avi)")  # .AVI too (copied from a FAT disk)
_KTH_LINE = re.compile(r"(?P<video_id>\S+)\s+(?:(?P<missing>\*missing\*)|frames\s+(?P<ranges>\S.*))")
_RANGE = re.compile(r"(?P<start>\d+)\s*-\s*(?P<end>\d+)")

UCF101_VIDEOS = "UCF-101"
UCF101_LISTS = "ucfTrainTestlist"
_UCF_STEM = re.compile(r"v_(?P<name>.+)_g(?P<group>\d+)_c(?P<clip>\d+)")

HMDB51_SPLITS = "testTrainMulti_7030_splits"
# <body part>_<camera motion>_np<people>_<viewpoint>_<quality>_<clip number>, e.g. u_nm_np1_ba_goo_0.
_HMDB_FLAGS = r"_[a-z]_[a-z]{2}_np\d+_[a-z]{2}_[a-z]{3}_\d+"
_HMDB_MARKS = {"1": "train", "2": "test", "0": "unused"}


class ListError(StageInputError, ValueError):
    """A bad line of a dataset's own list (00sequences.txt, classInd.txt, a split list), naming the file and
    the line: the stage's one-line error."""


def _root_error(root: Path, what: str) -> ParamError:
    return ParamError(f"params.yaml: data.root is {str(root)!r}, which {what}")


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise _root_error(root, "does not exist or is not a folder")


def _hidden(name: str) -> bool:
    """A hidden name (``.DS_Store``; ``._<name>``, the metadata a Mac writes beside each file it copies to
    a FAT or network drive): never a video, a class or a split file of the datasets."""
    return name.startswith(".")


def _avi_files(folder: Path, pattern: str = "*") -> tuple[dict[str, str], list[str]]:
    """The ``.avi`` files matching ``pattern`` under ``folder``, whatever the case of their extension, by the
    name the official lists give them (``.avi``, in Unicode's composed form, NFC, as the lists are read) ->
    their path relative to ``folder`` as it is on disk, and the paths left out because another case of the
    same name is there (the ``.avi`` one is indexed). Hidden names are skipped."""
    found: dict[str, str] = {}
    extra: list[str] = []
    for path in sorted(folder.glob(pattern)):
        rel = path.relative_to(folder).as_posix()
        if path.suffix.lower() != ".avi" or any(map(_hidden, rel.split("/"))) or not path.is_file():
            continue
        listed = _nfc(rel[: -len(".avi")] + ".avi")
        if listed in found:
            keep, drop = (rel, found[listed]) if rel.endswith(".avi") else (found[listed], rel)
            found[listed] = keep
            extra.append(drop)
        else:
            found[listed] = rel
    return found, extra


def _split_file_error(split: object, path: Path) -> ParamError:
    return ParamError(f"params.yaml: data.split is {split!r}, but split file {str(path)!r} does not exist")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers, stripped (the official lists use CRLF; a
    list saved again by a Windows editor starts with a byte-order mark, which is not part of its first line,
    and Notepad's "Unicode" is UTF-16, known by its mark)."""
    data = path.read_bytes()
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        text = data.decode("utf-16") if utf16 else data.decode("utf-8-sig", errors="surrogateescape")
    except UnicodeDecodeError as err:
        raise ListError(f"{path}: starts with a UTF-16 mark but is not UTF-16 ({err.reason})") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for number, line in lines:
        if not _is_utf8(line):  # the index is UTF-8 (Parquet strings): such a name could never be stored
            raise ListError(f"{path}:{number}: is not UTF-8 text: '{_shown(line)}'; save the list as UTF-8")
    return lines


def _is_utf8(name: str) -> bool:
    """Whether a name read from the disk (undecodable bytes kept as surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A name as it can be printed and stored: bytes that are not UTF-8 as ``\\xe9`` escapes (two such names
    stay two)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------------- KTH


def parse_kth_sequences(path: Path) -> tuple[dict[str, list[tuple[int, int]]], list[str]]:
    """Parse KTH's 00sequences.txt: {video_id: [(start, end), ...]} and the ids marked *missing*.

    Ranges are 1-based inclusive frame numbers, kept exactly as listed (a few overlap; that is the file's).
    Blank lines are skipped; any other line that is not ``<video_id> frames <a>-<b>, ...`` or
    ``<video_id> *missing*`` raises ValueError naming the file and line number.
    """
    path = Path(path)
    sequences: dict[str, list[tuple[int, int]]] = {}
    missing: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in _read_lines(path):

        def fail(why: str, number: int = number, line: str = line) -> ListError:
            return ListError(f"{path}:{number}: {why}: {line!r}")

        match = _KTH_LINE.fullmatch(line)
        if match is None:
            raise fail("expected '<video_id> frames <start>-<end>, ...' or '<video_id> *missing*'")
        video_id = match["video_id"]
        id_match = _KTH_ID.fullmatch(video_id)
        if id_match is None or id_match["action"] not in KTH_ACTIONS:
            raise fail(f"{video_id!r} is not a KTH video id (personNN_<action>_dS)")
        if video_id in first_seen:
            raise fail(f"{video_id} is listed again (first on line {first_seen[video_id]})")
        first_seen[video_id] = number
        if match["missing"]:
            missing.append(video_id)
            continue
        ranges = []
        for part in match["ranges"].split(","):
            range_match = _RANGE.fullmatch(part.strip())
            if range_match is None:
                raise fail(f"{part.strip()!r} is not a frame range <start>-<end>")
            start, end = int(range_match["start"]), int(range_match["end"])
            if not 1 <= start <= end:
                raise fail(f"frame range {start}-{end} is empty or not 1-based")
            ranges.append((start, end))
        sequences[video_id] = ranges
    return sequences, missing


def kth_split(subject: int, split: str) -> str:
    """The part (train/val/test) of a KTH subject (1-25) under split ``paper`` or ``schuldt``."""
    if split not in KTH_SPLITS:
        raise ValueError(f"unknown KTH split {split!r}; expected one of {', '.join(KTH_SPLITS)}")
    try:
        return _KTH_SUBJECT_SPLIT[split][subject]
    except KeyError:
        raise ValueError(f"KTH subject {subject} is outside 1-25") from None


def _find_kth_sequences(root: Path) -> Path:
    """``<root>/00sequences.txt``, else the one in a folder directly under root (archives nest it)."""
    direct = root / KTH_SEQUENCES_FILE
    if direct.is_file():
        return direct
    nested = sorted(p / KTH_SEQUENCES_FILE for p in root.iterdir() if (p / KTH_SEQUENCES_FILE).is_file())
    if len(nested) == 1:
        return nested[0]
    if not nested:
        raise _root_error(root, f"has no {KTH_SEQUENCES_FILE} (expected at {str(direct)!r})")
    names = ", ".join(str(p.relative_to(root).as_posix()) for p in nested)
    raise _root_error(root, f"has several {KTH_SEQUENCES_FILE} ({names}); keep one")


def index_kth(root: Path, split: str) -> tuple[pd.DataFrame, dict]:
    """Index ``<root>/<action>/personNN_<action>_dS_uncomp.avi`` with the sequences of 00sequences.txt.

    ``split`` is ``paper`` or ``schuldt`` (fixed subject lists; KTH has no random validation hold-out).
    Videos on disk but not in 00sequences.txt are kept with no sequences and counted; listed videos
    missing on disk are counted, not indexed; .avi files not named like KTH videos, or in a folder that is
    not their KTH action's, are listed with the reason (``unrecognised_reasons``), counted, not indexed.
    """
    root = Path(root)
    _check_root(root)
    if split not in KTH_SPLITS:
        raise ParamError(f"params.yaml: data.split is {split!r}; expected one of {', '.join(KTH_SPLITS)}")

    on_disk: dict[str, tuple[str, re.Match]] = {}
    unrecognised: list[str] = []
    reasons: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)):
        action = folder.name
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() != ".avi" or _hidden(file.name):
                continue
            rel = f"{action}/{file.name}"
            match = _KTH_FILE.fullmatch(file.name)
            if action not in KTH_ACTIONS:
                reasons[rel] = f"folder {action!r} is not a KTH action ({', '.join(KTH_ACTIONS)})"
            elif match is None:
                reasons[rel] = "not named personNN_<action>_dN_uncomp.avi"
            elif match["action"] != action:
                reasons[rel] = f"names the action {match['action']!r} but lies in the folder {action!r}"
            elif (video_id := file.name[: -len("_uncomp.avi")]) in on_disk:  # x_uncomp.avi and x_uncomp.AVI
                indexed = on_disk[video_id][0]
                if file.name.endswith(".avi"):  # the name 00sequences.txt's videos have is indexed
                    on_disk[video_id], rel, indexed = (rel, match), indexed, rel
                reasons[rel] = f"another file of the video {indexed}, which is indexed"
            else:
                on_disk[video_id] = (rel, match)
                continue
            unrecognised.append(rel)
    if not on_disk:
        raise _root_error(root, "has no KTH videos (<action>/personNN_<action>_dS_uncomp.avi)")

    sequences_file = _find_kth_sequences(root)
    sequences, marked_missing = parse_kth_sequences(sequences_file)

    rows = []
    for video_id, (rel_path, match) in on_disk.items():
        subject = int(match["subject"])
        if subject not in _KTH_SUBJECT_SPLIT[split]:
            raise ParamError(
                f"params.yaml: data.split is {split!r}, which covers KTH subjects 1-25, but data.root "
                f"{str(root)!r} has {rel_path}"
            )
        rows.append(
            {
                "video_id": video_id,
                "path": rel_path,
                "label": match["action"],
                "label_idx": KTH_ACTIONS.index(match["action"]),
                "group": subject,
                "scenario": match["scenario"],
                "split": kth_split(subject, split),
                "sequences": [[start, end] for start, end in sequences.get(video_id, [])],
            }
        )
    index = _frame(rows)
    index.attrs["class_names"] = list(KTH_ACTIONS)

    listed_missing = sorted(set(sequences) - set(on_disk))
    without_sequences = sorted(set(on_disk) - set(sequences))
    overlapping = sorted(video_id for video_id, ranges in sequences.items() if _overlaps(ranges))
    summary = _summarise(index)
    summary.update(
        {
            "dataset": "kth",
            "split": split,
            "sequences_file": sequences_file.relative_to(root).as_posix(),
            "sequences_listed_videos": len(sequences),
            "marked_missing": len(marked_missing),
            "marked_missing_ids": sorted(marked_missing),
            "listed_missing_on_disk": len(listed_missing),
            "listed_missing_on_disk_ids": listed_missing,
            "videos_without_sequences": len(without_sequences),
            "videos_without_sequences_ids": without_sequences,
            "videos_with_overlapping_sequences": len(overlapping),
            "unrecognised_files": unrecognised,
            "unrecognised": len(unrecognised),
            "unrecognised_reasons": reasons,
        }
    )
    return index, summary


def _overlaps(ranges: list[tuple[int, int]]) -> bool:
    return any(later[0] <= earlier[1] for earlier, later in itertools.pairwise(sorted(ranges)))


# ------------------------------------------------------------------------------------------------ UCF101


def _parse_class_ind(path: Path) -> dict[str, int]:
    """classInd.txt (``1 ApplyEyeMakeup``) as {class: label_idx}, label_idx = number - 1."""
    classes: dict[str, int] = {}
    for number, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ListError(f"{path}:{number}: expected '<number> <class>': {line!r}")
        class_number, name = int(parts[0]), parts[1]
        if name in classes or class_number - 1 in classes.values() or class_number < 1:
            raise ListError(f"{path}:{number}: class {name!r} or number {class_number} repeats or is < 1")
        classes[name] = class_number - 1
    if not classes:
        raise ListError(f"{path}: lists no classes")
    if sorted(classes.values()) != list(range(len(classes))):  # label_idx 0..N-1 numbers the outputs
        gaps = sorted(set(range(max(classes.values()) + 1)) - set(classes.values()))
        raise ListError(
            f"{path}: numbers {', '.join(str(n + 1) for n in gaps[:5])} are missing: expected 1 to N"
        )
    return classes


def _parse_ucf_list(path: Path, classes: dict[str, int], has_labels: bool) -> list[tuple[str, str, int]]:
    """A train/test list as [(path under UCF-101, class, group)]; labels, when given, must match classInd."""
    entries = []
    for number, line in _read_lines(path):
        parts = line.split()
        # Test lists carry no label; a label there is accepted but must agree with classInd.txt too.
        if len(parts) not in ((2,) if has_labels else (1, 2)):
            expected = "<Class>/<video>.avi <label>" if has_labels else "<Class>/<video>.avi"
            raise ListError(f"{path}:{number}: expected '{expected}': {line!r}")
        rel_path = _nfc(parts[0].replace("\\", "/"))
        class_name, _, file_name = rel_path.partition("/")
        stem_match = _UCF_STEM.fullmatch(file_name.removesuffix(".avi"))
        if class_name not in classes or not file_name.endswith(".avi") or stem_match is None:
            raise ListError(
                f"{path}:{number}: expected '<Class>/v_<Class>_gXX_cYY.avi' with a class of classInd.txt: "
                f"{line!r}"
            )
        # Labels are checked against the folder, not the file name: the dataset's own HandstandPushups folder
        # holds v_HandStandPushups_* files.
        if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != classes[class_name]):
            raise ListError(f"{path}:{number}: label {parts[1]} disagrees with classInd.txt: {line!r}")
        entries.append((rel_path, class_name, int(stem_match["group"])))
    return entries


def index_ucf101(root: Path, split: int, val_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Index UCF101 split ``split`` (1-3): official train/test lists, val = held-out training groups.

    Layout: ``<root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and ``<root>/ucfTrainTestlist/`` with
    ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``. ``val_fraction`` of each class's training
    groups (rounded, at least one while a class has two or more) become ``val``, chosen with
    ``numpy.random.default_rng([seed, label_idx])``. Listed videos missing on disk are counted, not indexed.
    """
    root = Path(root)
    _check_root(root)
    videos_dir = root / UCF101_VIDEOS
    found, duplicates = _avi_files(videos_dir, "*/*") if videos_dir.is_dir() else ({}, [])
    # the listed path (UCF-101/<Class>/<video>.avi) -> the path on disk
    on_disk = {f"{UCF101_VIDEOS}/{listed}": f"{UCF101_VIDEOS}/{rel}" for listed, rel in found.items()}
    if not on_disk:
        raise _root_error(root, f"has no UCF101 videos ({UCF101_VIDEOS}/<Class>/v_<Class>_gXX_cYY.avi)")
    lists_dir = root / UCF101_LISTS
    class_ind = lists_dir / "classInd.txt"
    if not class_ind.is_file():
        raise _root_error(root, f"has no UCF101 class list {str(class_ind)!r}")
    if split not in (1, 2, 3):
        raise ParamError(f"params.yaml: data.split is {split!r}; expected one of 1, 2, 3")
    train_list = lists_dir / f"trainlist{split:02d}.txt"
    test_list = lists_dir / f"testlist{split:02d}.txt"
    for list_path in (train_list, test_list):
        if not list_path.is_file():
            raise _split_file_error(split, list_path)

    classes = _parse_class_ind(class_ind)
    rows = []
    listed: dict[str, str] = {}
    listed_missing: list[str] = []
    for part, list_path in (("train", train_list), ("test", test_list)):
        for rel_path, class_name, group in _parse_ucf_list(list_path, classes, has_labels=part == "train"):
            if rel_path in listed:
                raise ListError(f"{list_path}: {rel_path} is also listed in {listed[rel_path]}")
            listed[rel_path] = list_path.name
            disk_path = f"{UCF101_VIDEOS}/{rel_path}"
            if disk_path not in on_disk:
                listed_missing.append(disk_path)
                continue
            rows.append(
                {
                    "video_id": Path(rel_path).stem,
                    "path": on_disk[disk_path],
                    "label": class_name,
                    "label_idx": classes[class_name],
                    "group": group,
                    "scenario": "",
                    "split": part,
                    "sequences": [],
                }
            )
    unlisted = sorted(
        [on_disk[p] for p in set(on_disk) - {f"{UCF101_VIDEOS}/{p}" for p in listed}]
        + [f"{UCF101_VIDEOS}/{rel}" for rel in duplicates]  # a second file of a listed name, not indexed
    )
    index = _finish_split(root, split, rows, val_fraction, seed)
    index.attrs["class_names"] = sorted(classes, key=classes.__getitem__)
    summary = _summarise(index)
    summary.update(
        {
            "dataset": "ucf101",
            "split": split,
            "val_fraction": val_fraction,
            "seed": seed,
            "classes_listed": len(classes),
            "listed_missing_on_disk": len(listed_missing),
            "listed_missing_on_disk_ids": sorted(listed_missing),
            "unlisted_on_disk": len(unlisted),
            "unlisted_on_disk_ids": unlisted,
        }
    )
    return index, summary


# ------------------------------------------------------------------------------------------------ HMDB51


def hmdb51_source(stem: str, class_name: str) -> str | None:
    """The source-video name of an HMDB51 clip (``<source>_<class>_<flags>_<n>``), or None if unparsable."""
    match = re.fullmatch(rf"(?P<source>.+)_{re.escape(class_name)}{_HMDB_FLAGS}", stem)
    return match["source"] if match else None


def _parse_hmdb_split(path: Path) -> dict[str, str]:
    """One ``<class>_test_splitN.txt`` as {file name: 'train' | 'test' | 'unused'}."""
    marks: dict[str, str] = {}
    for number, line in _read_lines(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in _HMDB_MARKS or not parts[0].endswith(".avi"):
            raise ListError(f"{path}:{number}: expected '<name>.avi <0|1|2>': {line!r}")
        name = _nfc(parts[0])  # as :func:`_avi_files` gives the names on disk
        if name in marks:
            raise ListError(f"{path}:{number}: {parts[0]} is listed twice")
        marks[name] = _HMDB_MARKS[parts[1]]
    return marks


def index_hmdb51(root: Path, split: int, val_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Index HMDB51 split ``split`` (1-3): official marks (1 train, 2 test, 0 unused), val by source video.

    Layout: ``<root>/<class>/<name>.avi`` and ``<root>/testTrainMulti_7030_splits/<class>_test_splitN.txt``.
    Videos marked 0 are excluded and counted. The group of a clip is its source video (see module docs);
    a name that does not parse as ``<source>_<class>_<flags>_<n>`` is its own source and is listed in the
    summary. Validation holds out groups per class as in :func:`index_ucf101`.
    """
    root = Path(root)
    _check_root(root)
    on_disk: dict[str, dict[str, str]] = {}  # class -> the listed file name (.avi) -> the name on disk
    same_name: list[str] = []  # a second file of one name (x.avi and x.AVI): not indexed, listed as unlisted
    for folder in sorted(
        p for p in root.iterdir() if p.is_dir() and p.name != HMDB51_SPLITS and not _hidden(p.name)
    ):
        names, duplicates = _avi_files(folder)
        same_name += [f"{folder.name}/{name}" for name in duplicates]
        if names:
            on_disk[folder.name] = names
    if not on_disk:
        raise _root_error(root, "has no HMDB51 videos (<class>/<name>.avi)")
    if split not in (1, 2, 3):
        raise ParamError(f"params.yaml: data.split is {split!r}; expected one of 1, 2, 3")
    # the classes are those of the split files as well as the folders: a class whose folder is missing or
    # empty (an inner archive that did not extract) keeps its label index, its videos counted as missing
    split_dir = root / HMDB51_SPLITS
    if not split_dir.is_dir():  # the videos' archive alone: no split is usable, whatever data.split says
        raise _root_error(
            root,
            f"has no {HMDB51_SPLITS}/ folder (the official split files): unpack test_train_splits.rar "
            "there, or run `transmodal download hmdb51 ROOT`",
        )
    suffix = f"_test_split{split}.txt"
    listed_classes = (
        {p.name.removesuffix(suffix) for p in split_dir.glob(f"*{suffix}") if not _hidden(p.name)}
        if split_dir.is_dir()
        else set()
    )
    classes = sorted(set(on_disk) | listed_classes)
    classes_missing = sorted(listed_classes - set(on_disk))

    source_of: dict[tuple[str, str], str] = {}
    unparsed: list[str] = []
    for class_name, names in on_disk.items():
        for name in names:
            stem = name.removesuffix(".avi")
            source = hmdb51_source(stem, class_name)
            if source is None:
                unparsed.append(f"{class_name}/{names[name]}")
                source = stem
            source_of[class_name, name] = source
    group_id = {source: i for i, source in enumerate(sorted(set(source_of.values())))}
    stem_count = Counter(name.removesuffix(".avi") for names in on_disk.values() for name in names)

    rows = []
    unused = 0
    listed_missing: list[str] = []
    unlisted: list[str] = []
    for label_idx, class_name in enumerate(classes):
        split_path = root / HMDB51_SPLITS / f"{class_name}_test_split{split}.txt"
        named = any((split_dir / f"{class_name}_test_split{n}.txt").is_file() for n in (1, 2, 3))
        if not named and listed_classes:  # the other classes have split files, this folder none: a stray
            raise _root_error(
                root,
                f"has a folder {class_name!r} of .avi files that no split file names (no {split_path.name} in "
                f"{HMDB51_SPLITS}); HMDB51's classes are those of its split files: move the folder out",
            )
        if not split_path.is_file():
            raise _split_file_error(split, split_path)
        marks = _parse_hmdb_split(split_path)
        names = set(on_disk.get(class_name, ()))
        unlisted += [f"{class_name}/{on_disk[class_name][name]}" for name in sorted(names - set(marks))]
        unlisted += [path for path in same_name if path.startswith(f"{class_name}/")]
        for name, part in marks.items():
            if part == "unused":
                unused += 1
                continue
            if name not in names:
                listed_missing.append(f"{class_name}/{name}")
                continue
            stem = name.removesuffix(".avi")
            rows.append(
                {
                    "video_id": stem if stem_count[stem] == 1 else f"{class_name}__{stem}",
                    "path": f"{class_name}/{on_disk[class_name][name]}",
                    "label": class_name,
                    "label_idx": label_idx,
                    "group": group_id[source_of[class_name, name]],
                    "scenario": "",
                    "split": part,
                    "sequences": [],
                }
            )
    index = _finish_split(root, split, rows, val_fraction, seed)
    index.attrs["class_names"] = classes
    summary = _summarise(index)
    summary.update(
        {
            "dataset": "hmdb51",
            "split": split,
            "val_fraction": val_fraction,
            "seed": seed,
            "unused_excluded": unused,
            "listed_missing_on_disk": len(listed_missing),
            "listed_missing_on_disk_ids": sorted(listed_missing),
            "classes_missing_on_disk": classes_missing,
            "unlisted_on_disk": len(unlisted),
            "unlisted_on_disk_ids": unlisted,
            "source_videos": len(group_id),
            "names_without_source": len(unparsed),
            "names_without_source_ids": unparsed,
            "video_ids_prefixed_with_class": sum(1 for n in stem_count.values() if n > 1),
        }
    )
    return index, summary


# ---------------------------------------------------------------------------------------------- shared


def hold_out_val(index: pd.DataFrame, val_fraction: float, seed: int, by_name: bool = False) -> pd.Series:
    """The ``split`` column with ``val_fraction`` of each class's training groups moved to ``val``.

    Per class: round(val_fraction * groups) groups (at least 1 if val_fraction > 0, at most all but one, so
    every class keeps training data), drawn with ``numpy.random.default_rng([seed, label_idx])`` so one
    class's draw does not depend on the others. ``by_name``: with :func:`class_key` of the class's name in
    place of its label_idx, so a class's draw does not change when classes are added, removed or renamed
    (one's own class folders, numbered in sorted order; the official datasets number theirs by their lists).
    """
    return _hold_out(index, val_fraction, [seed], "val", by_name=by_name)


def hold_out_rng(seed: list[int], label_idx: int, stream: int | None = None) -> np.random.Generator:
    """The draw of one class's held-out groups: ``default_rng([*seed, label_idx])`` (val, as it always was), or
    with ``stream`` last (test). NumPy pads a short seed with zeros, so the tag goes last, never before the
    label: ``[seed, 1, 0]`` is the same stream as ``[seed, 1]``."""
    return np.random.default_rng([*seed, int(label_idx)] + ([stream] if stream is not None else []))


def class_key(name: str) -> int:
    """A class's name as a 64-bit number (the first 8 bytes of its SHA-256), which seeds its draw."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def _hold_out(
    index: pd.DataFrame,
    fraction: float,
    seed: list[int],
    into: str,
    stream: int | None = None,
    by_name: bool = False,
) -> pd.Series:
    """:func:`hold_out_val` into ``into``, each class drawn with :func:`hold_out_rng`."""
    split = index["split"].copy()
    if fraction <= 0:
        return split
    train = index[index["split"] == "train"]
    for label_idx, rows in train.groupby("label_idx", sort=True):
        groups = np.sort(rows["group"].unique())
        if len(groups) < 2:
            continue
        n_out = min(len(groups) - 1, max(1, math.floor(fraction * len(groups) + 0.5)))
        rng = hold_out_rng(seed, class_key(rows["label"].iloc[0]) if by_name else label_idx, stream)
        out_groups = rng.choice(groups, size=n_out, replace=False)
        split.loc[rows.index[rows["group"].isin(out_groups)]] = into
    return split


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the index DataFrame: fixed columns and dtypes, sorted by video_id."""
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    for column in ("video_id", "path", "label", "scenario", "split"):
        index[column] = index[column].astype(str)
    for column in ("label_idx", "group"):
        index[column] = index[column].astype("int64")
    index = index.sort_values("video_id", kind="stable").reset_index(drop=True)
    duplicated = index["video_id"][index["video_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"video ids are not unique: {sorted(set(duplicated))[:5]}")
    return index


def _finish_split(root: Path, split: int, rows: list[dict], val_fraction: float, seed: int) -> pd.DataFrame:
    if not rows:
        raise ParamError(
            f"params.yaml: data.root is {str(root)!r}, whose videos are all missing from the lists of "
            f"data.split {split!r}"
        )
    index = _frame(rows)
    index["split"] = hold_out_val(index, val_fraction, seed).astype(str)
    return index


def _summarise(index: pd.DataFrame) -> dict:
    """Counts every dataset reports: videos and sequences per split and class, group leakage."""
    per_class_split = index.groupby(["label", "split"]).size()
    pairs = {
        part: set(zip(rows["label"], rows["group"], strict=True)) for part, rows in index.groupby("split")
    }
    sequence_counts = index["sequences"].map(len)
    return {
        "videos": len(index),
        "classes": int(index["label"].nunique()),
        "videos_per_split": {part: int((index["split"] == part).sum()) for part in SPLITS},
        "videos_per_class": {label: int(n) for label, n in sorted(index["label"].value_counts().items())},
        "videos_per_class_split": {
            label: {part: int(per_class_split.get((label, part), 0)) for part in SPLITS}
            for label in sorted(index["label"].unique())
        },
        "sequences_total": int(sequence_counts.sum()),
        "sequences_per_split": {part: int(sequence_counts[index["split"] == part].sum()) for part in SPLITS},
        # (label, group) pairs in both train and val: must be 0, or validation leaks training recordings.
        "groups_in_train_and_val": len(pairs.get("train", set()) & pairs.get("val", set())),
        # A class with one training group gets no validation videos (holding it out would empty train).
        "classes_without_val": sorted(set(index["label"]) - set(index.loc[index["split"] == "val", "label"])),
    }


# ------------------------------------------------------------------------------------- your own videos

VIDEO_SUFFIXES = (
    ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".ogv", ".ts",
    ".webm", ".wmv",
)  # fmt: skip
FOLDER_SPLIT_FILE = "splits.csv"
SPLIT_FOLDER_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")
TEST_STREAM = (
    1  # the test hold-out draws from default_rng([seed, label_idx, 1]), val's from [seed, label_idx]
)
MAX_ID_BYTES = 120  # a longer video id is cut and suffixed with its path's hash (ids name explain's figures)
MAX_LISTED = 100  # file names listed per kind in metrics/prepare.json (all are counted)


def index_folder(
    root: Path, split: str, val_fraction: float, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Index a folder of one's own labelled videos: ``<root>/<class>/<video>`` or
    ``<root>/<class>/<group>/.../<video>`` (any of :data:`VIDEO_SUFFIXES`, any case).

    Classes are the class folders holding a video (after ``splits.csv`` in ``file`` mode), labelled in
    sorted order. A video below a subfolder of its class folder belongs to the group that subfolder names
    (a recording session, a person: with ``random`` its videos are never split between train and the
    held-out sets); a video directly in the class folder is its own group. Groups are per class, as
    UCF101's. The video id is the path without its suffix, ``/`` written ``__`` (paths that would share
    one, or ids over :data:`MAX_ID_BYTES`, get their path's hash). Symbolic links are followed; hidden files
    and folders are skipped; other files, broken links, a second file of one name (``x.mp4`` beside
    ``x.avi``) and a second link to one file are counted and left out.

    ``split``: ``random`` holds out ``test_fraction`` of each class's groups for test, then ``val_fraction``
    of the rest for val (:func:`hold_out_val`), seeded by ``seed``; ``file`` reads ``<root>/splits.csv``
    (columns ``path`` and ``split``: ``train``, ``val`` or ``test``; paths relative to the root), and holds
    out val from train only when the file names no ``val`` video.
    """
    root = Path(root)
    _check_root(root)
    listed = _read_split_file(_folder_split_path(root)) if split == "file" else None
    videos, left_out = _folder_videos(root, set() if listed is None else set(listed["path"]))
    if not videos:
        raise _root_error(
            root, f"has no videos in class folders (<class>/<video>, one of {', '.join(VIDEO_SUFFIXES)})"
        )
    rows = [
        {
            "video_id": video_id,
            "path": rel,
            "label": label,
            "label_idx": 0,
            "group": 0,
            "scenario": "",
            "split": "train",
            "sequences": [],
        }
        for video_id, (label, rel, _) in videos.items()
    ]
    group_of = {video_id: group for video_id, (_, _, group) in videos.items()}
    extra: dict = {}
    if split == "file":
        index, extra = _folder_split_file(root, _frame(rows), listed)
    elif split == "random":
        index = _frame(rows)
    else:
        raise ParamError(
            f"params.yaml: data.split is {split!r}; for data.dataset folder expected random or file"
        )
    classes = sorted(set(index["label"]))
    if len(classes) < 2:
        only = f"videos of one class only ({classes[0]}); a classifier needs two or more class folders"
        if split == "file":
            raise ParamError(f"{root / FOLDER_SPLIT_FILE} lists {only}")
        raise _root_error(root, f"has {only}")
    index["label_idx"] = index["label"].map({label: n for n, label in enumerate(classes)}).astype("int64")
    index.attrs["class_names"] = classes
    keys = index["video_id"].map(group_of)
    index["group"] = keys.map({key: n for n, key in enumerate(sorted(set(keys)))}).astype("int64")
    if split == "random":
        test = _hold_out(index, test_fraction, [seed], "test", TEST_STREAM, by_name=True)
        index["split"] = test.astype(str)
        index["split"] = hold_out_val(index, val_fraction, seed, by_name=True).astype(str)
    elif not extra["val_from_file"]:
        index["split"] = hold_out_val(index, val_fraction, seed, by_name=True).astype(str)
    held = {part: set(index.loc[index["split"] == part, "label"]) for part in SPLITS}
    if split == "file" and (no_train := sorted(set(classes) - held["train"])):
        raise ParamError(f"{root / FOLDER_SPLIT_FILE}: no training video of class {', '.join(no_train)}")
    if not held["test"]:
        groups = index.groupby("label")["group"].nunique()
        raise _root_error(
            root,
            f"gives no test videos with data.split {split!r}: "
            + (
                f"each class has {groups.min()} to {groups.max()} group(s), and one is held out only from a "
                "class with two (a subfolder of a class folder is one group; data.split file splits within "
                "one)"
                if split == "random"
                else f"{root / FOLDER_SPLIT_FILE} names no test video"
            ),
        )
    summary = _summarise(index)
    unrecognised = sorted(left_out)
    summary.update(
        {
            "split": split,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction if split == "random" else None,
            "seed": seed,
            "groups": int(index["group"].nunique()),
            "classes_without_test": sorted(set(classes) - held["test"]),
            "unrecognised": len(unrecognised),
            "unrecognised_reasons": dict(sorted(Counter(left_out.values()).items())),
            "unrecognised_files": unrecognised[:MAX_LISTED],
            **extra,
        }
    )
    return index, summary


def _folder_videos(
    root: Path, listed: set[str] = frozenset()
) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """video id -> (class, path relative to ``root``, group key) of every video under a class folder, and the
    files left out -> why. Links are followed (each real folder once); hidden names are skipped. Of two
    files of one name (``x.MOV`` and ``x.mp4``) the one whose path (NFC) is in ``listed`` (splits.csv's) is
    indexed, else the first in code-point order."""
    candidates: list[tuple[str, Path, str]] = []  # (class, path, path relative to root), walk order
    left_out: dict[str, str] = {}
    folders = []
    for entry in sorted(root.iterdir()):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            folders.append(entry)
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            left_out[entry.name] = "directly in data.root, in no class folder"
    _check_class_names([folder.name for folder in folders], root)
    split_folders = [f.name for f in folders if f.name.casefold() in SPLIT_FOLDER_NAMES]
    if len(split_folders) > 1:  # root/train/<class>/..., root/test/<class>/...: classes would be the splits
        raise _root_error(
            root,
            f"has folders {', '.join(split_folders)}, named as splits; data.dataset folder reads class folders "
            f"(<root>/<class>/...): put the classes at the top and the splits in {FOLDER_SPLIT_FILE} (data.split: file)",
        )

    def unreadable(err: OSError) -> None:
        left_out[_shown(Path(err.filename).relative_to(root).as_posix()) + "/"] = (
            f"cannot be read ({err.strerror})"
        )

    # Each real folder is walked once, whatever names lead to it: first every folder with no link on its
    # way (links not followed), then the class folders that are links (to another disk), then the other
    # linked folders in the order found. So a video keeps its most direct name, and the walk is linear in
    # the folders however the links cross (a link back up the tree, or to a folder already walked, is
    # left out as such, its files with it).
    root_real = os.path.realpath(root)
    walked: set[str] = set()
    linked: list[tuple[str, Path]] = []  # (class, a linked folder): walked after the link-free ones

    def walk(label: str, top: Path) -> None:
        for directory, subdirs, files in os.walk(top, onerror=unreadable):
            real = os.path.realpath(directory)
            shown = _shown(Path(directory).relative_to(root).as_posix()) + "/"
            if real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
                left_out[shown] = "a link to data.root or a folder above it: not a class folder"
                subdirs[:] = []
                continue
            if real in walked:
                left_out[shown] = "another name of a folder indexed under its own"
                subdirs[:] = []
                continue
            walked.add(real)
            links = {d for d in subdirs if os.path.islink(os.path.join(directory, d))}
            subdirs[:] = sorted(d for d in subdirs if not _hidden(d) and d not in links)
            linked.extend((label, Path(directory) / d) for d in sorted(links) if not _hidden(d))
            for name in sorted(files):
                if _hidden(name):
                    continue
                path = Path(directory) / name
                rel = path.relative_to(root).as_posix()
                if not _is_utf8(rel):
                    left_out[_shown(rel)] = (
                        "its name is not valid UTF-8 (an old archive's code page): rename it"
                    )
                elif path.suffix.lower() not in VIDEO_SUFFIXES:
                    left_out[rel] = "not a video file name"
                elif not path.exists():
                    left_out[rel] = "broken link"
                else:
                    candidates.append((label, path, rel))

    for folder in folders:
        if not folder.is_symlink():
            walk(folder.name, folder)
    linked[:0] = [(folder.name, folder) for folder in folders if folder.is_symlink()]
    while linked:
        walk(*linked.pop(0))
    # a file reached by several names (a link to the file itself) is indexed once, under its most direct
    # name: no link from the root down, else none below its class folder, else any; the most direct names
    # in several classes leave its class unknown, and it is left out
    real_class = {folder.name: os.path.realpath(folder) for folder in folders}

    def links_on_the_way(candidate: tuple[str, Path, str]) -> int:
        label, path, rel = candidate
        real, parts = os.path.realpath(path), rel.split("/")
        if real == os.path.join(root_real, *parts):
            return 0
        return 1 if real == os.path.join(real_class[label], *parts[1:]) else 2

    names: dict[str, list[tuple[int, tuple[str, Path, str]]]] = {}
    for candidate in candidates:
        names.setdefault(os.path.realpath(candidate[1]), []).append((links_on_the_way(candidate), candidate))
    chosen: dict[str, tuple[str, Path, str] | None] = {}
    for real, reached in names.items():
        fewest = min(level for level, _ in reached)
        best = [candidate for level, candidate in reached if level == fewest]
        chosen[real] = best[0] if len({label for label, _, _ in best}) == 1 else None

    found: dict[tuple[str, str], tuple[str, str, str]] = {}  # (class, path without suffix) -> ...
    for label, path, rel in candidates:
        best = chosen[os.path.realpath(path)]
        if best is None:
            left_out[rel] = "one file linked into several classes: its class is unknown"
            continue
        if best[2] != rel:
            left_out[rel] = "another name of an indexed file"
            continue
        stem = rel[: -len(path.suffix)]
        if (label, stem) in found:
            twin = found[label, stem][1]
            if _nfc(rel) not in listed or _nfc(twin) in listed:
                left_out[rel] = "a second file of one name (another suffix)"
                continue
            left_out[twin] = "a second file of one name (another suffix), not the one splits.csv lists"
        inner = path.relative_to(root / label).parts
        group = f"{label}/{inner[0]}" if len(inner) > 1 else rel
        found[label, stem] = (label, rel, group)
    ids = {key: key[1].replace("/", "__") for key in found}
    shared = Counter(ids.values())
    videos = {}
    for key, video_id in ids.items():
        rel = found[key][1]
        if shared[video_id] > 1 or len(video_id.encode()) > MAX_ID_BYTES:  # a__b.mp4 beside a/b.mp4; deep
            digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
            video_id = f"{video_id.encode()[: MAX_ID_BYTES - 9].decode(errors='ignore')}~{digest}"
        videos[video_id] = found[key]
    return dict(sorted(videos.items())), left_out


def _check_class_names(names: list[str], root: Path) -> None:
    """Class folders whose names differ only in case or in Unicode form (``café`` typed, ``café`` from a
    Mac) look like one class and would be two: refused, naming both."""
    seen: dict[str, str] = {}
    for name in names:
        if not _is_utf8(name):
            raise _root_error(
                root, f"has a class folder '{_shown(name)}' whose name is not valid UTF-8: rename it"
            )
        key = _nfc(name).casefold()
        if key in seen:
            raise _root_error(
                root,
                f"has class folders {seen[key]!r} and {name!r}, which differ only in case or in how their "
                "letters are encoded: they would be two classes; merge them or rename one",
            )
        seen[key] = name


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _folder_split_path(root: Path) -> Path:
    path = root / FOLDER_SPLIT_FILE
    if not path.is_file():
        raise _split_file_error("file", path)
    return path


def _folder_split_file(root: Path, index: pd.DataFrame, listed: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The videos ``listed`` (``<root>/splits.csv``, :func:`_read_split_file`) names, with their splits; what
    the file and the folder disagree on."""
    path = root / FOLDER_SPLIT_FILE
    # matched in one Unicode form: a name typed into a spreadsheet and the one a Mac wrote on disk differ
    split_of = dict(zip(listed["path"], listed["split"], strict=True))
    disk_names = index["path"].map(_nfc)
    on_disk = set(disk_names)
    unlisted = sorted(on_disk - set(split_of))
    listed_missing = sorted(set(split_of) - on_disk)
    if len(listed_missing) == len(split_of):
        example = f" (the first: {listed_missing[0]!r})" if listed_missing else ""
        raise ParamError(
            f"{path}: none of its {len(split_of)} paths is a video under data.root{example}; a path is "
            f"relative to data.root, e.g. {index['path'].iloc[0]!r}"
        )
    listed_here = disk_names.isin(split_of).to_numpy()
    index = index[listed_here].reset_index(drop=True)
    index["split"] = disk_names[listed_here].map(split_of).astype(str).to_numpy()
    return index, {
        "val_from_file": bool((index["split"] == "val").any()),
        "listed_missing_on_disk": len(listed_missing),
        "listed_missing_on_disk_ids": listed_missing[:MAX_LISTED],
        "unlisted_on_disk": len(unlisted),
        "unlisted_on_disk_ids": unlisted[:MAX_LISTED],
    }


def _read_split_file(path: Path) -> pd.DataFrame:
    """``splits.csv`` as (path, split) rows indexed by their line numbers: a comma, semicolon or tab
    separated table as a spreadsheet saves it (UTF-8 with or without a byte-order mark, UTF-16, or a Windows
    code page; fields quoted or not), header names in any case, ``#`` comment lines, blank lines and rows of
    empty fields skipped. A row with more fields than the header (a path holding the separator, unquoted)
    is refused, naming its line; paths are compared in one Unicode form (NFC)."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ParamError(f"{path}: empty; it needs a header line path,split and a line per video")
    header = lines[0][1]
    separator = max((",", ";", "\t"), key=header.count)
    rows = [(n, next(csv.reader([line], delimiter=separator, skipinitialspace=True))) for n, line in lines]
    names = [name.strip().lower() for name in rows[0][1]]
    missing = [column for column in ("path", "split") if column not in names]
    if missing:
        raise ParamError(
            f"{path}: its header {header.strip()!r} has no column {' or '.join(missing)} (it must name path and "
            "split, separated by commas)"
        )
    column = {name: names.index(name) for name in ("path", "split")}
    numbers, paths, splits = [], [], []
    for n, fields in rows[1:]:
        if not any(field.strip() for field in fields):
            continue  # a spreadsheet's empty row (",,")
        if len(fields) > len(names) and any(field.strip() for field in fields[len(names) :]):
            raise ParamError(
                f"{path}, line {n}: {len(fields)} fields where the header has {len(names)}; a path holding "
                f"{separator!r} must be in double quotes"
            )
        fields = fields + [""] * (len(names) - len(fields))
        numbers.append(n)
        paths.append(_nfc(fields[column["path"]].strip().replace("\\", "/").removeprefix("./")))
        splits.append(fields[column["split"]].strip().lower())
    table = pd.DataFrame({"path": paths, "split": splits}, index=numbers, dtype=object)
    bad = table[~table["split"].isin(SPLITS)]
    if len(bad):
        raise ParamError(
            f"{path}, line {bad.index[0]}: split {bad['split'].iloc[0]!r} for {bad['path'].iloc[0]!r}; expected "
            "train, val or test"
        )
    twice = table["path"][table["path"].duplicated()]
    if len(twice):
        raise ParamError(f"{path}, line {twice.index[0]}: {twice.iloc[0]!r} is listed twice")
    return table


def build_index(cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Index the dataset of the ``data`` params; ``synthetic`` has the KTH layout and uses the KTH indexer."""
    root = cfg.root_path()
    if cfg.dataset in ("synthetic", "kth"):
        index, summary = index_kth(root, str(cfg.split))
    elif cfg.dataset == "ucf101":
        index, summary = index_ucf101(root, int(cfg.split), cfg.val_fraction, cfg.seed)
    elif cfg.dataset == "hmdb51":
        index, summary = index_hmdb51(root, int(cfg.split), cfg.val_fraction, cfg.seed)
    elif cfg.dataset == "folder":
        index, summary = index_folder(root, str(cfg.split), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    else:  # DataConfig validates the choice; this guards a new dataset added there but not here
        raise ParamError(f"params.yaml: data.dataset is {cfg.dataset!r}, which has no indexer")
    summary["dataset"] = cfg.dataset
    summary["root"] = str(cfg.root)
    summary["class_names"] = list(index.attrs["class_names"])
    # a class of the dataset's list with no video indexed keeps its label index and its output in the head
    summary["classes_without_videos"] = sorted(set(summary["class_names"]) - set(index["label"]))
    return index, summary
