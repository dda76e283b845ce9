"""Mixed workload (`--mix login=1,ocr=9`): logins and OCR calls interleaved in one closed loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from ocrmesh.auth.v1 import auth_pb2

from bench.loadgen import CallFactory, LoadOptions, RequestData, UnaryBytesCall
from bench.report import CallResult, build_report, go_code_name, go_error

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
