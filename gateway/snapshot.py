"""Versioned xDS snapshots: a plain value with a content-hash version and a consistency check.

Modelled on go-control-plane's `pkg/cache/v3/snapshot.go`: a snapshot holds every resource of
every type for one group of nodes, each type with its own version, and `problems()` (their
`Consistent()`) checks the references between them before anything is published.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import Message

from gateway import resources as rs


class InconsistentSnapshot(ValueError):
    """A snapshot whose resources refer to ones it does not hold; the message lists them."""


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def type_version(items: Mapping[str, Message]) -> str:
    """Content hash of one type's resources (deterministic serialisation, sorted by name)."""
    parts: list[bytes] = []
    for name in sorted(items):
        parts += [name.encode(), items[name].SerializeToString(deterministic=True)]
    return _digest(parts)


@dataclass(frozen=True)
class Snapshot:
    """All resources of one node group, by type URL then name; versions are content hashes."""

    resources: Mapping[str, Mapping[str, Message]]
    versions: Mapping[str, str] = field(init=False)
    version: str = field(init=False)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        full = {t: dict(self.resources.get(t, {})) for t in rs.ORDER}
        versions = {t: type_version(items) for t, items in full.items()}
        object.__setattr__(self, "resources", full)
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "version", _digest([versions[t].encode() for t in rs.ORDER]))

    def of(self, type_url: str) -> Mapping[str, Message]:
        return self.resources.get(type_url, {})

    def select(self, type_url: str, names: frozenset[str] | None) -> list[Message]:
        """The resources of a type, all of them (wildcard, `names` None) or only those named."""
        items = self.of(type_url)
        wanted = sorted(items) if names is None else sorted(n for n in names if n in items)
        return [items[n] for n in wanted]

    def problems(self) -> list[str]:
        """Broken references (empty when consistent): routes, RDS names, EDS clusters, endpoints,
        secrets."""
        found: list[str] = []
        clusters = self.of(rs.CLUSTER)
        loads = self.of(rs.ENDPOINT)
        routes = self.of(rs.ROUTE)
        for type_url, items in self.resources.items():
            for name, message in items.items():
                if not isinstance(message, rs.MESSAGE[type_url]):
                    found.append(f"{rs.SHORT[type_url]} {name!r} is a {type(message).__name__}")
                elif getattr(message, "name", getattr(message, "cluster_name", name)) != name:
                    found.append(f"{rs.SHORT[type_url]} resource stored as {name!r} has another name")
        for name, cluster in clusters.items():
            if cluster.type == cluster.EDS and (cluster.eds_cluster_config.service_name or name) not in loads:
                found.append(f"EDS cluster {name!r} has no ClusterLoadAssignment")
            for secret in _ads_secret_names(cluster):
                if secret not in self.of(rs.SECRET):
                    found.append(f"cluster {name!r} takes secret {secret!r} over ADS, not held")
        for name in loads:
            if name not in clusters:
                found.append(f"ClusterLoadAssignment {name!r} belongs to no cluster")
        for name, listener in self.of(rs.LISTENER).items():
            hcm = rs.hcm_of(listener)
            if hcm is not None and hcm.HasField("rds") and hcm.rds.route_config_name not in routes:
                found.append(f"listener {name!r} uses route config {hcm.rds.route_config_name!r}, not held")
        for name, config in routes.items():
            for vhost in config.virtual_hosts:
                for route in vhost.routes:
                    target = route.route.cluster if route.HasField("route") else ""
                    if target and target not in clusters:
                        found.append(
                            f"route config {name!r} sends {route.match.prefix!r} to unknown {target!r}"
                        )
        return found

    def check(self) -> Snapshot:
        """Self, or InconsistentSnapshot listing every problem."""
        found = self.problems()
        if found:
            raise InconsistentSnapshot("inconsistent snapshot: " + "; ".join(found))
        return self

    def with_resources(self, type_url: str, items: Mapping[str, Message]) -> Snapshot:
        """A copy with one type's resources replaced (tests use it to make deliberately bad ones)."""
        return Snapshot({**self.resources, type_url: dict(items)}, notes=self.notes)


def _ads_secret_names(cluster: Message) -> list[str]:
    """Names of the Secrets a cluster's TLS takes over ADS (Envoy would wait for them for ever)."""
    if not isinstance(cluster, cluster_pb2.Cluster) or not cluster.HasField("transport_socket"):
        return []
    context = tls_pb2.UpstreamTlsContext()
    if not cluster.transport_socket.typed_config.Unpack(context):
        return []
    common = context.common_tls_context
    configs = [*common.tls_certificate_sds_secret_configs]
    if common.HasField("combined_validation_context"):
        configs.append(common.combined_validation_context.validation_context_sds_secret_config)
    if common.HasField("validation_context_sds_secret_config"):
        configs.append(common.validation_context_sds_secret_config)
    return [c.name for c in configs if c.sds_config.HasField("ads")]
