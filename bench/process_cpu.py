"""CPU used by process trees (a service and its workers), this process and the machine over a span."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from bench.process_rss import process_tree

CLIENT = "client"  # this process: the load generator (and the sweep's own samplers)


def cpu_seconds(proc: psutil.Process) -> float | None:
    """User + system CPU seconds of one process so far (its own, not its children's), or None."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def busy_seconds(times: Any = None) -> float:
    """CPU seconds the whole machine has spent busy (all cores: user, nice, system, irq, softirq;
    idle, I/O wait and the time the hypervisor stole left out; guest time is already in user).
    `times`: a psutil.cpu_times() already read, else it is read now."""
    t = times if times is not None else psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def stolen_seconds(times: Any = None) -> float:
    """CPU seconds the hypervisor ran something else while this machine's cores had work (Linux
    guests; 0 elsewhere). A cell measured while it grows lost throughput to the host. `times` as
    for busy_seconds."""
    return float(getattr(times if times is not None else psutil.cpu_times(), "steal", 0.0))


@dataclass(frozen=True)
class CpuUse:
    """Cores used over a span: per named process tree, by this process and by the whole machine."""

    seconds: float
    cores: dict[str, float]  # tree name (and CLIENT) -> CPU seconds / wall seconds
    machine_cores: float
    stolen_cores: float = 0.0  # the hypervisor's steal time over the span, as cores

    def total(self, prefix: str = "") -> float:
        """Cores of the trees whose name starts with `prefix` (all trees and the client with "")."""
        return sum(v for name, v in self.cores.items() if name.startswith(prefix))


class CpuMeter:
    """CPU seconds of process trees between `with` entry and exit, as cores (CPU s / wall s).

    `pids` is {name: pid}; each tree is the process and its descendants, looked up on entry and
    again on exit, so a worker started in between counts with all its CPU. A process that ends in
    between loses what it used after entry (its parent is not told it, psutil cannot see it). This
    process is counted as CLIENT unless it is one of the trees.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[tuple[str, int], float] = {}
        self._began = 0.0
        self._busy = 0.0
        self._stolen = 0.0
        self.use: CpuUse | None = None

    def _snapshot(self) -> dict[tuple[str, int], float]:
        found: dict[tuple[str, int], float] = {}
        me = psutil.Process()
        for name, pid in self.pids.items():
            for proc in process_tree(pid):
                if (seconds := cpu_seconds(proc)) is not None:
                    found[(name, proc.pid)] = seconds
        if not any(pid == me.pid for _, pid in found) and (mine := cpu_seconds(me)) is not None:
            found[(CLIENT, me.pid)] = mine
        return found

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        times = psutil.cpu_times()  # one read of the machine's counters for both figures
        self._busy, self._stolen = busy_seconds(times), stolen_seconds(times)
        self._began = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        wall = max(time.monotonic() - self._began, 1e-9)
        times = psutil.cpu_times()
        busy = busy_seconds(times) - self._busy
        cores: dict[str, float] = dict.fromkeys([*self.pids, CLIENT], 0.0)
        for key, seconds in end.items():
            cores[key[0]] += (seconds - self._start.get(key, 0.0)) / wall
        stolen = stolen_seconds(times) - self._stolen
        self.use = CpuUse(wall, cores, busy / wall, stolen / wall)
