"""Workload names: `spiffe://<trust-domain>/<service>/<instance>` and the DNS name certificates carry."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "ocrmesh.local"

SERVICES = ("ocr", "auth", "gateway", "bff", "xds", "etcd", "cli", "admin")
"""The identities the mesh CA issues: one per service, plus `cli` (people's commands, benchmarks)
and `admin` (`ocrmesh config`, `ocrmesh ca`, etcd's administrator)."""

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_INSTANCE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class SpiffeIdError(ValueError):
    """A trust domain, service, instance or URI that is not a well-formed mesh identity."""


def check_trust_domain(trust_domain: str) -> str:
    """`trust_domain`, or SpiffeIdError: lower-case DNS labels joined by dots, as SPIFFE requires."""
    labels = trust_domain.split(".")
    if not trust_domain or len(trust_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} is not lower-case DNS labels joined by dots (e.g. ocrmesh.local)"
        )
    return trust_domain


@dataclass(frozen=True)
class SpiffeId:
    """One workload's identity: which trust domain, which service, which instance of it."""

    trust_domain: str
    service: str
    instance: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        if self.service not in SERVICES:
            raise SpiffeIdError(f"service {self.service!r} is not one of {', '.join(SERVICES)}")
        if not _INSTANCE.match(self.instance):
            raise SpiffeIdError(f"instance {self.instance!r} must be 1-128 of A-Z a-z 0-9 . _ -")

    @property
    def uri(self) -> str:
        """The URI SAN: spiffe://<trust-domain>/<service>/<instance>."""
        return f"spiffe://{self.trust_domain}/{self.service}/{self.instance}"

    @property
    def dns_name(self) -> str:
        """The DNS SAN every certificate of this service carries (see `service_dns_name`)."""
        return service_dns_name(self.service, self.trust_domain)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The identity in a `spiffe://td/service/instance` URI, or SpiffeIdError."""
        rest = uri.removeprefix("spiffe://")
        parts = rest.split("/")
        if rest == uri or len(parts) != 3:
            raise SpiffeIdError(f"{uri!r} is not spiffe://<trust-domain>/<service>/<instance>")
        return cls(*parts)


def service_dns_name(service: str, trust_domain: str) -> str:
    """`<service>.<trust-domain>`: the name a client expects in the peer's certificate.

    gRPC's TLS checks the peer's DNS names against the target name, so a client that takes an
    endpoint of service S from the registry dials it with this name as the expected host
    (`grpc.ssl_target_name_override`): the handshake fails unless the certificate names S.
    """
    return f"{service}.{trust_domain}"
