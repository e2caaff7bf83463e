"""Admission: which classification requests the server takes on, and the order in which they use its cores.

The JSON API and the Space's Classify tab share one `Admission`.  `slots` requests run the ensemble at once and at
most `queue` more wait; one client address may hold every slot and `waiting_per_client` waiting places, no more, so
one script cannot fill the queue ahead of every browser.  A request past either bound is refused at once with `Busy`,
before any of its upload is read (the API answers 503 with Retry-After).  An admitted upload is decoded (to the
ensemble's small source size) as soon as it has arrived, at most `slots` decodes at once, so a waiting request holds
kilobytes of pixels and the memory that decoding takes does not grow with the queue; it then waits for a slot, first
come, first served.

Used from the server's event loop only (FastAPI's async routes and Gradio's async handlers run there), so its
counters need no lock; the decoding and the predictions run in worker threads.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import anyio

T = TypeVar("T")


class Busy(Exception):
    """Refused: every place is taken, or every place one client may hold; `retry_after_s` says when to come back."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, slots: int, queue: int, waiting_per_client: int):
        if slots < 1 or queue < 0 or waiting_per_client < 0:
            raise ValueError(f"admission needs at least 1 slot and no negative queue (got {slots} slots, a queue of "
                             f"{queue}, {waiting_per_client} waiting per client)")
        self.slots, self.queue = slots, queue
        self.places_per_client = slots + waiting_per_client
        self.admitted = 0
        self._places_held: Counter[str] = Counter()
        self._decoders = anyio.CapacityLimiter(slots)
        self._runners = anyio.CapacityLimiter(slots)  # FIFO: waiters get a slot in the order they asked
        self._service_s = 1.0  # seconds a prediction holds its slot, a moving average; a guess until one is timed

    @property
    def capacity(self) -> int:
        """Requests taken on at once, running and waiting."""
        return self.slots + self.queue

    @property
    def running(self) -> int:
        return int(self._runners.borrowed_tokens)

    @property
    def waiting(self) -> int:
        """Admitted and not yet running: receiving the upload, decoding it, or waiting for a slot."""
        return self.admitted - self.running

    def retry_after_s(self) -> int:
        """Whole seconds (at least 1) until the requests now waiting have likely had their turn."""
        return max(1, math.ceil((self.waiting + 1) / self.slots * self._service_s))

    @contextmanager
    def place(self, client: str) -> Iterator[None]:
        """Hold a place for `client` (its address) during the block, or raise Busy at once."""
        if self.admitted >= self.capacity:
            raise Busy(f"The server is busy ({self.running} running, {self.waiting} waiting): try again in a few "
                       "seconds.", self.retry_after_s())
        if self._places_held[client] >= self.places_per_client:
            raise Busy(f"The server is busy and already has {self._places_held[client]} of your requests: try again "
                       "when one has been answered.", self.retry_after_s())
        self.admitted += 1
        self._places_held[client] += 1
        try:
            yield
        finally:
            self.admitted -= 1
            self._places_held[client] -= 1
            if not self._places_held[client]:
                del self._places_held[client]

    async def decode(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a worker thread, at most `slots` at once: an admitted upload becoming pixels."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._decoders)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) (a prediction) in a worker thread once one of the `slots` is free, first come, first served."""
        def timed() -> tuple[T, float]:
            start = time.perf_counter()
            return fn(*args), time.perf_counter() - start

        result, seconds = await anyio.to_thread.run_sync(timed, limiter=self._runners)
        self._service_s += 0.2 * (seconds - self._service_s)
        return result
