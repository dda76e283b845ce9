"""deploy/docker/healthcheck.py in a container that holds a mesh identity: it asks its own mTLS
server over mTLS, and still reaches a plaintext listener (the gateway's public one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.certificate_authority import CertificateAuthority
from mesh.workload_identity import WorkloadIdentity
from tests.integration.identity_fixtures import issue

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


@contextmanager
def health_server(credentials: grpc.ServerCredentials | None, serving: bool = True) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def healthcheck(target: str, identity: Path | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "OCRMESH_IDENTITY_DIR"}
    if identity is not None:
        env["OCRMESH_IDENTITY_DIR"] = str(identity)
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), target], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_uses_the_containers_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("health.test")
    ocr = issue(ca, "ocr", "ocr", tmp_path / "ocr")
    stranger = issue(CertificateAuthority.create("health.test"), "ocr", "ocr", tmp_path / "stranger")
    with health_server(WorkloadIdentity(ocr).server_credentials()) as target:
        assert healthcheck(target, ocr) == 0
        assert healthcheck(target, None) == 1  # an mTLS server answers no plaintext probe
        assert healthcheck(target, stranger) == 1  # nor one from another CA
    with health_server(WorkloadIdentity(ocr).server_credentials(), serving=False) as target:
        assert healthcheck(target, ocr) == 1
    # The gateway's public listener is plaintext though the container holds an identity.
    with health_server(None) as target:
        assert healthcheck(target, ocr) == 0
        assert healthcheck(target, None) == 0
