"""How a sweep cell's load reaches OCR: direct (balancing client over etcd), gateway (Envoy), bff (HTTP)."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2

from bench.http_load import HttpLoad, run_http_load
from bench.loadgen import (
    CallFactory,
    LoadOptions,
    RequestData,
    UnaryBytesCall,
    channel_options,
    connect,
    insecure_calls,
    run_load,
)
from bench.mesh_calls import mesh_call_factory
from bench.mix import MixRecorder, mixed_factory, mixed_request
from bench.web_session import BffSessions, bff_ocr_sender
from deploy.supervisor import LocalMesh
from mesh import balancer, credentials

RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"
CALL_TIMEOUT_S = 120.0


class PathUnavailable(RuntimeError):
    """This mesh has no way in for the path (the gateway or BFF is not in this build yet)."""


@dataclass(frozen=True)
class Account:
    """A bench user registered on the mesh's auth service."""

    username: str
    password: str


async def register(auth_address: str, account: Account) -> None:
    """Create the account (an existing one with that name is fine: the password is ours)."""
    async with balancer.direct_channel(auth_address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            await stub.Register(
                auth_pb2.RegisterRequest(username=account.username, password=account.password), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                why = credentials.explain_login_error(exc, account.username, auth_address)
                raise RuntimeError(f"cannot register the bench account: {why}") from None


def new_accounts(count: int) -> list[Account]:
    """Fresh bench accounts with random passwords (never printed or stored)."""
    tag = secrets.token_hex(3)
    return [Account(f"bench-{tag}-{i}", secrets.token_urlsafe(18)) for i in range(count)]


async def bearer_metadata(mesh: LocalMesh, account: Account | None) -> dict[str, str]:
    """An authorization header for OCR calls, fresh for this cell (tokens live about 15 minutes)."""
    if account is None or not mesh.auth_on:
        return {}
    reply = await credentials.login(mesh.addresses("auth"), account.username, account.password)
    return dict(credentials.bearer(reply.tokens.access_token))


def bff_sessions(mesh: LocalMesh, account: Account | None) -> BffSessions | None:
    """Browser-like sessions on the mesh's BFF (logged in as `account` when auth is on), or None."""
    url = mesh.bff_url
    if not url:
        return None
    if account is None or not mesh.auth_on:
        return BffSessions(url, None, None, CALL_TIMEOUT_S)
    return BffSessions(url, account.username, account.password, CALL_TIMEOUT_S)


def grpc_way_in(mesh: LocalMesh, path: str) -> tuple[str, CallFactory, str, CallFactory]:
    """(OCR target, its CallFactory, login target, its CallFactory) for a gRPC path."""
    if path == "direct":
        etcd = mesh.etcd.endpoint
        return (
            f"etcd://{etcd}/ocr",
            mesh_call_factory(etcd, "ocr"),
            f"etcd://{etcd}/auth",
            mesh_call_factory(etcd, "auth"),
        )
    if path == "gateway":
        address = mesh.gateway_address
        if not address:
            raise PathUnavailable(
                "no gateway in this mesh (`ocrmesh serve gateway` is not in this build yet)"
            )
        return address, insecure_calls, address, insecure_calls
    if path == "plain":
        addresses = mesh.addresses("ocr")
        if not addresses:
            raise PathUnavailable("no OCR instance in this mesh")
        return "ipv4:" + ",".join(addresses), round_robin_calls, "", insecure_calls
    raise ValueError(f"{path} is not a gRPC path")


@contextlib.asynccontextmanager
async def round_robin_calls(
    target: str, path: str, options: LoadOptions
) -> AsyncIterator[Sequence[UnaryBytesCall]]:
    """What a plain gRPC client with client-side balancing has: one channel, round_robin over the
    instances' addresses (`ipv4:a,b`), no retries, no knowledge of the mesh."""
    channel = grpc.aio.insecure_channel(
        target, options=[*channel_options(0), ("grpc.lb_policy_name", "round_robin")]
    )
    try:
        await connect(channel, options.connect_timeout_s)
        yield [channel.unary_unary(path, _registered_method=True)]
    finally:
        await channel.close()


@dataclass
class LoadResult:
    """A cell's ghz report, and with a mix, one report per call kind."""

    report: dict[str, Any]
    by_kind: dict[str, dict[str, Any]] | None = None


async def run_path_load(
    mesh: LocalMesh,
    path: str,
    *,
    concurrency: int,
    duration_s: float,
    image: bytes,
    filename: str,
    metadata: Mapping[str, str],
    name: str,
    mix: Mapping[str, int] | None = None,
    mix_accounts: Sequence[Account] = (),
    sessions: BffSessions | None = None,
    honor_retry: bool = True,
) -> LoadResult:
    """One closed-loop run through `path`; calls still in flight at the end finish and count.

    `honor_retry` False: a client told RESOURCE_EXHAUSTED (HTTP 429/503) calls again at once, as
    ghz does, instead of waiting the hint."""
    if path == "bff":
        if mix:
            raise PathUnavailable("--mix is measured over gRPC paths only (the BFF path sends OCR only)")
        url = mesh.bff_url
        if not url or sessions is None:
            raise PathUnavailable("no BFF in this mesh (`ocrmesh serve bff` is not in this build yet)")
        report = await run_http_load(
            HttpLoad(url, concurrency, duration_s, CALL_TIMEOUT_S, name=name, honor_retry_after=honor_retry),
            bff_ocr_sender(url, image, filename),
            await sessions.take(concurrency),
        )
        return LoadResult(report)
    target, factory, login_target, login_factory = grpc_way_in(mesh, path)
    options = LoadOptions(
        call=RECOGNIZE,
        concurrency=concurrency,
        duration=duration_s,
        timeout=CALL_TIMEOUT_S,
        metadata=dict(metadata),
        name=name,
        duration_stop="wait",
        honor_retry_info=honor_retry,
    )
    request = ocr_pb2.RecognizeRequest(image=image, filename=filename).SerializeToString()
    if not mix:
        return LoadResult(
            await run_load(options, target, RequestData((request,), binary=True), False, call_factory=factory)
        )
    data, kinds = mixed_request(mix, request, [(a.username, a.password) for a in mix_accounts])
    recorder = MixRecorder()
    factory = mixed_factory(factory, login_factory, login_target, kinds, recorder)
    options = dataclasses.replace(options, tags={"ocrmesh.mix": ",".join(f"{k}={v}" for k, v in mix.items())})
    report = await run_load(options, target, data, False, call_factory=factory)
    return LoadResult(report, recorder.reports(int(report["total"])))
