"""Peak memory of every pipeline stage stays flat as the dataset grows.

Each stage runs the command `dvc repro` runs for it (its ``cmd`` in ``dvc.yaml``, ``sh stages/python.sh
stages/<name>.py``), in pipeline order, in three throwaway DVC projects whose synthetic datasets hold N, 2N
and 4N videos (N = 48: 24 subjects x walking and jogging x 1, 2 or 4 scenarios, 40 frames a video as in
``tests/test_pipeline.py``). A sampler in this process reads ``RssAnon`` from ``/proc/<pid>/status`` of the
stage's process and of each of its descendants (the ablation's seed workers) every ``POLL_S`` and keeps each
one's peak; the stage's peak is their sum (what its processes would hold if they peaked together, the same
whichever way the workers' peaks happen to overlap). The test asserts

    peak(4N) - peak(N) < BOUND_FRACTION * (data(4N) - data(N))

where ``data`` is what the stage reads (:data:`STAGES`), counted from the project's own outputs: the raw kept
frames (``frames_kept x height x width x 3`` bytes, ``data/frames/videos.parquet``) for the stages that read
videos or frames; the fp16 token grids (``clips x G x P x D x 2`` bytes, ``data/clips.parquet`` and
``data/features/backbone.json``) of the splits a stage reads from the feature cache; the smaller of the two
for the features stage, which reads frames and writes tokens. A stage that keeps the extra videos' frames
or tokens in memory (raw: 1 x that data; as float32: 2 to 4 x; the frames as the frames stage stores them,
LZ4: about 0.4 x on these noisy frames) exceeds the bound; one that streams grows by its per-row tables only
(a few hundred bytes a frame, a few KB a clip).

Why anonymous memory, not ``ru_maxrss`` / ``VmHWM``: RSS also counts file-backed pages. The feature cache is
memory-mapped (safetensors ``safe_open``) and the frame shards and Parquet tables go through the page cache,
so RSS grows with the data a stage touches although the kernel can drop those pages whenever it needs the
memory: that is not memory pressure, and it would make every stage that reads the cache look like it
accumulates. ``RssAnon`` counts only private anonymous pages (heap, numpy and torch buffers, Arrow's pool),
the memory a stage really holds. The price: the kernel keeps no high-water mark of it, so it is sampled; a
spike shorter than ``POLL_S`` can be missed, which lowers the peaks of every size alike.

Choices that let the test see what it should:

- ``frames.videos_per_shard: 1``: every frame shard holds one video, so whatever a stage keeps per shard it
  keeps per video, and the frames stage's write buffer (one shard, bounded by that param by design) is the
  same at every size. ``frames.stride: 1`` keeps all 40 frames of a video (the default keeps 20), so that
  what a stage keeps per video stands twice as far above the noise, for the cost of more detect and pose
  work but no more synthetic rendering.
- ``detect.source`` and ``pose.source: model``: the tiny RT-DETR and ViTPose++ read every kept frame (with
  ``annotations`` these stages never read a pixel).
- Walking and jogging: their 40-frame videos are (nearly always) one listed sequence, long enough for 5
  clips, so a video gives up to 5 clips in every split (``per_video_train``, ``per_sequence_test``). Split
  ``schuldt`` over 24 subjects puts 8 in train, 7 in val and 9 in test at every size.
- A 160 px, 256-wide VideoMAE (``write_backbone``: 8 x 100 tokens a clip) instead of the 64 px demo one:
  400 KB of fp16 tokens a clip instead of 16 KB, so that holding the clips' tokens stands far above the
  sampling noise. ``backbone.batch_size: 2`` keeps the features stage's pixel batches, and with them its
  noise, small.
- ``train@recompute`` last: the features stage run again with ``backbone.store: recompute`` (no grids), then
  the train stage, which reads the frames of its clips and encodes them every epoch; its yardstick is the
  smaller of the frames and the train and val clips' tokens.
- One epoch, two seeds for ``ablate@full`` (in two spawned workers, ``ablation.workers: auto``), a short
  latency measurement: the test's runtime, not its memory.

The peaks of each stage and size are printed (``pytest -s``). What this test caught, and how it was fixed: a
frame reader kept open per shard holds its last row group (``FrameStore.read`` now opens, reads and closes),
and a split's tokens copied out of the memory-mapped cache (``load_split`` now reads them per batch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.dvc_project import dvc, make_project

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)"
)

SUBJECTS = 24
SIZES = {"N": ["d1"], "2N": ["d1", "d4"], "4N": ["d1", "d2", "d3", "d4"]}  # scenarios: 48, 96, 192 videos
CONFIG = {
    "synth": {"subjects": SUBJECTS, "actions": ["walking", "jogging"], "frames_per_video": 40},
    "data": {"split": "schuldt"},
    "frames": {"stride": 1, "videos_per_shard": 1},
    "detect": {"source": "model"},
    "pose": {"source": "model"},
    "clips": {"per_video_train": 5, "per_video_test": 5, "per_sequence_test": 5},
    "backbone": {"checkpoint": "models/memtest/backbone", "batch_size": 2},
    "train": {"epochs": 1},
    "eval": {"explain_clips": 1},
    "ablation": {"seeds": [0, 1], "latency_warmup": 1, "latency_repeats": 2, "bootstrap_resamples": 200},
}
VARIANTS = {"full": {}}  # ablate@full trains its two seeds in two spawned worker processes (workers: auto)
BACKBONE = {"image_size": 160, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 256}

ALL_SPLITS = ("train", "val", "test")
# The data each stage streams, as (kind, splits): "frames" (the raw kept frames of every video), "tokens" (the
# fp16 token grids of the clips of those splits, the ones the stage reads) or "features" (the smaller of the
# frames and every clip's tokens: the features stage reads the one and writes the other). prepare reads no
# pixels; a video's raw frames are its yardstick all the same.
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prepare": ("frames", ALL_SPLITS),
    "frames": ("frames", ALL_SPLITS),
    "detect": ("frames", ALL_SPLITS),
    "pose": ("frames", ALL_SPLITS),
    "features": ("features", ALL_SPLITS),  # clips are planned here (data/clips.parquet): no clips stage
    "train": ("tokens", ("train", "val")),
    "evaluate": ("tokens", ("test",)),
    "ablate@full": ("tokens", ALL_SPLITS),
    "ablation": ("tokens", ("test",)),  # a latency batch of test clips
    # backbone.store: recompute, measured last: the features stage planned again without grids, then
    # train encoding its clips from the frames every epoch (it reads frames and makes tokens, as features)
    "train@recompute": ("features", ("train", "val")),
}
RECOMPUTE = "train@recompute"

BOUND_FRACTION = 1 / 4
"""The growth allowed from N to 4N, as a share of the data the 3N extra videos add to what the stage reads.
Keeping that data costs 1 (raw frames, fp16 tokens), 2 to 4 as float32, and about 0.4 for the frames as the
frames stage stores them (LZ4 on these noisy frames): all well above 1/4. A stage that streams grows by its
per-row tables only (a few hundred bytes a frame; measured 10 to 25 KB a clip here, the clip table, the
pose as dense arrays and Arrow's pool, against 400 KB of tokens a clip). Noise, with :data:`ALLOCATOR_ENV`:
up to about 15 MB between two runs of one stage at one size, against bounds of 26 MB (test tokens) to
79 MB (frames) at these sizes."""

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
"""glibc's malloc serves blocks of 64 KB and more from their own mappings, returned to the kernel when freed,
so ``RssAnon`` follows what a stage holds rather than what the allocator kept of earlier batches. Without
it (glibc raises the threshold up to 32 MB once big blocks are freed) three runs of the evaluate stage at
one size peaked 40 MB apart; with it, 15 MB, and the growth from N to 4N measured the same (+15 to +20 MB).
Over the whole test, the peaks of the three sizes spread 36 MB for ``ablate@full`` (four processes) and
12 MB for ``train``; with a 4 MB threshold, 80 and 31 MB. The price: the frame stages run up to twice as
slowly here (a page fault on every fresh block), about 80 s more for the whole test."""

POLL_S = 0.005  # RssAnon sampling period
RESCAN_EVERY = 10  # look for new descendant processes every 10th sample (50 ms)
STAGE_TIMEOUT_S = 900  # a stage takes at most about 40 s here


# --------------------------------------------------------------------------------------------- sampling


def _rss_anon(pid: int) -> int:
    """Resident anonymous memory of one process in bytes (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent pid in every ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


@dataclass
class Peak:
    anon: int  # bytes: over the stage's process tree, the sum of each process's highest sampled RssAnon
    seconds: float
    samples: int
    processes: int  # the most processes seen at once


def measure(cmd: list[str], cwd: Path, log: Path) -> Peak:
    """Run ``cmd`` in ``cwd`` (the project's python first on PATH, the hub offline, as ``tests/dvc_project.run``)
    and sample its process tree's anonymous memory until it exits; fail with the log's tail if it fails."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        **ALLOCATOR_ENV,
    }
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        highest: dict[int, int] = {}  # pid -> its highest sampled RssAnon
        samples = most = 0
        pids = [process.pid]
        while process.poll() is None:
            if time.perf_counter() - start > STAGE_TIMEOUT_S:
                process.kill()
                process.wait()
                pytest.fail(f"{' '.join(cmd)} ran over {STAGE_TIMEOUT_S} s in {cwd}")
            if samples % RESCAN_EVERY == 0:
                pids = _process_tree(process.pid)
                most = max(most, len(pids))
            for pid in pids:
                highest[pid] = max(highest.get(pid, 0), _rss_anon(pid))
            samples += 1
            time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    assert process.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{log.read_text()[-3000:]}"
    # each process's own peak, summed: what its processes would hold if they peaked together, so a
    # multi-process stage's figure does not depend on how the seed workers' peaks happened to overlap
    # (the highest sampled sum moved ablate@full's growth from +18 MB to +73 MB on a loaded machine)
    return Peak(sum(highest.values()), seconds, samples, most)


# --------------------------------------------------------------------------------------------- projects


def _stage_cmd(project: Path, stage: str) -> list[str]:
    """The stage's command exactly as dvc.yaml gives it (``foreach`` stages: ``name@key``)."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    if stage == RECOMPUTE:
        return stages["train"]["cmd"].split()
    name, _, key = stage.partition("@")
    cmd = stages[name]["do"]["cmd"].replace("${key}", key) if key else stages[name]["cmd"]
    return cmd.split()


@dataclass
class Project:
    """One throwaway project of one size; its stages run on demand, in pipeline order, each once."""

    size: str
    root: Path
    peaks: dict[str, Peak] = field(default_factory=dict)

    def peak(self, stage: str) -> Peak:
        for upstream in STAGES:  # run (and measure) what the stage reads first
            if upstream not in self.peaks:
                log = self.root / f"memtest-{upstream}.log"
                if upstream == RECOMPUTE:  # every other stage has run on the cached grids by now
                    self.recompute_features()
                self.peaks[upstream] = measure(_stage_cmd(self.root, upstream), self.root, log)
            if upstream == stage:
                return self.peaks[stage]
        raise KeyError(stage)

    def recompute_features(self) -> None:
        """params.yaml's backbone.store set to recompute, and the features stage run again (not measured):
        data/features is then backbone.json alone, and train encodes the clips it reads."""
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        params["backbone"]["store"] = "recompute"
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        measure(_stage_cmd(self.root, "features"), self.root, self.root / "memtest-features-recompute.log")
        assert [p.name for p in (self.root / "data/features").iterdir()] == ["backbone.json"]

    def frame_bytes(self) -> int:
        videos = pd.read_parquet(self.root / "data/frames/videos.parquet")
        ok = videos[videos["status"] == "ok"]
        return int((ok["frames_kept"] * ok["height"] * ok["width"] * 3).sum())

    def token_bytes(self, splits: tuple[str, ...]) -> int:
        backbone = json.loads((self.root / "data/features/backbone.json").read_text())
        groups, patches = backbone["grid"]
        clips = pd.read_parquet(self.root / "data/clips.parquet", columns=["split"])
        count = int(clips["split"].isin(splits).sum())
        return count * groups * patches * backbone["hidden_size"] * 2  # fp16, as cached

    def data_bytes(self, stage: str) -> tuple[int, str]:
        """What ``stage`` reads of this project's data (:data:`STAGES`): bytes, and what they are."""
        kind, splits = STAGES[stage]
        self.peak("frames" if kind == "frames" else "features")  # the outputs the count comes from
        frames = (self.frame_bytes(), "raw frames") if kind != "tokens" else None
        tokens = (
            (self.token_bytes(splits), f"fp16 tokens ({', '.join(splits)})") if kind != "frames" else None
        )
        return min(x for x in (frames, tokens) if x is not None)

    def videos(self) -> int:
        return len(pd.read_parquet(self.root / "data/index.parquet"))


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Project]:
    """One project per size, shared by every stage's test; synth and checkpoints (not measured) run here."""
    from transmodal.vision.tiny import write_backbone

    built = {}
    for size, scenarios in SIZES.items():
        config = {**CONFIG, "synth": {**CONFIG["synth"], "scenarios": scenarios}}
        root = make_project(tmp_path_factory.mktemp(f"memory-{size}"), config, variants=VARIANTS)
        write_backbone(root / "models/memtest/backbone", seed=2, **BACKBONE)
        dvc(root, "repro", "synth", "checkpoints")
        built[size] = Project(size, root)
    return built


MiB = 2**20


@pytest.mark.parametrize("stage", list(STAGES))
def test_peak_anonymous_memory_does_not_grow_with_the_number_of_videos(projects, stage):
    peaks = {size: project.peak(stage) for size, project in projects.items()}
    small, large = projects["N"], projects["4N"]
    (data_small, what), (data_large, _) = small.data_bytes(stage), large.data_bytes(stage)
    extra = data_large - data_small
    assert extra > 0, "the 4N project adds no data: the sizes are wrong"
    bound = BOUND_FRACTION * extra
    growth = peaks["4N"].anon - peaks["N"].anon
    row = "  ".join(
        f"{size} ({projects[size].videos()} videos) {peak.anon / MiB:7.1f} MiB {peak.seconds:5.1f} s"
        for size, peak in peaks.items()
    )
    print(
        f"\n{stage:12s} {row}  | growth 4N-N {growth / MiB:+7.1f} MiB, bound {bound / MiB:6.1f} MiB "
        f"({BOUND_FRACTION:.2f} x {extra / MiB:.1f} MiB of extra {what}), "
        f"{max(p.processes for p in peaks.values())} process(es)"
    )
    assert growth < bound, (
        f"{stage}: peak anonymous memory grew by {growth / MiB:.1f} MiB from {small.videos()} to "
        f"{large.videos()} videos, more than {BOUND_FRACTION:.2f} x the {extra / MiB:.1f} MiB of {what} "
        "the extra videos add: the stage holds per-video data"
    )


# --------------------------------------------------------------------------------------------- predict

PREDICT_LENGTHS = {"1x": 300, "2x": 600, "4x": 1200}  # source frames of a 640 x 480, 25 fps video
PREDICT_SEGMENT_FRAMES = 64  # kept frames a segment may hold (58 MB at 640 x 480)
PREDICT = (
    "import sys; from pathlib import Path; from transmodal.predict import predict_video; "
    "p, _ = predict_video(Path(sys.argv[1]), Path(sys.argv[2]), progress=False, max_bytes=int(sys.argv[3])); "
    "print(p.segments, len(p.logits))"
)


def test_predict_holds_one_segment_whatever_the_video_s_length(tmp_path, tiny_checkpoints):
    """``transmodal predict`` on videos of 1, 2 and 4 times the length (150, 300 and 600 kept frames of
    640 x 480 at stride 2) with the same segment budget: its peak anonymous memory grows by less than
    :data:`BOUND_FRACTION` of the raw kept frames the longer video adds. Holding them (as predict did
    before segments, and explain did until it kept only its candidate windows) grows by all of them;
    what it keeps per window (the planned window, its pose and logits) is a few KB."""
    from tests.test_predict import camera_like_video, write_model_folder

    model = write_model_folder(tmp_path / "model", tiny_checkpoints)
    frame = 640 * 480 * 3
    peaks, kept = {}, {}
    for size, frames in PREDICT_LENGTHS.items():
        video = tmp_path / f"{size}.avi"
        camera_like_video(video, frames=frames, size=(640, 480))
        log = tmp_path / f"predict-{size}.log"
        cmd = [sys.executable, "-c", PREDICT, str(video), str(model), str(PREDICT_SEGMENT_FRAMES * frame)]
        peaks[size] = measure(cmd, REPO_ROOT, log)
        segments, windows = map(int, log.read_text().split()[-2:])
        kept[size] = frames // 2
        assert segments >= kept[size] // PREDICT_SEGMENT_FRAMES, log.read_text()[-2000:]
    growth = peaks["4x"].anon - peaks["1x"].anon
    bound = BOUND_FRACTION * (kept["4x"] - kept["1x"]) * frame
    print(
        "\npredict      "
        + "  ".join(f"{size} ({kept[size]} kept frames) {p.anon / MiB:7.1f} MiB" for size, p in peaks.items())
        + f"  | growth 4x-1x {growth / MiB:+7.1f} MiB, bound {bound / MiB:6.1f} MiB"
    )
    assert growth < bound, (
        f"predict: peak anonymous memory grew by {growth / MiB:.1f} MiB from {kept['1x']} to {kept['4x']} "
        f"kept frames, more than {BOUND_FRACTION:.2f} x the raw frames the longer video adds: it holds them"
    )
