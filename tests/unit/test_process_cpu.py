"""The machine's busy and stolen CPU seconds are read from the right /proc/stat fields."""

from __future__ import annotations

from collections import namedtuple

import psutil
import pytest

from bench import process_cpu

# psutil.cpu_times() on a Linux guest: guest time is already inside user, steal is the host's.
Times = namedtuple(
    "Times", "user nice system idle iowait irq softirq steal guest guest_nice"
)  # fmt: skip


def test_busy_leaves_out_idle_iowait_steal_and_guest_and_steal_is_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    times = Times(user=10.0, nice=1.0, system=4.0, idle=100.0, iowait=3.0, irq=0.5, softirq=0.25,
                  steal=7.0, guest=2.0, guest_nice=0.0)  # fmt: skip
    monkeypatch.setattr(psutil, "cpu_times", lambda: times)
    assert process_cpu.busy_seconds() == pytest.approx(15.75)
    assert process_cpu.stolen_seconds() == pytest.approx(7.0)


def test_a_machine_without_steal_counts_none_stolen(monkeypatch: pytest.MonkeyPatch) -> None:
    Bare = namedtuple("Bare", "user nice system idle")
    bare = Bare(1.0, 0.0, 1.0, 5.0)
    monkeypatch.setattr(psutil, "cpu_times", lambda: bare)
    assert process_cpu.busy_seconds() == pytest.approx(2.0)
    assert process_cpu.stolen_seconds() == 0.0
