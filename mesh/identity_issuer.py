"""Keeps a set of workload identity folders issued from the mesh CA, renewing each before it expires.

`ocrmesh up` runs one in the supervisor (which holds the CA key); the workloads only read their
folders, and pick the new files up without a restart (mesh/workload_identity.py, Envoy's SDS).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mesh import identity_files
from mesh.certificate_authority import DEFAULT_LEAF_LIFETIME, CertificateAuthority, Leaf

log = logging.getLogger(__name__)

Publish = Callable[[Leaf, bytes], None]
"""Where a leaf goes instead of a folder on this host: (leaf, CA certificate PEM) -> None; e.g. a
Kubernetes Secret that kubelet then refreshes in the workload's mounted volume."""

RENEW_AT = 0.5
"""Renew when this fraction of a leaf's lifetime is left: a workload that misses one renewal
(busy, restarting) still has half a lifetime to pick up the next."""


@dataclass
class IssuedIdentity:
    """One folder the issuer keeps filled."""

    service: str
    instance: str
    folder: Path
    hosts: tuple[str, ...] = ()
    not_after: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    issued: int = 0
    owner: tuple[int, int] | None = None  # (uid, gid) the folder's files are handed to
    publish: Publish | None = None  # instead of writing `folder`


class IdentityIssuer:
    """Issues identities into folders and renews them at RENEW_AT of their lifetime."""

    def __init__(self, ca: CertificateAuthority, lifetime: dt.timedelta = DEFAULT_LEAF_LIFETIME) -> None:
        self.ca = ca
        self.lifetime = lifetime
        self.identities: dict[Path, IssuedIdentity] = {}

    def add(
        self,
        service: str,
        instance: str,
        folder: Path,
        hosts: Sequence[str] = (),
        owner: tuple[int, int] | None = None,
        publish: Publish | None = None,
    ) -> Path:
        """Issue `service`/`instance` into `folder` now and keep renewing it; returns the folder.

        `owner`: hand the files to that (uid, gid). `publish`: send each leaf there instead of
        writing `folder` (which then only names the identity)."""
        kept = IssuedIdentity(service, instance, folder, tuple(hosts), owner=owner, publish=publish)
        self.identities[folder] = kept
        self._issue(kept)
        return folder

    def _issue(self, kept: IssuedIdentity) -> None:
        leaf = self.ca.issue(kept.service, kept.instance, self.lifetime, kept.hosts)
        if kept.publish is not None:
            kept.publish(leaf, self.ca.cert_pem)
        else:
            identity_files.write(kept.folder, leaf, self.ca.cert_pem, owner=kept.owner)
        kept.not_after = leaf.not_after
        kept.issued += 1

    def renew_due(self, now: dt.datetime | None = None) -> int:
        """Renew every identity with RENEW_AT of its lifetime or less left; how many were renewed."""
        now = now or dt.datetime.now(dt.UTC)
        renewed = 0
        for kept in self.identities.values():
            if kept.not_after - now <= self.lifetime * RENEW_AT:
                self._issue(kept)
                renewed += 1
        return renewed

    def next_due_s(self, now: dt.datetime | None = None) -> float:
        """Seconds until the next renewal is due (0 when one is due now)."""
        now = now or dt.datetime.now(dt.UTC)
        if not self.identities:
            return self.lifetime.total_seconds() * RENEW_AT
        soonest = min(k.not_after for k in self.identities.values()) - self.lifetime * RENEW_AT
        return max(0.0, (soonest - now).total_seconds())

    async def run(self) -> None:
        """Renew identities as they come due, until cancelled."""
        while True:
            await asyncio.sleep(min(self.next_due_s(), 30.0))
            try:
                renewed = self.renew_due()
            except OSError:
                log.exception("renewing workload identities failed; trying again shortly")
                await asyncio.sleep(1.0)
                continue
            if renewed:
                log.info("renewed %d workload identities", renewed)
