"""Mesh identities for tests: this test process taking one on (and dropping it after), fake servers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from mesh import identity_files, mesh_transport
from mesh.certificate_authority import CertificateAuthority
from mesh.workload_identity import WorkloadIdentity


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
