"""Joining and leaving the registry from a service's config: the instance record, its lease, the linger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from mesh import __version__
from mesh.lease import Registration
from mesh.registry import Instance


class RegistrySettings(Protocol):
    """The registry fields every service config carries (`--etcd`, `--advertise`, ...)."""

    @property
    def etcd(self) -> str: ...

    @property
    def advertise(self) -> str: ...

    @property
    def lease_ttl_s(self) -> int: ...

    @property
    def zone(self) -> str: ...

    @property
    def weight(self) -> int: ...


async def join_registry(
    settings: RegistrySettings,
    *,
    service: str,
    instance_id: str,
    address: str,
    slots: int,
    extra: Mapping[str, Any],
    device: str = "",
    wait_s: float = 5.0,
) -> tuple[Registration, bool]:
    """Register this warm instance under a lease; (registration, registered within `wait_s`).

    Never waits for ever: if etcd is away the registration keeps trying in the background and the
    caller serves anyway (and says so).
    """
    registration = Registration(
        settings.etcd,
        Instance(
            service=service,
            id=instance_id,
            address=settings.advertise or address,
            version=__version__,
            device=device,
            slots=slots,
            zone=settings.zone,
            weight=settings.weight,
            started_at=time.time(),
            extra=extra,
        ),
        ttl=settings.lease_ttl_s,
    )
    await registration.start()
    return registration, await registration.wait_registered(wait_s)


async def leave_registry(registration: Registration | None, linger_s: float) -> None:
    """Revoke the lease, then keep serving `linger_s` so clients see the change before NOT_SERVING."""
    if registration is None:
        return
    await registration.close()
    await asyncio.sleep(linger_s)
