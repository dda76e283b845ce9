"""How this process speaks to the mesh: mTLS from its workload identity, or plaintext when it has none.

A process chooses once, at start (`configure`, from `--identity-dir`/`--insecure`); servers it
binds and channels it opens to mesh services then follow that choice.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from mesh.identity_files import IdentityFilesError
from mesh.workload_identity import WorkloadIdentity

log = logging.getLogger(__name__)

IDENTITY_ENV = "OCRMESH_IDENTITY_DIR"

_identity: WorkloadIdentity | None = None


class TransportError(Exception):
    """The identity asked for cannot be used; the message says what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --identity-dir and --insecure (read by `configure_from_args`)."""
    group = parser.add_argument_group("mesh identity (mTLS between services)")
    group.add_argument(
        "--identity-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"this workload's certificate, key and the mesh CA (cert.pem, key.pem, ca.pem; env "
        f"{IDENTITY_ENV}); re-read as it rotates. `ocrmesh up` issues one per service",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext to and from other services, no peer identity checked: for debugging only",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --identity-dir for a command that calls mesh services directly (read by `configure_client`)."""
    parser.add_argument(
        "--identity-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"mesh identity for calling services directly over mTLS (env {IDENTITY_ENV}; `ocrmesh up` "
        "issues one in .ocrmesh/identity/cli); not needed through the gateway",
    )


def configure_client(ns: argparse.Namespace) -> WorkloadIdentity | None:
    """A command's identity: --identity-dir or the environment when given, else plaintext (silently:
    the gateway, where outside clients go, takes no mesh certificate)."""
    directory = getattr(ns, "identity_dir", None) or os.environ.get(IDENTITY_ENV) or None
    if directory is None:
        return configure(None)
    try:
        return configure(WorkloadIdentity(Path(directory)))
    except IdentityFilesError as exc:
        raise TransportError(str(exc)) from exc


def configure_from_args(ns: argparse.Namespace, what: str) -> WorkloadIdentity | None:
    """Load the identity the flags (or the environment) name and use it for this process.

    With neither, or with --insecure, the process runs plaintext and says so loudly on stderr.
    """
    if getattr(ns, "insecure", False):
        _warn_insecure(what, "--insecure was given")
        return configure(None)
    directory = getattr(ns, "identity_dir", None) or os.environ.get(IDENTITY_ENV) or None
    if directory is None:
        _warn_insecure(what, f"no --identity-dir (or {IDENTITY_ENV}) was given")
        return configure(None)
    try:
        return configure(WorkloadIdentity(Path(directory)))
    except IdentityFilesError as exc:
        raise TransportError(str(exc)) from exc


def _warn_insecure(what: str, why: str) -> None:
    print(
        f"WARNING: {what} runs INSECURE ({why}): plaintext between services, any peer that reaches "
        "its port is trusted. Use only for debugging; `ocrmesh up` gives every service an identity.",
        file=sys.stderr,
        flush=True,
    )


def configure(identity: WorkloadIdentity | None) -> WorkloadIdentity | None:
    """Use `identity` (None: plaintext) for this process's servers and mesh channels."""
    global _identity
    _identity = identity
    if identity is not None:
        log.info("mesh identity %s (mTLS on)", identity.current.spiffe_id.uri)
    return identity


def identity() -> WorkloadIdentity | None:
    """The identity in use, or None when this process runs plaintext."""
    return _identity


def bind(server: grpc.aio.Server, target: str) -> int:
    """Add a listening port for `target`, mTLS when an identity is in use; the port bound (0: failed)."""
    if _identity is None:
        return int(server.add_insecure_port(target))
    return int(server.add_secure_port(target, _identity.server_credentials()))


def channel(target: str, service: str | None, options: Sequence[tuple[str, int | str]]) -> grpc.aio.Channel:
    """A channel to `target`, an instance of `service`: with an identity, mTLS whose handshake
    fails unless the peer's certificate names `service`; else plaintext."""
    if _identity is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    if service is None:
        raise TransportError(f"a mesh channel to {target} must say which service it expects there")
    return grpc.aio.secure_channel(
        target,
        _identity.channel_credentials(),
        options=[*options, *_identity.expected_peer_options(service)],
    )


def generation() -> int:
    """Changes when the identity rotates (channels made before keep their old certificate)."""
    return 0 if _identity is None else _identity.generation
