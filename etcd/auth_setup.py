"""Make etcd's users and roles match mesh/etcd_access.POLICY, and turn its auth on: idempotent.

Run with the `admin` identity (etcd's `root` role) against an etcd that requires client
certificates: before auth is on anyone who gets through TLS may set it up; after, only a root user
may, and etcd knows `admin` by its certificate. Users get no password: etcd authenticates them by
their certificate's common name, the service name the mesh CA wrote there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aetcd
import grpc
from aetcd import rpc, utils

from mesh.etcd_access import ADMIN, POLICY, ROOT_ROLE, permissions

log = logging.getLogger(__name__)

Perm = tuple[int, bytes, bytes]
"""(permission type, key, range_end) as etcd stores it; range_end is empty for one key."""


def role_permissions(role: str) -> set[Perm]:
    """The etcd permissions `role` should hold under POLICY."""
    wanted: set[Perm] = set()
    for key, (read, write) in permissions(role).items():
        kind = (
            rpc.Permission.READWRITE
            if read and write
            else rpc.Permission.WRITE
            if write
            else rpc.Permission.READ
        )
        raw = key.encode()
        wanted.add((kind, raw, utils.prefix_range_end(raw) if key.endswith("/") else b""))
    return wanted


def user_roles() -> dict[str, str]:
    """User -> its one role: each service's role of its own name, `root` for root and ADMIN."""
    return {"root": ROOT_ROLE, ADMIN: ROOT_ROLE} | {role: role for role in POLICY}


@dataclass
class Changes:
    """What `apply_policy` changed (all empty: etcd already matched)."""

    done: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.done)


async def apply_policy(client: aetcd.Client, timeout: float = 5.0) -> Changes:
    """Add or fix every role and user POLICY names, then enable auth if it is off.

    Roles get exactly their POLICY permissions (extra ones are revoked); users get their role
    (extra roles are revoked). Users and roles POLICY does not name are left alone.
    """
    await client.connect()
    stub = rpc.AuthStub(client.channel)
    meta = client.metadata
    changes = Changes()

    roles = set((await stub.RoleList(rpc.AuthRoleListRequest(), timeout=timeout, metadata=meta)).roles)
    for role in [ROOT_ROLE, *POLICY]:
        if role not in roles:
            await stub.RoleAdd(rpc.AuthRoleAddRequest(name=role), timeout=timeout, metadata=meta)
            changes.done.append(f"role {role} added")
        if role == ROOT_ROLE:
            continue
        got = await stub.RoleGet(rpc.AuthRoleGetRequest(role=role), timeout=timeout, metadata=meta)
        held = {(p.permType, p.key, p.range_end) for p in got.perm}
        wanted = role_permissions(role)
        for kind, key, end in sorted(held - wanted):
            request = rpc.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=end)
            await stub.RoleRevokePermission(request, timeout=timeout, metadata=meta)
            changes.done.append(f"role {role}: revoked {key.decode()} ({_kind(kind)})")
        for kind, key, end in sorted(wanted - held):
            perm = rpc.Permission(permType=kind, key=key, range_end=end)
            grant = rpc.AuthRoleGrantPermissionRequest(name=role, perm=perm)
            await stub.RoleGrantPermission(grant, timeout=timeout, metadata=meta)
            changes.done.append(f"role {role}: granted {key.decode()} ({_kind(kind)})")

    users = set((await stub.UserList(rpc.AuthUserListRequest(), timeout=timeout, metadata=meta)).users)
    for user, role in user_roles().items():
        if user not in users:
            add = rpc.AuthUserAddRequest(name=user, options=rpc.UserAddOptions(no_password=True))
            await stub.UserAdd(add, timeout=timeout, metadata=meta)
            changes.done.append(f"user {user} added")
        got_user = await stub.UserGet(rpc.AuthUserGetRequest(name=user), timeout=timeout, metadata=meta)
        for extra in sorted(set(got_user.roles) - {role}):
            revoke = rpc.AuthUserRevokeRoleRequest(name=user, role=extra)
            await stub.UserRevokeRole(revoke, timeout=timeout, metadata=meta)
            changes.done.append(f"user {user}: role {extra} revoked")
        if role not in got_user.roles:
            await stub.UserGrantRole(
                rpc.AuthUserGrantRoleRequest(user=user, role=role), timeout=timeout, metadata=meta
            )
            changes.done.append(f"user {user}: role {role} granted")

    try:
        status = await stub.AuthStatus(rpc.AuthStatusRequest(), timeout=timeout, metadata=meta)
        enabled: bool | None = bool(status.enabled)
    except grpc.aio.AioRpcError as exc:
        # etcd before 3.5 (Debian's 3.4, the compose stand-in) has no AuthStatus; its AuthEnable
        # answers OK when auth is already on, so enabling again is safe there.
        if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
            raise
        enabled = None
    if not enabled:
        await stub.AuthEnable(rpc.AuthEnableRequest(), timeout=timeout, metadata=meta)
        if enabled is False:
            changes.done.append("auth enabled")
    if changes:
        log.info("etcd access policy applied", extra={"changes": changes.done})
    return changes


def _kind(kind: int) -> str:
    return str(rpc.Permission.Type.Name(kind))
