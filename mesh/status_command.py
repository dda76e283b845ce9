"""`ocrmesh status`: services, instances and healthy instances, from the registry plus each instance."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aetcd
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from etcd.client import ETCD_ERRORS, ClientFactory, bounded, close_quietly
from mesh import balancer, credentials
from mesh.registry import Instance, services_prefix

HEALTH_SERVICE = {"ocr": "ocrmesh.ocr.v1.OcrService", "auth": "ocrmesh.auth.v1.AuthService"}


@dataclass
class InstanceView:
    """One registered instance as the status page shows it."""

    service: str
    id: str
    address: str
    version: str
    zone: str
    weight: int
    started_at: float
    health: str = "UNKNOWN"
    device: str = ""
    execution_provider: str = ""
    slots: int = 0
    queue: str = ""
    in_flight: int | None = None
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.health == "SERVING"


async def read_registry(etcd: str, timeout: float = 3.0) -> list[Instance]:
    """Every instance record under /ocrmesh/v1/services/ (raises ConnectionError if etcd is down)."""
    client: aetcd.Client = ClientFactory(etcd, timeout).new()
    try:
        got = await bounded(client.get_prefix(services_prefix().encode()), timeout)
    except ETCD_ERRORS as exc:
        raise ConnectionError(f"cannot read the registry from etcd at {etcd}: {exc}") from None
    finally:
        await close_quietly(client, timeout)
    instances = []
    for kv in got:
        try:
            instances.append(Instance.from_kv(kv.key, kv.value))
        except ValueError:
            continue  # a record we cannot read is left out rather than breaking the page
    return sorted(instances, key=lambda i: (i.service, i.id))


async def probe(instance: Instance, timeout: float, metadata: credentials.Metadata = ()) -> InstanceView:
    """Health check plus, for OCR instances, GetInfo."""
    view = InstanceView(
        service=instance.service,
        id=instance.id,
        address=instance.address,
        version=instance.version,
        zone=instance.zone,
        weight=instance.weight,
        started_at=instance.started_at,
        device=instance.device,
        slots=instance.slots,
        execution_provider=str(instance.extra.get("execution_provider", "")),
    )
    async with balancer.direct_channel(instance.address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE.get(instance.service, "")),
                timeout=timeout,
            )
            view.health = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            view.health = "UNREACHABLE"
            view.error = exc.code().name
            return view
        if instance.service == "ocr":
            try:
                info = await ocr_pb2_grpc.OcrServiceStub(channel).GetInfo(
                    ocr_pb2.GetInfoRequest(), timeout=timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                view.error = exc.code().name
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    view.queue = "token needed"
                return view
            view.device, view.execution_provider = info.device, info.execution_provider
            view.slots = info.workers
            view.queue = f"{info.queue_depth} waiting, ~{info.predicted_wait_ms / 1000:.1f} s"
            view.in_flight = info.in_flight
            view.details = {
                "completed": info.counters.completed,
                "rejected_busy": info.counters.rejected_busy,
                "worker_restarts": info.counters.worker_restarts,
            }
    return view


async def collect(etcd: str, timeout: float, metadata: credentials.Metadata = ()) -> dict[str, Any]:
    instances = await read_registry(etcd, timeout)
    views = await asyncio.gather(*(probe(i, timeout, metadata) for i in instances))
    services: dict[str, dict[str, Any]] = {}
    for v in views:
        entry = services.setdefault(v.service, {"instances": 0, "healthy": 0})
        entry["instances"] += 1
        entry["healthy"] += int(v.healthy)
    from gateway.client_status import read_clients  # the gateway's control plane writes these

    xds_clients = await read_clients(etcd, timeout)
    return {
        "etcd": etcd,
        "at": time.time(),
        "services": services,
        "instances": [asdict(v) for v in views],
        "xds_clients": xds_clients,
    }


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
    console = Console()
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
