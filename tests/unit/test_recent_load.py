"""What the rest of the machine used over the last moments, from /proc/stat-shaped files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocr_svc.idle_cores import IdleCores
from ocr_svc.recent_load import MAX_WINDOW_S, RecentLoad, machine_busy_s

TICK = 1 / os.sysconf("SC_CLK_TCK")


class FakeMachine:
    """A /proc/stat file, a clock and this process's CPU, moved on by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.stat = tmp_path / "stat"
        self.now = 1000.0
        self.own = 5.0
        self.busy_ticks = 100_000
        self.write()

    def write(self) -> None:
        # user nice system idle iowait irq softirq steal guest guest_nice
        self.stat.write_text(
            f"cpu  {self.busy_ticks} 0 0 900000 500 0 0 777 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
        )

    def advance(self, seconds: float, others_cores: float, own_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy_ticks += round((others_cores + own_cores) * seconds / TICK)
        self.write()

    def recent(self) -> RecentLoad:
        return RecentLoad(self.stat, clock=lambda: self.now, own_cpu=lambda: self.own)


def test_busy_time_leaves_out_idle_iowait_and_steal(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 4000 50 6 7 800 0 0\n")
    assert machine_busy_s(stat) == pytest.approx(163 * TICK)
    assert machine_busy_s(tmp_path / "missing") is None
    stat.write_text("intr 1 2 3\n")
    assert machine_busy_s(stat) is None
    here = machine_busy_s()
    assert here is None or here > 0


def test_the_rest_of_the_machine_is_this_process_taken_out(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path)
    recent = machine.recent()
    assert recent.others_cores() is None  # no window yet
    machine.advance(0.5, others_cores=0.04, own_cores=2.0)  # a wide run beside a quiet server
    assert abs((recent.others_cores() or 0.0) - 0.04) < 0.03
    machine.advance(0.1, others_cores=1.0, own_cores=1.0)  # too short a window: last figure
    assert abs((recent.others_cores() or 0.0) - 0.04) < 0.03
    machine.advance(0.4, others_cores=1.0, own_cores=1.0)  # the window grew to 0.5 s
    assert abs((recent.others_cores() or 0.0) - 1.0) < 0.05


def test_after_a_long_gap_the_figure_is_unknown(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path)
    recent = machine.recent()
    recent.others_cores()
    machine.advance(MAX_WINDOW_S + 1, others_cores=0.0, own_cores=0.0)
    assert recent.others_cores() is None  # an idle minute would hide load that just began
    machine.advance(0.1, others_cores=1.0, own_cores=0.0)
    assert recent.others_cores() is None
    machine.advance(0.3, others_cores=1.0, own_cores=0.0)
    assert abs((recent.others_cores() or 0.0) - 1.0) < 0.05


def test_a_lone_job_widens_beside_brief_activity_not_beside_a_busy_neighbour(
    tmp_path: Path,
) -> None:
    """The run queue says 3 tasks runnable at this instant (a server thread moving a message); what
    decides, when there is a fresh window, is the CPU the others really used."""
    machine = FakeMachine(tmp_path)
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.90 0.70 0.50 3/312 99999\n")
    cores = IdleCores(tmp_path / "idle.lock", max_others=0, loadavg=loadavg, recent=machine.recent())
    with cores.job():
        assert not cores.may_widen()  # no window yet: the snapshot decides, and it shows others
        machine.advance(0.5, others_cores=0.05, own_cores=1.0)
        assert cores.may_widen()  # a few percent of a core over the last half second
        machine.advance(0.5, others_cores=0.9, own_cores=1.0)
        assert not cores.may_widen()  # a neighbour at ~100 % of a core
    cores.close()
