"""The forked worker process of pose.cpu_worker: process (transmodal/vision/offload.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transmodal.params import ParamError, PoseConfig
from transmodal.vision import offload
from transmodal.vision.offload import (
    Channel,
    Gone,
    Ring,
    forked_pipeline,
    pinned,
    shared_array,
    split_cpus,
    wait_until,
)

CAPACITY = 4


@pytest.fixture(autouse=True)
def fail_instead_of_hanging():
    """A pipeline that waits forever fails the test after 60 s instead of hanging the suite."""

    def hung(signum, frame):
        raise TimeoutError("the pipeline did not finish in 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def ring(slots: int = 3) -> Ring:
    return Ring.allocate(slots, CAPACITY, (2,), torch.float32, (2,), torch.float32)


def run(batches, prepare=None, forward=None, finish=None, slots: int = 3):
    """forked_pipeline over ``batches`` (lists of numbers): the child prepares each as a (n, 2) tensor, the
    forward doubles it, the child stores the outputs' first column at the batch's rows of a shared array."""
    out = shared_array((sum(len(b) for b in batches),), np.nan)
    starts = np.cumsum([0] + [len(b) for b in batches])[:-1].tolist()
    progress = []

    def default_prepare(batch, out):
        index, values = batch
        if not values:
            return (index, 0), None
        return (index, len(values)), torch.tensor([[v, -v] for v in values], dtype=torch.float32)

    def default_finish(key, outputs):
        index, count = key
        if outputs is not None:
            out[starts[index] : starts[index] + count] = outputs[:, 0].numpy()
        return count

    forked_pipeline(
        iter(list(enumerate(batches))),
        prepare or default_prepare,
        forward or (lambda inputs: inputs * 2),
        finish or default_finish,
        progress.append,
        ring(slots),
    )
    return out, progress


def test_every_batch_is_prepared_and_finished_in_the_child_and_forwarded_here():
    batches = [[1, 2, 3, 4], [5], [], [6, 7], [8, 9, 10], [11, 12, 13, 14], [15]]
    out, progress = run(batches, slots=2)  # more batches than slots: slots are reused
    np.testing.assert_array_equal(out, 2 * np.arange(1, 16))  # written by the child, read here
    assert sum(progress) == 15 and min(progress) > 0  # every batch counted once, wherever it was finished
    out, progress = run([])  # no batches: nothing to do
    assert out.size == 0 and progress == []


def test_inputs_prepared_in_place_go_to_a_free_slot_and_stay_untouched_during_their_forward():
    """prepare gets the free input buffer its batch goes to: it may write the inputs there (odd batches) or
    return a tensor of its own (even ones, copied in). No buffer a forward is reading is ever handed out."""

    def prepare(batch, out):
        index, values = batch
        assert out.shape == (CAPACITY, 2) and out.is_shared()
        inputs = torch.tensor([[v, -v] for v in values], dtype=torch.float32)
        if index % 2:
            return (index, len(values)), out[: len(values)].copy_(inputs)
        return (index, len(values)), inputs

    def forward(inputs):
        before = inputs.clone()
        time.sleep(0.02)  # the child prepares the next batches meanwhile
        assert torch.equal(inputs, before), "a buffer was written during its forward"
        return inputs * 2

    batches = [[i, i + 0.5] for i in range(12)]
    out, progress = run(batches, prepare=prepare, forward=forward)
    np.testing.assert_array_equal(out, 2 * np.array(batches).reshape(-1))
    assert sum(progress) == 2 * len(batches)


def test_wait_until_polls_for_a_while_then_gives_up():
    """wait_until keeps the core busy (CPU time, no sleep) until its condition holds or its time is up."""
    start, cpu = time.perf_counter(), time.thread_time()
    assert wait_until(lambda: False, 0.05) is False
    waited, busy = time.perf_counter() - start, time.thread_time() - cpu
    assert waited >= 0.05 and busy >= 0.5 * waited  # polling, not sleeping
    asked = []
    assert wait_until(lambda: asked.append(1) or len(asked) == 3, 10.0) is True and len(asked) == 3


def test_a_channel_passes_records_in_order_between_processes():
    """Records written in a forked child arrive whole and in order, with their objects, more of them than the
    channel holds at once (the reader takes them as they come); a key too big for a record is refused."""
    context = multiprocessing.get_context("fork")
    channel, answers = Channel(context, 2, 3, blob_bytes=64), Channel(context, 2, 1)

    def child():
        for i in range(50):
            channel.send((i, -i, 7 * i), ("key", i))
            answers.receive(lambda: True)  # at most one record unanswered: the channel never overflows
        channel.send((99,))  # fewer fields than the width: the rest are 0

    process = context.Process(target=child)
    process.start()
    for i in range(50):
        assert channel.receive(process.is_alive) == ((i, -i, 7 * i), ("key", i))
        answers.send((i,))
    assert channel.receive(process.is_alive) == ((99, 0, 0), None)
    process.join()
    assert process.exitcode == 0
    assert channel.poll() is False
    with pytest.raises(ValueError, match=r"pickles to \d+ bytes; at most 64 fit \(offload.KEY_BYTES\)"):
        channel.send((1,), list(range(100)))


def test_a_channel_reader_stops_waiting_when_the_writer_is_gone(monkeypatch):
    monkeypatch.setattr(offload, "SPIN_SECONDS", 0.01)
    channel = Channel(multiprocessing.get_context("fork"), 2, 1)
    asked = []
    start = time.perf_counter()
    with pytest.raises(Gone):
        channel.receive(lambda: asked.append(1) or len(asked) < 3)  # alive for two checks, then gone
    assert len(asked) == 3 and time.perf_counter() - start >= 0.2  # blocked 0.1 s between checks


def test_both_processes_poll_before_they_block(monkeypatch):
    parent = os.getpid()
    calls = shared_array((2,), 0.0)  # wait_until calls (here, in the child)
    real = offload.wait_until

    def counted(ready, seconds=None):
        calls[0 if os.getpid() == parent else 1] += 1
        return real(ready, seconds)

    monkeypatch.setattr(offload, "wait_until", counted)
    out, _ = run([[1, 2], [3], [4, 5]], slots=1)  # one slot: the child waits for every forward
    np.testing.assert_array_equal(out, [2, 4, 6, 8, 10])
    assert calls[0] >= 3 and calls[1] >= 3


@pytest.mark.parametrize("slow", ["child", "forward"])
def test_the_forward_runs_here_and_batches_are_finished_where_there_is_time(slow):
    """The child prepares every batch. When it is behind (nothing prepared after a forward), the batch just
    forwarded is finished here; when the forward is the slow side, the child finishes every batch but the last
    (after its forward nothing is left to prepare: finished here, not waited for)."""
    here = os.getpid()
    batches = 6
    pids = shared_array((2, batches), 0.0)  # (prepare, finish) x batch: the pid that ran it
    out = shared_array((batches,), np.nan)

    def prepare(batch, out):
        if slow == "child":
            time.sleep(0.05)
        pids[0, batch[0]] = os.getpid()
        return batch[0], torch.full((1, 2), float(batch[0]))

    def forward(inputs):
        assert os.getpid() == here
        if slow == "forward":
            time.sleep(0.1)  # the child finishes the batch before in far less
        return inputs * 2

    def finish(key, outputs):
        pids[1, key] = os.getpid()
        out[key] = outputs[0, 0]
        return 1

    progress = []
    forked_pipeline(
        iter([(i, [i]) for i in range(batches)]), prepare, forward, finish, progress.append, ring()
    )
    np.testing.assert_array_equal(out, 2 * np.arange(batches))
    assert sum(progress) == batches
    child = set(pids[0])
    assert len(child) == 1 and here not in child
    if slow == "child":
        assert set(pids[1]) == {here}
    else:
        assert set(pids[1, :-1]) == child and pids[1, -1] == here
    # the function returned once the child sent its last message; a thread waits for its exit, so the child
    # does not stay a zombie (nothing here asks multiprocessing about its children, which would reap it)
    status = Path(f"/proc/{int(pids[0, 0])}/status")
    deadline = time.monotonic() + 10
    while status.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not status.exists(), "the worker was not waited for"


@pytest.mark.parametrize("where", ["prepare", "finish", "forward"])
def test_an_error_in_either_process_is_raised_here_and_the_child_stops(where):
    def prepare(batch, out):
        if where == "prepare" and batch[0] == 2:
            raise ValueError("prepare failed on batch 2")
        return batch, torch.ones(1, 2)

    def forward(inputs):
        if where == "forward":
            raise ValueError("forward failed")
        return inputs

    def finish(key, outputs):
        if where == "finish" and key[0] == 1:
            raise ValueError("finish failed on batch 1")
        return 1

    with pytest.raises(ValueError, match=f"{where} failed") as error:
        run([[1]] * 6, prepare=prepare, forward=forward, finish=finish)
    if where != "forward":  # the child's traceback comes with it
        assert any("in the worker process" in note for note in error.value.__notes__)
    assert multiprocessing.active_children() == []  # stopped and waited for before the error reached here


def test_an_error_that_cannot_be_pickled_still_reaches_here():
    class Unpicklable(Exception):
        def __init__(self, a, b):  # pickling passes one argument back: unpickling fails
            super().__init__(f"{a} {b}")

    def prepare(batch, out):
        raise Unpicklable("odd", "error")

    with pytest.raises(RuntimeError, match="Unpicklable: odd error"):
        run([[1]], prepare=prepare)


def test_a_child_that_dies_is_an_error_not_a_hang():
    def prepare(batch, out):
        os._exit(3)

    with pytest.raises(RuntimeError, match=r"worker process exited \(code 3\)"):
        run([[1]], prepare=prepare)


def test_outputs_of_another_shape_than_the_ring_are_refused():
    with pytest.raises(ValueError, match=r"outputs of shape \(3,\).*ring holds \(2,\)"):
        run([[1]], forward=lambda inputs: torch.ones(len(inputs), 3))


def test_the_child_exits_when_the_parent_is_killed():
    """A parent killed without clean-up (SIGKILL, the OOM killer) leaves no child waiting for it."""
    child_pid = shared_array((1,), 0.0)

    def parent():
        def prepare(batch, out):
            child_pid[0] = os.getpid()
            return (batch[0], 1), torch.ones(1, 2)

        def forward(inputs):
            time.sleep(120)  # killed in here, with the child waiting for this batch

        run([[1]] * 4, prepare=prepare, forward=forward)

    process = multiprocessing.get_context("fork").Process(target=parent)
    process.start()
    deadline = time.monotonic() + 30
    while child_pid[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child_pid[0] != 0
    time.sleep(0.2)  # the child is waiting for the answer by now
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    status = Path(f"/proc/{int(child_pid[0])}/status")
    while time.monotonic() < deadline:  # gone, or a zombie waiting for init to reap it
        try:
            if "\nState:\tZ" in status.read_text():
                break
        except FileNotFoundError:
            break
        time.sleep(0.02)
    else:
        os.kill(int(child_pid[0]), signal.SIGKILL)  # not left behind holding the test's output pipes
        pytest.fail("the child outlived its parent")


@pytest.mark.skipif(split_cpus() is None, reason="needs two CPUs and sched_setaffinity")
def test_the_child_gets_one_cpu_and_the_forward_the_others():
    forward_cpus, worker_cpus = split_cpus()
    before = os.sched_getaffinity(0)
    seen = shared_array((len(before) + 1,), -1.0)

    def prepare(batch, out):
        cpus = sorted(os.sched_getaffinity(0))
        seen[: len(cpus)] = cpus
        return (batch[0], 1), torch.ones(1, 2)

    def forward(inputs):
        assert sorted(os.sched_getaffinity(0)) == forward_cpus
        return inputs

    run([[1]], prepare=prepare, forward=forward)
    assert seen[seen >= 0].tolist() == worker_cpus
    assert os.sched_getaffinity(0) == before  # restored
    assert forward_cpus + worker_cpus == sorted(before)


def thread_affinities() -> dict[int, set[int]]:
    return {int(task): os.sched_getaffinity(int(task)) for task in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_pinned_moves_every_thread_and_restores_them_all():
    with pinned(None):
        pass
    before = os.sched_getaffinity(0)
    one = set(sorted(before)[:1])
    started = threading.Event()
    stop = threading.Event()
    helper = threading.Thread(target=lambda: (started.set(), stop.wait()))  # a thread from before the block
    helper.start()
    try:
        started.wait()
        late = []
        with pytest.raises(KeyError), pinned(sorted(one)):
            assert all(cpus == one for cpus in thread_affinities().values())  # the helper thread too
            late.append(threading.Thread(target=stop.wait))  # a thread started inside the block
            late[0].start()
            raise KeyError
        assert all(cpus == before for cpus in thread_affinities().values())  # the late one too
    finally:
        stop.set()
        helper.join()
        for thread in late:
            thread.join()


def test_cpu_worker_param_is_validated(monkeypatch):
    with pytest.raises(ParamError, match="pose.cpu_worker is 'gpu'"):
        PoseConfig(cpu_worker="gpu")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ParamError, match="pose.cpu_worker is 'process', which needs os.fork"):
        PoseConfig(cpu_worker="process")
    assert PoseConfig(cpu_worker="thread").cpu_worker == "thread"
