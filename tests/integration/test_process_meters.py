"""The sweep's process meters on real processes: CPU per tree (a worker born mid-span counts) and RSS
peaks of a tree whose child appears after sampling began."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.process_cpu import CLIENT, CpuMeter
from bench.process_rss import RssSampler

# A parent that, told "go", starts a child which does `work`, says so and then waits for the end.
PARENT = """
import subprocess, sys
sys.stdin.readline()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE, stdout=sys.stdout)
sys.stdin.read()
child.stdin.close()
child.wait()
"""
BUSY = "import sys; sum(range(30_000_000)); print('done', flush=True); sys.stdin.read()"
FAT = "import sys; b = bytearray(160 * 2**20); print('done', flush=True); sys.stdin.read()"


@contextmanager
def parent(work: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


def start_child(proc: subprocess.Popen[str]) -> None:
    """Tell the parent to start its child and wait until the child has done its work."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"


def test_cpu_meter_counts_a_worker_born_during_the_span_in_its_tree() -> None:
    with parent(BUSY) as busy, parent(FAT) as idle:
        with CpuMeter({"busy": busy.pid, "idle": idle.pid}) as meter:
            start_child(busy)
    use = meter.use
    assert use is not None
    assert set(use.cores) == {"busy", "idle", CLIENT}
    busy_s, idle_s = use.cores["busy"] * use.seconds, use.cores["idle"] * use.seconds
    assert busy_s > 0.1  # the child's sum, started after the meter's first look, is the tree's
    assert busy_s > 10 * idle_s  # a tree that only waited used next to nothing
    assert use.machine_cores * use.seconds >= busy_s * 0.5  # the machine saw that work too
    assert 0.0 <= use.stolen_cores <= (os.cpu_count() or 1)  # the host's steal: at most every core
    assert use.total() >= use.cores["busy"]


def test_rss_sampler_sees_a_child_started_after_sampling_began() -> None:
    with parent(FAT) as proc:
        with RssSampler({"tree": proc.pid}, every_s=0.02, tree_every_s=0.05) as rss:
            first = rss.peaks["tree"]
            start_child(proc)
            for _ in range(500):  # the next look at the tree (every 0.05 s) finds the child
                if rss.peaks["tree"] >= first + 150 * 2**20:
                    break
                time.sleep(0.01)
    assert rss.peaks["tree"] >= first + 150 * 2**20
    assert rss.peak >= rss.peaks["tree"]
