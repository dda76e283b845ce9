"""`ocrmesh ca`: make the mesh CA, issue workload certificates from it, show what a directory holds."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from bench.durations import parse_duration
from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority, CertificateAuthorityError
from mesh.identity_files import IdentityFilesError
from mesh.spiffe_id import DEFAULT_TRUST_DOMAIN, SERVICES, SpiffeIdError

DEFAULT_CA_DIR = Path(".ocrmesh/ca")


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
    show = sub.add_parser("show", help="describe the identity in a folder")
    show.add_argument("folder", type=Path, help="identity folder (cert.pem, key.pem, ca.pem)")


def run(ns: argparse.Namespace) -> int:
    try:
        if ns.ca_command == "init":
            return _init(ns)
        if ns.ca_command == "issue":
            return _issue(ns)
        return _show(ns)
    except (CertificateAuthorityError, IdentityFilesError, SpiffeIdError, ValueError) as exc:
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
