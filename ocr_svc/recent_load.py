"""How many cores the rest of the machine kept busy over the last moments, seen from one worker.

The kernel's count of runnable tasks (/proc/loadavg) is a snapshot: a gRPC server or Envoy thread
that wakes for a few hundred microseconds to move a message makes it look as if a core were taken,
and a lone job asked at that instant stays on one thread although the rest of the machine uses a
few percent of a core. This measures instead what the rest of the machine really used: the busy CPU
time of every core (/proc/stat) minus this process's own (all its threads), over a window of at
least a quarter of a second ending now.

Hand-written: psutil reads the same counters but gives no "everyone but me over the last window"
view, and this runs before every model run, so it is two small reads and no allocation to speak of.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # /proc/stat's unit, read once rather than per model run
MIN_WINDOW_S = 0.25
"""Shortest window measured: /proc/stat counts in ticks of 10 ms per core, so over 0.25 s the
error is under a tenth of a core. Asked sooner, the last window's figure is given again."""
MAX_WINDOW_S = 2.0
"""Longest window believed: after a longer gap (the worker sat idle) the average would hide load
that started a moment ago, so the figure is unknown and the caller falls back to the snapshot."""


def machine_busy_s(stat: Path = PROC_STAT) -> float | None:
    """CPU seconds all cores have spent on tasks since boot (user, nice, system, irq, softirq; idle,
    I/O wait and time stolen by the hypervisor left out), or None where there is no /proc/stat."""
    try:
        with stat.open() as lines:
            first = lines.readline().split()
    except OSError:
        return None
    if len(first) < 8 or first[0] != "cpu":
        return None
    try:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    except ValueError:
        return None
    return (user + nice + system + irq + softirq) / TICKS_PER_S


class RecentLoad:
    """Cores the rest of the machine used over the latest window of MIN_WINDOW_S..MAX_WINDOW_S."""

    def __init__(
        self,
        stat: Path = PROC_STAT,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._stat = stat
        self._clock = clock
        self._own_cpu = own_cpu
        self._mark: tuple[float, float, float] | None = None  # when, machine busy s, own CPU s
        self._last: float | None = None

    def others_cores(self) -> float | None:
        """Cores used by everything but this process over the window ending now; None when there
        is no fresh window (the first call, after a long gap, or no /proc/stat)."""
        now = self._clock()
        mark = self._mark
        if mark is not None and now - mark[0] < MIN_WINDOW_S:
            return self._last  # the window is still growing: the last full window's figure, no read
        busy = machine_busy_s(self._stat)
        if busy is None:
            return None
        mine = self._own_cpu()
        self._mark = (now, busy, mine)
        if mark is None:
            return None
        span = now - mark[0]
        if span > MAX_WINDOW_S:
            self._last = None
            return None
        self._last = max(0.0, (busy - mark[1]) - (mine - mark[2])) / span
        return self._last
