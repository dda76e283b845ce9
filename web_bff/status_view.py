"""The status page's registry snapshot, gathered by `ocrmesh status` code and shared for a moment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Snapshot = dict[str, Any]


class SharedSnapshot:
    """At most one gathering at a time, and its result reused for `max_age_s`.

    Every open status page polls every few seconds, and each gathering opens an etcd client and a
    channel per instance; many tabs then cost no more than one.
    """

    def __init__(self, max_age_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._at = -float("inf")
        self._value: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def get(self, gather: Callable[[], Awaitable[Snapshot]]) -> Snapshot:
        async with self._lock:  # callers arriving meanwhile get the fresh result below
            if self._value is None or self._clock() - self._at > self.max_age_s:
                self._value = await gather()
                self._at = self._clock()
            return self._value
