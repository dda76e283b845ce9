"""`ocrmesh ca`: make the mesh CA, issue workload certificates from it, keep them renewed (the
issuer of compose and Kubernetes), show what a directory holds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.durations import parse_duration
from mesh import identity_files, logs
from mesh.certificate_authority import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CertificateAuthority,
    CertificateAuthorityError,
)
from mesh.identity_files import IdentityFilesError
from mesh.identity_issuer import IdentityIssuer, Publish
from mesh.spiffe_id import DEFAULT_TRUST_DOMAIN, SERVICES, SpiffeIdError

DEFAULT_CA_DIR = Path(".ocrmesh/ca")
SECRET_TARGET = "secret/"
"""An --issue target naming a Kubernetes Secret (written through the API) instead of a folder."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssueSpec:
    """One --issue of `ocrmesh ca issuer`: which identity, where it goes, who may read it."""

    service: str
    instance: str
    target: str  # a folder, or secret/NAME
    hosts: tuple[str, ...] = ()
    owner: tuple[int, int] | None = None

    @property
    def secret(self) -> str | None:
        """The Secret's name for a secret/NAME target, else None (a folder)."""
        return self.target.removeprefix(SECRET_TARGET) if self.target.startswith(SECRET_TARGET) else None


def parse_owner(text: str) -> tuple[int, int]:
    """`UID[:GID]` (GID defaults to UID) as a (uid, gid) pair."""
    uid, _, gid = text.partition(":")
    try:
        pair = int(uid), int(gid or uid)
    except ValueError:
        raise ValueError(f"owner {text!r} is not UID[:GID] in numbers") from None
    if min(pair) < 0:
        raise ValueError(f"owner {text!r} is negative")
    return pair


def parse_issue(text: str, owner: tuple[int, int] | None = None) -> IssueSpec:
    """`SERVICE[/INSTANCE]=TARGET[,host=NAME]...[,owner=UID[:GID]]` as an IssueSpec.

    TARGET is a folder (no commas in it) or `secret/NAME`; `owner` is the default for folders.
    """
    who, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ValueError(
            f"--issue {text!r}: expected SERVICE[/INSTANCE]=TARGET[,host=NAME][,owner=UID[:GID]]"
        )
    service, _, instance = who.partition("/")
    if service not in SERVICES:
        raise ValueError(f"--issue {text!r}: service {service!r} is not one of {', '.join(SERVICES)}")
    target, *options = rest.split(",")
    hosts: list[str] = []
    for option in options:
        key, _, value = option.partition("=")
        if key == "host" and value:
            hosts.append(value)
        elif key == "owner" and value:
            owner = parse_owner(value)
        else:
            raise ValueError(f"--issue {text!r}: unknown option {option!r} (host=NAME, owner=UID[:GID])")
    if target.startswith(SECRET_TARGET) and not target.removeprefix(SECRET_TARGET):
        raise ValueError(f"--issue {text!r}: secret/ needs the Secret's name")
    return IssueSpec(service, instance or service, target, tuple(hosts), owner)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The mesh certificate authority: an ECDSA P-256 root for one trust domain whose key stays "
        "0600 in --dir, and the short-lived workload certificates it signs "
        "(URI SAN spiffe://<trust-domain>/<service>/<instance>)."
    )
    sub = parser.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="make a new CA (refuses to replace one)")
    init.add_argument(
        "--dir", type=Path, default=DEFAULT_CA_DIR, help=f"CA folder (default {DEFAULT_CA_DIR})"
    )
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain")
    issue = sub.add_parser("issue", help="issue a workload certificate into an identity folder")
    issue.add_argument("service", choices=SERVICES, help="the service the certificate names")
    issue.add_argument("--instance", default=None, help="instance name (default: the service name)")
    issue.add_argument("--out", type=Path, required=True, help="identity folder to write (swapped whole)")
    issue.add_argument(
        "--dir", type=Path, default=DEFAULT_CA_DIR, help=f"CA folder (default {DEFAULT_CA_DIR})"
    )
    issue.add_argument("--lifetime", default="24h", help="validity, e.g. 24h, 60s (default 24h)")
    issue.add_argument(
        "--host", action="append", default=[], help="extra DNS name or IP the workload is dialled by"
    )
    issuer = sub.add_parser(
        "issuer",
        help="issue identities into folders or Kubernetes Secrets and renew each at half its "
        "lifetime, until stopped (the one process that holds the CA key in compose and Kubernetes)",
    )
    issuer.add_argument(
        "--dir", type=Path, default=DEFAULT_CA_DIR, help=f"CA folder (default {DEFAULT_CA_DIR})"
    )
    issuer.add_argument(
        "--mounted-secret",
        action="store_true",
        help="--dir is a Kubernetes Secret mounted into the issuer's pod: take its key although "
        "kubelet makes it readable by the pod's fsGroup (mode 0440; no other container is in the pod)",
    )
    issuer.add_argument(
        "--init",
        action="store_true",
        help="make the CA in --dir first when there is none (compose keeps it in the issuer's own volume)",
    )
    issuer.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="trust domain of a CA --init makes"
    )
    issuer.add_argument(
        "--lifetime", default="24h", help="validity of each leaf, e.g. 24h, 60s (default 24h)"
    )
    issuer.add_argument(
        "--issue",
        action="append",
        required=True,
        metavar="SERVICE[/INSTANCE]=TARGET[,host=NAME][,owner=UID[:GID]]",
        help="an identity to keep: TARGET is a folder (written as kubelet writes a Secret) or "
        "secret/NAME (a Kubernetes Secret, through the API with the pod's ServiceAccount); host= adds "
        "a DNS name or IP the workload is dialled by (repeatable); owner= hands a folder's files to "
        "that user (the issuer then runs as root). Repeat --issue for each",
    )
    issuer.add_argument("--owner", default=None, help="default owner UID[:GID] of the folders")
    issuer.add_argument("--once", action="store_true", help="issue everything once and exit")
    issuer.add_argument(
        "--etcd-access",
        metavar="ENDPOINTS",
        default=None,
        help="also set up etcd's users, roles and auth (mesh/etcd_access.py) at these TLS endpoints, "
        "as `admin` (an identity the issuer keeps in memory and /tmp only), retrying until etcd answers",
    )
    issuer.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    show = sub.add_parser("show", help="describe the identity in a folder")
    show.add_argument("folder", type=Path, help="identity folder (cert.pem, key.pem, ca.pem)")


def run(ns: argparse.Namespace) -> int:
    try:
        if ns.ca_command == "init":
            return _init(ns)
        if ns.ca_command == "issue":
            return _issue(ns)
        if ns.ca_command == "issuer":
            return _issuer(ns)
        return _show(ns)
    except (CertificateAuthorityError, IdentityFilesError, SpiffeIdError, ValueError, OSError) as exc:
        print(f"ocrmesh ca {ns.ca_command}: {exc}", file=sys.stderr)
        return 2


def _init(ns: argparse.Namespace) -> int:
    if (ns.dir / "ca.pem").exists():
        print(f"ocrmesh ca init: {ns.dir} already holds a CA; remove it first to start over", file=sys.stderr)
        return 2
    ca = CertificateAuthority.create(ns.trust_domain)
    ca.save(ns.dir)
    print(f"mesh CA for spiffe://{ca.trust_domain} in {ns.dir} (key {ns.dir / 'ca-key.pem'}, mode 0600)")
    return 0


def _issue(ns: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(ns.dir)
    lifetime = dt.timedelta(seconds=parse_duration(ns.lifetime))
    leaf = ca.issue(ns.service, ns.instance or ns.service, lifetime=lifetime, hosts=ns.host)
    identity_files.write(ns.out, leaf, ca.cert_pem)
    print(f"{leaf.identity.uri} in {ns.out}, valid until {leaf.not_after.isoformat(timespec='seconds')}")
    return 0


def _show(ns: argparse.Namespace) -> int:
    identity = identity_files.load(ns.folder)
    left = identity.remaining()
    print(f"identity   {identity.spiffe_id.uri}")
    print(f"dns name   {identity.spiffe_id.dns_name}")
    print(
        f"valid      {identity.not_before.isoformat(timespec='seconds')} .. "
        f"{identity.not_after.isoformat(timespec='seconds')} ({max(0, int(left.total_seconds()))} s left)"
    )
    return 0 if left.total_seconds() > 0 else 1


def _publisher(spec: IssueSpec) -> Publish | None:
    """How a leaf reaches `spec`'s target: None for a folder (the issuer writes it), else a Secret."""
    if spec.secret is None:
        return None
    from deploy.identity_secrets import KubernetesApi, SecretPublisher

    return SecretPublisher(KubernetesApi.in_cluster(), spec.secret)


def load_mounted_ca(directory: Path) -> CertificateAuthority:
    """The CA in a mounted Secret (ca.pem, ca-key.pem). CertificateAuthority.load refuses a key
    others may read; kubelet gives a Secret's files to the pod's fsGroup (0440), and that group is
    only this pod's, so the key is read here without that check."""
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), password=None)
    except OSError as exc:
        raise CertificateAuthorityError(
            f"no mesh CA mounted at {directory} ({exc.strerror}: {exc.filename}); make the Secret with "
            f"`ocrmesh ca init --dir ca && kubectl create secret generic ocrmesh-mesh-ca "
            f"--from-file=ca/{CA_CERT_FILE} --from-file=ca/{CA_KEY_FILE}`"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise CertificateAuthorityError(f"{directory} holds no readable CA: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateAuthorityError(f"{directory / CA_KEY_FILE} is not an ECDSA key")
    return CertificateAuthority(cert, key)


def build_issuer(ns: argparse.Namespace) -> tuple[IdentityIssuer, list[IssueSpec]]:
    """The CA (made first with --init), and an issuer that has issued every --issue once."""
    default_owner = parse_owner(ns.owner) if ns.owner else None
    specs = [parse_issue(text, default_owner) for text in ns.issue]
    if ns.mounted_secret:
        ca = load_mounted_ca(ns.dir)
    elif ns.init:
        ca, created = CertificateAuthority.load_or_create(ns.dir, ns.trust_domain)
        if created:
            log.info("made the mesh CA for spiffe://%s in %s", ca.trust_domain, ns.dir)
    else:
        ca = CertificateAuthority.load(ns.dir)
    issuer = IdentityIssuer(ca, dt.timedelta(seconds=parse_duration(ns.lifetime)))
    for spec in specs:
        issuer.add(
            spec.service,
            spec.instance,
            Path(spec.target),
            spec.hosts,
            owner=spec.owner if spec.secret is None else None,
            publish=_publisher(spec),
        )
        log.info("issued %s/%s into %s", spec.service, spec.instance, spec.target)
    return issuer, specs


def _issuer(ns: argparse.Namespace) -> int:
    logs.setup("ca-issuer", ns.log_level)
    issuer, specs = build_issuer(ns)
    print(
        f"issued {len(specs)} identities from spiffe://{issuer.ca.trust_domain}, each valid "
        f"{issuer.lifetime.total_seconds():g} s" + ("" if ns.once else ", renewed at half of that"),
        flush=True,
    )
    if ns.once and not ns.etcd_access:
        return 0
    return asyncio.run(_keep_renewing(issuer, ns.etcd_access, once=ns.once))


async def _keep_renewing(issuer: IdentityIssuer, etcd_access: str | None, once: bool) -> int:
    """Renew until SIGTERM/SIGINT; with `etcd_access`, set etcd's access policy up meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with tempfile.TemporaryDirectory(prefix="ocrmesh-admin-") as private:
        tasks: list[asyncio.Task[None]] = []
        if etcd_access:
            admin = issuer.add("admin", "ca-issuer", Path(private) / "admin")
            access = loop.create_task(_set_up_etcd_access(etcd_access, admin), name="etcd access")
            tasks.append(access)
            if once:
                access.add_done_callback(lambda _task: stop.set())
        if not once:
            tasks.append(loop.create_task(issuer.run(), name="renew identities"))
        await stop.wait()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return 0


async def _set_up_etcd_access(endpoints: str, admin_dir: Path) -> None:
    """Apply mesh/etcd_access.POLICY to etcd as `admin`, retrying with capped, jittered backoff."""
    # Imported here: only this option needs an etcd client (and etcd's access policy).
    from etcd.auth_setup import apply_policy
    from mesh.etcd_client import ETCD_ERRORS, ClientFactory, close_quietly
    from mesh.workload_identity import WorkloadIdentity

    factory = ClientFactory(endpoints, 5.0, identity=WorkloadIdentity(admin_dir))
    delay = 1.0
    while True:
        client = factory.new()
        try:
            changes = await asyncio.wait_for(apply_policy(client, 5.0), 30.0)
        except ETCD_ERRORS as exc:
            log.warning("etcd access policy not applied yet (%r); retrying in %.0f s", exc, delay)
        else:
            log.info("etcd access policy in force at %s (%d changes)", endpoints, len(changes.done))
            return
        finally:
            await close_quietly(client, 5.0)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 30.0)
