"""`ocrmesh status`: services, instances and healthy instances, from the registry plus each instance."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table

from mesh import credentials
from mesh.console import output_console
from mesh.status import collect


def _uptime(started_at: float, now: float) -> str:
    if not started_at:
        return "-"
    seconds = int(now - started_at)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def render(snapshot: dict[str, Any]) -> Group:
    now = snapshot["at"]
    summary = Table(title=f"ocrmesh services (etcd {snapshot['etcd']})")
    for col in ("service", "instances", "healthy"):
        summary.add_column(col)
    for name, entry in sorted(snapshot["services"].items()):
        style = "green" if entry["healthy"] == entry["instances"] else "yellow"
        summary.add_row(name, str(entry["instances"]), f"[{style}]{entry['healthy']}[/]")
    detail = Table(title="instances")
    for col in (
        "service",
        "instance",
        "address",
        "health",
        "device",
        "provider",
        "slots",
        "queue",
        "in-flight",
        "uptime",
        "version",
    ):
        detail.add_column(col)
    for v in snapshot["instances"]:
        color = "green" if v["health"] == "SERVING" else "red"
        detail.add_row(
            v["service"],
            v["id"],
            v["address"],
            f"[{color}]{v['health']}[/]",
            v["device"] or "-",
            v["execution_provider"] or "-",
            str(v["slots"]),
            v["queue"] or "-",
            "-" if v["in_flight"] is None else str(v["in_flight"]),
            _uptime(v["started_at"], now),
            v["version"] or "-",
        )
    if not snapshot["instances"]:
        detail.caption = (
            "no instances registered: start some with `make up` or `ocrmesh serve ocr --etcd ...`"
        )
    return Group(summary, detail, *_xds_table(snapshot.get("xds_clients", [])))


def _xds_table(clients: list[dict[str, Any]]) -> list[Table]:
    """Envoys and proxyless gRPC clients of the control plane: the version of each type they ACKed."""
    if not clients:
        return []
    table = Table(title="xDS clients (gateway Envoys, proxyless gRPC)")
    for col in ("node", "kind", "connected", "CDS", "EDS", "LDS", "RDS", "last NACK"):
        table.add_column(col)
    for c in clients:
        types = c.get("types", {})
        nacks = [
            f"{t} {s['nacked'][:8]}: {s['error'].strip()[:60]}" for t, s in types.items() if s.get("nacked")
        ]
        table.add_row(
            str(c.get("node", "?")),
            str(c.get("group", "")),
            "[green]yes[/]" if c.get("connected") else "[red]no[/]",
            *[(types.get(t, {}).get("acked") or "-")[:8] for t in ("CDS", "EDS", "LDS", "RDS")],
            "[red]" + "; ".join(nacks) + "[/]" if nacks else "-",
        )
    return [table]


async def _status(ns: argparse.Namespace) -> int:
    console = output_console()
    try:
        metadata = await credentials.resolve_metadata(ns)
    except credentials.CredentialsError as exc:
        print(f"ocrmesh status: {exc}", file=sys.stderr)
        return 2
    try:
        if not ns.watch:
            snapshot = await collect(ns.etcd, ns.timeout, metadata)
            if ns.json:
                print(json.dumps(snapshot, indent=2))
            else:
                console.print(render(snapshot))
            return 0
        with Live(console=console, auto_refresh=False) as live:
            while True:
                snapshot = await collect(ns.etcd, ns.timeout, metadata)
                live.update(render(snapshot), refresh=True)
                await asyncio.sleep(ns.interval)
    except ConnectionError as exc:
        print(f"ocrmesh status: {exc}. Is etcd running (`make up` or `ocrmesh serve etcd`)?", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etcd", default="127.0.0.1:2379", help="etcd endpoints (host:port,...)")
    parser.add_argument("--json", action="store_true", help="print one JSON snapshot")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per etcd or instance call")
    credentials.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    try:
        return asyncio.run(_status(ns))
    except KeyboardInterrupt:
        return 0
