"""The machine-wide idle-cores lock across real processes, and the --lone-request-threads choice."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from mesh.config import ConfigError
from ocr_svc.config import OcrConfig
from ocr_svc.idle_cores import (
    IdleCores,
    cores_free,
    default_lock_file,
    default_max_others,
    lone_threads,
    runnable_tasks,
    usable_cores,
)


def _busy_worker(path: str, started: Event, finish: Event) -> None:
    """Another worker (of this instance or another one): busy until told to finish."""
    cores = IdleCores(Path(path))
    cores.start_job()
    started.set()
    finish.wait(30)
    cores.end_job()


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "cores.lock"


def _start_busy(lock_file: Path) -> tuple[multiprocessing.process.BaseProcess, Event]:
    ctx = multiprocessing.get_context("spawn")
    started, finish = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_busy_worker, args=(str(lock_file), started, finish), daemon=True)
    proc.start()
    assert started.wait(30), "the other worker never started its job"
    return proc, finish


def test_a_job_alone_on_the_machine_is_told_so(lock_file: Path) -> None:
    cores = IdleCores(lock_file)
    assert not cores.alone()  # not running a job: never told to go wide
    with cores.job():
        assert cores.alone()
        assert cores.alone()  # asking does not give the lock away
    assert not cores.alone()
    cores.close()


def test_another_process_busy_keeps_a_job_narrow_until_it_finishes(lock_file: Path) -> None:
    cores = IdleCores(lock_file)
    with cores.job():
        proc, finish = _start_busy(lock_file)
        try:
            assert not cores.alone()
        finally:
            finish.set()
            proc.join(30)
        assert proc.exitcode == 0
        assert cores.alone()
    cores.close()


def test_a_worker_killed_mid_job_does_not_leave_the_machine_busy(lock_file: Path) -> None:
    cores = IdleCores(lock_file)
    proc, _ = _start_busy(lock_file)
    with cores.job():
        assert not cores.alone()
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert cores.alone()  # the kernel dropped the dead worker's lock
    cores.close()


def test_a_job_starting_while_another_asks_is_counted(lock_file: Path) -> None:
    """A job that starts right after another's check is seen by that job's next check."""
    first = IdleCores(lock_file)
    with first.job():
        assert first.alone()
        proc, finish = _start_busy(lock_file)  # took its shared lock after the check above
        try:
            assert not first.alone()
        finally:
            finish.set()
            proc.join(30)
    first.close()


@pytest.mark.parametrize(
    ("setting", "narrow", "cores", "expected"),
    [
        ("auto", 1, 2, 2),
        ("auto", 1, 8, 8),
        ("auto", 4, 2, 4),  # never fewer than the worker's own threads
        ("off", 1, 8, 1),
        ("3", 1, 8, 3),
        ("1", 2, 8, 2),
    ],
)
def test_lone_threads_from_the_setting(setting: str, narrow: int, cores: int, expected: int) -> None:
    assert lone_threads(setting, narrow, cores) == expected


def test_the_flag_is_checked() -> None:
    OcrConfig(lone_request_threads="4").validate()
    OcrConfig(lone_request_threads="off").validate()
    for bad in ("0", "many", "-2", ""):
        with pytest.raises(ConfigError, match="--lone-request-threads"):
            OcrConfig(lone_request_threads=bad).validate()


def test_the_default_lock_file_is_per_user_and_machine_wide() -> None:
    path = default_lock_file()
    assert path.name == f"ocrmesh-idle-cores-{os.getuid()}.lock"
    assert path.parent.is_dir()


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), (None, None)],
)
def test_auto_counts_the_cores_a_cgroup_quota_allows(
    tmp_path: Path, cpu_max: str | None, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(path) == (min(expected, affinity) if expected else affinity)


def test_a_busy_run_queue_keeps_a_lone_job_narrow(lock_file: Path, tmp_path: Path) -> None:
    """Alone among OCR jobs is not enough: other work on the cores (the kernel's runnable count)
    keeps the job on one thread."""
    loadavg = tmp_path / "loadavg"
    cores = IdleCores(lock_file, max_others=1, loadavg=loadavg)
    with cores.job():
        loadavg.write_text("3.10 2.50 1.90 4/312 99999\n")  # this job and 3 others runnable
        assert cores.alone() and not cores.may_widen()
        loadavg.write_text("0.90 0.70 0.50 2/312 99999\n")  # this job and the server
        assert cores.may_widen()
    assert not cores.may_widen()  # no job: never
    unbounded = IdleCores(lock_file, max_others=None, loadavg=loadavg)
    loadavg.write_text("9.00 9.00 9.00 40/312 99999\n")
    with unbounded.job():
        assert unbounded.may_widen()  # the run queue is not looked at
    cores.close()
    unbounded.close()


def test_run_queue_reading_and_the_default_slack(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.00 0.01 0.05 7/250 4242\n")
    assert runnable_tasks(loadavg) == 7
    assert runnable_tasks(tmp_path / "missing") is None
    here = runnable_tasks()
    assert here is None or here >= 1  # this test is running
    assert cores_free(None, 0)  # unknown: the OCR jobs alone decide
    assert cores_free(2, 1) and not cores_free(3, 1)
    assert default_max_others(cores=2, wide=2) == 0  # every core taken: nothing else may run
    assert default_max_others(cores=8, wide=4) == 4
    assert default_max_others(cores=2, wide=4) == 0
