"""`ocrmesh serve bff`: run the BFF under uvicorn and write the ready file once the mesh is found."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator

import uvicorn

from mesh import config as mesh_config
from mesh import lifecycle, logs, mesh_transport
from web_bff.app import create_app
from web_bff.backends import Backends
from web_bff.config import BffConfig

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10
KEEP_ALIVE_S = 75
"""How long an idle keep-alive connection stays open. Longer than the clients' own expiry (httpx
and most HTTP libraries give up on an idle connection after 5 s, uvicorn's default here too): when
both close at 5 s, a request sent on the connection as the server drops it fails with a reset that
no client retries for a POST (the likely cause of one upload in 235 failing with a ReadError at 64
clients in `ocrmesh bench peers`). nginx uses 75 s."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: `serve` waits for SIGINT/SIGTERM like every other
    ocrmesh service (lifecycle.wait_for_stop_signal), then asks uvicorn to shut down gracefully."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound_port(server: uvicorn.Server) -> int:
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("uvicorn started without a listening socket")


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def serve(config: BffConfig) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn handles them: stop accepting, finish requests, close)."""
    logs.setup("bff", config.log_level)
    backends = Backends(config.etcd, config.auth_timeout_s, config.ocr_timeout_s)
    app = create_app(config, backends)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,  # our JSON logging (mesh.logs) stays in charge
            access_log=True,
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    task = asyncio.create_task(server.serve(), name="uvicorn")
    while not server.started:
        if task.done():
            await task
            print(
                f"ocrmesh serve bff: could not listen on {config.host}:{config.port} "
                "(in use? pick another with --port, or --port 0)",
                file=sys.stderr,
            )
            return 1
        await asyncio.sleep(0.05)
    port = _bound_port(server)
    address, url = f"{config.host}:{port}", url_of(config.host, port)
    missing = await backends.wait_ready(config.ready_wait_s)
    payload = {"address": address, "url": url, "etcd": config.etcd, "missing": missing}
    if missing:
        payload["note"] = (
            f"no {' or '.join(missing)} instance registered in etcd {config.etcd} yet; "
            "the page will work once one is (start them with `make up` or `ocrmesh serve ...`)"
        )
        log.warning("serving without every service", extra=payload)
    else:
        log.info("serving", extra={"address": address, "url": url})
    lifecycle.write_ready_file(config.ready_file, payload)
    stopped = asyncio.Event()
    task.add_done_callback(lambda _: stopped.set())
    signame = await lifecycle.wait_for_stop_signal(stopped)
    if signame != "event":
        print(f"{signame}: draining (up to {SHUTDOWN_GRACE_S}s for in-flight requests)", flush=True)
    server.should_exit = True
    await task
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mesh_config.add_arguments(parser, BffConfig)
    mesh_transport.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    return mesh_config.run_service(BffConfig, ns, "ocrmesh serve bff", serve)
