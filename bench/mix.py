"""Mixed workload (`--mix login=1,ocr=9`): logins and OCR calls interleaved in one closed loop."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from ocrmesh.auth.v1 import auth_pb2

from bench.loadgen import BenchError, CallFactory, LoadOptions, RequestData, UnaryBytesCall, insecure_calls
from bench.mesh_calls import mesh_call_factory
from bench.report import CallResult, build_report, go_code_name, go_error
from bench.sweep_plan import PlanError, parse_mix
from bench.sweep_report import summarize
from mesh import credentials

LOGIN_PATH = "/ocrmesh.auth.v1.AuthService/Login"
KINDS = ("login", "ocr")


def sequence(mix: Mapping[str, int], users: int) -> list[tuple[str, int]]:
    """The repeating order of calls: (kind, user index) pairs, logins spread evenly among OCR calls
    and rotating over `users` accounts (one user's parallel logins are throttled by design)."""
    logins, ocrs = mix.get("login", 0), mix.get("ocr", 0)
    pattern: list[str] = []
    for i in range(logins + ocrs):
        # Bresenham spread: login number k lands at about k * (logins + ocrs) / logins.
        due = logins and (i * logins) // (logins + ocrs) != ((i + 1) * logins) // (logins + ocrs)
        pattern.append("login" if due else "ocr")
    rounds = max(1, users) if logins else 1
    out: list[tuple[str, int]] = []
    user = 0
    for _ in range(rounds):
        for kind in pattern:
            if kind == "login":
                out.append((kind, user % max(1, users)))
                user += 1
            else:
                out.append((kind, 0))
    return out


@dataclass
class MixRecorder:
    """Each kind's calls, recorded beside the run's own report, for a per-kind breakdown."""

    results: dict[str, list[CallResult]] = field(default_factory=lambda: {k: [] for k in KINDS})
    began_ns: int = 0

    def reports(self, total_ns: int) -> dict[str, dict[str, Any]]:
        return {
            kind: build_report(found, {"call": kind}, total_ns, "timeout")
            for kind, found in self.results.items()
            if found
        }


class _RoutedCall:
    """A UnaryBytesCall sending each message to the call its kind belongs to, and recording it."""

    def __init__(self, routes: Mapping[bytes, tuple[str, UnaryBytesCall]], recorder: MixRecorder) -> None:
        self.routes = routes  # keyed by message bytes: bytes cache their hash, so the lookup is cheap
        self.recorder = recorder
        self.offset = time.time_ns() - time.perf_counter_ns()

    async def __call__(
        self,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> bytes:
        kind, call = self.routes[request]
        start = time.perf_counter_ns()
        try:
            reply = await call(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            status = go_code_name(exc.code().value[0])
            text = exc.details() or ""
            self.recorder.results[kind].append(
                CallResult(
                    start + self.offset, time.perf_counter_ns() - start, status, go_error(status, text)
                )
            )
            raise
        self.recorder.results[kind].append(
            CallResult(start + self.offset, time.perf_counter_ns() - start, "OK", "")
        )
        return reply


def mixed_request(
    mix: Mapping[str, int], ocr_request: bytes, users: Sequence[tuple[str, str]]
) -> tuple[RequestData, dict[bytes, str]]:
    """The messages sent round-robin, and each distinct message's kind."""
    logins = [
        auth_pb2.LoginRequest(username=name, password=password).SerializeToString()
        for name, password in users
    ]
    messages: list[bytes] = []
    kinds: dict[bytes, str] = {ocr_request: "ocr"}
    for kind, user in sequence(mix, len(users)):
        if kind == "login":
            message = logins[user]
            kinds[message] = "login"
        else:
            message = ocr_request
        messages.append(message)
    return RequestData(tuple(messages), binary=True, source="mix"), kinds


def mixed_factory(
    ocr: CallFactory, login: CallFactory, login_target: str, kinds: Mapping[bytes, str], recorder: MixRecorder
) -> CallFactory:
    """A CallFactory opening the OCR and the login connections and routing each message by kind."""

    @contextlib.asynccontextmanager
    async def calls(target: str, path: str, options: LoadOptions) -> AsyncIterator[Sequence[UnaryBytesCall]]:
        async with (
            ocr(target, path, options) as ocr_calls,
            login(login_target, LOGIN_PATH, options) as auth_calls,
        ):
            routed = []
            for i in range(max(len(ocr_calls), len(auth_calls))):
                by_kind = {"ocr": ocr_calls[i % len(ocr_calls)], "login": auth_calls[i % len(auth_calls)]}
                routes = {message: (kind, by_kind[kind]) for message, kind in kinds.items()}
                routed.append(_RoutedCall(routes, recorder))
            yield routed

    return calls


async def for_load_cli(
    mix_text: str, ns: Any, request: RequestData, ocr: CallFactory
) -> tuple[RequestData, CallFactory, MixRecorder]:
    """`ocrmesh bench --mix login=N,ocr=M`: the mixed request list and CallFactory for the flags given.

    Logins use the --login account (password from USER:PASSWORD or OCRMESH_PASSWORD, never a second
    prompt) at --auth-target, or at the `auth` instances in --etcd through the balancing client.
    """
    try:
        mix = parse_mix(mix_text)
    except PlanError as exc:
        raise BenchError(str(exc)) from None
    if not getattr(ns, "login", None):
        raise BenchError("--mix needs --login USER[:PASSWORD]: the mixed logins use that account")
    try:
        user, password = credentials.split_login(ns.login)
    except credentials.CredentialsError as exc:
        raise BenchError(str(exc)) from None
    password = password or os.environ.get(credentials.PASSWORD_ENV)
    if not password:
        raise BenchError(
            f"--mix: give the password as --login {user}:PASSWORD or in {credentials.PASSWORD_ENV}"
        )
    if ns.etcd:
        login_target, login = f"etcd://{ns.etcd}/auth", mesh_call_factory(ns.etcd, "auth")
    else:
        login_target, login = (await credentials.auth_targets(ns.auth_target, None))[0], insecure_calls
    data, kinds = mixed_request(mix, request.messages[0], [(user, password)])
    recorder = MixRecorder()
    return data, mixed_factory(ocr, login, login_target, kinds, recorder), recorder


def summary_line(report: Mapping[str, Any]) -> str:
    """One kind's figures in a line: calls, OK/s, mean and p95 of OK calls, status counts."""
    s = summarize(report)
    codes = ", ".join(f"{code} {n}" for code, n in s["status_codes"].items())
    return (
        f"{s['calls']} calls, {s['ok_per_s']:.2f} OK/s, mean OK {s['avg_ok_ms'] / 1e3:.2f}s, "
        f"p95 OK {s['p95_ok_ms'] / 1e3:.2f}s ({codes})"
    )
