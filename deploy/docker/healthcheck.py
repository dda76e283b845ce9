"""Container health check: exit 0 when the local ocrmesh server's gRPC health says SERVING."""

# Used by the images' HEALTHCHECK (Docker, compose). Kubernetes uses its native `grpc:` probes.
# Usage: healthcheck.py [HOST:PORT ...]. Without targets it asks 127.0.0.1 on the OCR port, then
# the auth port (OCRMESH_OCR_PORT / OCRMESH_AUTH_PORT, defaults 50051 / 50050), so one image-wide
# HEALTHCHECK fits whichever service the container runs. Healthy: one target answers SERVING for
# the overall server (service ""), which ocrmesh flips together with its named services.

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def targets(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The addresses to ask: those given, else the OCR and auth ports on the loopback."""
    if argv:
        return list(argv)
    return [
        f"127.0.0.1:{environ.get('OCRMESH_OCR_PORT', '50051')}",
        f"127.0.0.1:{environ.get('OCRMESH_AUTH_PORT', '50050')}",
    ]


def serving(target: str, timeout: float = TIMEOUT_S) -> bool:
    """True when `target` answers grpc.health.v1 Check("") with SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str]) -> int:
    for target in targets(argv, os.environ):
        if serving(target):
            return 0
    print("not serving: " + ", ".join(targets(argv, os.environ)), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
