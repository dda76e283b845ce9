"""The BFF's view of the mesh: balanced auth and OCR clients from etcd, and the calls it makes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from ocrmesh.auth.v1 import auth_pb2
from ocrmesh.ocr.v1 import ocr_pb2

from mesh import credentials
from mesh.mesh_client import MeshClient
from mesh.picking import RetryPolicy
from web_bff.session import Tokens

AUTH = "/ocrmesh.auth.v1.AuthService/"
SERVICES = ("auth", "ocr")


def tokens_of(pair: auth_pb2.TokenPair) -> Tokens:
    return Tokens(
        access=pair.access_token,
        access_expires_at=pair.access_expires_at.ToSeconds(),
        refresh=pair.refresh_token,
        refresh_expires_at=pair.refresh_expires_at.ToSeconds(),
    )


class Backends:
    """A MeshClient per service (discovery from etcd, p2c balancing, retries), opened together.

    Calls raise grpc.aio.AioRpcError as the services answer; `http_errors.from_rpc` maps them.
    """

    def __init__(self, etcd: str, auth_timeout_s: float, ocr_timeout_s: float) -> None:
        self.etcd = etcd
        self.auth_timeout_s = auth_timeout_s
        self.ocr_timeout_s = ocr_timeout_s
        self.auth = MeshClient.from_etcd(etcd, "auth")
        # A browser user would rather wait than be bounced: follow a busy instance's retry hint
        # whenever it fits the request's own deadline (the mesh default gives up past 5 s).
        self.ocr = MeshClient.from_etcd(
            etcd, "ocr", retry=RetryPolicy(max_attempts=4, max_wait_s=ocr_timeout_s)
        )

    async def start(self) -> None:
        """Start discovery without waiting: the BFF serves (and says what is missing) meanwhile."""
        await asyncio.gather(self.auth.start(0.0), self.ocr.start(0.0))

    async def close(self) -> None:
        await asyncio.gather(self.auth.close(), self.ocr.close())

    def missing(self) -> list[str]:
        """Services with no endpoint known yet."""
        return [name for name in SERVICES if not getattr(self, name).endpoints()]

    async def wait_ready(self, timeout: float) -> list[str]:
        """Wait up to `timeout` for an endpoint of each service; the services still missing."""
        deadline = time.monotonic() + timeout
        for client in (self.auth, self.ocr):
            await client.wait_for_endpoints(1, max(0.0, deadline - time.monotonic()))
        return self.missing()

    async def register(self, username: str, password: str, client_address: str = "") -> auth_pb2.User:
        # The browser's address, for the per-address registration throttle (see login).
        meta = [("x-forwarded-for", client_address)] if client_address else []
        reply = await self.auth.unary(
            AUTH + "Register",
            auth_pb2.RegisterRequest(username=username, password=password),
            auth_pb2.RegisterResponse,
            timeout=self.auth_timeout_s,
            metadata=meta,
        )
        return reply.user

    async def login(
        self, username: str, password: str, client_address: str = ""
    ) -> tuple[auth_pb2.User, Tokens]:
        # The browser's address goes along for per-client login throttling (believed by auth
        # instances whose --trusted-proxies holds the BFF's address; otherwise every login would
        # come from the BFF, and one abuser could lock out every browser user).
        meta = [("x-forwarded-for", client_address)] if client_address else []
        reply = await self.auth.unary(
            AUTH + "Login",
            auth_pb2.LoginRequest(username=username, password=password),
            auth_pb2.LoginResponse,
            timeout=self.auth_timeout_s,
            metadata=meta,
        )
        return reply.user, tokens_of(reply.tokens)

    async def refresh(self, refresh_token: str) -> Tokens:
        reply = await self.auth.unary(
            AUTH + "Refresh",
            auth_pb2.RefreshRequest(refresh_token=refresh_token),
            auth_pb2.RefreshResponse,
            timeout=self.auth_timeout_s,
        )
        return tokens_of(reply.tokens)

    async def logout(self, refresh_token: str) -> int:
        reply = await self.auth.unary(
            AUTH + "Logout",
            auth_pb2.LogoutRequest(refresh_token=refresh_token),
            auth_pb2.LogoutResponse,
            timeout=self.auth_timeout_s,
        )
        return int(reply.revoked_sessions)

    async def whoami(self, access_token: str) -> auth_pb2.WhoAmIResponse:
        return await self.auth.unary(
            AUTH + "WhoAmI",
            auth_pb2.WhoAmIRequest(),
            auth_pb2.WhoAmIResponse,
            timeout=self.auth_timeout_s,
            metadata=credentials.bearer(access_token),
        )

    async def recognize_pages(
        self,
        data: bytes,
        filename: str,
        access_token: str,
        on_event: Callable[[ocr_pb2.RecognizePagesResponse], Awaitable[None]],
    ) -> ocr_pb2.OcrResult:
        """`recognize`, page by page (RecognizePages): `on_event` hears each step as it comes."""
        return await self.ocr.ocr().recognize_pages(
            data,
            on_event,
            filename=filename,
            options=ocr_pb2.RecognizeOptions(return_boxes=True),
            timeout=self.ocr_timeout_s,
            metadata=credentials.bearer(access_token),
        )

    async def recognize(self, data: bytes, filename: str, access_token: str) -> ocr_pb2.OcrResult:
        """OCR with boxes, the user's token forwarded as the CLI does (`authorization: Bearer`)."""
        meta: Sequence[tuple[str, str]] = credentials.bearer(access_token)
        return await self.ocr.ocr().recognize(
            data,
            filename=filename,
            options=ocr_pb2.RecognizeOptions(return_boxes=True),
            timeout=self.ocr_timeout_s,
            metadata=meta,
        )
