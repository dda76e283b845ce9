"""aetcd clients that reach etcd over mTLS, presenting a mesh workload identity."""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd
import grpc
from aetcd import rpc, watcher

from mesh.workload_identity import WorkloadIdentity

ETCD_SERVICE = "etcd"
"""The service name etcd's certificate must carry (`etcd.<trust-domain>`) for a client to go on."""


HANDSHAKE_OPTIONS = {"grpc.min_reconnect_backoff_ms": 5000}
"""gRPC gives each connection attempt max(this, the current backoff) to connect, TLS handshake
included. etcd_client's 100 ms suits a plaintext loopback connect; an ECDSA handshake on a busy
machine can take longer, and a call fails as soon as its first connection attempt does."""


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type information
    """An aetcd.Client whose channel is mTLS with `identity`, checking that the peer is etcd.

    aetcd's own `connect` can only open `grpc.aio.insecure_channel` and takes no credentials, so
    this repeats it (aetcd 1.0's connect, minus password login: etcd takes the user name from the
    certificate's common name) over `grpc.aio.secure_channel`. The certificate is read from the
    identity when connecting, so a client made after a rotation presents the new one; ClientFactory
    makes a new client for every connection attempt.
    """

    _is_connecting: bool  # aetcd's connection state, which `connect` below keeps as aetcd does

    def __init__(self, identity: WorkloadIdentity, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.identity = identity

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            # Another task is connecting this client; wait for it as aetcd does.
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            options = [
                *(self._options | HANDSHAKE_OPTIONS).items(),
                *self.identity.expected_peer_options(ETCD_SERVICE),
            ]
            self.channel = grpc.aio.secure_channel(
                f"{self._host}:{self._port}", self.identity.channel_credentials(), options=options
            )
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self.auth_stub = rpc.AuthStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False
