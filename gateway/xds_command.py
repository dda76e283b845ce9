"""`ocrmesh serve xds`: the control plane alone, for Envoys started with `serve gateway --xds`."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.control_plane import ControlPlane, XdsService
from gateway.gateway_config import XdsConfig
from mesh import config as mesh_config
from mesh import logs, mesh_transport
from mesh.lifecycle import wait_for_stop_signal, write_ready_file

log = logging.getLogger(__name__)


async def serve(config: XdsConfig) -> int:
    logs.setup("xds", config.log_level)
    control_plane = ControlPlane(
        config.etcd, issuer=config.issuer, audience=config.audience, identity=mesh_transport.identity()
    )
    try:
        service = XdsService(control_plane, config.host, config.port)
    except OSError as exc:
        print(f"ocrmesh serve xds: {exc} (pick another --port)", file=sys.stderr)
        return 2
    await service.start()
    try:
        write_ready_file(config.ready_file, {"xds": service.address})
        print(f"xDS control plane on {service.address}, following etcd at {config.etcd}", flush=True)
        why = await wait_for_stop_signal()
        log.info("stopping", extra={"signal": why})
    finally:
        await service.stop()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the xDS control plane alone: it turns the etcd registry and JWKS into Envoy and "
        "proxyless-gRPC config over ADS (`ocrmesh serve gateway --xds HOST:PORT` uses it)."
    )
    mesh_config.add_arguments(parser, XdsConfig)
    mesh_transport.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    return mesh_config.run_service(XdsConfig, ns, "ocrmesh serve xds", serve)
