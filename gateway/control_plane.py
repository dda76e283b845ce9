"""The control plane: follows the etcd registry and JWKS, rebuilds snapshots, serves ADS over grpc.aio."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from gateway import profile as profiles
from gateway.cache import SnapshotCache
from gateway.client_status import ClientStatusPublisher
from gateway.host_names import is_ip
from gateway.mesh_tls import with_mesh_tls, xds_interceptors
from gateway.rebuild_schedule import RebuildSchedule
from gateway.snapshot_builder import BuildMemo, Endpoint, MeshState, build_snapshot
from gateway.xds_server import AdsServer
from mesh.discovery import Discovery
from mesh.identity_files import Identity
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwksSource
from mesh.lifecycle import Health, bind
from mesh.registry import Instance
from mesh.tasks import cancel_and_wait
from mesh.token_verify import TokenVerifier
from mesh.workload_identity import RELOAD_INTERVAL_S, WorkloadIdentity

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


class JwksFeed(JwksSource):
    """A JwksSource that also keeps the JWKS text, for Envoy's jwt_authn `local_jwks`."""

    def __init__(self, endpoints: str | Sequence[str], control_plane: ControlPlane, **kwargs: Any) -> None:
        verifier = TokenVerifier(issuer=control_plane.issuer, audience=control_plane.audience)
        super().__init__(endpoints, verifier, trust=control_plane.identity, **kwargs)
        self.control_plane = control_plane
        self.text = ""

    def consider(self, raw: bytes | None) -> bool:
        if not super().consider(raw) or raw is None:
            return False
        self.text = self.document.decode()  # the JWKS itself, without its signature
        self.control_plane.rebuild()
        return True


def split_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def to_endpoints(
    instances: Mapping[str, Instance], resolved: Mapping[str, str]
) -> dict[str, tuple[Endpoint, ...]]:
    """Registry instances grouped by service as xDS endpoints (host names replaced by `resolved` IPs)."""
    grouped: dict[str, list[Endpoint]] = {}
    for inst in instances.values():
        parsed = split_address(inst.address)
        if parsed is None:
            log.warning(
                "registry address has no port; left out", extra={"instance": inst.id, "address": inst.address}
            )
            continue
        host, port = parsed
        grouped.setdefault(inst.service, []).append(
            Endpoint(inst.id, resolved.get(host, host), port, inst.zone, inst.weight)
        )
    return {service: tuple(eps) for service, eps in grouped.items()}


class ControlPlane:
    """Registry + JWKS -> MeshState -> one snapshot per node group, served over ADS."""

    def __init__(
        self,
        etcd: str | Sequence[str],
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        jwks_interval: float = 0.5,
        identity: WorkloadIdentity | None = None,
        coalesce_max_s: float = 0.1,
    ) -> None:
        self.etcd = etcd
        # With a mesh identity, gateway clusters get mTLS and Envoy its certificate over SDS
        # (gateway/mesh_tls.py); rotations of the identity's folder are pushed as they happen.
        self.identity = identity
        self._identity_task: asyncio.Task[None] | None = None
        self.issuer = issuer
        self.audience = audience
        self.cache = SnapshotCache()
        self.profiles: dict[str, profiles.Profile] = {}
        self.discovery = Discovery(etcd, None)
        self.jwks = JwksFeed(etcd, self, interval=jwks_interval)
        self.ads = AdsServer(self.cache, self.resolve_group)
        self._resolved: dict[str, str] = {}
        self._memo = BuildMemo()  # a registry change re-parses only the endpoints that changed
        self.schedule = RebuildSchedule(self.rebuild, coalesce_max_s)  # bursts coalesce
        self._unsubscribe: Any = None
        self.build_errors = 0
        self.last_build_error = ""

    # -- state --------------------------------------------------------------------------

    def state(self) -> MeshState:
        endpoints = to_endpoints(self.discovery.endpoints(), self._resolved)
        return MeshState(endpoints, self.jwks.text, self.issuer, self.audience)

    def resolve_group(self, node: base_pb2.Node) -> str:
        """The group key of a node (ADS calls it on a stream's first request); builds it if new."""
        profile = profiles.from_node(node)
        if profile.key not in self.profiles:
            self.profiles[profile.key] = profile
            self._publish(profile.key, self.state())
        return profile.key

    def rebuild(self) -> None:
        """Rebuild every group's snapshot from the current registry and JWKS."""
        state = self.state()
        for key in list(self.profiles):
            self._publish(key, state)

    def _publish(self, key: str, state: MeshState) -> None:
        try:
            snapshot = build_snapshot(state, self.profiles[key], self._memo)
            snapshot = with_mesh_tls(snapshot, self.profiles[key], self._mesh_identity())
        except ValueError as exc:  # also InconsistentSnapshot: keep serving the last one
            self.build_errors += 1
            self.last_build_error = str(exc)
            log.error("snapshot not built; serving the previous one", extra={"error": str(exc)})
            return
        for note in snapshot.notes:
            log.warning("snapshot note", extra={"note": note})
        self.cache.set_snapshot(key, snapshot)

    def _on_registry(self, *_: object) -> None:
        unresolved = {
            parsed[0]
            for inst in self.discovery.endpoints().values()
            if (parsed := split_address(inst.address))
            and not is_ip(parsed[0])
            and parsed[0] not in self._resolved
        }
        if unresolved:
            asyncio.get_running_loop().create_task(self._resolve(unresolved))
        self.schedule.request()

    async def _resolve(self, hosts: set[str]) -> None:
        """Host names in the registry become IPs (EDS carries addresses only); bounded, best effort."""
        loop = asyncio.get_running_loop()
        for host in hosts:
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), 2.0)
            except (OSError, TimeoutError) as exc:
                log.warning("cannot resolve a registered host", extra={"host": host, "error": repr(exc)})
                continue
            if infos:
                self._resolved[host] = str(infos[0][4][0])
        self.rebuild()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Follow etcd (waits briefly for a first sync; carries on in the background either way)."""
        self._unsubscribe = self.discovery.subscribe(self._on_registry)
        synced = await self.discovery.start(timeout=5.0)
        if not synced:
            log.warning(
                "etcd not reachable yet; serving empty endpoint sets until it is", extra={"etcd": self.etcd}
            )
        await self.jwks.start()
        await self.jwks.wait_ready(2.0)
        if self.identity is not None:
            self._identity_task = asyncio.create_task(self._follow_identity(self.identity))
        self.rebuild()

    def _mesh_identity(self) -> Identity | None:
        return None if self.identity is None else self.identity.current

    async def _follow_identity(self, identity: WorkloadIdentity) -> None:
        """Rebuild (new Secrets for Envoy) whenever the identity folder holds a new certificate.

        Compares generations: whoever reads the identity first (a handshake of the xDS server, an
        etcd client) may be the one whose refresh picked the new certificate up."""
        seen = identity.generation
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_S)
            await asyncio.to_thread(identity.refresh)
            if identity.generation != seen:
                seen = identity.generation
                self.rebuild()

    async def close(self) -> None:
        if self._identity_task is not None:
            await cancel_and_wait(self._identity_task)
        self.schedule.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self.jwks.close()
        await self.discovery.close()


class XdsService:
    """A grpc.aio server holding the ADS servicer (and health), bound on host:port."""

    def __init__(self, control_plane: ControlPlane, host: str = "127.0.0.1", port: int = 18000) -> None:
        self.control_plane = control_plane
        identity = control_plane.identity
        self.server = grpc.aio.server(
            interceptors=xds_interceptors(identity.trust_domain if identity else None),
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.max_send_message_length", -1),
            ],
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(control_plane.ads, self.server)
        self.health = Health(self.server, [ADS_SERVICE])
        self.address = bind(self.server, host, port)
        self.client_status = ClientStatusPublisher(control_plane.etcd, control_plane.cache, self.address)

    async def start(self) -> None:
        await self.control_plane.start()
        await self.server.start()
        await self.health.set(True)
        await self.client_status.start()

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.set(False)
        await self.client_status.close()
        await self.server.stop(grace)
        await self.control_plane.close()
