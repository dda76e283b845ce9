"""Who may call what: a server interceptor that lets a call through only when the caller's mesh
certificate names a service allowed for the method's gRPC service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

import grpc

from mesh import errors
from mesh.handler_wrapping import wrap_handler
from mesh.spiffe_id import SpiffeId, SpiffeIdError

log = logging.getLogger(__name__)

ANY_MESH_IDENTITY = "*"
"""In a rule: every workload holding a certificate from the mesh CA (health checks, reflection)."""


def caller_identity(context: Any) -> SpiffeId | None:
    """The SPIFFE ID in the caller's verified client certificate, or None (plaintext, no SPIFFE URI)."""
    found = context.auth_context().get("peer_spiffe_id")
    if not found:
        return None
    try:
        return SpiffeId.parse(found[0].decode())
    except (SpiffeIdError, UnicodeDecodeError):
        return None


class CallerPolicyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses PERMISSION_DENIED (reason CALLER_NOT_ALLOWED) a call whose caller's service is not
    in `rules[grpc service]` (`default` for services not listed; ANY_MESH_IDENTITY allows all).

    The TLS handshake already proved the certificate comes from the mesh CA and is in date; this
    decides what that workload may do. Only for servers that require client certificates.
    """

    def __init__(
        self,
        trust_domain: str,
        rules: Mapping[str, Collection[str]],
        default: Collection[str] = (ANY_MESH_IDENTITY,),
    ) -> None:
        self.trust_domain = trust_domain
        self.rules = {name: frozenset(allowed) for name, allowed in rules.items()}
        self.default = frozenset(default)

    def allowed(self, method: str, caller: SpiffeId | None) -> bool:
        """Whether `caller` may call `method` ("/package.Service/Method")."""
        if caller is None or caller.trust_domain != self.trust_domain:
            return False
        service = method.lstrip("/").split("/", 1)[0]
        allowed = self.rules.get(service, self.default)
        return ANY_MESH_IDENTITY in allowed or caller.service in allowed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        @contextlib.asynccontextmanager
        async def checked(context: Any, unary: bool) -> AsyncIterator[None]:
            caller = caller_identity(context)
            if not self.allowed(method, caller):
                who = caller.uri if caller else "a caller without a mesh identity"
                log.warning("refused %s to %s: not allowed by the caller policy", method, who)
                await errors.abort(
                    context,
                    errors.simple(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{who} may not call {method}",
                        reason="CALLER_NOT_ALLOWED",
                    ),
                )
            yield

        return wrap_handler(handler, checked)
