"""Resident memory of process trees (a service and its workers), sampled for peaks in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import psutil


def tree_rss_bytes(pid: int) -> int:
    """Summed RSS of `pid` and all its descendants right now (0 once it has gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples process trees' RSS every `every_s` in a background thread while in `with`.

    `pids` is one pid or {name: pid}. `peak` is the highest sum over all trees at one instant;
    `peaks` the highest RSS of each named tree on its own (they may peak at different times).
    A thread, not a task: sampling must go on while the event loop is busy driving the load.
    """

    def __init__(self, pids: int | Mapping[str, int], every_s: float = 0.1) -> None:
        self.pids: dict[str, int] = {"": pids} if isinstance(pids, int) else dict(pids)
        self.pid = next(iter(self.pids.values()), 0)
        self.every_s = every_s
        self.peak = 0
        self.peaks: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def tree_rss(self) -> int:
        """The first tree's RSS now (what a single-pid sampler measures)."""
        return tree_rss_bytes(self.pid)

    def sample(self) -> None:
        total = 0
        for name, pid in self.pids.items():
            rss = tree_rss_bytes(pid)
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
