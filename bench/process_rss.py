"""Resident memory of process trees (a service and its workers), sampled for peaks in a thread."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Mapping, Sequence

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and all its descendants now (empty once it has gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def procs_rss_bytes(procs: Sequence[psutil.Process]) -> int:
    """Summed RSS of these processes right now (those gone count 0)."""
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_rss_bytes(pid: int) -> int:
    """Summed RSS of `pid` and all its descendants right now (0 once it has gone)."""
    return procs_rss_bytes(process_tree(pid))


class RssSampler:
    """Samples process trees' RSS every `every_s` in a background thread while in `with`.

    Each tree's processes are looked up again every `tree_every_s` (a worker started in between is
    seen from then on; a process that ended reads 0).

    `pids` is one pid or {name: pid}. `peak` is the highest sum over all trees at one instant;
    `peaks` the highest RSS of each named tree on its own (they may peak at different times).
    A thread, not a task: sampling must go on while the event loop is busy driving the load.
    """

    def __init__(
        self, pids: int | Mapping[str, int], every_s: float = 0.1, tree_every_s: float = 1.0
    ) -> None:
        self.pids: dict[str, int] = {"": pids} if isinstance(pids, int) else dict(pids)
        self.pid = next(iter(self.pids.values()), 0)
        self.every_s = every_s
        self.tree_every_s = tree_every_s
        self._trees: dict[str, list[psutil.Process]] = {}
        self._trees_at = -math.inf
        self.peak = 0
        self.peaks: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def tree_rss(self) -> int:
        """The first tree's RSS now (what a single-pid sampler measures)."""
        return tree_rss_bytes(self.pid)

    def _current_trees(self) -> dict[str, list[psutil.Process]]:
        # Finding a tree's descendants reads every process on the machine (psutil's ppid map): once
        # a second, not at every sample, or the sampler costs the client more CPU than the load does.
        now = time.monotonic()
        if now - self._trees_at >= self.tree_every_s:
            self._trees = {name: process_tree(pid) for name, pid in self.pids.items()}
            self._trees_at = now
        return self._trees

    def sample(self) -> None:
        total = 0
        for name, procs in self._current_trees().items():
            rss = procs_rss_bytes(procs)
            total += rss
            if rss > self.peaks[name]:
                self.peaks[name] = rss
        self.peak = max(self.peak, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
