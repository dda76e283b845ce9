"""Proxyless gRPC: channels to xds:///<service> balanced by gRPC's own xDS client fed by our control plane."""

from __future__ import annotations

import os

import grpc

from gateway.bootstraps import grpc_bootstrap_env
from mesh.balancer import channel_options

DEFAULT_XDS = "127.0.0.1:18000"


def use_control_plane(xds: str, node_id: str | None = None) -> None:
    """Point this process's gRPC xDS client at `xds` (GRPC_XDS_BOOTSTRAP_CONFIG).

    gRPC reads its bootstrap once, when the first xds:/// channel of the process is made, so this
    must run before that; an explicit GRPC_XDS_BOOTSTRAP file in the environment is left to win.
    """
    if "GRPC_XDS_BOOTSTRAP" not in os.environ:
        os.environ.update(grpc_bootstrap_env(xds, node_id))


def xds_channel(service: str, xds: str = DEFAULT_XDS, node_id: str | None = None) -> grpc.aio.Channel:
    """A channel to every instance of `service` in the registry, round robin, without Envoy."""
    use_control_plane(xds, node_id)
    return grpc.aio.insecure_channel(f"xds:///{service}", options=channel_options())
