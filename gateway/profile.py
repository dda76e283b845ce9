"""What a node asks of the control plane: gateway listener settings or proxyless, from node metadata.

The gateway launcher puts its listener settings in the Envoy bootstrap's node metadata, so one
control plane (in the gateway process or alone under `ocrmesh serve xds`) serves any number of
gateways with different ports or certificates; nodes with equal settings share one snapshot.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

GATEWAY_CLUSTER = "ocrmesh-gateway"
"""`node.cluster` of the Envoys `ocrmesh serve gateway` starts."""
PROXYLESS_CLUSTER = "ocrmesh-proxyless"
"""`node.cluster` of proxyless gRPC clients (the bootstrap `gateway.grpc_bootstrap` writes)."""
METADATA_KEY = "ocrmesh"

OCR_MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""The OCR service's default upload limit (ocr_svc.config max_image_bytes)."""
DEFAULT_CORS_ORIGINS = ("http://127.0.0.1:8000", "http://localhost:8000")
"""The BFF's own origin as `ocrmesh up` serves it: the only pages allowed to call the gateway."""


@dataclass(frozen=True)
class Profile:
    """The settings a snapshot is built for; `key` names the group of nodes sharing it."""

    kind: Literal["gateway", "proxyless"] = "gateway"
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: str = ""
    tls_key: str = ""
    rate_limit_rps: int = 1000
    rate_limit_burst: int = 2000
    max_request_bytes: int = OCR_MAX_IMAGE_BYTES + 1024 * 1024
    access_log: bool = True
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    identity_dir: str = ""
    """The gateway's mesh identity folder on its host, for a control plane that does not hold the
    gateway's identity (`ocrmesh serve xds`): Envoy's upstream Secrets then name these files."""
    hardened: bool = True
    """False only for the hardening benchmark (`ocrmesh bench hardening`, `ocrmesh serve gateway
    --bench-unhardened`): the listener, routes and clusters as before issue 17 (no upstream HTTP/2
    keepalive, every route keeping the upload limit for retries, tokens also from `?access_token=`,
    the full path logged, no x-forwarded-for from the gateway)."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if not 0 < self.port < 65536:
            raise ValueError(f"listener port {self.port} is not in 1..65535")
        if self.rate_limit_rps < 1 or self.rate_limit_burst < 1 or self.max_request_bytes < 1:
            raise ValueError("rate limit and request size must be positive")

    @property
    def key(self) -> str:
        if self.kind == "proxyless":
            return "proxyless"
        return "gateway:" + json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def metadata(self) -> dict[str, Any]:
        """Node metadata (bootstrap `node.metadata`) that `from_node` reads back."""
        return {METADATA_KEY: dataclasses.asdict(self)}


PROXYLESS = Profile(kind="proxyless")


def from_node(node: base_pb2.Node) -> Profile:
    """The profile a node asks for: its metadata, or proxyless for gRPC clients, else the default."""
    meta = json_format.MessageToDict(node.metadata).get(METADATA_KEY) if node.HasField("metadata") else None
    if isinstance(meta, dict):
        known = {f.name for f in dataclasses.fields(Profile)}
        values = {k: v for k, v in meta.items() if k in known}
        for name in ("port", "rate_limit_rps", "rate_limit_burst", "max_request_bytes"):
            if name in values:
                values[name] = int(values[name])  # JSON numbers arrive as floats
        if "cors_origins" in values:
            values["cors_origins"] = tuple(str(origin) for origin in values["cors_origins"])  # a JSON list
        return Profile(**values)
    if node.cluster == PROXYLESS_CLUSTER or node.user_agent_name.lower().startswith("grpc"):
        return PROXYLESS
    return Profile()
