"""The host work around a model forward on the CPU, in a forked worker process (``pose.cpu_worker: process``).

With a small model on the CPU, reading, cropping and decoding cost about as much as the forward itself. On a
worker thread they share the interpreter lock with the forward, and a small model's forward is mostly Python
between short ops, so each waits for the other. A forked process shares no lock: the parent runs the
forward, the child reads and prepares the next batches and finishes (decodes and stores) the done ones;
when the child falls behind, the parent finishes a batch itself rather than wait.
Inputs and outputs travel through a ring of shared-memory tensors allocated once (no copies through the
pipe, no allocation per batch); the child stores its results in shared memory too (:func:`shared_array`),
so the pipe carries only slot numbers and frame counts. Where the platform allows, the child runs on one
core of those this process may use and the parent's forward on the others, so the two never trade places.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

# Either process polls its end of the pipe this long before it blocks (``wait_for``)
SPIN_SECONDS = 0.05


def wait_for(conn, seconds: float | None = None) -> bool:
    """Poll ``conn`` without sleeping until it has a message or ``seconds`` (default :data:`SPIN_SECONDS`) have
    passed; whether a message is there. A process that blocks lets its core go idle; on a virtual machine,
    waking an idle core costs each message a trip through the host, and the parent's forwards ran slower
    beside a child that blocked than beside one that polled (``docs/decisions.md`` 26). Like OpenMP's
    spin-wait, the core is kept busy only briefly: past ``seconds`` the caller blocks as before."""
    deadline = time.perf_counter() + (SPIN_SECONDS if seconds is None else seconds)
    while not conn.poll():
        if time.perf_counter() >= deadline:
            return False
    return True


@dataclass
class Ring:
    """``slots`` input and output buffers in shared memory, each for up to ``capacity`` items."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        slots: int,
        capacity: int,
        input_shape: tuple[int, ...],
        input_dtype: torch.dtype,
        output_shape: tuple[int, ...],
        output_dtype: torch.dtype,
    ) -> Ring:
        def buffers(shape, dtype):
            return [torch.empty((capacity, *shape), dtype=dtype).share_memory_() for _ in range(slots)]

        return cls(buffers(input_shape, input_dtype), buffers(output_shape, output_dtype))


def shared_array(shape: tuple[int, ...], fill: float) -> np.ndarray:
    """A float64 array filled with ``fill`` in shared memory: what a forked child writes into it, this
    process reads."""
    return torch.full(shape, fill, dtype=torch.float64).share_memory_().numpy()


def split_cpus() -> tuple[list[int], list[int]] | None:
    """The CPUs this process may use, split into (the forward's: all but one, the worker's: the last), or
    None where the platform cannot pin or only one CPU is allowed."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[:-1], cpus[-1:]) if len(cpus) > 1 else None


def _set_affinity_of_all_threads(cpus) -> None:
    """Linux sets affinity per thread: set it on every thread of this process (torch's pool included)."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


@contextmanager
def pinned(cpus: list[int] | None):
    """Every thread of this process on ``cpus`` while the block runs, then every thread (those started in the
    block too) back on the CPUs the calling thread had; nothing where ``cpus`` is None."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    _set_affinity_of_all_threads(cpus)
    try:
        yield
    finally:
        _set_affinity_of_all_threads(before)


def forked_pipeline(
    batches: Iterable,
    prepare: Callable,
    forward: Callable[[torch.Tensor], torch.Tensor],
    finish: Callable,
    progress: Callable[[int], None],
    ring: Ring,
    name: str = "worker",
) -> None:
    """Run ``forward`` here on every batch that a forked child prepares and (mostly) finishes.

    In the child, for every item of ``batches`` (iterated in the child only): ``prepare(batch, out) -> (key,
    inputs)``, ``inputs`` a tensor of at most the ring's capacity items, or None (nothing to run); ``out`` is the
    free input buffer of the ring the batch will go to: inputs written into its first rows and returned as
    ``out[:n]`` need no copy. Once the forward is done, ``finish(key, outputs) -> count``, ``outputs`` a view into
    the ring (``finish(key, None)`` where ``prepare`` gave no inputs). Here: ``forward(inputs) -> outputs`` (a
    tensor of the ring's output shape) and ``progress(count)`` for every finished batch (the child's counts travel
    with its next message). When no prepared batch is waiting after a forward (the child is behind; whatever the
    pipe holds is read first), this process runs ``finish`` on that batch itself instead of idling, so ``finish``
    runs in either process: it must keep its results in shared memory (:func:`shared_array`), and ``key`` is pickled
    with every batch (keep it to a few ints). The child keeps up to ``len(ring.inputs)`` batches in flight and runs
    torch ops on one thread. An error in either process is raised here (the child's with its traceback as a note);
    the child is stopped on any error here and waited for. After a run without error the function returns as soon as
    the child has sent its last message; a thread waits for its exit.
    """
    cpus = split_cpus()
    context = multiprocessing.get_context("fork")
    here, there = context.Pipe()
    child = context.Process(
        target=_child_loop,
        args=(there, here, batches, prepare, finish, ring, cpus[1] if cpus else None),
        name=name,
        daemon=True,
    )
    child.start()
    there.close()  # ours: so that a dead child reads as EOF here

    def child_gone() -> RuntimeError:
        child.join()
        return RuntimeError(f"the {name} process exited (code {child.exitcode}) before finishing its batches")

    ended = False
    queued: deque = deque()  # messages taken from the pipe early (while deciding where to finish a batch)

    def receive():
        if queued:
            return queued.popleft()
        wait_for(here)
        return take()

    def take():
        try:
            message = here.recv()
        except EOFError:
            raise child_gone() from None
        if message[0] == "error":
            raise message[1]
        return message

    try:
        with pinned(cpus[0] if cpus else None):
            while True:
                message = receive()
                for count in message[-1]:  # batches the child finished since its last message
                    progress(count)
                if message[0] == "end":
                    ended = True
                    break
                _, slot, count, key, _ = message
                outputs = forward(ring.inputs[slot][:count])
                if outputs.shape[1:] != ring.outputs[slot].shape[1:]:
                    raise ValueError(
                        f"the forward gave outputs of shape {tuple(outputs.shape[1:])} per item; the "
                        f"{name}'s ring holds {tuple(ring.outputs[slot].shape[1:])}"
                    )
                ring.outputs[slot][:count].copy_(outputs)
                # Whatever the child sent meanwhile, in turn after this batch ("end" cannot come before its slot)
                while here.poll():
                    queued.append(take())
                # No prepared batch to run next: the child is behind, so this batch is finished here rather
                # than waited for (its results go to the same shared memory; the child only frees the slot).
                finish_here = not queued
                if finish_here:
                    progress(finish(key, ring.outputs[slot][:count]))
                try:
                    here.send((slot, finish_here))
                except OSError:  # a broken pipe: the child is gone
                    raise child_gone() from None
    finally:
        here.close()
        if ended:
            # The child is exiting; the kernel takes tens of ms to unmap its copy of our memory. It runs on the
            # child's core while we go on; a thread waits for it, so no zombie is left.
            threading.Thread(target=child.join, name=f"{name} reaper", daemon=True).start()
        else:
            if child.is_alive():
                child.terminate()  # an error or an interrupt here: the child has nothing left to do
            child.join()


def _child_loop(
    conn, parent_end, batches: Iterable, prepare: Callable, finish: Callable, ring: Ring, cpus
) -> None:
    parent_end.close()  # the parent's end, inherited: closed, so that a parent that dies reads as EOF here
    torch.set_num_threads(1)  # the parent's forward has the other cores
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    free = deque(range(len(ring.inputs)))
    in_flight: dict[int, tuple] = {}  # slot -> (key, count)
    done: list[int] = []  # counts of the batches finished here since the last message: sent with the next one

    def collect() -> None:
        """Wait for the oldest forward in flight, finish its batch unless the parent did, free its slot."""
        wait_for(conn)
        slot, finished = conn.recv()
        key, count = in_flight.pop(slot)
        if not finished:
            done.append(finish(key, ring.outputs[slot][:count]))
        free.append(slot)

    try:
        for batch in batches:
            while not free:
                collect()
            slot = free[0]
            key, inputs = prepare(batch, ring.inputs[slot])
            if inputs is None:
                done.append(finish(key, None))
                continue
            free.popleft()
            buffer = ring.inputs[slot][: len(inputs)]
            if inputs.data_ptr() != buffer.data_ptr() or inputs.stride() != buffer.stride():
                buffer.copy_(inputs)  # not prepared in place
            in_flight[slot] = (key, len(inputs))
            conn.send(("forward", slot, len(inputs), key, tuple(done)))
            done.clear()
        while in_flight:
            collect()
        conn.send(("end", tuple(done)))
    except BaseException as err:  # raised in the parent
        try:
            conn.send(("error", _portable(err)))
        except (OSError, EOFError):  # the parent is gone
            pass


def _portable(err: BaseException) -> BaseException:
    """``err`` with the child's traceback as a note, or a RuntimeError saying the same if it cannot be
    pickled."""
    note = "in the worker process:\n" + "".join(traceback.format_exception(err)).rstrip()
    try:
        err.add_note(note)
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        plain = RuntimeError(f"{type(err).__name__}: {err}")
        plain.add_note(note)
        return plain
