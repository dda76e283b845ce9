"""Proxyless gRPC: channels to xds:///<service> balanced by gRPC's own xDS client fed by our control plane."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from gateway.bootstraps import grpc_bootstrap_env
from mesh import mesh_transport
from mesh.balancer import channel_options

DEFAULT_XDS = "127.0.0.1:18000"


def use_control_plane(xds: str, node_id: str | None = None, identity_dir: Path | None = None) -> None:
    """Point this process's gRPC xDS client at `xds` (GRPC_XDS_BOOTSTRAP_CONFIG), over mTLS with
    the identity in `identity_dir` when given.

    gRPC reads its bootstrap once, when the first xds:/// channel of the process is made, so this
    must run before that; an explicit GRPC_XDS_BOOTSTRAP file in the environment is left to win.
    """
    if "GRPC_XDS_BOOTSTRAP" not in os.environ:
        os.environ.update(grpc_bootstrap_env(xds, node_id, identity_dir))


def xds_channel(service: str, xds: str = DEFAULT_XDS, node_id: str | None = None) -> grpc.aio.Channel:
    """A channel to every instance of `service` in the registry, round robin, without Envoy.

    With this process's mesh identity (mesh_transport) the control plane is dialled over mTLS and
    the instances too, as the control plane's clusters say (xDS security: each instance must
    present a certificate naming `service`); without one, plaintext.
    """
    identity = mesh_transport.identity()
    use_control_plane(xds, node_id, identity.directory if identity is not None else None)
    if identity is None:
        return grpc.aio.insecure_channel(f"xds:///{service}", options=channel_options())
    credentials = grpc.xds_channel_credentials(fallback_credentials=identity.channel_credentials())
    return grpc.aio.secure_channel(f"xds:///{service}", credentials, options=channel_options())
