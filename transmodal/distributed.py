"""Several processes, on one machine or several, through torch.distributed (``compute.nproc``,
``compute.nnodes``; docs/decisions.md 41).

A stage that supports it (detect, pose, features, train) calls :func:`launch` once its params are
validated: with a world of one
nothing happens; otherwise, unless it already runs under torchrun, it re-runs itself under
``python -m torch.distributed.run`` (torchrun) with ``compute.nproc`` processes per machine and waits for
them. torchrun starts the workers, and when one fails it stops the others and exits non-zero, printing that
worker's error, so a stage's outputs (written by rank 0 after the last collective) never appear.

:func:`process_group` joins the group in a worker: gloo on the CPU, NCCL on CUDA (one GPU per local rank).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from transmodal.params import ComputeConfig, ParamError
from transmodal.stage import Interrupted, is_worker

MULTI_NODE_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """This process's place in the torchrun world (rank 0 of 1 outside torchrun)."""
    if not is_worker():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))


def torchrun_command(cfg: ComputeConfig, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run ...`` running ``argv`` (a script and its arguments) on ``cfg``'s
    processes: one machine (a rendezvous of its own), or ``cfg.nnodes`` machines that meet at
    MASTER_ADDR:MASTER_PORT, this one being NODE_RANK."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.nproc}"]
    if cfg.nnodes == 1:
        command.append("--standalone")
    else:
        missing = [name for name in MULTI_NODE_ENV if not os.environ.get(name)]
        if missing:
            raise ParamError(
                f"params.yaml: compute.nnodes is {cfg.nnodes}; set {', '.join(missing)} in the environment of "
                'every machine (README, "Several processes")'
            )
        node_rank, port = os.environ["NODE_RANK"].strip(), os.environ["MASTER_PORT"].strip()
        if not node_rank.isdigit() or int(node_rank) >= cfg.nnodes:
            raise ParamError(
                f"NODE_RANK is {node_rank!r} in the environment, but params.yaml: compute.nnodes is {cfg.nnodes}; "
                f"give each machine its own NODE_RANK from 0 to {cfg.nnodes - 1} (0 on MASTER_ADDR's)"
            )
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ParamError(f"MASTER_PORT is {port!r} in the environment; set a free TCP port (1-65535)")
        command += [
            f"--nnodes={cfg.nnodes}",
            f"--node_rank={int(node_rank)}",
            f"--master_addr={os.environ['MASTER_ADDR'].strip()}",
            f"--master_port={int(port)}",
        ]
    return [*command, *argv]


def launch(
    cfg: ComputeConfig, stage: str, device: str, device_key: str, inputs: tuple[str, ...] = ()
) -> bool:
    """Re-run this script under torchrun when ``cfg`` asks for more than one process and it is not already
    one of them. Returns True when it did (the caller then stops: the workers did the stage's work); exits
    with torchrun's code when a worker failed. ``device`` (the stage's ``device_key`` param): on CUDA each
    process takes one GPU, so ``compute.nproc`` may not exceed this machine's GPUs. ``inputs``, the files
    the stage reads, are looked for first: a missing one is the stage's one-line error, not every worker's
    with torchrun's report of their failure."""
    if cfg.world_size == 1 or is_worker():
        return False
    for path in inputs:
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    check_gpus(cfg, device, device_key)
    print(f"{stage}: {cfg.nproc} processes x {cfg.nnodes} machines under torchrun", file=sys.stderr)
    returncode, received = run_torchrun(torchrun_command(cfg, sys.argv), cfg.nproc)
    if received and returncode != 0:  # torchrun stopped its workers: nothing of the stage was written
        raise Interrupted(received[0])
    if returncode != 0:
        meet = (
            ""
            if cfg.nnodes == 1
            else "; if no worker started, check that every machine reaches MASTER_ADDR:MASTER_PORT"
        )
        print(f"{stage}: error: torchrun or one of its workers failed (exit code {returncode}; the error is above{meet})",
              file=sys.stderr)  # fmt: skip
        sys.exit(returncode if 0 < returncode < 128 else 1)
    return True


def run_torchrun(command: list[str], nproc: int) -> tuple[int, list[int]]:
    """Run torchrun and wait for it: (its exit code, the signals this process received meanwhile).

    torchrun runs in a session of its own and this process hands it each SIGINT, SIGTERM, SIGHUP or SIGQUIT
    it receives (the signals torchrun handles), once, so torchrun stops its workers (the same signal, then
    SIGKILL after its timeout) whether the signal came from the terminal's Ctrl-C, a closed terminal or
    ``kill`` / a scheduler to this process alone. A signal that arrives while torchrun is being started is
    handed on once it runs. Only SIGKILL of this process leaves torchrun running. OMP_NUM_THREADS, unless
    set, is this machine's cores over ``nproc`` (torchrun would set 1, leaving the CPU's other cores idle)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // nproc)))}
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def hand_on(signum, frame):
        received.append(signum)
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {signum: signal.signal(signum, hand_on) for signum in handled}
    try:
        process = subprocess.Popen(command, env=env, start_new_session=True)
        started.append(process)
        for signum in received:  # arrived while torchrun was starting
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        returncode = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return returncode, received


def check_gpus(cfg: ComputeConfig, device: str, device_key: str) -> None:
    """Refuse more processes than GPUs on CUDA (a worker would fail with "invalid device ordinal")."""
    import torch

    from transmodal.vision.checkpoints import pick_device

    gpus = torch.cuda.device_count()
    if pick_device(device).type == "cuda" and cfg.nproc > gpus:
        raise ParamError(
            f"params.yaml: compute.nproc is {cfg.nproc}, but this machine has {gpus} GPU(s) and {device_key} "
            f"is {device!r} (CUDA: one GPU a process); set compute.nproc to at most {gpus}, or {device_key}: cpu"
        )


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[World]:
    """Join the torchrun world for the block (gloo on the CPU, NCCL on CUDA); outside torchrun, a world of
    one and no group."""
    import torch
    import torch.distributed as dist

    world = current()
    if world.size == 1:
        yield world
        return
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield world
    finally:
        dist.destroy_process_group()


def sum_over_ranks(values: list[float], device) -> list[float]:
    """The element-wise sum of ``values`` over every rank (float64)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_rank_0(obj):
    """Rank 0's ``obj`` on every rank (what the others pass is ignored): a resume key, so that every process
    of a run names its parts alike though a machine's GPU or its files' times differ."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
