"""Dataset index (stage ``prepare``): KTH sequences and splits, UCF101 and HMDB51 lists, bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from transmodal.data.index import (
    ARROW_SCHEMA,
    INDEX_COLUMNS,
    ListError,
    build_index,
    hmdb51_source,
    index_folder,
    index_hmdb51,
    index_kth,
    index_ucf101,
    kth_split,
    parse_kth_sequences,
)
from transmodal.io import write_parquet
from transmodal.params import KTH_ACTIONS, DataConfig, ParamError

REPO = Path(__file__).resolve().parents[1]
REAL_SEQUENCES_CANDIDATES = [
    Path(os.environ.get("TRANSMODAL_KTH_SEQUENCES", "/nonexistent")),
    REPO / "tests" / "data" / "kth" / "00sequences.txt",
    REPO.parent / "shared" / "data" / "kth" / "00sequences.txt",
]
EXPECTED_DTYPES = {
    "video_id": "str",
    "path": "str",
    "label": "str",
    "label_idx": "int64",
    "group": "int64",
    "scenario": "str",
    "split": "str",
    "sequences": "object",
}

PAPER = {"train": set(range(1, 17)), "val": {17}, "test": set(range(18, 26))}
SCHULDT = {
    "train": set(range(11, 19)),
    "val": {19, 20, 21, 23, 24, 25, 1, 4},
    "test": {22, 2, 3, 5, 6, 7, 8, 9, 10},
}


def check_schema(index: pd.DataFrame) -> None:
    assert tuple(index.columns) == INDEX_COLUMNS
    assert {c: str(t) for c, t in index.dtypes.items()} == EXPECTED_DTYPES
    assert index["video_id"].is_unique
    assert index["video_id"].tolist() == sorted(index["video_id"])
    assert set(index["split"]) <= {"train", "val", "test"}
    assert not index["path"].str.contains("\\\\", regex=False).any()
    # Parquet keeps one type for the column whatever the dataset (UCF/HMDB have only empty lists).
    table = pa.Table.from_pandas(index, schema=ARROW_SCHEMA, preserve_index=False)
    assert table.num_rows == len(index)


def train_val_overlap(index: pd.DataFrame) -> set:
    pairs = {
        part: set(zip(rows["label"], rows["group"], strict=True)) for part, rows in index.groupby("split")
    }
    return pairs.get("train", set()) & pairs.get("val", set())


# ----------------------------------------------------------------------------------------------- KTH


@pytest.fixture(scope="module")
def real_sequences() -> Path:
    for path in REAL_SEQUENCES_CANDIDATES:
        if path.is_file():
            return path
    pytest.skip("real KTH 00sequences.txt not found (set TRANSMODAL_KTH_SEQUENCES)")


def make_kth_tree(root: Path, video_ids, sequences_text: str | None = None) -> Path:
    for video_id in video_ids:
        action = video_id.split("_")[1]
        (root / action).mkdir(parents=True, exist_ok=True)
        (root / action / f"{video_id}_uncomp.avi").touch()
    if sequences_text is not None:
        (root / "00sequences.txt").write_text(sequences_text, newline="")
    return root


def test_real_sequences_file_parses_exactly(real_sequences: Path):
    sequences, missing = parse_kth_sequences(real_sequences)
    assert len(sequences) == 599
    assert sum(len(r) for r in sequences.values()) == 2391
    assert missing == ["person13_handclapping_d3"]
    assert "person13_handclapping_d3" not in sequences
    # A row with only three ranges, and rows with spaces and tabs mixed between the fields.
    assert sequences["person11_boxing_d4"] == [(1, 106), (107, 194), (195, 250)]
    assert sequences["person13_handwaving_d3"] == [(1, 125), (126, 240), (241, 336)]
    assert sequences["person07_handclapping_d2"] == [(1, 102), (103, 248), (249, 368), (369, 518)]
    assert sequences["person25_walking_d4"] == [(1, 100), (178, 295), (296, 398), (488, 592)]
    assert sum(len(r) == 3 for r in sequences.values()) == 5


def test_kth_tree_from_real_names_indexes_599_videos(tmp_path: Path, real_sequences: Path):
    sequences, missing = parse_kth_sequences(real_sequences)
    make_kth_tree(tmp_path, sequences)
    shutil.copy(real_sequences, tmp_path / "00sequences.txt")

    index, summary = index_kth(tmp_path, "paper")

    check_schema(index)
    assert len(index) == 599
    assert index["sequences"].map(len).sum() == 2391
    assert summary["videos"] == 599 and summary["sequences_total"] == 2391
    assert summary["marked_missing_ids"] == ["person13_handclapping_d3"]
    assert summary["videos_without_sequences"] == 0 and summary["listed_missing_on_disk"] == 0
    assert summary["videos_per_class"]["handclapping"] == 99
    row = index.set_index("video_id").loc["person11_boxing_d4"]
    assert row["sequences"] == [[1, 106], [107, 194], [195, 250]]
    assert row["path"] == "boxing/person11_boxing_d4_uncomp.avi"
    assert (row["label"], row["label_idx"], row["group"], row["scenario"]) == ("boxing", 0, 11, "d4")
    walking = index.set_index("video_id").loc["person25_walking_d1"]
    assert (walking["label_idx"], walking["split"]) == (KTH_ACTIONS.index("walking"), "test")


INLINE_SEQUENCES = (
    "person01_boxing_d1\t\tframes\t1-95, 96-185, 186-245, 246-360\r\n"
    "\r\n"
    "person01_walking_d2    \tframes\t1-120,170-288 ,  370-495\r\n"
    "person02_running_d3\t*missing*\r\n"
    "   \t\r\n"
    "person02_jogging_d4 frames 5 - 10, 8-20\n"
)


def test_parse_sequences_irregular_whitespace(tmp_path: Path):
    path = tmp_path / "00sequences.txt"
    path.write_text(INLINE_SEQUENCES, newline="")
    sequences, missing = parse_kth_sequences(path)
    assert sequences == {
        "person01_boxing_d1": [(1, 95), (96, 185), (186, 245), (246, 360)],
        "person01_walking_d2": [(1, 120), (170, 288), (370, 495)],
        "person02_jogging_d4": [(5, 10), (8, 20)],
    }
    assert missing == ["person02_running_d3"]


@pytest.mark.parametrize(
    "bad_line",
    [
        "person03_boxing_d1\tframes\t1-95; 96-185",
        "person03_boxing_d1\tframes\t1-95, 96-185,",
        "person03_boxing_d1\tframes",
        "person03_boxing_d1\t1-95, 96-185",
        "person03_boxing_d1\tframes\t95-1",
        "person03_boxing_d1\tframes\t0-10",
        "person03_swimming_d1\tframes\t1-95",
        "person03_boxing_d7\tframes\t1-95",
        "person01_boxing_d1\tframes\t1-95",  # listed twice
    ],
)
def test_malformed_sequences_line_names_file_and_line(tmp_path: Path, bad_line: str):
    path = tmp_path / "00sequences.txt"
    path.write_text(f"person01_boxing_d1\tframes\t1-10\n\n{bad_line}\nperson02_boxing_d1\tframes\t1-10\n")
    with pytest.raises(ValueError, match=r"00sequences\.txt:3: "):
        parse_kth_sequences(path)


@pytest.mark.parametrize(("name", "expected"), [("paper", PAPER), ("schuldt", SCHULDT)])
def test_kth_split_subject_sets(name: str, expected: dict[str, set[int]]):
    got: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for subject in range(1, 26):
        got[kth_split(subject, name)].add(subject)
    assert got == expected


@pytest.mark.parametrize(("name", "expected"), [("paper", PAPER), ("schuldt", SCHULDT)])
def test_index_kth_splits_by_subject(tmp_path: Path, name: str, expected: dict[str, set[int]]):
    ids = [f"person{s:02d}_{a}_d1" for s in range(1, 26) for a in ("boxing", "running")]
    make_kth_tree(tmp_path, ids, "".join(f"{v}\tframes\t1-10, 11-20\n" for v in ids))
    index, summary = index_kth(tmp_path, name)
    got = {part: set(rows["group"]) for part, rows in index.groupby("split")}
    assert got == expected
    assert summary["groups_in_train_and_val"] == 0
    assert summary["videos_per_split"] == {part: 2 * len(s) for part, s in expected.items()}


def test_kth_split_rejects_unknown():
    with pytest.raises(ValueError, match="26"):
        kth_split(26, "paper")
    with pytest.raises(ValueError, match="bogus"):
        kth_split(1, "bogus")


def test_index_kth_reports_disk_and_list_mismatches(tmp_path: Path):
    # The sequences file sits one folder down (as an archive extracts it); one listed video is absent,
    # one video on disk is unlisted, and a stray .avi is not a KTH name.
    make_kth_tree(tmp_path, ["person01_boxing_d1", "person02_boxing_d1", "person03_walking_d2"])
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "00sequences.txt").write_text(
        "person01_boxing_d1\tframes\t1-10, 20-30\nperson02_boxing_d1\tframes\t1-5\n"
        "person04_boxing_d1\tframes\t1-5\nperson05_boxing_d1\t*missing*\n"
    )
    (tmp_path / "boxing" / "notes.avi").touch()
    (tmp_path / "boxing" / "person09_walking_d1_uncomp.avi").touch()  # action disagrees with its folder

    index, summary = index_kth(tmp_path, "paper")

    check_schema(index)
    assert index["video_id"].tolist() == ["person01_boxing_d1", "person02_boxing_d1", "person03_walking_d2"]
    assert index.set_index("video_id").loc["person03_walking_d2", "sequences"] == []
    assert summary["sequences_file"] == "meta/00sequences.txt"
    assert summary["videos_without_sequences"] == 1
    assert summary["videos_without_sequences_ids"] == ["person03_walking_d2"]
    assert summary["listed_missing_on_disk_ids"] == ["person04_boxing_d1"]
    assert summary["marked_missing_ids"] == ["person05_boxing_d1"]
    assert summary["unrecognised_files"] == ["boxing/notes.avi", "boxing/person09_walking_d1_uncomp.avi"]
    assert summary["sequences_total"] == 3


def test_index_kth_without_sequences_file_is_a_param_error(tmp_path: Path):
    make_kth_tree(tmp_path, ["person01_boxing_d1"])
    with pytest.raises(ParamError, match="data.root.*00sequences.txt"):
        index_kth(tmp_path, "paper")


# -------------------------------------------------------------------------------------------- UCF101

UCF_CLASSES = {
    "ApplyEyeMakeup": "ApplyEyeMakeup",
    "Archery": "Archery",
    "HandstandPushups": "HandStandPushups",
}
UCF_GROUPS = range(1, 10)


def ucf_test_groups(split: int) -> set[int]:
    return {3 * split - 2, 3 * split - 1, 3 * split}


def make_ucf_tree(root: Path) -> Path:
    """Three classes (one with the real dataset's HandStandPushups file-name quirk), 9 groups x 2-3 clips."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, start=1)), newline=""
    )
    entries = []
    for number, (folder, file_class) in enumerate(UCF_CLASSES.items(), start=1):
        (root / "UCF-101" / folder).mkdir(parents=True)
        for group in UCF_GROUPS:
            for clip in range(1, 2 + (group + number) % 2 + 1):
                name = f"v_{file_class}_g{group:02d}_c{clip:02d}.avi"
                (root / "UCF-101" / folder / name).touch()
                entries.append((f"{folder}/{name}", number, group))
    for split in (1, 2, 3):
        train = [f"{p} {n}\r\n" for p, n, g in entries if g not in ucf_test_groups(split)]
        test = [f"{p}\r\n" for p, n, g in entries if g in ucf_test_groups(split)]
        (lists / f"trainlist{split:02d}.txt").write_text("".join(train), newline="")
        (lists / f"testlist{split:02d}.txt").write_text("".join(test), newline="")
    return root


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    return make_ucf_tree(tmp_path / "ucf")


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_labels_and_splits(ucf_root: Path, split: int):
    index, summary = index_ucf101(ucf_root, split, val_fraction=0.2, seed=0)

    check_schema(index)
    assert len(index) == summary["videos"] == sum(1 for _ in (ucf_root / "UCF-101").glob("*/*.avi"))
    assert dict(zip(index["label"], index["label_idx"], strict=True)) == {
        "ApplyEyeMakeup": 0,
        "Archery": 1,
        "HandstandPushups": 2,
    }
    quirk = index.set_index("video_id").loc["v_HandStandPushups_g09_c01"]
    assert (quirk["path"], quirk["label"], quirk["group"]) == (
        "UCF-101/HandstandPushups/v_HandStandPushups_g09_c01.avi",
        "HandstandPushups",
        9,
    )
    test = index[index["split"] == "test"]
    assert set(test["group"]) == ucf_test_groups(split)
    assert len(test) == sum(
        1 for p in (ucf_root / "UCF-101").glob("*/*.avi") if _ucf_group(p) in ucf_test_groups(split)
    )
    # 6 training groups per class x 0.2 -> one group per class held out for validation.
    val = index[index["split"] == "val"]
    assert val.groupby("label")["group"].nunique().to_dict() == {c: 1 for c in UCF_CLASSES}
    assert summary["classes_without_val"] == []
    assert not set(val["group"]) & ucf_test_groups(split)
    assert train_val_overlap(index) == set() and summary["groups_in_train_and_val"] == 0
    assert (index["scenario"] == "").all() and (index["sequences"].map(len) == 0).all()
    assert summary["listed_missing_on_disk"] == 0 and summary["unlisted_on_disk"] == 0


def _ucf_group(path: Path) -> int:
    return int(path.stem.split("_g")[1][:2])


def test_ucf101_splits_differ_and_are_deterministic(ucf_root: Path):
    splits = {n: index_ucf101(ucf_root, n, 0.2, seed=0)[0] for n in (1, 2, 3)}
    as_tuples = {n: tuple(zip(df["video_id"], df["split"], strict=True)) for n, df in splits.items()}
    assert len(set(as_tuples.values())) == 3
    again = index_ucf101(ucf_root, 1, 0.2, seed=0)[0]
    pd.testing.assert_frame_equal(splits[1], again)
    no_val, summary = index_ucf101(ucf_root, 1, 0.0, seed=0)
    assert "val" not in set(no_val["split"])
    assert summary["classes_without_val"] == sorted(UCF_CLASSES)
    seeds = {tuple(index_ucf101(ucf_root, 1, 0.2, seed=s)[0]["split"]) for s in range(6)}
    assert len(seeds) > 1  # the seed drives the hold-out


def test_ucf101_missing_and_unlisted_videos_are_counted(ucf_root: Path):
    (ucf_root / "UCF-101" / "Archery" / "v_Archery_g02_c01.avi").unlink()
    (ucf_root / "UCF-101" / "Archery" / "v_Archery_g02_c09.avi").touch()
    index, summary = index_ucf101(ucf_root, 1, 0.2, seed=0)
    assert "v_Archery_g02_c01" not in set(index["video_id"])
    assert "v_Archery_g02_c09" not in set(index["video_id"])
    assert summary["listed_missing_on_disk_ids"] == ["UCF-101/Archery/v_Archery_g02_c01.avi"]
    assert summary["unlisted_on_disk_ids"] == ["UCF-101/Archery/v_Archery_g02_c09.avi"]


def test_a_listed_class_without_videos_keeps_its_name_and_label_index(ucf_root: Path, tmp_path: Path):
    # the last class of classInd.txt has no video on disk: the head must still have its output
    shutil.rmtree(ucf_root / "UCF-101" / "HandstandPushups")
    index, summary = build_index(DataConfig(dataset="ucf101", root=str(ucf_root), split=1))
    assert "HandstandPushups" not in set(index["label"])
    assert index.attrs["class_names"] == summary["class_names"] == list(UCF_CLASSES)
    assert summary["classes_without_videos"] == ["HandstandPushups"]
    write_parquet(index, tmp_path / "index.parquet", schema=ARROW_SCHEMA)  # as the prepare stage writes it
    assert pd.read_parquet(tmp_path / "index.parquet").attrs["class_names"] == list(UCF_CLASSES)


def test_class_ind_numbers_must_run_from_one_without_gaps(ucf_root: Path):
    (ucf_root / "ucfTrainTestlist" / "classInd.txt").write_text(
        "1 ApplyEyeMakeup\n2 Archery\n4 HandstandPushups\n"
    )
    with pytest.raises(ValueError, match=r"classInd\.txt: numbers 3 are missing: expected 1 to N"):
        index_ucf101(ucf_root, 1, 0.2, seed=0)


def test_ucf101_list_label_must_match_class_ind(ucf_root: Path):
    lists = ucf_root / "ucfTrainTestlist"
    text = (lists / "trainlist01.txt").read_text()
    (lists / "trainlist01.txt").write_text(text.replace("v_Archery_g04_c01.avi 2", "v_Archery_g04_c01.avi 3"))
    with pytest.raises(ValueError, match=r"trainlist01\.txt:\d+: label 3"):
        index_ucf101(ucf_root, 1, 0.2, seed=0)


@pytest.mark.parametrize("missing", ["trainlist02.txt", "testlist02.txt"])
def test_ucf101_missing_split_file(ucf_root: Path, missing: str):
    (ucf_root / "ucfTrainTestlist" / missing).unlink()
    with pytest.raises(ParamError, match=rf"data\.split is 2.*{missing}") as error:
        index_ucf101(ucf_root, 2, 0.2, seed=0)
    assert "\n" not in str(error.value)
    index_ucf101(ucf_root, 1, 0.2, seed=0)  # the other splits are still usable


# -------------------------------------------------------------------------------------------- HMDB51

# Class "kick" is a suffix of "kick_ball", and "Movie_X" has clips in both: the class part of the name must be
# stripped by the folder's class, and one source video keeps one group id across classes.
HMDB_SOURCES = {
    "brush_hair": ["April_09", "Brushing_Hair!_[HD]", "hair_routine", "z_last"],
    "kick": ["Movie_X", "karate_kid", "kick_boxing_2", "soccer(1)"],
    "kick_ball": ["Movie_X", "goal_1", "goal_2", "street_kick"],
}
HMDB_FLAGS = ["f_cm_np1_ba_med", "u_nm_np1_fr_goo", "h_cm_np2_le_bad"]


def hmdb_mark(source_number: int, clip: int, split: int) -> str:
    if source_number == 0 and clip == 2:
        return "0"  # unused in every split
    return "2" if source_number % 4 == split - 1 else "1"


def make_hmdb_tree(root: Path) -> Path:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for class_name, sources in HMDB_SOURCES.items():
        (root / class_name).mkdir()
        lines: dict[int, list[str]] = {1: [], 2: [], 3: []}
        for source_number, source in enumerate(sources):
            for clip, flags in enumerate(HMDB_FLAGS):
                name = f"{source}_{class_name}_{flags}_{clip}.avi"
                (root / class_name / name).touch()
                for split in lines:
                    lines[split].append(f"{name} {hmdb_mark(source_number, clip, split)} \r\n")
        for split, split_lines in lines.items():
            (splits / f"{class_name}_test_split{split}.txt").write_text("".join(split_lines), newline="")
    return root


@pytest.fixture
def hmdb_root(tmp_path: Path) -> Path:
    return make_hmdb_tree(tmp_path / "hmdb")


def test_hmdb51_source_name():
    assert hmdb51_source("April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair") == "April_09"
    assert hmdb51_source("kick_boxing_2_kick_f_cm_np1_ba_med_12", "kick") == "kick_boxing_2"
    assert hmdb51_source("Movie_X_kick_ball_h_cm_np2_le_bad_2", "kick_ball") == "Movie_X"
    assert hmdb51_source("no_flags_here", "kick") is None


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_labels_groups_and_splits(hmdb_root: Path, split: int):
    index, summary = index_hmdb51(hmdb_root, split, val_fraction=0.34, seed=0)

    check_schema(index)
    classes = sorted(HMDB_SOURCES)
    assert dict(zip(index["label"], index["label_idx"], strict=True)) == {c: i for i, c in enumerate(classes)}
    sources = sorted({s for names in HMDB_SOURCES.values() for s in names})
    for class_name, names in HMDB_SOURCES.items():
        for source_number, source in enumerate(names):
            rows = index[(index["label"] == class_name) & index["video_id"].str.startswith(f"{source}_")]
            assert set(rows["group"]) == {sources.index(source)}
            # Unused clips (mark 0) are left out; the rest follow the split file.
            assert len(rows) == (2 if source_number == 0 else 3)
            if hmdb_mark(source_number, 0, split) == "2":
                assert set(rows["split"]) == {"test"}
            else:
                assert set(rows["split"]) <= {"train", "val"}
    assert summary["unused_excluded"] == len(HMDB_SOURCES)
    assert summary["videos"] == len(HMDB_SOURCES) * (4 * 3 - 1)
    assert summary["source_videos"] == len(sources) and summary["names_without_source"] == 0
    row = index.set_index("video_id").loc["Movie_X_kick_ball_f_cm_np1_ba_med_0"]
    assert (row["path"], row["label"]) == ("kick_ball/Movie_X_kick_ball_f_cm_np1_ba_med_0.avi", "kick_ball")
    # 3 training sources per class x 0.34 -> one held out per class.
    val = index[index["split"] == "val"]
    assert val.groupby("label")["group"].nunique().to_dict() == {c: 1 for c in classes}
    assert train_val_overlap(index) == set() and summary["groups_in_train_and_val"] == 0


def test_hmdb51_splits_differ(hmdb_root: Path):
    frames = [index_hmdb51(hmdb_root, n, 0.34, seed=0)[0] for n in (1, 2, 3)]
    test_sets = [frozenset(df.loc[df["split"] == "test", "video_id"]) for df in frames]
    assert len(set(test_sets)) == 3
    assert all(
        len(s) == len(HMDB_SOURCES) * 3 - (len(HMDB_SOURCES) if n == 1 else 0)
        for n, s in enumerate(test_sets, 1)
    )


def test_hmdb51_missing_unlisted_and_split_file(hmdb_root: Path):
    (hmdb_root / "kick" / "karate_kid_kick_f_cm_np1_ba_med_0.avi").unlink()
    (hmdb_root / "kick" / "extra_kick_f_cm_np1_ba_med_0.avi").touch()
    index, summary = index_hmdb51(hmdb_root, 2, 0.34, seed=0)
    assert summary["listed_missing_on_disk_ids"] == ["kick/karate_kid_kick_f_cm_np1_ba_med_0.avi"]
    assert summary["unlisted_on_disk_ids"] == ["kick/extra_kick_f_cm_np1_ba_med_0.avi"]
    assert "extra_kick_f_cm_np1_ba_med_0" not in set(index["video_id"])

    (hmdb_root / "testTrainMulti_7030_splits" / "kick_test_split3.txt").unlink()
    with pytest.raises(ParamError, match=r"data\.split is 3.*kick_test_split3\.txt"):
        index_hmdb51(hmdb_root, 3, 0.34, seed=0)


def test_hmdb51_class_folder_missing_keeps_every_label_index(hmdb_root: Path):
    # an inner archive that did not extract: its class keeps its index, its listed videos count as missing
    full, _ = index_hmdb51(hmdb_root, 1, 0.34, seed=0)
    shutil.rmtree(hmdb_root / "kick")
    index, summary = index_hmdb51(hmdb_root, 1, 0.34, seed=0)
    assert summary["classes_missing_on_disk"] == ["kick"] and "kick" not in set(index["label"])
    assert index.attrs["class_names"] == full.attrs["class_names"] and "kick" in full.attrs["class_names"]
    kept = full[full["label"] != "kick"]
    assert dict(zip(index["label"], index["label_idx"], strict=True)) == dict(
        zip(kept["label"], kept["label_idx"], strict=True)
    )
    assert summary["listed_missing_on_disk"] == (full["label"] == "kick").sum()
    assert all(name.startswith("kick/") for name in summary["listed_missing_on_disk_ids"])


def test_the_prepare_stage_says_what_the_folder_and_the_lists_disagree_on(
    hmdb_root, tmp_path, monkeypatch, capsys
):
    import importlib.util
    import json

    from transmodal.params import load_params

    shutil.rmtree(hmdb_root / "kick")
    (hmdb_root / "kick_ball" / "extra_kick_ball_f_cm_np1_ba_med_0.avi").touch()
    (hmdb_root / "kick_ball" / "renamed.avi").touch()  # no source in its name: a group of its own, said
    spec = importlib.util.spec_from_file_location("prepare_stage", REPO / "stages" / "prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = load_params(REPO / "params.yaml")
    params["data"].update(dataset="hmdb51", root=str(hmdb_root), split=1)
    monkeypatch.chdir(tmp_path)
    stage.main(params)
    err = capsys.readouterr().err.splitlines()
    summary = json.loads((tmp_path / "metrics" / "prepare.json").read_text())
    assert err == [
        f"prepare: note: {summary['listed_missing_on_disk']} videos named in the split or sequence lists are not "
        "on disk (metrics/prepare.json: listed_missing_on_disk)",
        "prepare: note: 1 classes have a split file but no videos on disk (metrics/prepare.json: "
        "classes_missing_on_disk)",
        "prepare: note: 2 videos on disk are in no split file (left out) (metrics/prepare.json: unlisted_on_disk)",
        "prepare: note: 1 HMDB51 names give no source video (each is its own group when val is drawn) "
        "(metrics/prepare.json: names_without_source)",
    ]


def test_hmdb51_without_its_split_files_names_the_missing_folder(hmdb_root: Path):
    """The videos' archive unpacked without test_train_splits.rar: the error blamed data.split."""
    shutil.rmtree(hmdb_root / "testTrainMulti_7030_splits")
    with pytest.raises(
        ParamError, match=r"data.root is .* has no testTrainMulti_7030_splits/ folder .*download hmdb51"
    ):
        index_hmdb51(hmdb_root, 1, 0.34, seed=0)


def test_hmdb51_malformed_split_line(hmdb_root: Path):
    path = hmdb_root / "testTrainMulti_7030_splits" / "kick_test_split1.txt"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(" 1 ", " 7 ").replace(" 2 ", " 7 ")
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"kick_test_split1\.txt:2: "):
        index_hmdb51(hmdb_root, 1, 0.34, seed=0)


def test_a_bad_list_line_is_the_prepare_stage_s_one_line_error(
    hmdb_root: Path, tmp_path: Path, monkeypatch, capsys
):
    # it was a traceback ending in the message (exit code 1)
    import yaml

    from transmodal.stage import run_stage

    path = hmdb_root / "testTrainMulti_7030_splits" / "kick_test_split1.txt"
    path.write_text(path.read_text() + "D_kick.avi\n")  # a line without its 0/1/2
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(dataset="hmdb51", root=str(hmdb_root), split=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    stage = _prepare_stage()
    with pytest.raises(SystemExit) as exit_code:
        run_stage("prepare", stage.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_code.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"prepare: error: {path}:") and "expected '<name>.avi <0|1|2>'" in err[0]
    assert not (tmp_path / "data" / "index.parquet").exists()


def test_names_that_are_not_utf8_are_left_out_or_refused_in_one_line(tmp_path: Path, hmdb_root: Path):
    # a name from an old archive's code page (byte 0xE9) crashed the index: encoding its id, or in pyarrow
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "wave" / os.fsdecode(b"caf\xe9.mp4"))
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    assert (
        len(index) == 18
        and summary["unrecognised_reasons"][
            "its name is not valid UTF-8 (an old archive's code page): rename it"
        ]
        == 1
    )
    assert "wave/caf\\xe9.mp4" in summary["unrecognised_files"]  # shown escaped: two such names stay two
    _touch(root / os.fsdecode(b"s\xe9ance") / "a.mp4")
    with pytest.raises(ParamError, match=r"class folder 's\\xe9ance' whose name is not valid UTF-8") as error:
        index_folder(root, "random", 0.25, 0.25, 0)
    assert "\n" not in str(error.value)
    path = hmdb_root / "testTrainMulti_7030_splits" / "kick_test_split1.txt"
    path.write_bytes(path.read_bytes() + b"caf\xe9_kick_f_cm_np1_ba_med_0.avi 1\n")
    with pytest.raises(
        ListError, match=r"kick_test_split1\.txt:\d+: is not UTF-8 text: .*save the list as UTF-8"
    ):
        index_hmdb51(hmdb_root, 1, 0.34, seed=0)


def test_a_dataset_already_split_into_folders_is_refused_in_one_line(tmp_path: Path):
    # root/train/<class>/... and root/test/<class>/...: the classes would have been train and test
    for part in ("train", "Test"):
        make_folder_tree(tmp_path / "split" / part)
    with pytest.raises(
        ParamError, match=r"has folders Test, train, named as splits; .* splits\.csv"
    ) as error:
        index_folder(tmp_path / "split", "random", 0.25, 0.25, 0)
    assert "\n" not in str(error.value)
    root = make_folder_tree(tmp_path / "one")  # a class called train alone is a class
    for n in (1, 2):
        _touch(root / "train" / f"p{n}" / "a.mp4")
    assert "train" in index_folder(root, "random", 0.25, 0.25, 0)[0].attrs["class_names"]


def test_a_stray_folder_in_hmdb51_is_named_not_the_split(hmdb_root: Path):
    _touch(hmdb_root / "my_extra" / "x.avi")
    with pytest.raises(
        ParamError, match=r"has a folder 'my_extra' of \.avi files that no split file names"
    ) as error:
        index_hmdb51(hmdb_root, 1, 0.34, seed=0)
    assert "data.split" not in str(error.value)


def _prepare_stage():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_stage", REPO / "stages" / "prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


# ------------------------------------------------------------------------------------------ bad input

INDEXERS = {
    "kth": lambda root: index_kth(root, "paper"),
    "ucf101": lambda root: index_ucf101(root, 1, 0.1, 0),
    "hmdb51": lambda root: index_hmdb51(root, 1, 0.1, 0),
    "folder": lambda root: index_folder(root, "random", 0.1, 0.2, 0),
}


@pytest.mark.parametrize("dataset", sorted(INDEXERS))
@pytest.mark.parametrize("exists", [False, True])
def test_bad_root_is_one_line_param_error(tmp_path: Path, dataset: str, exists: bool):
    root = tmp_path / "KTH"
    if exists:
        (root / "boxing").mkdir(parents=True)  # a folder, but no videos in the expected layout
        (root / "boxing" / "readme.txt").touch()
    with pytest.raises(ParamError) as error:
        INDEXERS[dataset](root)
    message = str(error.value)
    assert "data.root" in message and str(root) in message and "\n" not in message
    assert ("no " in message) if exists else ("does not exist" in message)


def test_build_index_dispatches(tmp_path: Path, ucf_root: Path):
    kth_root = make_kth_tree(
        tmp_path / "kth", ["person01_boxing_d1", "person12_running_d3"], INLINE_SEQUENCES
    )
    index, summary = build_index(DataConfig(dataset="synthetic", root=str(kth_root), split="schuldt"))
    assert index["split"].tolist() == ["val", "train"]
    assert summary["dataset"] == "synthetic"
    assert index.attrs["class_names"] == summary["class_names"] == list(KTH_ACTIONS)  # with or without videos
    assert summary["classes_without_videos"] == ["handclapping", "handwaving", "jogging", "walking"]
    assert summary["videos_without_sequences_ids"] == ["person12_running_d3"]

    index, summary = build_index(DataConfig(dataset="ucf101", root=str(ucf_root), split=2, val_fraction=0.2))
    assert summary["dataset"] == "ucf101" and set(index.loc[index["split"] == "test", "group"]) == {4, 5, 6}

    missing = tmp_path / "nowhere"
    with pytest.raises(ParamError, match=rf"data\.root is '{missing}'"):
        build_index(DataConfig(dataset="kth", root=str(missing)))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
@pytest.mark.parametrize("dataset", ["kth", "ucf101", "hmdb51"])
def test_lists_saved_by_a_windows_editor_and_upper_case_extensions_index_the_same(
    tmp_path: Path, dataset, encoding
):
    """A list saved again by Notepad starts with a byte-order mark (UTF-8, or UTF-16 as its "Unicode"
    saves it), and videos copied through some file
    systems end in ``.AVI``: the same videos, groups and splits are indexed, each at its path on disk. A
    name there twice (``x.avi`` and ``x.AVI``) is indexed once, from ``x.avi``, and the other file is
    reported."""
    if dataset == "kth":
        ids = [f"person{s:02d}_{a}_d1" for s in range(1, 26) for a in ("boxing", "running")]
        make_tree = lambda root: make_kth_tree(  # noqa: E731
            root, ids, "".join(f"{v}\tframes\t1-10, 11-20\n" for v in ids)
        )
        index_of = lambda root: index_kth(root, "paper")  # noqa: E731
        counted = ("videos_without_sequences", "listed_missing_on_disk", "sequences_total")
        reported = "unrecognised_files"
    else:
        if dataset == "ucf101":
            make_tree, index_of = make_ucf_tree, lambda root: index_ucf101(root, 1, 0.2, 0)
        else:
            make_tree, index_of = make_hmdb_tree, lambda root: index_hmdb51(root, 1, 0.2, 0)
        counted = ("listed_missing_on_disk", "listed_missing_on_disk_ids", "videos_per_split")
        reported = "unlisted_on_disk_ids"
    plain, messy = make_tree(tmp_path / "plain"), make_tree(tmp_path / "messy")
    for path in sorted(messy.rglob("*")):
        if path.suffix == ".avi":
            path.rename(path.with_suffix(".AVI"))
        elif path.suffix == ".txt":
            path.write_bytes(path.read_text(encoding="utf-8").encode(encoding))  # with its byte-order mark
    expected, expected_summary = index_of(plain)
    index, summary = index_of(messy)
    assert len(index) > 0 and index["path"].str.endswith(".AVI").all()
    pd.testing.assert_frame_equal(index.assign(path=index["path"].str.replace(".AVI", ".avi")), expected)
    for key in counted:
        assert key in summary and summary[key] == expected_summary[key], key
    assert summary[reported] == expected_summary[reported]

    twice = messy / index["path"].iloc[0]
    shutil.copy(twice, twice.with_suffix(".avi"))
    index, summary = index_of(messy)
    assert index["path"].iloc[0] == expected["path"].iloc[0]  # x.avi is the one indexed
    pd.testing.assert_frame_equal(index.assign(path=index["path"].str.replace(".AVI", ".avi")), expected)
    extra = [name for name in summary[reported] if name not in expected_summary[reported]]
    assert [str(messy / name) for name in extra] == [str(twice)]


@pytest.mark.parametrize("dataset", ["kth", "ucf101", "hmdb51"])
def test_the_files_a_mac_writes_beside_each_copied_file_are_skipped(tmp_path: Path, dataset):
    """A Mac copying a dataset to a FAT or network drive writes ``._<name>`` beside each file (and
    ``.DS_Store``, ``.Trashes``): none is a video, a class or a split file, so the index is the same; before,
    HMDB51's ``._<class>_test_split1.txt`` became a class and its binary content failed the whole index."""
    if dataset == "kth":
        ids = [f"person{s:02d}_{a}_d1" for s in range(1, 26) for a in ("boxing", "running")]
        make_tree = lambda root: make_kth_tree(  # noqa: E731
            root, ids, "".join(f"{v}\tframes\t1-10, 11-20\n" for v in ids)
        )
        index_of = lambda root: index_kth(root, "paper")  # noqa: E731
    elif dataset == "ucf101":
        make_tree, index_of = make_ucf_tree, lambda root: index_ucf101(root, 1, 0.2, 0)
    else:
        make_tree, index_of = make_hmdb_tree, lambda root: index_hmdb51(root, 1, 0.2, 0)
    expected, expected_summary = index_of(make_tree(tmp_path / "plain"))
    copied = make_tree(tmp_path / "copied")
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02com.apple.quarantine"
    for path in sorted(copied.rglob("*")):
        if path.is_file():
            (path.parent / f"._{path.name}").write_bytes(apple_double)
    (copied / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (copied / ".Trashes" / "501").mkdir(parents=True)
    (copied / ".Trashes" / "501" / "x.avi").write_bytes(b"old")
    index, summary = index_of(copied)
    pd.testing.assert_frame_equal(index, expected)
    assert summary == expected_summary


def test_an_hmdb51_list_names_a_file_whatever_form_its_letters_are_stored_in(tmp_path: Path):
    """A list writes é as one letter, a disk formatted by an older Mac stores e and a combining accent: the
    file is the one listed (indexed at its name on disk), not a missing video beside an unlisted one."""
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    root = make_hmdb_tree(tmp_path / "hmdb")
    video = sorted((root / "kick").glob("*.avi"))[0]
    lists = sorted((root / "testTrainMulti_7030_splits").glob("kick_test_split*.txt"))
    for path in lists:
        path.write_text(path.read_text().replace(video.name, f"{composed}_{video.name}"), newline="")
    video.rename(video.with_name(f"{decomposed}_{video.name}"))
    index, summary = index_hmdb51(root, 1, 0.2, 0)
    assert summary["listed_missing_on_disk"] == 0 and summary["unlisted_on_disk"] == 0
    row = index.set_index("video_id").loc[f"{composed}_{video.stem}"]
    assert row["path"] == f"kick/{decomposed}_{video.name}"  # read from the disk's name


# ------------------------------------------------------------------------------------------ folder


def make_folder_tree(root: Path) -> Path:
    """Three classes of one's own videos: per class two people (subfolders: groups) with two clips each, and
    two loose clips (each its own group); a note, a hidden file and a hidden folder to be skipped."""
    for label in ("clap", "jump", "wave"):
        for person in ("ann", "bob"):
            for n in (1, 2):
                _touch(root / label / person / f"take{n}.mp4")
        _touch(root / label / "loose1.MOV")
        _touch(root / label / "loose2.avi")
    _touch(root / "clap" / "notes.txt")
    _touch(root / "clap" / ".DS_Store")
    _touch(root / "jump" / ".trash" / "old.mp4")
    return root


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")


def test_folder_labels_groups_and_a_random_split(tmp_path: Path):
    root = make_folder_tree(tmp_path / "mine")
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    check_schema(index)
    assert len(index) == 18 and sorted(set(index["label"])) == ["clap", "jump", "wave"]
    assert dict(zip(index["label"], index["label_idx"], strict=True)) == {"clap": 0, "jump": 1, "wave": 2}
    assert index.attrs["class_names"] == ["clap", "jump", "wave"]
    assert "clap__ann__take1" in set(index["video_id"]) and "jump__loose1" in set(index["video_id"])
    assert set(index["path"]) >= {"clap/ann/take1.mp4", "wave/loose1.MOV"}
    # a person's clips are one group; a loose clip is its own: 4 groups a class, 12 in all
    per_group = index.groupby("group")["video_id"].apply(list)
    assert len(per_group) == summary["groups"] == 12
    ann = index.loc[index["video_id"] == "clap__ann__take1", "group"].item()
    assert sorted(per_group[ann]) == ["clap__ann__take1", "clap__ann__take2"]
    assert index.groupby("group")["split"].nunique().max() == 1  # no group straddles two splits
    for _, rows in index.groupby("label"):  # 1 of 4 groups to test, 1 of the other 3 to val, per class
        assert rows.groupby("split")["group"].nunique().to_dict() == {"test": 1, "train": 2, "val": 1}
    assert summary["unrecognised_files"] == ["clap/notes.txt"] and summary["classes_without_test"] == []
    again, _ = index_folder(root, "random", 0.25, 0.25, 0)
    assert again.equals(index)  # seeded
    splits = {tuple(index_folder(root, "random", 0.25, 0.25, seed)[0]["split"]) for seed in range(6)}
    assert len(splits) > 1


def test_folder_split_from_a_file(tmp_path: Path):
    root = make_folder_tree(tmp_path / "mine")
    (root / "splits.csv").write_text(
        "path,split\n"
        + "".join(f"{label}/ann/take{n}.mp4,train\n" for label in ("clap", "jump", "wave") for n in (1, 2))
        + "".join(f"{label}/bob/take1.mp4, test\n" for label in ("clap", "jump", "wave"))
        + ".\\wave\\loose1.MOV,TEST\n"  # Windows separators, ./ and upper case
        + "clap/gone.mp4,train\n"
    )
    index, summary = index_folder(root, "file", 0.5, 0.2, 0)
    check_schema(index)
    assert len(index) == 10 and (index["split"] == "test").sum() == 4
    assert summary["listed_missing_on_disk_ids"] == ["clap/gone.mp4"] and summary["unlisted_on_disk"] == 8
    assert not summary["val_from_file"] and (index["split"] == "val").sum() == 0  # one group a class in train
    assert summary["groups"] == 7  # of the listed videos: ann and bob of each class, and wave's loose1

    # val from the file when it names some (val_fraction would hold out one of the two training groups)
    rows = ["path,split"] + [f"{c}/ann/take1.mp4,train" for c in ("clap", "wave")]
    rows += [f"{c}/bob/take1.mp4,val" for c in ("clap", "wave")]
    rows += [f"{c}/loose2.avi,test" for c in ("clap", "wave")]
    rows += [f"{c}/loose1.MOV,train" for c in ("clap", "wave")]
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    index, summary = index_folder(root, "file", 0.5, 0.2, 0)
    assert summary["val_from_file"]
    assert index.groupby("split").size().to_dict() == {"test": 2, "train": 4, "val": 2}
    assert dict(zip(index["label"], index["label_idx"], strict=True)) == {"clap": 0, "wave": 1}  # no gap


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "path,split\nclap/ann/take1.mp4,train\n\n\nclap/bob/take1.mp4,tset\n",
            r"line 5: split 'tset' for 'clap/bob/take1.mp4'",
        ),
        ("video,part\nclap/ann/take1.mp4,train\n", r"its header 'video,part' has no column path or split"),
        ("path,split\nclap/ann/take1.mp4,train\njump/ann/take1.mp4,train\n", r"names no test video"),
        (
            "path,split\nclap/ann/take1.mp4,train\nclap/bob/take1.mp4,test\n",
            r"lists videos of one class only",
        ),
        (
            "path,split\nclap/ann/take1.mp4,train\nwave/ann/take1.mp4,test\n",
            r"no training video of class wave",
        ),
        (
            "path,split\nann/take1.mp4,train\nbob/take1.mp4,test\n",
            r"none of its 2 paths is a video under data.root \(the first: 'ann/take1.mp4'\); a path is relative",
        ),
        (
            "path,split\nclap/ann/take1.mp4,train\n./clap/ann/take1.mp4,test\n",
            r"line 3: 'clap/ann/take1.mp4' is listed twice",
        ),
        ("# my split\n\n", r"empty; it needs a header line path,split"),
    ],
)
def test_a_bad_split_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str):
    root = make_folder_tree(tmp_path / "mine")
    (root / "splits.csv").write_text(text)
    with pytest.raises(ParamError, match=message) as error:
        index_folder(root, "file", 0.1, 0.2, 0)
    assert "\n" not in str(error.value)
    assert str(root / "splits.csv") in str(error.value) or "data.root" in str(error.value)


@pytest.mark.parametrize(
    ("encoding", "separator", "header"),
    [("utf-8-sig", ",", "path,split"), ("cp1252", ";", "Path;Split"), ("utf-16", "\t", "PATH\tSPLIT")],
)
def test_a_split_file_as_a_spreadsheet_saves_it(tmp_path: Path, encoding: str, separator: str, header: str):
    """Excel and LibreOffice save CSV with a byte-order mark, in a Windows code page with semicolons, or as
    UTF-16 with tabs; header names in any case; a comment line; CRLF line ends."""
    root = make_folder_tree(tmp_path / "mine")
    (root / "clap" / "café.mp4").write_bytes(b"video")
    lines = [
        header,
        "# first take of each",
        *(f"{c}/ann/take1.mp4{separator}train" for c in ("clap", "jump")),
    ]
    lines += [f"clap/café.mp4{separator}test", f"jump/bob/take1.mp4{separator}test"]
    (root / "splits.csv").write_bytes("\r\n".join(lines).encode(encoding))
    index, _ = index_folder(root, "file", 0.1, 0.2, 0)
    assert index.set_index("path")["split"].to_dict() == {
        "clap/ann/take1.mp4": "train", "jump/ann/take1.mp4": "train", "clap/café.mp4": "test",
        "jump/bob/take1.mp4": "test",
    }  # fmt: skip


def test_folder_groups_ids_links_and_left_out_files(tmp_path: Path):
    """A group is the first subfolder below the class folder, however deep the video; ids that would be
    shared get the path's hash; links are followed once; a second file of one name, a second link to a file
    and a broken link are left out with their reasons."""
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "clap" / "ann" / "day2" / "take9.mp4")  # deeper: still ann's
    _touch(root / "clap" / "ann__x.mp4")  # would be clap__ann__x ...
    _touch(root / "clap" / "ann" / "x.mp4")  # ... as this one would
    _touch(root / "wave" / "loose2.mp4")  # beside loose2.avi
    _touch(tmp_path / "elsewhere" / "cid" / "a.mp4")
    (root / "jump" / "cid").symlink_to(tmp_path / "elsewhere" / "cid")  # a group kept on another disk
    (root / "jump" / "again.mp4").symlink_to(root / "jump" / "ann" / "take1.mp4")
    (root / "jump" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "wave" / "bob" / "up").symlink_to(root / "wave")  # a loop
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    check_schema(index)
    by_path = index.set_index("path")
    assert by_path.loc["clap/ann/day2/take9.mp4", "group"] == by_path.loc["clap/ann/take1.mp4", "group"]
    assert by_path.loc["jump/cid/a.mp4", "video_id"] == "jump__cid__a"
    shared = sorted(by_path.loc[["clap/ann__x.mp4", "clap/ann/x.mp4"], "video_id"])
    assert [i.split("~")[0] for i in shared] == ["clap__ann__x"] * 2 and shared[0] != shared[1]
    assert summary["unrecognised_reasons"] == {
        "a second file of one name (another suffix)": 1,
        "another name of an indexed file": 1,
        "another name of a folder indexed under its own": 1,  # the loop, walked once
        "broken link": 1,
        "not a video file name": 1,
    }
    left = {"jump/again.mp4", "jump/gone.mp4", "wave/loose2.mp4", "clap/notes.txt", "wave/bob/up/"}
    assert set(summary["unrecognised_files"]) == left
    deep = tmp_path / "deep"
    _touch(deep / "clap" / ("x" * 90) / ("y" * 90) / "take.mp4")
    for name in ("wave/a.mp4", "wave/b.mp4", "clap/c.mp4"):
        _touch(deep / name)
    ids = index_folder(deep, "random", 0.1, 0.2, 0)[0]["video_id"]
    assert max(len(i.encode()) for i in ids) <= 120


def test_the_test_and_val_draws_are_separate_streams():
    """NumPy pads a short seed with zeros: with the tag before the label, class 0's test draw was class 1's
    val draw (the same person held out of both in 124 of 200 seeds of a review's tree)."""
    import numpy as np

    from transmodal.data.index import hold_out_rng

    draws = {}
    for seed in range(3):
        for label in range(4):
            for stream in (None, 1):
                draws[seed, label, stream] = tuple(hold_out_rng([seed], label, stream).random(4))
    assert len(set(draws.values())) == len(draws)
    assert draws[0, 2, None] == tuple(np.random.default_rng([0, 2]).random(4))  # val as it always was


def test_a_class_s_random_split_does_not_change_when_another_class_is_added(tmp_path: Path):
    # the draws were seeded with label_idx, the class's place in sorted order: a class folder `aaa` added
    # (or one lost) redrew every other class's test and val groups
    root = tmp_path / "mine"
    for label in ("clap", "wave"):
        for person in range(10):
            _touch(root / label / f"p{person}" / "take.mp4")
    before, _ = index_folder(root, "random", 0.2, 0.2, 0)
    for person in range(10):
        _touch(root / "aaa" / f"p{person}" / "take.mp4")
    after, _ = index_folder(root, "random", 0.2, 0.2, 0)
    assert after.attrs["class_names"] == ["aaa", "clap", "wave"]
    same = after[after["label"] != "aaa"].set_index("video_id")["split"]
    assert same.equals(before.set_index("video_id")["split"])
    assert set(before["split"]) == {"train", "val", "test"}


def test_folder_bad_layouts_and_params_are_one_line(tmp_path: Path):
    one = tmp_path / "one"
    _touch(one / "clap" / "a.mp4")
    _touch(one / "clap" / "b.mp4")
    with pytest.raises(ParamError, match=r"data.root is .* which has videos of one class only \(clap\)"):
        index_folder(one, "random", 0.1, 0.2, 0)
    single = tmp_path / "single"
    for label in ("clap", "jump"):
        _touch(single / label / "raw" / "a.mp4")
        _touch(single / label / "raw" / "b.mp4")
    with pytest.raises(
        ParamError, match=r"no test videos with data.split 'random': each class has 1 to 1 group"
    ):
        index_folder(single, "random", 0.1, 0.2, 0)
    with pytest.raises(ParamError, match=r"^params.yaml: data.split is 1; expected one of random, file$"):
        DataConfig(dataset="folder", root=str(single), split=1)
    with pytest.raises(ParamError, match=r"data\.test_fraction is 0"):
        DataConfig(dataset="folder", root=str(single), split="random", test_fraction=0)
    index, summary = build_index(
        DataConfig(dataset="folder", root=str(make_folder_tree(tmp_path / "m")), split="random")
    )
    assert summary["dataset"] == "folder" and len(index) == 18
    unbalanced = make_folder_tree(tmp_path / "u")
    _touch(unbalanced / "solo" / "only.mp4")
    _, summary = index_folder(unbalanced, "random", 0.25, 0.25, 0)
    assert summary["classes_without_test"] == ["solo"]  # one group: kept for training


def test_a_folder_linked_into_another_class_leaves_its_videos_in_their_own(tmp_path: Path):
    """A video reached through a linked folder is kept under the name with no link on its way, in its own
    class: a folder of another class's videos linked in (or a link to the whole root) relabels nothing. A
    file reached only through links from two classes has no known class and is left out, counted."""
    root = make_folder_tree(tmp_path / "mine")
    (root / "jump" / "claps").symlink_to(root / "clap" / "ann")  # sorts after clap: ...
    (root / "archive").mkdir()
    (root / "archive" / "everything").symlink_to(root)  # ... and before: neither takes clap's videos
    _touch(tmp_path / "elsewhere" / "both.mp4")
    for label in ("clap", "wave"):
        (root / label / "both.mp4").symlink_to(tmp_path / "elsewhere" / "both.mp4")
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    assert len(index) == 18 and sorted(set(index["label"])) == ["clap", "jump", "wave"]
    by_path = index.set_index("path")
    assert by_path.loc["clap/ann/take1.mp4", "label"] == "clap"
    reasons = summary["unrecognised_reasons"]
    assert reasons["another name of a folder indexed under its own"] == 1  # jump/claps/, with its 2 takes
    assert reasons["a link to data.root or a folder above it: not a class folder"] == 1  # archive/everything/
    assert (
        reasons["one file linked into several classes: its class is unknown"] == 2
    )  # clap/ and wave/both.mp4
    assert {"clap/both.mp4", "wave/both.mp4", "jump/claps/", "archive/everything/"} <= set(
        summary["unrecognised_files"]
    )


@pytest.mark.parametrize("name", ["all", "recent", "zz"])
def test_a_link_to_the_root_beside_the_class_folders_is_no_class(tmp_path: Path, name: str):
    # `recent -> .` sorted before `wave` and took wave's videos as its own class; `all` took every class's
    root = make_folder_tree(tmp_path / "mine")
    (root / name).symlink_to(root)
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    plain, _ = index_folder(make_folder_tree(tmp_path / "plain"), "random", 0.25, 0.25, 0)
    assert index.equals(plain) and index.attrs["class_names"] == ["clap", "jump", "wave"]
    assert sorted(summary["unrecognised_files"]) == sorted([f"{name}/", "clap/notes.txt"])  # nothing under it
    assert (
        summary["unrecognised_reasons"]["a link to data.root or a folder above it: not a class folder"] == 1
    )


@pytest.mark.parametrize("split", ["random", "file"])
def test_a_folder_linked_beside_its_target_keeps_the_target_s_names(tmp_path: Path, split: str):
    # walk/alias -> zsess sorts first: zsess was skipped as walked, and its videos indexed as walk/alias/...
    root = make_folder_tree(tmp_path / "mine")
    for n in (1, 2):
        _touch(root / "jump" / "zsess" / f"v{n}.mp4")
    (root / "jump" / "alias").symlink_to(root / "jump" / "zsess")
    if split == "file":
        listed = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*.[mMaA][pPvVoO]*") if "alias" not in p.parts
        )
        (root / "splits.csv").write_text(
            "path,split\n" + "".join(f"{p},{'test' if 'loose1' in p else 'train'}\n" for p in listed)
        )
    index, summary = index_folder(root, split, 0.25, 0.25, 0)
    jump = set(index.loc[index["label"] == "jump", "path"])
    assert {"jump/zsess/v1.mp4", "jump/zsess/v2.mp4"} <= jump and not any("alias" in p for p in jump)
    assert summary["unrecognised_reasons"]["another name of a folder indexed under its own"] == 1
    assert "jump/alias/" in summary["unrecognised_files"]


def test_folders_linked_to_each_other_are_each_walked_once(tmp_path: Path):
    # walking every chain of links took 45 s for six class folders linked to each other, and never ended
    # for seven or for a chain of 12 doubled links; each real folder is walked once now
    root = tmp_path / "mine"
    labels = [f"c{n}" for n in range(8)]
    for label in labels:
        for person in ("p1", "p2"):
            _touch(root / label / person / "take.mp4")
    for label in labels:
        for other in labels:
            if other != label:
                (root / label / f"see_{other}").symlink_to(root / other)
    chain = root / labels[0] / "p1"
    for _ in range(14):  # a folder with two names at every level: 2**14 ways down
        (chain / "a").mkdir()
        (chain / "b").symlink_to(chain / "a")
        chain = chain / "a"
    _touch(chain / "deep.mp4")
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    assert len(index) == 17 and "c0/p1/" + "a/" * 14 + "deep.mp4" in set(index["path"])
    assert summary["unrecognised_reasons"] == {"another name of a folder indexed under its own": 8 * 7 + 14}


def test_videos_outside_class_folders_and_unreadable_folders_are_counted(tmp_path: Path, monkeypatch):
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "stray.mp4")  # in the root: no class
    (root / "splits.csv").write_text("path,split\n")  # not a video: not counted
    locked = root / "wave" / "bob"
    walk_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return walk_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    assert len(index) == 16  # wave/bob's two takes unread
    assert summary["unrecognised_reasons"] == {
        "directly in data.root, in no class folder": 1,
        "cannot be read (Permission denied)": 1,
        "not a video file name": 1,
    }
    assert {"stray.mp4", "wave/bob/"} <= set(summary["unrecognised_files"])


def test_class_folders_differing_only_in_case_or_letter_encoding_are_refused(tmp_path: Path):
    for name, other in (("Walking", "walking"), ("caf\u00e9", "cafe\u0301")):  # typed, and as a Mac writes it
        root = tmp_path / name
        _touch(root / name / "a.mp4")
        _touch(root / other / "b.mp4")
        _touch(root / "run" / "c.mp4")
        with pytest.raises(
            ParamError, match=r"differ only in case or in how their letters are encoded"
        ) as err:
            index_folder(root, "random", 0.25, 0.25, 0)
        assert repr(name) in str(err.value) and repr(other) in str(err.value)


def test_a_split_file_s_names_match_however_their_letters_are_encoded(tmp_path: Path):
    """A path typed in a spreadsheet (é one letter) names the file a Mac wrote (e and a combining accent)."""
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "clap" / "cafe\u0301.mp4")
    (root / "splits.csv").write_text(
        "path,split\nclap/ann/take1.mp4,train\njump/ann/take1.mp4,train\nclap/caf\u00e9.mp4,test\n"
        "jump/bob/take1.mp4,test\n"
    )
    index, summary = index_folder(root, "file", 0.1, 0.2, 0)
    assert index.set_index("path").loc["clap/cafe\u0301.mp4", "split"] == "test"  # the name on disk kept
    assert summary["listed_missing_on_disk"] == 0


def test_a_split_file_s_empty_rows_quotes_and_a_separator_in_a_path(tmp_path: Path):
    """Rows of empty fields (a spreadsheet's formatted blank rows) are skipped; a quoted path may hold the
    separator; unquoted, the row has a field too many and is refused, naming its line."""
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "clap" / "a, take 2.mp4")
    (root / "splits.csv").write_text(
        'path,split,notes\nclap/ann/take1.mp4,train,\n,,\n"clap/a, take 2.mp4",test,"good, sharp"\n'
        "jump/ann/take1.mp4,train\njump/bob/take1.mp4,test,\n, ,\n"
    )
    index, _ = index_folder(root, "file", 0.1, 0.2, 0)
    assert index.set_index("path")["split"].to_dict() == {
        "clap/ann/take1.mp4": "train", "clap/a, take 2.mp4": "test", "jump/ann/take1.mp4": "train",
        "jump/bob/take1.mp4": "test",
    }  # fmt: skip
    (root / "splits.csv").write_text("path,split\nclap/ann/take1.mp4,train\nclap/a, take 2.mp4,test\n")
    with pytest.raises(ParamError, match=r"line 3: 3 fields where the header has 2; a path holding ','"):
        index_folder(root, "file", 0.1, 0.2, 0)


def test_a_class_folder_kept_elsewhere_keeps_its_real_names(tmp_path: Path):
    """A class folder that is a link to a folder on another disk: its files are its direct names, kept over
    a link from another class and over a link inside it (which would give the wrong group)."""
    root = make_folder_tree(tmp_path / "mine")
    elsewhere = tmp_path / "disk2" / "walk"
    for person in ("ann", "bob"):
        _touch(elsewhere / person / "clip.mp4")
    (elsewhere / "all").mkdir()
    (elsewhere / "all" / "clip.mp4").symlink_to(elsewhere / "ann" / "clip.mp4")  # sorts before ann
    (root / "walk").symlink_to(elsewhere)
    (root / "wave" / "solo.mp4").symlink_to(elsewhere / "bob" / "clip.mp4")
    index, summary = index_folder(root, "random", 0.25, 0.25, 0)
    walk = index[index["label"] == "walk"].set_index("path")
    assert sorted(walk.index) == ["walk/ann/clip.mp4", "walk/bob/clip.mp4"]
    assert walk["group"].nunique() == 2  # ann's and bob's
    assert summary["unrecognised_reasons"]["another name of an indexed file"] == 2
    assert {"walk/all/clip.mp4", "wave/solo.mp4"} <= set(summary["unrecognised_files"])


def test_a_split_file_with_a_space_after_each_separator(tmp_path: Path):
    """`"path", "split"` and `clap/a.mp4, "train"`: a space after the separator, then a quoted field."""
    root = make_folder_tree(tmp_path / "mine")
    (root / "splits.csv").write_text(
        '"path", "split"\n"clap/ann/take1.mp4", "train"\njump/ann/take1.mp4, train\n'
        'clap/bob/take1.mp4, "test"\n"jump/bob/take1.mp4",test\n'
    )
    index, _ = index_folder(root, "file", 0.1, 0.2, 0)
    assert index.set_index("path")["split"].to_dict() == {
        "clap/ann/take1.mp4": "train", "clap/bob/take1.mp4": "test", "jump/ann/take1.mp4": "train",
        "jump/bob/take1.mp4": "test",
    }  # fmt: skip


def test_the_video_a_split_file_lists_is_indexed_beside_a_twin_of_another_suffix(tmp_path: Path):
    """The phone's original ``take1.MOV`` kept beside its converted ``take1.mp4``, which splits.csv lists: the
    listed one is indexed and the twin left out as such; before, ``.MOV`` (earlier in code-point order) was
    indexed, reported as unlisted, and the listed video as missing. Without a listing the first is kept."""
    root = make_folder_tree(tmp_path / "mine")
    _touch(root / "clap" / "ann" / "take1.MOV")
    (root / "splits.csv").write_text(
        "path,split\nclap/ann/take1.mp4,train\njump/ann/take1.mp4,train\nclap/bob/take1.mp4,test\n"
        "jump/bob/take1.mp4,test\n"
    )
    index, summary = index_folder(root, "file", 0.1, 0.2, 0)
    assert index.set_index("path").loc["clap/ann/take1.mp4", "split"] == "train"
    assert summary["listed_missing_on_disk"] == 0
    assert "clap/ann/take1.MOV" not in summary["unlisted_on_disk_ids"]
    assert summary["unrecognised_reasons"] == {
        "a second file of one name (another suffix), not the one splits.csv lists": 1,
        "not a video file name": 1,
    }
    index, summary = index_folder(root, "random", 0.1, 0.2, 0)
    assert "clap/ann/take1.MOV" in set(index["path"]) and "clap/ann/take1.mp4" not in set(index["path"])
    assert summary["unrecognised_reasons"]["a second file of one name (another suffix)"] == 1
