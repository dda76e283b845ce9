"""Mesh identities for tests: this test process taking one on (and dropping it after), fake servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh import identity_files, mesh_transport
from mesh.certificate_authority import CertificateAuthority
from mesh.workload_identity import WorkloadIdentity
from tests.integration.etcd_fixtures import make_etcd

TRUST_DOMAIN = "test.ocrmesh.local"


@contextlib.contextmanager
def acting_as(folder: Path | None) -> Iterator[WorkloadIdentity | None]:
    """This process calls mesh services with the identity in `folder` (None: plaintext) meanwhile."""
    before = mesh_transport.identity()
    try:
        yield mesh_transport.configure(WorkloadIdentity(folder) if folder is not None else None)
    finally:
        mesh_transport.configure(before)


def issue(ca: CertificateAuthority, service: str, instance: str, folder: Path) -> Path:
    """Write a fresh identity for `service`/`instance` into `folder`."""
    identity_files.write(folder, ca.issue(service, instance), ca.cert_pem)
    return folder


class CallCounter(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Counts every call that reaches the application, whatever its method (an attacker's server)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.metadata: list[tuple[tuple[str, Any], ...]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.calls.append(handler_call_details.method)
        self.metadata.append(tuple(handler_call_details.invocation_metadata))

        async def answer(request: bytes, context: Any) -> bytes:
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


async def impostor(folder: Path) -> tuple[grpc.aio.Server, int, CallCounter]:
    """A started server presenting the identity in `folder` to anyone (no client certificate asked),
    counting the calls that get through the handshake; (server, port, counter)."""
    identity = identity_files.load(folder)
    counter = CallCounter()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([counter])
    credentials = grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port, counter


class Identities:
    """A throwaway mesh CA and the identity folders issued from it, one per instance name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.create(TRUST_DOMAIN)

    def folder(self, service: str, instance: str | None = None, hosts: tuple[str, ...] = ()) -> Path:
        """The folder of `instance` (default: the service's name), issued on first use."""
        folder = self.root / (instance or service)
        if not folder.exists():
            identity_files.write(
                folder, self.ca.issue(service, instance or service, hosts=hosts), self.ca.cert_pem
            )
        return folder


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    """A mesh CA for this test; folders under tmp_path/identity."""
    return Identities(tmp_path / "identity")


@pytest.fixture
def as_cli(identities: Identities) -> Iterator[WorkloadIdentity | None]:
    """This test process calls the mesh (and etcd) as a `cli` workload of `identities`."""
    with acting_as(identities.folder("cli")) as identity:
        yield identity


@pytest.fixture
async def secure_etcd(tmp_path: Path, identities: Identities) -> AsyncIterator[Any]:
    """A started etcd serving TLS only, with client certificates required and RBAC on."""
    proc = make_etcd(
        tmp_path,
        identity_dir=identities.folder("etcd", hosts=("127.0.0.1", "localhost")),
        admin_identity_dir=identities.folder("admin"),
    )
    try:
        await proc.start()
        yield proc
    finally:
        await proc.stop()
