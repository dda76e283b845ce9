"""When the control plane rebuilds after registry changes: at once when quiet, coalesced in a burst."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class RebuildSchedule:
    """Runs `rebuild` soon after `request()`, folding a burst of requests into one call.

    A request after a quiet spell runs on the next loop step. Right after a rebuild, the next one
    waits as long as that rebuild took (at most `coalesce_max_s`), and every request in the
    meantime joins it. Each etcd watch response used to cost a full rebuild: when 2,000 instances
    register at once, the control plane built ever larger snapshots back to back and Envoy lagged
    behind by seconds; now it spends at most about half its time building.
    """

    def __init__(self, rebuild: Callable[[], None], coalesce_max_s: float = 0.1) -> None:
        self._rebuild = rebuild
        self.coalesce_max_s = coalesce_max_s
        self._pending: asyncio.TimerHandle | None = None
        self._quiet_from = 0.0  # loop time from which a request runs at once
        self.requests = 0
        self.rebuilds = 0

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def request(self) -> None:
        """Ask for a rebuild (call from the event loop)."""
        self.requests += 1
        if self._pending is not None:
            return  # the rebuild already scheduled will see this change too
        loop = asyncio.get_running_loop()
        delay = min(max(0.0, self._quiet_from - loop.time()), self.coalesce_max_s)
        self._pending = loop.call_later(delay, self._run)

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _run(self) -> None:
        self._pending = None
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            self._rebuild()
        finally:
            self.rebuilds += 1
            ended = loop.time()
            self._quiet_from = ended + (ended - began)
