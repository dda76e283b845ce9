"""Who may read and write which etcd keys: the RBAC table etcd enforces once its auth is on.

etcd takes the common name of a client's certificate as its user name, and the mesh CA puts the
service name there (`ocr`, `auth`, ...), so each user below is every workload of one service and
has one role of the same name. `admin` holds etcd's built-in `root` role instead: it serves
`ocrmesh config` and `ocrmesh ca`, and it is the identity that applies this table
(etcd/auth_setup.py). A name missing here (`etcd` itself, a certificate from another CA) gets
nothing. README's "etcd access" table says the same; a unit test keeps the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.jwks_source import JWKS_KEY
from mesh.live_config import config_key
from mesh.load_board import load_prefix
from mesh.registry import ROOT as SERVICES_PREFIX
from mesh.registry import service_prefix
from mesh.session_revocations import REVOKED_SESSIONS_KEY
from mesh.xds_client_records import PREFIX as XDS_CLIENTS_PREFIX

ROOT_PREFIX = "/ocrmesh/v1/"
ADMIN = "admin"
"""The user that gets etcd's `root` role: full access, and the right to change users and roles."""
ROOT_ROLE = "root"


@dataclass(frozen=True)
class Grant:
    """Read and/or write on one key, or on every key under a prefix (`key` ends with '/')."""

    key: str
    read: bool = True
    write: bool = False

    @property
    def prefix(self) -> bool:
        return self.key.endswith("/")


def _reads(*keys: str) -> tuple[Grant, ...]:
    return tuple(Grant(key) for key in keys)


def _writes(*keys: str) -> tuple[Grant, ...]:
    return tuple(Grant(key, write=True) for key in keys)


def _verifier(service: str) -> tuple[Grant, ...]:
    """What every service reads: its live settings, the token keys and the revoked sessions."""
    return _reads(config_key(service), JWKS_KEY, REVOKED_SESSIONS_KEY)


def _control_plane(service: str) -> tuple[Grant, ...]:
    return (
        *_verifier(service),
        *_reads(SERVICES_PREFIX),  # every service's endpoints become clusters
        *_writes(XDS_CLIENTS_PREFIX),  # each xDS client's ACK/NACK state
    )


POLICY: dict[str, tuple[Grant, ...]] = {
    "ocr": (
        *_verifier("ocr"),
        *_writes(service_prefix("ocr"), load_prefix("ocr")),  # its registration; the load board
    ),
    "auth": (
        # Registry is write-only for auth: it reads back nothing of it. It publishes (and reads
        # back, to republish when gone) the token keys and the revoked sessions.
        Grant(service_prefix("auth"), read=False, write=True),
        *_reads(config_key("auth")),
        *_writes(JWKS_KEY, REVOKED_SESSIONS_KEY),
    ),
    "gateway": _control_plane("gateway"),
    "xds": _control_plane("xds"),  # `ocrmesh serve xds`, the control plane on its own
    "bff": (
        *_verifier("bff"),
        *_reads(SERVICES_PREFIX, XDS_CLIENTS_PREFIX),  # mesh clients; the status page
    ),
    "cli": _reads(ROOT_PREFIX),  # `ocrmesh status`, benchmarks: look, never touch
}
"""Role (= user = certificate common name) -> what it may read and write. `admin`: see ADMIN."""


def permissions(role: str) -> dict[str, tuple[bool, bool]]:
    """`role`'s grants merged by key: key -> (read, write); an unknown role has none."""
    merged: dict[str, tuple[bool, bool]] = {}
    for grant in POLICY.get(role, ()):
        read, write = merged.get(grant.key, (False, False))
        merged[grant.key] = (read or grant.read, write or grant.write)
    return merged


def may(role: str, key: str, write: bool = False) -> bool:
    """Whether `role` may read (or `write`) `key` under POLICY (ADMIN may do anything)."""
    if role == ADMIN:
        return True
    for granted, (read_ok, write_ok) in permissions(role).items():
        covers = key.startswith(granted) if granted.endswith("/") else key == granted
        if covers and (write_ok if write else read_ok):
            return True
    return False
