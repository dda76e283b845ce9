"""The load generator's call type over a MeshClient: bytes in, bytes out, balanced over a service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.loadgen import CallFactory, LoadOptions, UnaryBytesCall
from mesh.mesh_client import MeshClient, split_targets


class BytesCall:
    """One method of a MeshClient as bytes in, bytes out (a bench.loadgen UnaryBytesCall)."""

    def __init__(self, client: MeshClient, method: str, idempotent: bool | None = None) -> None:
        self.client = client
        self.method = method
        self.idempotent = idempotent

    async def __call__(
        self,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> bytes:
        return await self.client.unary(
            self.method, request, timeout=timeout, metadata=metadata or (), idempotent=self.idempotent
        )


def mesh_call_factory(
    etcd: str | Sequence[str] | None, service: str = "ocr", **client_kwargs: Any
) -> CallFactory:
    """A bench/loadgen CallFactory that balances: over `service` in etcd, or, with `etcd` None,
    over the comma-separated addresses given as the load's target."""

    @contextlib.asynccontextmanager
    async def calls(
        target: str, method: str, options: LoadOptions
    ) -> AsyncIterator[Sequence[UnaryBytesCall]]:
        if etcd:
            client = MeshClient.from_etcd(etcd, service, **client_kwargs)
        else:
            client = MeshClient.from_addresses(split_targets(target), service, **client_kwargs)
        try:
            await client.start(max(options.connect_timeout_s, 0.1))
            yield [BytesCall(client, method)]
        finally:
            await client.close()

    return calls
