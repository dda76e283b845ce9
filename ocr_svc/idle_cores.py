"""Whether a job runs alone on the machine, across every worker of every OCR instance on it.

A worker holds a shared lock on one byte of a machine-wide lock file while it runs a job. Before
each model run it asks "am I the only one busy?" by trying, without waiting, to turn its shared
lock into an exclusive one: that succeeds only when no other process holds the byte. On success it
turns the lock back into a shared one at once (Linux converts a POSIX lock in place, so there is
no moment without it) and runs the model with its wide session; otherwise with its one-thread
session. A job that starts while another runs wide sees it busy and stays narrow, and the wide
one goes narrow at its next model run: when work queues, every worker is back to one thread
within one model run.

Hand-written because nothing in the standard library or ONNX Runtime answers this across
unrelated processes (several `ocrmesh serve ocr` instances under `ocrmesh up` share no parent that
could hand out tokens). POSIX record locks are used rather than a counter in shared memory because
the kernel drops a process's locks when it dies: a worker killed mid-job (stuck, OOM, recycled)
can never leave the machine marked busy. Each check is one non-blocking fcntl call.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ocr_svc.recent_load import RecentLoad

LOCK_BYTE = (1, 0, os.SEEK_SET)  # length, start, whence: byte 0 of the file
OTHERS_SLACK_CORES = 0.25
"""Other work a wide run tolerates beyond `max_others` whole cores, measured over the last moments:
the gRPC server, Envoy and etcd of a busy mesh use a few percent of a core (0.04 cores measured in
the sweep's cells), while a neighbour that would slow a wide run down (at 100 % of a core: 1.13x
slower with 2 threads than with 1) is far above it."""


def default_lock_file() -> Path:
    """The machine-wide lock file: in /dev/shm where there is one (shared by every instance of
    this user on this machine), else in the temp folder. Containers that share a host's cores but
    not its /dev/shm each see only their own workers; give them a common --idle-cores-file."""
    shm = Path("/dev/shm")
    folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return folder / f"ocrmesh-idle-cores-{os.getuid()}.lock"


def lone_threads(setting: str, narrow: int, cores: int) -> int:
    """The threads a lone job's models run with, from the --lone-request-threads value (pure).

    "auto": every core this process may use; "off": `narrow` (the feature is off); a number: that
    many. Never fewer than `narrow`; equal to it means the feature is off."""
    if setting == "off":
        return narrow
    wanted = cores if setting == "auto" else int(setting)
    return max(narrow, wanted)


def usable_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may run on: its CPU affinity, or fewer under a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 16-core host must not run 16 threads)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))


def runnable_tasks(loadavg: Path = Path("/proc/loadavg")) -> int | None:
    """Tasks running or ready to run on the machine now, the caller included (the kernel's count,
    the fourth field of /proc/loadavg); None where there is none."""
    try:
        return int(loadavg.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def default_max_others(cores: int, wide: int) -> int:
    """Other runnable tasks a wide run tolerates by default: as many as the cores its threads leave
    free (none when it takes them all). One more let a CPU-bound neighbour through: on 2 cores
    beside another process at 100 %, the whole pipeline took 1.13x as long with 2 threads as with 1."""
    return max(0, cores - wide)


def cores_free(runnable: int | None, max_others: int) -> bool:
    """Whether the machine's run queue leaves room for a wide run (pure): at most `max_others`
    tasks besides the asking one; True when the count is unknown."""
    return runnable is None or runnable - 1 <= max_others


class IdleCores:
    """This worker's view of the machine-wide lock: mark a job busy, ask whether it runs alone."""

    def __init__(
        self,
        path: Path,
        max_others: int | None = None,
        loadavg: Path = Path("/proc/loadavg"),
        recent: RecentLoad | None = None,
    ) -> None:
        """`max_others`: also require the rest of the machine to leave the cores free: at most that
        many cores' worth of other work, measured over the last moments by `recent` when it has a
        fresh window, else at most that many other runnable tasks now (see `cores_free`); None: OCR
        jobs alone decide."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_others = max_others
        self._loadavg = loadavg
        self._recent = recent
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._busy = False

    def close(self) -> None:
        self._fd, fd = -1, self._fd
        if fd >= 0:
            os.close(fd)  # drops this process's locks on the file

    def start_job(self) -> None:
        """Mark this process busy (a no-op when it still is). Waits only while another worker
        holds the byte exclusively, which it does for the two system calls of one check."""
        if not self._busy:
            fcntl.lockf(self._fd, fcntl.LOCK_SH, *LOCK_BYTE)
            self._busy = True

    def end_job(self) -> None:
        if self._busy:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, *LOCK_BYTE)
            self._busy = False

    def may_widen(self) -> bool:
        """True when this job is the only OCR job on the machine and the cores are really idle:
        a wide run on cores that other work keeps busy is slower than one thread (measured: 2
        threads took twice as long as 1 on the detector at a load average of 4 on 2 cores)."""
        if not self.alone():
            return False
        if self.max_others is None:
            return True
        used = self._recent.others_cores() if self._recent is not None else None
        if used is not None:
            return used <= self.max_others + OTHERS_SLACK_CORES
        return cores_free(runnable_tasks(self._loadavg), self.max_others)

    def alone(self) -> bool:
        """True when no other process on the machine is running a job now (this one must be)."""
        if not self._busy:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, *LOCK_BYTE)
        except OSError:  # EAGAIN/EACCES: another worker holds it; our shared lock is unchanged
            return False
        fcntl.lockf(self._fd, fcntl.LOCK_SH, *LOCK_BYTE)  # converted in place, never released
        return True

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Busy for the duration of the block."""
        self.start_job()
        try:
            yield
        finally:
            self.end_job()
