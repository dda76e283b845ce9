"""This process's mesh identity: its certificate files re-read as they rotate, and the gRPC
credentials made from them (servers that require a mesh client certificate, channels that
require the peer to name the service they were dialled for)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc

from mesh import identity_files
from mesh.identity_files import Identity, IdentityFilesError
from mesh.spiffe_id import service_dns_name

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 1.0
"""How often the files are looked at again, at most (a handshake may trigger the look)."""


class WorkloadIdentity:
    """The identity in one directory, re-read when it changes; thread-safe (grpc's handshakes
    ask for server certificates from its own threads)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._current = identity_files.load(directory)
        self._generation = 1
        self._checked = time.monotonic()

    @property
    def current(self) -> Identity:
        """The newest complete version on disk (looked at again at most every RELOAD_INTERVAL_S)."""
        self.refresh()
        return self._current

    @property
    def generation(self) -> int:
        """Goes up by one each time a new certificate is picked up."""
        self.refresh()
        return self._generation

    @property
    def trust_domain(self) -> str:
        """The trust domain this workload's certificate belongs to."""
        return self._current.spiffe_id.trust_domain

    def refresh(self, force: bool = False) -> bool:
        """Re-read the files if due (or `force`); True when a new certificate was picked up.

        A version that fails to load (half-written, key not matching) is skipped with a warning
        and the current one kept: a rotation never takes a working identity away.
        """
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < RELOAD_INTERVAL_S:
                return False
            self._checked = now
            try:
                found = identity_files.load(self.directory)
            except IdentityFilesError as exc:
                log.warning("identity in %s not reloaded, keeping the current one: %s", self.directory, exc)
                return False
            if found.cert_pem == self._current.cert_pem:
                return False
            self._current = found
            self._generation += 1
        log.info(
            "identity rotated: %s, valid until %s",
            found.spiffe_id.uri,
            found.not_after.isoformat(timespec="seconds"),
        )
        return True

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS that requires a client certificate from the mesh CA; picks up rotations per handshake."""
        served = [self._current.cert_pem]

        def configuration(identity: Identity) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(identity.key_pem, identity.cert_pem)], root_certificates=identity.ca_pem
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by grpc before each handshake; None keeps the configuration it has.
            identity = self.current
            if identity.cert_pem == served[0]:
                return None
            served[0] = identity.cert_pem
            return configuration(identity)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self._current), fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS presenting this workload's certificate and trusting only the mesh CA."""
        identity = self.current
        return grpc.ssl_channel_credentials(
            root_certificates=identity.ca_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )

    def expected_peer_options(self, service: str) -> list[tuple[str, str]]:
        """Channel options making the handshake fail unless the peer's certificate names `service`."""
        return [("grpc.ssl_target_name_override", service_dns_name(service, self.trust_domain))]
