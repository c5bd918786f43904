"""Iterating a generator on a worker thread, shared by the detect, pose and features stages."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator


def prefetch(items: Iterable, depth: int = 1, name: str = "prefetch") -> Iterator:
    """Iterate ``items`` on a worker thread, at most ``depth`` items ahead; re-raise its errors here.

    The worker runs while the consumer works on the current item (Parquet reads, decompression, cv2, numpy
    and torch release the GIL). At most ``depth + 2`` items are alive (the consumer's, ``depth`` queued, one
    being built) when the consumer drops each item before asking for the next. When the consumer stops early
    (an error, ``close()``), the worker is stopped and waited for, then ``items`` is closed if it can be, so
    whatever it holds open (a thread pool, files) is released at once.
    """
    out: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    cancelled = threading.Event()

    def work():
        try:
            for item in items:
                if cancelled.is_set():
                    return
                out.put(item)
        except BaseException as err:  # re-raised in the consumer
            out.put(err)
        out.put(done)

    worker = threading.Thread(target=work, daemon=True, name=name)
    worker.start()
    try:
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
            del item  # drop our reference before waiting: the consumer is done with it
    finally:
        cancelled.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
        if hasattr(items, "close"):
            items.close()
