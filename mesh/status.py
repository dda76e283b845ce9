"""A snapshot of the mesh: registered instances, their health and queues, the xDS clients (no rendering)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aetcd
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import balancer, credentials
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly, describe_failure
from mesh.registry import Instance, services_prefix
from mesh.xds_client_records import read_clients

HEALTH_SERVICE = {"ocr": "ocrmesh.ocr.v1.OcrService", "auth": "ocrmesh.auth.v1.AuthService"}
"""The health-check service name each registered service kind answers for."""


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
        raise ConnectionError(f"cannot read the registry: {describe_failure(exc, etcd)}") from None
    finally:
        await close_quietly(client, timeout)
    instances = []
    for kv in got:
        try:
            instances.append(Instance.from_kv(kv.key, kv.value))
        except ValueError:
            continue  # a record we cannot read is left out rather than breaking the page
    return sorted(instances, key=lambda i: (i.service, i.id))


async def probe(
    instance: Instance, timeout: float, metadata: credentials.Metadata | None = None
) -> InstanceView:
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
    async with balancer.direct_channel(instance.address, instance.service) as channel:
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


async def collect(etcd: str, timeout: float, metadata: credentials.Metadata | None = None) -> dict[str, Any]:
    """The registry, every instance probed at once, and the xDS clients, as one JSON-able dict."""
    instances = await read_registry(etcd, timeout)
    views = await asyncio.gather(*(probe(i, timeout, metadata) for i in instances))
    services: dict[str, dict[str, Any]] = {}
    for v in views:
        entry = services.setdefault(v.service, {"instances": 0, "healthy": 0})
        entry["instances"] += 1
        entry["healthy"] += int(v.healthy)
    xds_clients = await read_clients(etcd, timeout)
    return {
        "etcd": etcd,
        "at": time.time(),
        "services": services,
        "instances": [asdict(v) for v in views],
        "xds_clients": xds_clients,
    }
