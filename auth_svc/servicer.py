"""ocrmesh.auth.v1.AuthService over gRPC: protobuf in, `Accounts` call, protobuf out."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from auth_svc.accounts import Accounts
from auth_svc.keys import Jwks
from auth_svc.store import UserRecord
from auth_svc.tokens import TokenPair
from mesh import errors
from mesh.caller_policy import caller_identity
from mesh.peer_address import peer_ip
from mesh.spiffe_id import SpiffeId
from mesh.token_verify import current_claims

T = TypeVar("T")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

FORWARDED_FOR = "x-forwarded-for"


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def user_message(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(user_id=user.user_id, username=user.username, created_at=timestamp(user.created_at))


def pair_message(pair: TokenPair) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=pair.access_token,
        access_expires_at=timestamp(pair.access_expires_at),
        refresh_token=pair.refresh_token,
        refresh_expires_at=timestamp(pair.refresh_expires_at),
        token_type="Bearer",
    )


def jwks_message(jwks: Jwks) -> auth_pb2.GetJwksResponse:
    keys = [
        auth_pb2.Jwk(
            kid=k["kid"],
            kty=k["kty"],
            crv=k["crv"],
            x=k["x"],
            y=k["y"],
            alg=k["alg"],
            use=k["use"],
        )
        for k in jwks["keys"]
    ]
    return auth_pb2.GetJwksResponse(keys=keys, jwks_json=json.dumps(jwks, sort_keys=True))


PROXY_SERVICES = frozenset({"gateway", "bff"})
"""With mTLS, the mesh services whose x-forwarded-for is believed: they pass on their clients' addresses."""


def client_address(
    peer: str,
    metadata: Iterable[tuple[str, Any]] | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    caller: SpiffeId | None = None,
) -> str:
    """The real client's IP: what a trusted proxy (the BFF, the gateway) says in x-forwarded-for,
    else the peer's.

    With mTLS (`caller`: the peer's verified identity) a proxy is trusted by its certificate alone:
    a gateway or BFF identity, from any address; any other caller's header is ignored, whatever
    address it comes from. Without one, by its address (`trusted`, --trusted-proxies). The last
    x-forwarded-for hop is the one the proxy added (Envoy appends the address it saw; the BFF sends
    one); anything before it came from the client and proves nothing.
    """
    ip = peer_ip(peer)
    if caller is not None:
        from_proxy = caller.service in PROXY_SERVICES
    else:
        try:
            from_proxy = any(ipaddress.ip_address(ip) in net for net in trusted)
        except ValueError:
            from_proxy = False
    if from_proxy:
        for key, value in metadata or ():
            if key == FORWARDED_FOR and isinstance(value, str) and value.strip():
                return value.split(",")[-1].strip()[:64]
    return ip


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):  # type: ignore[misc]
    """Converts protobuf to `Accounts` calls and back; refusals go out with rich details."""

    def __init__(
        self,
        accounts: Accounts,
        jwks: Callable[[], Jwks],
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self._accounts = accounts
        self._jwks = jwks
        self._trusted_proxies = tuple(trusted_proxies)

    def _address(self, context: Context) -> str:
        return client_address(
            context.peer(), context.invocation_metadata(), self._trusted_proxies, caller_identity(context)
        )

    async def _answer(self, context: Context, call: Awaitable[T]) -> T:
        try:
            return await call
        except errors.RichError as exc:
            await errors.abort(context, exc)
            raise  # unreachable: abort raises

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Context
    ) -> auth_pb2.RegisterResponse:
        user = await self._answer(
            context, self._accounts.register(request.username, request.password, self._address(context))
        )
        return auth_pb2.RegisterResponse(user=user_message(user))

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        user, pair = await self._answer(
            context, self._accounts.login(request.username, request.password, self._address(context))
        )
        return auth_pb2.LoginResponse(user=user_message(user), tokens=pair_message(pair))

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Context) -> auth_pb2.RefreshResponse:
        pair = await self._answer(context, self._accounts.refresh(request.refresh_token))
        return auth_pb2.RefreshResponse(tokens=pair_message(pair))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        revoked = await self._answer(
            context, self._accounts.logout(request.refresh_token, request.all_sessions)
        )
        return auth_pb2.LogoutResponse(revoked_sessions=revoked)

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Context) -> auth_pb2.WhoAmIResponse:
        claims = current_claims.get()
        user = await self._answer(context, self._accounts.whoami(claims))
        assert claims is not None  # whoami refused a call without claims
        return auth_pb2.WhoAmIResponse(
            user=user_message(user),
            token_expires_at=timestamp(float(claims["exp"])),
            token_id=str(claims["jti"]),
        )

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Context) -> auth_pb2.GetJwksResponse:
        return jwks_message(self._jwks())
