"""`ocrmesh serve gateway`: the control plane in-process (or an external one) plus a real Envoy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.bootstraps import envoy_bootstrap, split_hostport
from gateway.control_plane import ControlPlane, XdsService
from gateway.envoy_process import EnvoyNotFound, EnvoyProcess
from gateway.gateway_config import GatewayConfig
from gateway.mesh_tls import GATEWAY_SERVICE, xds_client_tls
from gateway.profile import Profile
from mesh import config as mesh_config
from mesh import logs, mesh_transport
from mesh.lifecycle import wait_for_stop_signal, write_ready_file
from mesh.processes import free_port

log = logging.getLogger(__name__)


def profile_of(config: GatewayConfig, port: int, identity_dir: str = "") -> Profile:
    return Profile(
        kind="gateway",
        host=config.host,
        port=port,
        tls_cert=str(config.tls_cert.resolve()) if config.tls_cert else "",
        tls_key=str(config.tls_key.resolve()) if config.tls_key else "",
        rate_limit_rps=config.rate_limit_rps,
        rate_limit_burst=config.rate_limit_burst,
        max_request_bytes=config.max_request_bytes,
        access_log=config.access_log,
        cors_origins=tuple(o.strip() for o in config.cors_origins.split(",") if o.strip()),
        identity_dir=identity_dir,
        hardened=not config.bench_unhardened,
    )


async def accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to host:port opens (the listener is bound)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_ready(
    envoy: EnvoyProcess, host: str, port: int, node_id: str, xds: XdsService | None, timeout: float
) -> None:
    """Until Envoy is LIVE (first LDS/RDS applied), ACKed our listener (in-process CP) and accepts."""
    dial = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if envoy.returncode is not None:
            raise RuntimeError(f"envoy exited with {envoy.returncode} before it was ready")
        with contextlib.suppress(OSError, TimeoutError):
            status, _ = await envoy.admin("/ready")
            acked = True
            if xds is not None:
                node = xds.control_plane.cache.nodes.get(node_id)
                acked = node is not None and all(
                    node.types.get(t) is not None and node.types[t].acked for t in _LISTENER_TYPES
                )
            if status == 200 and acked and await accepts(dial, port):
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"Envoy did not take its config within {timeout:g}s: is the control plane reachable and etcd up? "
        f"See `curl {envoy.admin_url}/config_dump` and the log above"
    )


_LISTENER_TYPES = (
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
)


async def serve(config: GatewayConfig) -> int:
    """Run the gateway until SIGINT/SIGTERM (or Envoy dies); Envoy is always stopped with it."""
    logs.setup("gateway", config.log_level)
    port = config.port or free_port(config.host if config.host not in ("0.0.0.0", "::") else "127.0.0.1")
    admin_port = config.admin_port or free_port()
    node_id = config.node_id or f"gateway-{socket.gethostname()}-{os.getpid()}"
    xds_service: XdsService | None = None
    identity = mesh_transport.identity()
    if identity is not None and identity.current.spiffe_id.service != GATEWAY_SERVICE:
        print(
            f"ocrmesh serve gateway: --identity-dir holds {identity.current.spiffe_id.uri}, not a gateway "
            "identity (issue one with `ocrmesh ca issue gateway`)",
            file=sys.stderr,
        )
        return 2
    try:
        if config.xds:
            split_hostport(config.xds)
            xds_address = config.xds
        else:
            control_plane = ControlPlane(
                config.etcd, issuer=config.issuer, audience=config.audience, identity=identity
            )
            xds_service = XdsService(control_plane, "127.0.0.1", config.xds_port)
            await xds_service.start()
            xds_address = xds_service.address
    except (OSError, ValueError) as exc:
        print(f"ocrmesh serve gateway: {exc}", file=sys.stderr)
        if xds_service is not None:
            await xds_service.stop()
        return 2
    with tempfile.TemporaryDirectory(prefix="ocrmesh-gateway-") as workdir:
        xds_tls: dict[str, Any] | None = None
        # An external control plane does not hold this gateway's key: Envoy's upstream Secrets
        # then name the identity folder's files (node metadata) instead of carrying the PEMs.
        identity_dir = ""
        if identity is not None:
            # The in-process control plane serves with the gateway's own certificate; one alone
            # (`ocrmesh serve xds`) with an xds certificate.
            xds_service_name = "xds" if config.xds else GATEWAY_SERVICE
            xds_tls = xds_client_tls(
                Path(workdir), identity.directory, identity.trust_domain, xds_service_name
            )
            identity_dir = str(identity.directory.resolve()) if config.xds else ""
        try:
            bootstrap = envoy_bootstrap(
                node_id,
                xds_address,
                admin_port,
                profile_of(config, port, identity_dir),
                delta=config.xds_delta,
                max_heap_bytes=config.max_heap_mb * 2**20,
                xds_tls=xds_tls,
                overload=not config.bench_unhardened,
            )
            envoy = EnvoyProcess(
                Path(workdir), bootstrap, binary=config.envoy or None, log_level=config.envoy_log_level
            )
            await envoy.start()
        except (EnvoyNotFound, RuntimeError, TimeoutError, OSError, ValueError) as exc:
            print(f"ocrmesh serve gateway: cannot start Envoy: {exc}", file=sys.stderr)
            if xds_service is not None:
                await xds_service.stop()
            return 2
        try:
            return await _run(config, envoy, xds_service, port, node_id, xds_address)
        finally:
            await envoy.stop()
            if xds_service is not None:
                await xds_service.stop()


async def _run(
    config: GatewayConfig,
    envoy: EnvoyProcess,
    xds: XdsService | None,
    port: int,
    node_id: str,
    xds_address: str,
) -> int:
    try:
        await wait_ready(envoy, config.host, port, node_id, xds, config.ready_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        print(f"ocrmesh serve gateway: {exc}", file=sys.stderr)
        return 1
    address = f"{config.host}:{port}"
    info: dict[str, Any] = {"address": address, "admin": envoy.admin_url, "xds": xds_address, "node": node_id}
    info["hardened"] = not config.bench_unhardened
    if config.bench_unhardened:
        log.warning(
            "UNHARDENED for the hardening benchmark only (--bench-unhardened): no overload manager, "
            "no upstream keepalive, no per-route buffer limits, tokens also from ?access_token=, full "
            "paths logged; never run it like this"
        )
    write_ready_file(config.ready_file, info)
    scheme = "TLS" if config.tls_cert else "plaintext"
    print(
        f"gateway listening on {address} ({scheme} gRPC and gRPC-Web); Envoy admin {envoy.admin_url}; "
        f"control plane {xds_address}" + ("" if xds is not None else " (external)"),
        flush=True,
    )
    envoy_exit = asyncio.Event()
    watcher = asyncio.create_task(_watch(envoy, envoy_exit))
    try:
        why = await wait_for_stop_signal(envoy_exit)
    finally:
        watcher.cancel()
    if why == "event":
        print(f"ocrmesh serve gateway: Envoy exited with {envoy.returncode}; stopping", file=sys.stderr)
        return 1
    log.info("stopping", extra={"signal": why})
    return 0


async def _watch(envoy: EnvoyProcess, exited: asyncio.Event) -> None:
    await envoy.wait()
    exited.set()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the gateway: a real Envoy with an ADS bootstrap, configured live from the etcd registry "
        "by the control plane in this process (or by an external one with --xds HOST:PORT)."
    )
    mesh_config.add_arguments(parser, GatewayConfig)
    mesh_transport.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    return mesh_config.run_service(GatewayConfig, ns, "ocrmesh serve gateway", serve)


def ready_info(path: Path) -> dict[str, Any]:
    """The ready file's JSON (tests and `ocrmesh up` read it)."""
    return dict(json.loads(path.read_text()))
