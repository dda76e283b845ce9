"""`ocrmesh up` and `LocalMesh`: run etcd and the services as children, wait until each is ready."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.table import Table

from deploy.service_process import ServiceProcess
from etcd.launcher import EtcdProcess
from mesh.certificate_authority import DEFAULT_LEAF_LIFETIME, CertificateAuthority
from mesh.identity_issuer import IdentityIssuer
from mesh.spiffe_id import DEFAULT_TRUST_DOMAIN

console = Console(stderr=False)

Say = Callable[[str], None]
RESTART_TIMEOUT_S = 300.0
"""How long a restarted child may take to get ready again (models load, engines warm up)."""


@dataclass
class Child(ServiceProcess):
    """One supervised service process (a ServiceProcess that `ocrmesh up` restarts when it dies)."""

    own_session: bool = True  # `ocrmesh up`: Ctrl-C reaches the supervisor alone (ServiceProcess)
    restarts: int = 0

    @property
    def kind(self) -> str:
        """The service this child runs: "ocr", "auth", "gateway" or "bff" (its name without "-N")."""
        return self.name.split("-", 1)[0]


def _serve_argv(service: str, *args: str) -> list[str]:
    return ["serve", service, *args]


def ocr_child(
    index: int,
    etcd: str,
    host: str,
    port: int,
    workers: int,
    device: str | None,
    data_dir: Path,
    require_auth: bool = False,
    extra_args: tuple[str, ...] = (),
) -> Child:
    name = f"ocr-{index}"
    ready = data_dir / "run" / f"{name}.json"
    argv = _serve_argv(
        "ocr",
        "--host", host,
        "--port", str(port),
        "--instance-id", name,
        "--workers", str(workers),
        "--etcd", etcd,
    )  # fmt: skip
    if device:
        argv += ["--device", device]
    if require_auth:
        argv.append("--require-auth")
    argv += extra_args
    return Child(name, argv, ready, data_dir / "logs" / f"{name}.log")


def key_passphrase_file(data_dir: Path) -> Path:
    """DATA_DIR/key-passphrase, made once with a random passphrase and readable by its owner alone
    (0600): the key-encryption key that seals the auth service's signing keys in its database."""
    path = data_dir / "key-passphrase"
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path


def auth_child(index: int, etcd: str, host: str, port: int, data_dir: Path) -> Child:
    """An auth instance; all of them share one SQLite file (and so one user table and key set), and
    the passphrase that seals the signing keys in it."""
    name = f"auth-{index}"
    ready = data_dir / "run" / f"{name}.json"
    db = f"sqlite+aiosqlite:///{(data_dir / 'auth.db').resolve()}"
    argv = _serve_argv(
        "auth",
        "--host", host,
        "--port", str(port),
        "--instance-id", name,
        "--etcd", etcd,
        "--db", db,
        "--key-passphrase-file", str(key_passphrase_file(data_dir).resolve()),
        # The BFF and the gateway run on this host: believe the client address they pass, so that
        # throttles key on browsers and outside clients, not on the BFF or Envoy.
        "--trusted-proxies", _loopback_networks(host),
    )  # fmt: skip
    return Child(name, argv, ready, data_dir / "logs" / f"{name}.log")


def _loopback_networks(host: str) -> str:
    """The addresses the BFF and the gateway reach auth from: loopback, and `host` if it is not."""
    networks = ["127.0.0.0/8", "::1/128"]
    if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
        networks.append(host)
    return ",".join(networks)


def gateway_child(
    etcd: str,
    host: str,
    port: int,
    admin_port: int,
    xds_port: int,
    data_dir: Path,
    extra_args: tuple[str, ...] = (),
) -> Child:
    """The xDS control plane + Envoy (`ocrmesh serve gateway`); ready JSON has address, admin, xds."""
    ready = data_dir / "run" / "gateway.json"
    argv = _serve_argv(
        "gateway",
        "--etcd", etcd,
        "--host", host,
        "--port", str(port),
        "--admin-port", str(admin_port),
        "--xds-port", str(xds_port),
        *extra_args,
    )  # fmt: skip
    return Child("gateway", argv, ready, data_dir / "logs" / "gateway.log")


def bff_child(etcd: str, host: str, port: int, data_dir: Path) -> Child:
    """The web backend-for-frontend (`ocrmesh serve bff`); ready JSON has address and url."""
    ready = data_dir / "run" / "bff.json"
    argv = _serve_argv("bff", "--etcd", etcd, "--host", host, "--port", str(port))
    return Child("bff", argv, ready, data_dir / "logs" / "bff.log")


def auth_ports(first: int, count: int) -> list[int]:
    """Auth ports count down from `first` (50050, 50049, ...), away from OCR's ports counting up.

    A first port of 0 gives every instance port 0 (each picks a free one)."""
    return [first - i if first else 0 for i in range(count)]


def ocr_ports(first: int, count: int) -> list[int]:
    """OCR ports count up from `first` (50051, 50052, ...); 0 gives every instance port 0."""
    return [first + i if first else 0 for i in range(count)]


@dataclass(frozen=True)
class MeshPorts:
    """Where each part listens. 0 means a free port picked at start (what tests and sweeps use)."""

    etcd: int = 2379
    ocr: int = 50051  # first OCR port, then +1, +2 ...
    auth: int = 50050  # first auth port, then -1, -2 ...
    gateway: int = 8080
    gateway_admin: int = 9901
    xds: int = 18000
    bff: int = 8000

    @classmethod
    def ephemeral(cls) -> MeshPorts:
        """Every port picked at start, so a sweep or test never clashes with a running `make up`."""
        return cls(etcd=0, ocr=0, auth=0, gateway=0, gateway_admin=0, xds=0, bff=0)


class LocalMesh:
    """The mesh as local child processes; `async with` starts it ready and stops it in reverse.

    Order: etcd, auth x `auth`, OCR x `ocr` (requiring tokens when auth runs), the gateway, the BFF.
    A gateway or BFF whose `ocrmesh serve` command is not in this build is skipped with a note
    (in `notes`). If any part fails to start, what did start is stopped and RuntimeError says which
    part and where its log is.
    """

    def __init__(
        self,
        *,
        ocr: int = 2,
        auth: int = 1,
        gateway: bool = True,
        bff: bool = True,
        workers: int = 1,
        device: str | None = None,
        host: str = "127.0.0.1",
        data_dir: Path = Path(".ocrmesh"),
        ports: MeshPorts | None = None,
        ocr_args: tuple[str, ...] = (),
        gateway_args: tuple[str, ...] = (),
        say: Say | None = None,
        start_timeout_s: float = 300.0,
        own_sessions: bool = True,
        secure: bool = False,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        cert_lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME,
    ) -> None:
        if ocr < 1:
            raise ValueError("a mesh needs at least one OCR instance")
        if auth < 0:
            raise ValueError("auth instances cannot be negative")
        self.ocr, self.auth, self.workers, self.device = ocr, auth, workers, device
        self.host = host
        self.data_dir = data_dir
        self.ports = ports or MeshPorts()
        self.ocr_args = ocr_args
        self.gateway_args = gateway_args  # benchmarks only (`ocrmesh up` passes none)
        self.say: Say = say or (lambda _text: None)
        self.start_timeout_s = start_timeout_s
        self.own_sessions = own_sessions  # False for benchmarks: see Child.own_session
        self.want_gateway, self.want_bff = gateway, bff
        self.notes: list[str] = []  # said once the mesh is up (bench reports copy them)
        # With `secure`, every part gets a workload identity from the mesh CA in data_dir/ca (made
        # on first use) and talks mTLS; the supervisor holds the CA key and renews the identities.
        self.secure = secure
        self.trust_domain = trust_domain
        self.cert_lifetime = cert_lifetime
        self.issuer: IdentityIssuer | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.etcd = EtcdProcess(
            data_dir=data_dir / "etcd",
            host=host,
            client_port=self.ports.etcd or None,
            log_file=data_dir / "logs" / "etcd.log",
            # With `secure`, etcd serves TLS only, knows each client by its certificate and lets
            # each service touch only its own keys (set up with the admin identity at start).
            identity_dir=self.identity_dir("etcd") if secure else None,
            admin_identity_dir=self.identity_dir("admin") if secure else None,
        )
        self.planned: list[Child] = self._plan()
        self.started: list[Child] = []

    @property
    def auth_on(self) -> bool:
        return self.auth > 0

    def _plan(self) -> list[Child]:
        etcd, host, data, p = self.etcd.endpoint, self.host, self.data_dir, self.ports
        children = [
            auth_child(i + 1, etcd, host, port, data) for i, port in enumerate(auth_ports(p.auth, self.auth))
        ]
        children += [
            ocr_child(i + 1, etcd, host, port, self.workers, self.device, data, self.auth_on, self.ocr_args)
            for i, port in enumerate(ocr_ports(p.ocr, self.ocr))
        ]
        if self.want_gateway:
            children.append(
                gateway_child(etcd, host, p.gateway, p.gateway_admin, p.xds, data, self.gateway_args)
            )
        if self.want_bff:
            children.append(bff_child(etcd, host, p.bff, data))
        for child in children:
            child.own_session = self.own_sessions
            if self.secure:
                child.argv += ["--identity-dir", str(self.identity_dir(child.name).resolve())]
        return children

    def identity_dir(self, name: str) -> Path:
        """The identity folder of part `name` ("ocr-1", "gateway", ...; "cli" and "admin" for people)."""
        return self.data_dir / "identity" / name

    def _issue_identities(self) -> None:
        """Make (or load) the CA and issue every planned part, people's `cli` and `admin` an identity."""
        ca, created = CertificateAuthority.load_or_create(self.data_dir / "ca", self.trust_domain)
        if created:
            self.say(f"made the mesh CA for spiffe://{ca.trust_domain} in {self.data_dir / 'ca'} (key 0600)")
        self.issuer = IdentityIssuer(ca, self.cert_lifetime)
        self.issuer.add("etcd", "etcd", self.identity_dir("etcd"), hosts=[self.host, "localhost"])
        for child in self.planned:
            # Proxyless gRPC clients check the xDS server's certificate against the address they
            # dial, so the gateway's (which serves xDS) names its host too.
            hosts = [self.host, "localhost"] if child.kind == "gateway" else []
            self.issuer.add(child.kind, child.name, self.identity_dir(child.name), hosts=hosts)
        for person in ("cli", "admin"):
            self.issuer.add(person, person, self.identity_dir(person))
        self._renewing = asyncio.get_running_loop().create_task(self.issuer.run(), name="renew identities")

    async def start(self) -> LocalMesh:
        try:
            if self.secure:
                self._issue_identities()
            self.say(f"starting etcd on {self.etcd.endpoint} ...")
            await self.etcd.start()
            self._replan_after_etcd()
            for note in self.notes:
                self.say(f"note: {note}")
            for child in self.planned:
                self.say(f"starting {child.name} ({_what_it_does(child)}) ...")
                await child.start_async(self.start_timeout_s)
                self.started.append(child)
        except BaseException:
            await self.stop()
            raise
        return self

    def _replan_after_etcd(self) -> None:
        # etcd may have moved to other free ports while starting (a picked port was taken meanwhile).
        if any(self.etcd.endpoint not in child.argv for child in self.planned):
            self.planned = self._plan()

    async def stop(self) -> None:
        for child in reversed(self.started):
            await child.stop_async()
        self.started.clear()
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self.etcd.stop()

    async def __aenter__(self) -> LocalMesh:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def children(self, kind: str) -> list[Child]:
        """The started children running `kind` ("ocr", "auth", "gateway", "bff")."""
        return [child for child in self.started if child.kind == kind]

    def addresses(self, kind: str) -> list[str]:
        return [str(child.info["address"]) for child in self.children(kind) if "address" in child.info]

    @property
    def gateway_address(self) -> str | None:
        found = self.addresses("gateway")
        return found[0] if found else None

    @property
    def bff_url(self) -> str | None:
        found = [str(c.info.get("url") or f"http://{c.info['address']}/") for c in self.children("bff")]
        return found[0] if found else None

    def pids(self) -> dict[str, int]:
        """Process id of each running part, etcd included (for RSS sampling of each process tree)."""
        found = {child.name: child.pid for child in self.started}
        found["etcd"] = self.etcd.pid if self.etcd.running else None
        return {name: pid for name, pid in found.items() if pid is not None}

    def ready_info(self) -> dict[str, dict[str, Any]]:
        """Each started child's ready JSON, by name, plus etcd's endpoint."""
        return {"etcd": {"address": self.etcd.endpoint}} | {c.name: dict(c.info) for c in self.started}


def _what_it_does(child: Child) -> str:
    return {
        "auth": "opening its database, publishing its keys",
        "ocr": "warming its engines",
        "gateway": "control plane and Envoy",
        "bff": "web UI and API",
    }.get(child.kind, "starting")


def port_clash(ns: argparse.Namespace) -> str | None:
    """Why the requested ports cannot all be used, or None."""
    taken: dict[int, str] = {ns.etcd_port: "etcd"}
    wanted = [(p, f"ocr-{i + 1}") for i, p in enumerate(ocr_ports(ns.ocr_port, ns.ocr))]
    if not ns.no_auth:
        wanted += [(p, f"auth-{i + 1}") for i, p in enumerate(auth_ports(ns.auth_port, ns.auth))]
    if not getattr(ns, "no_gateway", True):
        wanted += [
            (ns.gateway_port, "gateway"),
            (ns.gateway_admin_port, "gateway admin"),
            (ns.xds_port, "xDS control plane"),
        ]
    if not getattr(ns, "no_bff", True):
        wanted += [(ns.bff_port, "bff")]
    flags = {"ocr": "--ocr-port", "auth": "--auth-port", "gateway": "--gateway-port", "bff": "--bff-port"}
    for port, name in wanted:
        if port == 0:
            continue  # picked at start
        if not 0 < port < 65536:
            return f"{name} would get port {port}"
        if port in taken:
            other = taken[port]
            named = [flag for kind, flag in flags.items() if name.startswith(kind) or other.startswith(kind)]
            hint = ", ".join(dict.fromkeys(named))
            return f"{name} and {other} would both use port {port}; change {hint or 'the ports'}"
        taken[port] = name
    return None


async def supervise(children: list[Child], stop: asyncio.Event, say: Say) -> None:
    """Restart any child that dies, with capped backoff, until `stop` is set."""
    while not stop.is_set():
        for child in children:
            code = child.returncode
            if code is not None and not stop.is_set():
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                say(f"[yellow]{child.name} exited ({code}); restarting in {delay:.0f}s[/]")
                await asyncio.sleep(delay)
                child.restarts += 1
                try:
                    await child.start_async(RESTART_TIMEOUT_S)
                    say(f"[green]{child.name} is back on {child.info.get('address')}[/]")
                except RuntimeError as exc:
                    say(f"[red]{exc}[/]")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def mesh_from_args(ns: argparse.Namespace, say: Say) -> LocalMesh:
    """The LocalMesh `ocrmesh up` flags describe."""
    return LocalMesh(
        ocr=ns.ocr,
        auth=0 if ns.no_auth else ns.auth,
        gateway=not ns.no_gateway,
        bff=not ns.no_bff,
        workers=ns.workers,
        device=ns.device,
        host=ns.host,
        data_dir=ns.data_dir,
        ports=MeshPorts(
            etcd=ns.etcd_port,
            ocr=ns.ocr_port,
            auth=ns.auth_port,
            gateway=ns.gateway_port,
            gateway_admin=ns.gateway_admin_port,
            xds=ns.xds_port,
            bff=ns.bff_port,
        ),
        say=say,
        secure=not ns.insecure,
        trust_domain=ns.trust_domain,
        cert_lifetime=dt.timedelta(seconds=ns.cert_lifetime_s),
    )


def summary_table(mesh: LocalMesh) -> Table:
    table = Table(title="ocrmesh is up (Ctrl-C stops everything)")
    for col in ("service", "address", "details"):
        table.add_column(col)
    table.add_row("etcd", mesh.etcd.endpoint, f"data {mesh.data_dir / 'etcd'}")
    for child in mesh.started:
        info = child.info
        metrics = f"metrics {info.get('metrics', '')}"
        if child.kind == "auth":
            details = f"SQLite {mesh.data_dir / 'auth.db'}; {metrics}"
        elif child.kind == "ocr":
            details = f"{info.get('execution_provider', '')}; {metrics}"
            if mesh.auth_on:
                details += "; tokens required"
        elif child.kind == "gateway":
            details = f"gRPC for every service; admin {info.get('admin', '?')}; xDS {info.get('xds', '?')}"
        else:
            details = f"web UI {info.get('url', '?')}"
        table.add_row(child.name, str(info.get("address", "?")), details)
    return table


def print_next_steps(mesh: LocalMesh) -> None:
    exe = Path(sys.executable).parent / "ocrmesh"
    ocr_address = mesh.addresses("ocr")[0]
    image = "../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg"
    if mesh.bff_url:
        console.print(f"web:  {mesh.bff_url} (register, log in, upload an image)")
    if mesh.secure:
        console.print(
            f"mTLS: every service holds a certificate from the mesh CA in {mesh.data_dir / 'ca'}; commands "
            "that call a service or etcd directly (not through the gateway) need yours, so first:"
        )
        console.print(f"      export OCRMESH_IDENTITY_DIR={mesh.identity_dir('cli').resolve()}")
    else:
        console.print("[yellow]INSECURE: --insecure was given, services talk plaintext[/]")
    if mesh.gateway_address:
        token = " (OCR routes need a token)" if mesh.auth_on else ""
        console.print(f"gateway: {mesh.gateway_address}, gRPC for every service{token}")
    if mesh.auth_on:
        auth_address = mesh.addresses("auth")[0]
        account = f"{exe} account --auth-target {auth_address}"
        console.print(f"auth: {auth_address} (OCR calls need an access token)")
        console.print(f"try:  {account} register alice")
        console.print(
            f"      {exe} ocr {image} --target {ocr_address} --login alice --auth-target {auth_address}"
        )
        console.print(f"      or: export OCRMESH_TOKEN=$({account} login alice)")
    else:
        console.print(f"try:  {exe} ocr {image} --target {ocr_address}")
    console.print(f"      {exe} status --etcd {mesh.etcd.endpoint}")
    console.print(f"logs: {mesh.data_dir / 'logs'}")


async def up(ns: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mesh = mesh_from_args(ns, console.print)
    try:
        await mesh.start()
        console.print(summary_table(mesh))
        print_next_steps(mesh)
        await supervise(mesh.started, stop, console.print)
        return 0
    except RuntimeError as exc:
        console.print(f"[red]ocrmesh up: {exc}[/]")
        return 1
    finally:
        console.print("stopping ...")
        await mesh.stop()
        console.print("stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ocr", type=int, default=2, help="OCR instances to run")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per OCR instance")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="OCR device")
    parser.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    parser.add_argument(
        "--ocr-port", type=int, default=50051, help="first OCR port (then +1, +2 ...; 0: free ports)"
    )
    parser.add_argument("--auth", type=int, default=1, help="auth instances to run (they share one database)")
    parser.add_argument(
        "--auth-port",
        type=int,
        default=50050,
        help="first auth port (then -1, -2 ..., away from the OCR ports; 0: free ports)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="run no auth service; OCR then takes calls without a token"
    )
    parser.add_argument(
        "--no-gateway", action="store_true", help="run no gateway (Envoy + xDS control plane)"
    )
    parser.add_argument("--no-bff", action="store_true", help="run no web BFF")
    parser.add_argument("--gateway-port", type=int, default=8080, help="gateway gRPC listener port (0: free)")
    parser.add_argument("--gateway-admin-port", type=int, default=9901, help="Envoy admin port (0: free)")
    parser.add_argument("--xds-port", type=int, default=18000, help="xDS control plane port (0: free)")
    parser.add_argument("--bff-port", type=int, default=8000, help="web BFF port (0: free)")
    parser.add_argument("--etcd-port", type=int, default=2379, help="etcd client port (0: free)")
    parser.add_argument("--data-dir", type=Path, default=Path(".ocrmesh"), help="etcd data, logs, state")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no mesh CA, no mTLS: plaintext between services, any local process trusted (debugging only)",
    )
    parser.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain of a CA made on first run"
    )
    parser.add_argument(
        "--cert-lifetime-s",
        type=float,
        default=DEFAULT_LEAF_LIFETIME.total_seconds(),
        help="workload certificate lifetime in seconds, renewed at half of it (default 24 h)",
    )


def run(ns: argparse.Namespace) -> int:
    if ns.ocr < 1:
        print("ocrmesh up: --ocr must be at least 1", file=sys.stderr)
        return 2
    if ns.auth < 1 and not ns.no_auth:
        print("ocrmesh up: --auth must be at least 1 (or pass --no-auth)", file=sys.stderr)
        return 2
    if ns.insecure:
        print(
            "WARNING: ocrmesh up --insecure: no mesh CA, plaintext between services; any process that "
            "reaches a port is trusted. For debugging only.",
            file=sys.stderr,
        )
    clash = port_clash(ns)
    if clash:
        print(f"ocrmesh up: {clash}", file=sys.stderr)
        return 2
    return asyncio.run(up(ns))
