"""Container health check: exit 0 when the local ocrmesh server's gRPC health says SERVING."""

# Used by the images' HEALTHCHECK (Docker, compose) and by exec probes (Kubernetes) where a native
# probe cannot reach: the gateway's Envoy admin and in-process control plane listen on loopback only.
# Usage: healthcheck.py [TARGET ...]. A target is HOST:PORT (grpc.health.v1 Check("") must answer
# SERVING, which ocrmesh flips together with its named services) or an http:// URL (must answer
# 2xx: the BFF's /healthz, Envoy admin's /ready). Without targets it asks, on 127.0.0.1, the OCR,
# auth and gateway ports and the BFF's /healthz (OCRMESH_{OCR,AUTH,GATEWAY,BFF}_PORT, defaults
# 50051, 50050, 8080, 8000), so one image-wide HEALTHCHECK fits whichever service the container
# runs; ports nobody listens on fail at once. Healthy: one target answers.
# With a mesh identity (OCRMESH_IDENTITY_DIR, as every service container has) a gRPC target is
# asked over mTLS with that identity, expecting the server to hold the same service's certificate
# (the container's own server), and over plaintext only when that handshake fails: the gateway's
# public listener speaks plaintext to outside clients while its control plane requires mTLS.

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TIMEOUT_S = 3.0
IDENTITY_ENV = "OCRMESH_IDENTITY_DIR"


def targets(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The addresses to ask: those given, else every ocrmesh service's port on the loopback."""
    if argv:
        return list(argv)
    return [
        f"127.0.0.1:{environ.get('OCRMESH_OCR_PORT', '50051')}",
        f"127.0.0.1:{environ.get('OCRMESH_AUTH_PORT', '50050')}",
        f"127.0.0.1:{environ.get('OCRMESH_GATEWAY_PORT', '8080')}",
        f"http://127.0.0.1:{environ.get('OCRMESH_BFF_PORT', '8000')}/healthz",
    ]


def http_ok(url: str, timeout: float = TIMEOUT_S) -> bool:
    """True when GET `url` answers 2xx (no proxy: the target is this container's own port)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            return bool(200 <= answer.status < 300)
    except (urllib.error.URLError, OSError):  # HTTPError (a 503) is a URLError
        return False


def _health_check(channel: Any, timeout: float) -> tuple[bool, bool]:
    """(serving, unreachable): the answer to Check(""), and whether the call never got through
    (refused, or a handshake that failed)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as exc:
        return False, exc.code() == grpc.StatusCode.UNAVAILABLE
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING), False


def grpc_serving(target: str, timeout: float = TIMEOUT_S, identity_dir: str | None = None) -> bool:
    """True when `target` answers grpc.health.v1 Check("") with SERVING: over mTLS with the
    identity in `identity_dir` when given (then plaintext if that handshake fails), else plaintext."""
    # Imported here so an HTTP probe (run every few seconds) does not pay for loading gRPC.
    import grpc

    if identity_dir:
        from mesh import identity_files

        identity = identity_files.load(Path(identity_dir))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=identity.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )
        # The server this container runs holds the same service's certificate as the probe.
        options = [("grpc.ssl_target_name_override", identity.spiffe_id.dns_name)]
        with grpc.secure_channel(target, credentials, options=options) as channel:
            ok, unreachable = _health_check(channel, timeout)
        if ok or not unreachable:
            return ok
    with grpc.insecure_channel(target) as channel:
        return _health_check(channel, timeout)[0]


def serving(target: str, timeout: float = TIMEOUT_S, identity_dir: str | None = None) -> bool:
    """True when `target` (HOST:PORT for gRPC health, or an http:// URL) says it is healthy."""
    if target.startswith(("http://", "https://")):
        return http_ok(target, timeout)
    return grpc_serving(target, timeout, identity_dir)


def main(argv: Sequence[str]) -> int:
    identity_dir = os.environ.get(IDENTITY_ENV) or None
    for target in targets(argv, os.environ):
        if serving(target, identity_dir=identity_dir):
            return 0
    print("not serving: " + ", ".join(targets(argv, os.environ)), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
