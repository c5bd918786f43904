"""The host work around a model forward on the CPU, in a forked worker process (``pose.cpu_worker: process``).

With a small model on the CPU, reading, cropping and decoding cost about as much as the forward itself. On a
worker thread they share the interpreter lock with the forward, and a small model's forward is mostly Python
between short ops, so each waits for the other. A forked process shares no lock: the parent runs the
forward, the child reads and prepares the next batches and finishes (decodes and stores) the done ones;
when the child falls behind, the parent finishes a batch itself rather than wait.
Inputs and outputs travel through a ring of shared-memory tensors allocated once (no copies, no allocation
per batch); the child stores its results in shared memory too (:func:`shared_array`), and the messages (slot
numbers, counts, a batch's small key) pass through shared memory as well (:class:`Channel`); only an error
crosses a pipe. Where the platform allows, the child runs on one core of those this process may use and the
parent's forward on the others, so the two never trade places.
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

# Either process polls for a message this long before it blocks (``wait_until``)
SPIN_SECONDS = 0.05
# The most bytes a batch's key may take pickled (it travels with the batch's message)
KEY_BYTES = 256


def wait_until(ready: Callable[[], bool], seconds: float | None = None) -> bool:
    """Ask ``ready()`` without sleeping until it is True or ``seconds`` (default :data:`SPIN_SECONDS`) have
    passed; whether it became True. A process that blocks lets its core go idle; on a virtual machine, waking
    an idle core costs each message a trip through the host, and the parent's forwards ran slower beside a
    child that blocked than beside one that polled (``docs/decisions.md`` 26). Like OpenMP's spin-wait, the
    core is kept busy only briefly: past ``seconds`` the caller blocks as before."""
    deadline = time.perf_counter() + (SPIN_SECONDS if seconds is None else seconds)
    while not ready():
        if time.perf_counter() >= deadline:
            return False
    return True


class Gone(Exception):
    """The process at the other end of a :class:`Channel` has exited."""


class Channel:
    """Records passed one way between two processes, in order, through shared memory.

    A record is ``width`` int64 fields and, if ``blob_bytes`` > 0, one object pickled into at most that many
    bytes. A semaphore counts the records written and not yet taken; its post (in :meth:`send`) and its wait
    (in :meth:`poll` and :meth:`receive`) order the memory accesses, so the reader sees a record whole on any
    CPU. While neither side has to block, sending and taking a record make no system call; a pipe message
    makes two or three (``docs/decisions.md`` 28). At most ``capacity`` records may be in the channel at once:
    the protocol that uses it must guarantee that (:meth:`send` cannot see what the reader has taken). Made
    before the fork; each process then counts the records it sent or took on its own.
    """

    def __init__(self, context, capacity: int, width: int, blob_bytes: int = 0):
        self.capacity, self.width = capacity, width
        self.fields = shared_array((capacity, width + 1), 0, torch.int64)  # the last field: the object's size
        self.blobs = shared_array((capacity, blob_bytes), 0, torch.uint8) if blob_bytes else None
        self.ready = context.Semaphore(0)
        self.sent = self.taken = 0
        # records counted off the semaphore (by poll or receive): those not yet taken are waiting
        self.acquired = 0

    def send(self, fields: tuple[int, ...], blob=None) -> None:
        """Write one record: ``fields`` (at most ``width`` ints, the rest 0) and ``blob`` (pickled)."""
        at = self.sent % self.capacity
        self.fields[at, : self.width] = 0
        self.fields[at, : len(fields)] = fields
        if self.blobs is not None:
            data = pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL)
            if len(data) > self.blobs.shape[1]:
                raise ValueError(
                    f"a message's key pickles to {len(data)} bytes; at most {self.blobs.shape[1]} fit "
                    f"(offload.KEY_BYTES): keep a batch's key to a few ints"
                )
            self.fields[at, self.width] = len(data)
            self.blobs[at, : len(data)] = np.frombuffer(data, np.uint8)
        self.sent += 1
        self.ready.release()

    def poll(self) -> bool:
        """Whether a record is waiting, without waiting."""
        if self.acquired > self.taken:
            return True
        if self.ready.acquire(False):
            self.acquired += 1
            return True
        return False

    def receive(self, alive: Callable[[], bool]) -> tuple[tuple[int, ...], object]:
        """The next record: (its fields, its object or None). Polled for (:func:`wait_until`), then waited for;
        meanwhile ``alive()`` is asked every 0.1 s, and a False raises :class:`Gone`."""
        if not wait_until(self.poll):
            while not self.ready.acquire(timeout=0.1):
                if not alive():
                    raise Gone("the process at the other end has exited")
            self.acquired += 1
        at = self.taken % self.capacity
        fields = tuple(self.fields[at, : self.width].tolist())
        blob = None
        if self.blobs is not None:
            blob = pickle.loads(self.blobs[at, : self.fields[at, self.width]].tobytes())
        self.taken += 1
        return fields, blob


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


def shared_array(shape: tuple[int, ...], fill: float, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """An array (float64 unless ``dtype`` says otherwise) filled with ``fill`` in shared memory: what a forked
    child writes into it, this process reads."""
    return torch.full(shape, fill, dtype=dtype).share_memory_().numpy()


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


FORWARD, END, ERROR = 0, 1, 2  # the kinds of the child's messages


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
    tensor of the ring's output shape) and ``progress(count)`` for the batches finished (the child's counts travel
    summed with its next message). When no prepared batch is waiting after a forward (the child is behind), this
    process runs ``finish`` on that batch itself instead of idling, so ``finish`` runs in either process: it must
    keep its results in shared memory (:func:`shared_array`), and ``key`` is pickled with every batch (at most
    :data:`KEY_BYTES` bytes: a few ints). The child keeps up to ``len(ring.inputs)`` batches in flight and runs
    torch ops on one thread. Messages go through shared memory (:class:`Channel`); an error in either process is
    raised here (the child's, through a pipe, with its traceback as a note); the child is stopped on any error
    here and waited for. After a run without error the function returns as soon as the child has sent its last
    message; a thread waits for its exit.
    """
    cpus = split_cpus()
    context = multiprocessing.get_context("fork")
    slots = len(ring.inputs)
    # To here: (kind, slot, item count, frames the child finished since its last message) and the batch's key.
    # At most `slots` forward messages are unanswered (a slot is free again only once its answer is read), and
    # "end" or "error" comes last. To the child: (slot, whether its batch was finished here), one per forward.
    inbox, outbox = Channel(context, slots + 2, 4, KEY_BYTES), Channel(context, slots + 1, 2)
    here, there = context.Pipe()  # the child's error, pickled whole (of any size)
    parent_pid = os.getpid()
    child = context.Process(
        target=_child_loop,
        args=(
            there,
            here,
            inbox,
            outbox,
            batches,
            prepare,
            finish,
            ring,
            cpus[1] if cpus else None,
            parent_pid,
        ),
        name=name,
        daemon=True,
    )
    child.start()
    there.close()  # ours: so that a dead child reads as EOF here

    def child_gone() -> RuntimeError:
        child.join()
        return RuntimeError(f"the {name} process exited (code {child.exitcode}) before finishing its batches")

    ended = False
    try:
        with pinned(cpus[0] if cpus else None):
            while True:
                try:
                    (kind, slot, count, done), key = inbox.receive(child.is_alive)
                except Gone:
                    raise child_gone() from None
                if done:
                    progress(done)
                if kind == END:
                    ended = True
                    break
                if kind == ERROR:
                    try:
                        raise here.recv()
                    except EOFError:
                        raise child_gone() from None
                outputs = forward(ring.inputs[slot][:count])
                if outputs.shape[1:] != ring.outputs[slot].shape[1:]:
                    raise ValueError(
                        f"the forward gave outputs of shape {tuple(outputs.shape[1:])} per item; the "
                        f"{name}'s ring holds {tuple(ring.outputs[slot].shape[1:])}"
                    )
                ring.outputs[slot][:count].copy_(outputs)
                # No prepared batch to run next: the child is behind, so this batch is finished here rather
                # than waited for (its results go to the same shared memory; the child only frees the slot).
                # ("end" cannot be waiting: the child sends it after this batch's answer.)
                finish_here = not inbox.poll()
                if finish_here:
                    progress(finish(key, ring.outputs[slot][:count]))
                outbox.send((slot, finish_here))
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
    conn,
    parent_end,
    outbox: Channel,
    inbox: Channel,
    batches: Iterable,
    prepare: Callable,
    finish: Callable,
    ring: Ring,
    cpus,
    parent_pid: int,
) -> None:
    parent_end.close()  # the parent's end of the error pipe, inherited: not ours to hold
    torch.set_num_threads(1)  # the parent's forward has the other cores
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    free = deque(range(len(ring.inputs)))
    in_flight: dict[int, tuple] = {}  # slot -> (key, count)
    done = 0  # frames of the batches finished here since the last record: sent with the next one

    def parent_alive() -> bool:
        return os.getppid() == parent_pid

    def collect() -> None:
        """Wait for the oldest forward in flight, finish its batch unless the parent did, free its slot."""
        nonlocal done
        (slot, finished), _ = inbox.receive(parent_alive)
        key, count = in_flight.pop(slot)
        if not finished:
            done += finish(key, ring.outputs[slot][:count])
        free.append(slot)

    try:
        for batch in batches:
            while not free:
                collect()
            slot = free[0]
            key, inputs = prepare(batch, ring.inputs[slot])
            if inputs is None:
                done += finish(key, None)
                continue
            free.popleft()
            buffer = ring.inputs[slot][: len(inputs)]
            if inputs.data_ptr() != buffer.data_ptr() or inputs.stride() != buffer.stride():
                buffer.copy_(inputs)  # not prepared in place
            in_flight[slot] = (key, len(inputs))
            outbox.send((FORWARD, slot, len(inputs), done), key)
            done = 0
        while in_flight:
            collect()
        outbox.send((END, 0, 0, done))
    except Gone:  # the parent is gone
        pass
    except BaseException as err:  # raised in the parent
        try:
            outbox.send((ERROR, 0, 0, 0))  # first: the error may not fit in the pipe until the parent reads
            conn.send(_portable(err))
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
