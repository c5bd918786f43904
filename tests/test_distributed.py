"""compute.nproc: the stages under torchrun (2 CPU processes, gloo), a failing rank, and the units of videos
shared out by detect and pose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_features import build, world  # noqa: F401  (the module fixture)

from transmodal import distributed
from transmodal.distributed import World, torchrun_command
from transmodal.io import digest
from transmodal.params import ComputeConfig, ParamError
from transmodal.vision.batches import FinishedUnits

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(world, tmp_path_factory) -> Path:  # noqa: F811
    """A folder holding a feature cache and params.yaml, as the train stage finds them."""
    root = tmp_path_factory.mktemp("distributed")
    _, features_dir, clips_path = build(world, "distributed")
    (root / "data").mkdir()
    shutil.copytree(features_dir, root / "data" / "features")
    shutil.copy(clips_path, root / "data" / "clips.parquet")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, batch_size=2, device="cpu")
    params["selector"]["top_k_tokens"] = 4
    params["compute"]["nproc"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def train(project: Path, extra_path: Path | None = None, stage: str = "train") -> subprocess.CompletedProcess:
    python_path = [str(REPO_ROOT), *([str(extra_path)] if extra_path else [])]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(python_path), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / f"{stage}.py")],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def startup_hook(tmp_path: Path, code: str) -> Path:
    """A folder whose ``sitecustomize.py`` runs ``code`` when a process of the stage starts, for
    :func:`train`'s ``extra_path`` (written again on each call)."""
    folder = tmp_path / "hook"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    return folder


def rank_1_hook(tmp_path: Path, body: str) -> Path:
    """:func:`startup_hook` running ``body`` (indented code that may use ``train``, the module
    transmodal.training.train) in torchrun's rank 1 only."""
    return startup_hook(
        tmp_path,
        "import os\nif os.environ.get('RANK') == '1':\n    import transmodal.training.train as train\n"
        + body,
    )


def test_two_processes_train_one_epoch_and_write_one_checkpoint(project):
    done = train(project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x 1 machines under torchrun" in done.stderr
    assert sorted(p.name for p in (project / "models").iterdir()) == ["transmodal"]  # no temporary left
    assert sorted(p.name for p in (project / "models" / "transmodal").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch_size"] == 4
    assert (project / "metrics" / "train_curve.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert json.loads((project / "metrics" / "timings" / "train.json").read_text())["stage"] == "train"


def test_each_rank_draws_its_own_dropout_masks(project, tmp_path):
    """One seed on every rank dropped the same units of every rank's (different) clips at each step; one
    process draws a mask per clip. The torch random state at each rank's first training dropout must differ
    (the weights stay rank 0's: DDP copies them)."""
    hook = startup_hook(
        tmp_path,
        "import os\n"
        "if os.environ.get('RANK') is not None:\n"
        "    import hashlib, torch, torch.nn.functional as F\n"
        "    real = F.dropout\n"
        "    def dropout(input, p=0.5, training=True, inplace=False):\n"
        "        state = f\"dropout-rank-{os.environ['RANK']}\"\n"
        "        if training and p > 0 and not os.path.exists(state):\n"
        "            with open(state, 'w') as f:\n"
        "                f.write(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())\n"
        "        return real(input, p, training, inplace)\n"
        "    F.dropout = dropout\n",
    )
    for rank in (0, 1):
        (project / f"dropout-rank-{rank}").unlink(missing_ok=True)
    done = train(project, hook)
    assert done.returncode == 0, done.stderr[-3000:]
    states = [(project / f"dropout-rank-{rank}").read_text() for rank in (0, 1)]
    assert states[0] != states[1]


def test_a_failing_rank_ends_the_run_with_its_error_and_leaves_no_output(project, tmp_path):
    for output in ("models", "metrics"):
        shutil.rmtree(project / output, ignore_errors=True)
    hook = rank_1_hook(
        tmp_path,
        "    def fail(*args, **kwargs):\n"
        "        raise RuntimeError('rank 1 failed on purpose')\n"
        "    train.predict = fail  # in the last epoch's validation: rank 0 goes on to its barrier\n",
    )
    done = train(project, hook)
    assert done.returncode != 0
    assert (
        "rank 1 failed on purpose" in done.stderr and "torchrun or one of its workers failed" in done.stderr
    )
    assert not (project / "models").exists() and not (project / "metrics" / "train.json").exists()


def test_a_training_stopped_on_two_processes_goes_on_from_its_last_epoch_with_the_same_bytes(
    project, tmp_path
):
    """Rank 1 fails in epoch 3 of 3: the rerun on two processes starts after epoch 2 (rank 0 decides, every
    rank takes its own generator back) and ends with the weights and curve of a run never stopped."""
    root = tmp_path / "project"
    shutil.copytree(project / "data", root / "data")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outputs = ("models/transmodal/model.safetensors", "metrics/train_curve.csv")
    done = train(root)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = {name: (root / name).read_bytes() for name in outputs}
    for output in ("models", "metrics"):
        shutil.rmtree(root / output)
    hook = rank_1_hook(
        tmp_path,
        "    real_order, real_sums, epochs = train.epoch_order, train.add_to_sums, []\n"
        "    def order(size, epoch, *args):\n"
        "        epochs.append(epoch)\n"
        "        return real_order(size, epoch, *args)\n"
        "    def sums(*args):\n"  # after epoch 3's first step: rank 0 has saved epoch 2's state by then
        "        if epochs[-1] == 3:\n"
        "            raise RuntimeError('rank 1 stopped in epoch 3')\n"
        "        return real_sums(*args)\n"
        "    train.epoch_order, train.add_to_sums = order, sums\n",
    )
    done = train(root, hook)
    assert done.returncode != 0 and "rank 1 stopped in epoch 3" in done.stderr
    assert len(list((root / "data" / ".partial" / "train").rglob("state.pt"))) == 1
    done = train(root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: resuming after epoch 2 of 3" in done.stdout
    assert {name: (root / name).read_bytes() for name in outputs} == whole
    assert not (root / "data" / ".partial").exists()


def test_torchrun_command_one_machine_and_several(monkeypatch):
    one = torchrun_command(ComputeConfig(nproc=4), ["stages/train.py"])
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--standalone", "stages/train.py"]
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ParamError, match="compute.nnodes is 2; set MASTER_ADDR, MASTER_PORT, NODE_RANK"):
        torchrun_command(ComputeConfig(nproc=8, nnodes=2), ["stages/train.py"])
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("NODE_RANK", "1")
    several = torchrun_command(ComputeConfig(nproc=8, nnodes=2), ["stages/train.py"])
    assert "--nnodes=2" in several and "--node_rank=1" in several and "--master_addr=10.0.0.1" in several
    for name, value, why in (
        ("NODE_RANK", "2", r"NODE_RANK is '2' .* compute.nnodes is 2; .* from 0 to 1"),
        ("NODE_RANK", "one", r"NODE_RANK is 'one'"),
        ("MASTER_PORT", "29500x", r"MASTER_PORT is '29500x'"),
    ):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ParamError, match=why):
                torchrun_command(ComputeConfig(nproc=8, nnodes=2), ["stages/train.py"])


def test_compute_params_are_checked():
    with pytest.raises(ParamError, match=r"compute\.nproc is 0"):
        ComputeConfig(nproc=0)
    assert ComputeConfig(nproc=2, nnodes=3).world_size == 6


def test_more_processes_than_gpus_is_refused_before_torchrun_starts(monkeypatch):
    import torch

    started = []
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        ParamError, match=r"compute\.nproc is 4, but this machine has 2 GPU\(s\) and train\.device"
    ):
        distributed.launch(ComputeConfig(nproc=4), "train", "auto", "train.device")
    assert not started
    # on the CPU any count goes (gloo); on CUDA up to one process a GPU
    distributed.check_gpus(ComputeConfig(nproc=4), "cpu", "train.device")
    distributed.check_gpus(ComputeConfig(nproc=2), "cuda", "train.device")


def test_units_are_shared_out_by_rank_and_rank_0_gathers_every_part(tmp_path, monkeypatch):
    """Detect and pose under torchrun: every world-size-th unit of videos to a process, each unit's part
    written when its last video is in, and rank 0 reads those it did not compute after a barrier; no process
    writes before the barrier that follows rank 0's cleaning of the parts folder, and all name the folder by
    rank 0's key (another machine's GPU or file times would give another)."""
    parts = tmp_path / "partial" / "detect"
    key = {"params": 1}
    stale = parts / "an-older-key"
    stale.mkdir(parents=True)
    events = []
    monkeypatch.setattr(
        distributed, "barrier", lambda: events.append(sorted(p.name for p in parts.iterdir()))
    )
    # what rank 0 broadcasts to each process: its key, then its word on the finished parts (none damaged)
    broadcast = iter([key, None, key, None])
    monkeypatch.setattr(distributed, "from_rank_0", lambda obj: next(broadcast))
    videos = ["a", "b", "c", "d", "e"]  # units of two: [a, b], [c, d], [e]

    def table(video):
        frame = pd.DataFrame({"video_id": [video], "boxes": [len(video)]})
        frame.attrs["boxes"] = 1
        return frame

    rank_1 = FinishedUnits(videos, 2, parts, lambda: {"params": "rank 1's own"}, World(rank=1, size=2))
    assert rank_1.videos() == ["c", "d"]
    assert events == [["an-older-key", digest(key)]]  # rank 1 cleans nothing and takes rank 0's key
    rank_0 = FinishedUnits(videos, 2, parts, lambda: key, World(rank=0, size=2))
    assert events[1] == [digest(key)]  # rank 0 removed the other key before the barrier
    assert rank_0.videos() == ["a", "b", "e"]
    for video in ("d", "c"):  # in any order
        rank_1.add(video, table(video))
    for video in ("a", "b", "e"):
        rank_0.add(video, table(video))
    assert rank_1.others() is None  # waits until every process has written
    got = list(rank_0.others())  # the unit rank 1 computed, read back; its own it has
    assert [list(t["video_id"]) for t in got] == [["c", "d"]] and got[0].attrs["boxes"] == 2  # summed
    with pytest.raises(ValueError, match="parts_dir"):
        FinishedUnits(videos, 2, None, lambda: key, World(rank=0, size=2))


def test_torchrun_gets_the_cores_over_nproc_as_omp_threads_unless_the_user_set_them(monkeypatch):
    # torchrun itself would set OMP_NUM_THREADS=1, leaving all but nproc of the machine's cores idle
    seen = []

    class Done:
        def __init__(self, command, env, start_new_session):
            seen.append((env.get("OMP_NUM_THREADS"), start_new_session))

        def wait(self):
            return 0

    monkeypatch.setattr(distributed.subprocess, "Popen", Done)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.run_torchrun(["torchrun"], nproc=4) == (0, [])
    assert distributed.run_torchrun(["torchrun"], nproc=32) == (0, [])  # at least one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    distributed.run_torchrun(["torchrun"], nproc=4)
    assert seen == [("4", True), ("1", True), ("3", True)]


def test_a_run_resumed_with_another_number_of_processes_takes_the_finished_units(tmp_path, monkeypatch):
    """A unit's part does not depend on which process wrote it: a run of two processes killed after rank 1
    finished its unit is resumed by one process, which computes only the units left."""
    parts = tmp_path / "partial" / "pose"
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    videos = ["a", "b", "c", "d", "e"]
    broadcast = iter([{"k": 1}, None])  # rank 0's key, then its word on the finished parts (none damaged)
    monkeypatch.setattr(distributed, "from_rank_0", lambda obj: next(broadcast))
    killed = FinishedUnits(videos, 2, parts, lambda: {"k": 1}, World(rank=1, size=2))
    for video in ("c", "d"):
        killed.add(video, pd.DataFrame({"row": [ord(video)]}))
    (killed.directory / ".unit-00002.parquet.x.tmp").write_bytes(b"cut")  # a part being written when killed
    resumed = FinishedUnits(videos, 2, parts, lambda: {"k": 1}, World())
    assert resumed.done == [1] and resumed.videos() == ["a", "b", "e"]
    assert not list(resumed.directory.glob("*.tmp"))
    for video in resumed.videos():
        resumed.add(video, pd.DataFrame({"row": [ord(video)]}))
    assert [list(t["row"]) for t in resumed.others()] == [[99, 100]]  # the part of the killed run
    assert sorted(p.name for p in resumed.directory.iterdir()) == [f"unit-0000{i}.parquet" for i in range(3)]
    other = FinishedUnits(videos, 3, parts, lambda: {"k": 1, "videos_per_unit": 3}, World())  # another key
    assert other.done == [] and [p.name for p in parts.iterdir()] == [other.directory.name]


@pytest.fixture(scope="module")
def extraction(world, tmp_path_factory) -> Path:  # noqa: F811
    """A folder with the features stage's inputs: index, frame store, tracks, keypoints, tiny backbone."""
    root = tmp_path_factory.mktemp("extraction")
    (root / "data").mkdir()
    world["index"].to_parquet(root / "data" / "index.parquet")
    shutil.copytree(world["root"] / "frames", root / "data" / "frames")
    world["tracks"].to_parquet(root / "data" / "tracks.parquet")
    world["keypoints"].to_parquet(root / "data" / "keypoints.parquet")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    clips = world["clips_cfg"]
    params["clips"].update(
        length=clips.length, per_video_train=clips.per_video_train, per_video_test=clips.per_video_test,
        crop_margin=clips.crop_margin,
    )  # fmt: skip
    params["backbone"].update(checkpoint=world["checkpoint"], batch_size=2, clips_per_shard=2, device="cpu")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def outputs(root: Path) -> dict[str, bytes]:
    files = sorted((root / "data" / "features").iterdir()) + [root / "data" / "clips.parquet"]
    return {path.name: path.read_bytes() for path in files}


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_features_on_two_processes_are_byte_identical_to_one(extraction, keep):
    params = yaml.safe_load((extraction / "params.yaml").read_text())
    params["backbone"]["keep"] = keep
    single = {}
    for nproc in (1, 2):
        params["compute"]["nproc"] = nproc
        (extraction / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        done = train(extraction, stage="features")
        assert done.returncode == 0, done.stderr[-3000:]
        if nproc == 1:
            single = outputs(extraction)
            assert sum(name.startswith("shard-") for name in single) >= 3  # several shards to share out
            shutil.rmtree(extraction / "data" / "features")
    assert "2 processes x 1 machines under torchrun" in done.stderr
    assert outputs(extraction) == single
    assert not (extraction / "data" / ".partial").exists()
    assert json.loads((extraction / "metrics" / "features.json").read_text())["processes"] == 2


def test_a_failing_rank_leaves_no_features(extraction, tmp_path):
    params = yaml.safe_load((extraction / "params.yaml").read_text())
    params["compute"]["nproc"] = 2
    params["backbone"]["keep"] = 1.0
    (extraction / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for output in ("data/features", "data/clips.parquet", "metrics"):
        path = extraction / output
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    failing = startup_hook(
        tmp_path,
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from transmodal.features.backbone import FrozenBackbone\n"
        "    def fail(self, *args, **kwargs):\n"
        "        raise RuntimeError('rank 1 failed on purpose')\n"
        "    FrozenBackbone.forward = fail\n",
    )
    done = train(extraction, failing, stage="features")
    assert done.returncode != 0 and "rank 1 failed on purpose" in done.stderr
    assert not (extraction / "data" / "features").exists()
    assert not (extraction / "data" / "clips.parquet").exists()
    assert not (extraction / "metrics" / "features.json").exists()


def model_params(extraction: Path, tiny_checkpoints, world) -> dict:  # noqa: F811
    """``extraction``'s params with detect and pose on the tiny RT-DETR and ViTPose++, one video a unit."""
    params = yaml.safe_load((extraction / "params.yaml").read_text())
    params["data"]["root"] = str(world["root"])  # its videos; no annotations.parquet there
    params["detect"].update(
        source="model", checkpoint=tiny_checkpoints["detector"], device="cpu", batch_size=4
    )
    params["pose"].update(source="model", checkpoint=tiny_checkpoints["pose"], device="cpu", batch_size=4)
    params["compute"]["videos_per_unit"] = 1
    return params


def test_detect_and_pose_on_two_processes_are_byte_identical_to_one(extraction, tiny_checkpoints, world):  # noqa: F811
    """source: model (the tiny RT-DETR and ViTPose++) with one video a unit, so both processes get videos."""
    params = model_params(extraction, tiny_checkpoints, world)
    results = {}
    for nproc in (1, 2):
        params["compute"]["nproc"] = nproc
        (extraction / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in ("detect", "pose"):
            done = train(extraction, stage=stage)
            assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = {
            name: (extraction / "data" / name).read_bytes()
            for name in ("tracks.parquet", "keypoints.parquet")
        }
        if nproc == 2:
            assert "2 processes x 1 machines under torchrun" in done.stderr
    assert results[2] == results[1]
    for stage in ("detect", "pose"):
        assert not (extraction / "data" / ".partial" / stage).exists()  # the parts are merged and gone
    for stage in ("detect", "pose"):
        metrics = json.loads((extraction / "metrics" / f"{stage}.json").read_text())
        assert metrics["processes"] == 2 and metrics["source"] == "model"


def test_a_damaged_part_stops_both_processes_with_rank_0_s_line(
    extraction,
    tiny_checkpoints,
    world,  # noqa: F811
    tmp_path,
):
    """A finished unit part cut short after an interrupted run: rank 0 reads its footer when the run starts
    and rank 1, which never opens it, stops on the line rank 0 sends (it does not wait at a barrier for a rank
    that has stopped). Both raise it (each process notes it in a file: torchrun stops the others once one
    has failed, before they print); the stage writes nothing."""
    params = model_params(extraction, tiny_checkpoints, world)
    params["compute"]["nproc"] = 1
    (extraction / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("tracks.parquet", "keypoints.parquet"):
        (extraction / "data" / name).unlink(missing_ok=True)
    stopping = startup_hook(
        tmp_path,
        "import transmodal.vision.batches as batches\n"
        "add = batches.FinishedUnits.add\n"
        "def stop_after_a_part(self, video_id, table):\n"
        "    add(self, video_id, table)\n"
        "    if any(self._parts.directory.glob('unit-*.parquet')):\n"
        "        raise RuntimeError('stopped after the first unit')\n"
        "batches.FinishedUnits.add = stop_after_a_part\n",
    )
    stopped = train(extraction, stopping, stage="detect")
    assert stopped.returncode != 0 and "stopped after the first unit" in stopped.stderr
    parts = sorted((extraction / "data" / ".partial" / "detect").rglob("unit-*.parquet"))
    assert len(parts) == 1
    parts[0].write_bytes(parts[0].read_bytes()[:-20])  # the footer cut off
    params["compute"]["nproc"] = 2
    (extraction / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    said = tmp_path / "said"
    said.mkdir()
    noting = startup_hook(
        tmp_path,
        "import os, time\n"
        "import transmodal.vision.batches as batches\n"
        "from transmodal.params import CheckpointError\n"
        "start = batches.FinishedUnits.__init__\n"
        "def noting(self, *args, **kwargs):\n"
        "    try:\n"
        "        start(self, *args, **kwargs)\n"
        "    except CheckpointError as err:\n"
        "        rank = os.environ['RANK']\n"
        f"        open(os.path.join({str(said)!r}, 'rank-' + rank), 'w').write(str(err))\n"
        "        if rank == '0':\n"
        "            time.sleep(5)  # torchrun stops the others when one fails: rank 1 has its turn first\n"
        "        raise\n"
        "batches.FinishedUnits.__init__ = noting\n",
    )
    done = train(extraction, noting, stage="detect")
    assert done.returncode != 0 and "cannot be read" in done.stderr, done.stderr[-3000:]
    lines = {path.name: path.read_text() for path in said.iterdir()}
    assert set(lines) == {"rank-0", "rank-1"}, done.stderr[-3000:]  # rank 1 had not waited at a barrier
    assert lines["rank-0"] == lines["rank-1"] and lines["rank-0"].startswith(
        f"{parts[0].relative_to(extraction)}: "
    )
    assert not (extraction / "data" / "tracks.parquet").exists()
    shutil.rmtree(extraction / "data" / ".partial")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for a parent that will not reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_sigterm_to_the_stage_stops_torchrun_and_its_workers_and_writes_nothing(project, tmp_path, signum):
    """`kill` (or a scheduler) sends SIGTERM to the stage's process alone, a closed terminal SIGHUP, `kill
    -INT` or a Ctrl-C that reaches the stage alone SIGINT; torchrun runs in a session of its own, so the
    stage hands the signal on, and no worker is left running to write the outputs later."""
    import signal
    import time

    signum = signal.Signals[signum]
    for output in ("models", "metrics"):
        shutil.rmtree(project / output, ignore_errors=True)
    hook = startup_hook(
        tmp_path,
        "import os, time\n"
        "if os.environ.get('TORCHELASTIC_RUN_ID'):\n"
        "    import transmodal.training.train as train\n"
        "    def hang(*args, **kwargs):\n"
        f"        open({str(tmp_path)!r} + '/worker-' + os.environ['RANK'], 'w').write(str(os.getpid()))\n"
        "        time.sleep(300)\n"
        "    train.train_model = hang\n",
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(hook)]), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    stage = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=project, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("worker-*"))) < 2 and stage.poll() is None:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in tmp_path.glob("worker-*")]
        stage.send_signal(signum)
        _, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 128 + signum, err[-3000:]
    how = "interrupted" if signum == signal.SIGINT else f"terminated ({signum.name})"
    assert err.strip().splitlines()[-1].startswith(f"train: {how}; nothing it was writing")
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    assert not (project / "models").exists() and not (project / "metrics" / "train.json").exists()


def test_a_world_size_set_by_a_cluster_does_not_make_the_launcher_a_worker(monkeypatch):
    """A job environment (Kubeflow's PyTorchJob, a tutorial's exports) may set WORLD_SIZE and RANK for the
    process that is to launch torchrun; only torchrun's own TORCHELASTIC_RUN_ID marks a worker."""
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.current() == World() and not distributed.is_worker()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.current() == World(rank=2, local_rank=0, size=4)


@pytest.mark.parametrize(
    ("stage", "missing"), [("features", "data/index.parquet"), ("train", "data/features")]
)
def test_a_missing_input_is_one_line_before_torchrun_starts(project, tmp_path, stage, missing):
    """Not two workers' errors and torchrun's report of them: the launcher looks for the inputs first."""
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(project / "params.yaml", empty / "params.yaml")
    done = train(empty, stage=stage)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "under torchrun" not in done.stderr, done.stderr[-2000:]
    assert lines == [
        f"{stage}: error: {missing}: no such file; `dvc repro {stage}` runs the stages that write it"
    ]


def test_only_the_first_machine_records_the_stage_time(monkeypatch, tmp_path):
    # on a folder shared by every machine, a second machine's launcher would overwrite (or remove, as an
    # unfinished temporary) the first one's metrics/timings file
    from transmodal.stage import other_machine, run_stage

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["compute"]["nnodes"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    timings = tmp_path / "metrics" / "timings" / "prepare.json"
    for node_rank, written in (("1", False), ("0", True)):
        monkeypatch.setenv("NODE_RANK", node_rank)
        run_stage("prepare", lambda params: None)
        assert timings.exists() is written
    params = {"compute": {"nproc": 1, "nnodes": 2}}
    for node_rank, other in (("0", False), ("00", False), ("1", True), (" 3 ", True)):
        monkeypatch.setenv("NODE_RANK", node_rank)
        assert other_machine(params) is other
    assert not other_machine(
        {"compute": {"nproc": 1, "nnodes": 1}}
    )  # NODE_RANK left over from a job: one machine
    monkeypatch.delenv("NODE_RANK")
    assert not other_machine(params)
