"""`ocrmesh bench control-plane` at its smallest (N=10, M=2) on a real etcd, control plane and Envoy."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.studies import control_plane_bench


def test_smallest_cell_sees_every_change_everywhere_and_writes_the_report(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    control_plane_bench.add_arguments(parser)
    ns = parser.parse_args(
        [
            *("--endpoints", "10", "--watchers", "2", "--extra-cells", "", "--changes", "4"),
            *("--steady-s", "1", "--settle-s", "0.2", "--registrar-procs", "2", "--watcher-procs", "1"),
            *("--out", str(tmp_path), "--stem", "cp", "--fast-raft"),
        ]
    )
    assert control_plane_bench.run(ns) == 0
    report = json.loads((tmp_path / "cp.json").read_text())
    assert not report["failed_cells"]
    (cell,) = report["cells"]
    assert (cell["endpoints"], cell["watchers"], cell["lease_mode"]) == (10, 2, "shared")
    assert cell["burst"]["registered"] == 10
    assert cell["burst"]["envoy_s"] is not None and cell["burst"]["watchers_s"] is not None
    changes = cell["changes"]
    assert changes["count"] == 4
    assert changes["missed_by_watchers"] == 0 and changes["missed_by_envoy"] == 0
    assert [s["kind"] for s in changes["samples"]] == ["add", "remove", "add", "remove"]
    for key in ("watchers_p50_s", "watchers_p99_s", "envoy_p50_s", "envoy_p99_s", "all_p99_s"):
        assert not math.isnan(changes[key]) and changes[key] > 0
    assert changes["builds_total"] > 0
    assert cell["steady"]["keepalives_per_s"] > 0  # real leases, really kept alive
    assert all(cell["rss_mib"][k] > 0 for k in ("etcd", "control_plane", "envoy", "watchers_total"))
    text = (tmp_path / "cp.md").read_text()
    assert "| 10 | 2 |" in text
    assert (tmp_path / "cp.png").stat().st_size > 0
