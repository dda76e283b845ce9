"""The bounded admission queue in front of the workers: admit or reject at once, FIFO, no waste."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ocr_svc.engine import JobOptions

_ids = itertools.count(1)


@dataclass(eq=False)
class Ticket:
    """One accepted request: waiting in the queue, then on a worker, then answered."""

    data: bytes
    options: JobOptions
    deadline: float | None  # time.monotonic() value, None for no deadline
    future: asyncio.Future[dict[str, Any]]
    job_id: int = field(default_factory=lambda: next(_ids))
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    attempts: int = 0
    heavy: bool = False  # a large image: ONNX Runtime needs several hundred MiB for it

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled) or already got an answer."""
        return self.future.done()


def admit(queued: int, capacity: int) -> bool:
    """Whether one more request may wait for a worker."""
    return queued < capacity


def is_heavy(width: int, height: int, heavy_pixels: int, engine_side: int = 2000) -> bool:
    """Whether an image is big enough that its detection pass dominates memory.

    The engine scales images so the long side is at most `engine_side`, so the memory follows the
    working size, not the upload's size (a 4000x3000 photo and a 2000x1500 one cost the same).
    """
    if heavy_pixels <= 0 or width <= 0 or height <= 0:
        return False
    scale = min(1.0, engine_side / max(width, height))
    return width * height * scale * scale >= heavy_pixels


def heavy_may_start(running_heavy: int, limit: int) -> bool:
    """Whether one more heavy job may run now (limit 0: no limit)."""
    return limit <= 0 or running_heavy < limit


def retry_after_s(queued: int, busy: int, workers: int, service_s: float) -> float:
    """When a rejected caller should come back: time for the work ahead to drain, bounded."""
    ahead = queued + busy
    estimate = (ahead / max(1, workers)) * max(service_s, 0.01)
    return min(10.0, max(0.05, estimate))


class AdmissionQueue:
    """A bounded FIFO of tickets; `offer` never waits, `take` waits for the next live ticket."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Ticket] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, ticket: Ticket) -> bool:
        """Queue the ticket if there is room; False means reject it now."""
        if not admit(len(self._items), self.capacity):
            return False
        self._items.append(ticket)
        self._wake_one()
        return True

    def requeue(self, ticket: Ticket) -> None:
        """Put a ticket back at the front (a retry after a worker died); ignores capacity."""
        self._items.appendleft(ticket)
        self._wake_one()

    def discard(self, ticket: Ticket) -> bool:
        """Remove a ticket whose caller gave up; True if it was still waiting."""
        try:
            self._items.remove(ticket)
        except ValueError:
            return False
        return True

    async def take(self) -> Ticket:
        """The oldest waiting ticket, waiting until there is one."""
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up on to another taker
                raise
        return self._items.popleft()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
