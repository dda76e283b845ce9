"""MeshClient: calls balanced over a service's endpoints (etcd discovery or a static list), with retries."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message

from mesh import errors
from mesh.balancer import Deserializer, EndpointChannels, Serializer
from mesh.discovery import Changes, Discovery
from mesh.kept_status import KeptStatusCall
from mesh.logs import request_id
from mesh.ocr_client import Metadata, OcrClient
from mesh.picking import (
    PREDICTED_WAIT_TRAILER,
    BalancerPolicy,
    EndpointStats,
    Outcome,
    RetryBudget,
    RetryPolicy,
    attempt_delay,
    executed_hint,
    failed_identity_check,
    in_panic,
    is_local_limit,
    outcome_of,
    pick,
    should_retry,
)
from mesh.registry import Instance

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

REQUEST_ID_KEY = "x-request-id"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SAFE_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)


@functools.lru_cache(maxsize=256)
def declared_idempotent(method: str) -> bool:
    """Whether `method` ("/pkg.Service/Method") may safely run twice, as its contract declares it:
    proto option idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT, looked up in this process's
    descriptor pool (the caller has imported the contract to build its request), and the standard
    health check. A call cut mid-flight is retried elsewhere only for these; a method the pool does
    not know, or one without the option (Login, Register, Refresh), is not."""
    if method.startswith(_HEALTH_PREFIX):
        return True
    service, _, name = method.strip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return False
    return found.GetOptions().idempotency_level in _SAFE_LEVELS


def local_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An RPC error raised by the client itself (no endpoint, deadline passed while waiting)."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def static_instances(addresses: Iterable[str], service: str = "static") -> list[Instance]:
    """Registry-like records for a fixed list of host:port addresses (id = address)."""
    seen = dict.fromkeys(a.strip() for a in addresses if a.strip())
    return [Instance(service=service, id=address, address=address) for address in seen]


_Attempt = Callable[[str, float | None, Metadata], Awaitable[T]]
"""One try of a call: (address, timeout left, metadata) -> the reply."""


class MeshClient:
    """Balanced unary calls to one service: p2c over peak-EWMA × in-flight, ejection with backoff,
    panic mode, retries of UNAVAILABLE and RESOURCE_EXHAUSTED on another endpoint within the
    deadline and a retry budget. Endpoints come from etcd (`from_etcd`) or a list (`from_addresses`).

        async with MeshClient.from_etcd("127.0.0.1:2379", "ocr") as mc:
            result = await mc.ocr().recognize(image, timeout=30)
    """

    def __init__(
        self,
        service: str,
        *,
        discovery: Discovery | None = None,
        instances: Iterable[Instance] = (),
        policy: BalancerPolicy | None = None,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        channels: EndpointChannels | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        idempotent: Callable[[str], bool] = declared_idempotent,
        endpoint_wait_s: float = 5.0,
    ) -> None:
        self.service = service
        self.policy = policy or BalancerPolicy()
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self.budget = budget or RetryBudget(now=clock())
        self._channels = channels or EndpointChannels(service)
        self._rng = rng or random.Random()
        self._idempotent = idempotent
        self.endpoint_wait_s = endpoint_wait_s
        self._discovery = discovery
        self._unsubscribe: Callable[[], None] | None = None
        self._stats: dict[str, EndpointStats] = {}
        self._instances: dict[str, Instance] = {}
        self._address_of: dict[str, str] = {}  # instance id -> address, for incremental changes
        self._shadowed = False  # two instances share an address: changes need the full set
        self._changed = asyncio.Event()  # set (and replaced) whenever the endpoint set changes
        self._closed = False
        self.retries = 0
        self.calls = 0
        self.failed_calls = 0
        self.set_endpoints(instances)

    # -- construction and lifecycle ------------------------------------------------------

    @classmethod
    def from_etcd(cls, etcd: str | Sequence[str], service: str, **kwargs: Any) -> MeshClient:
        """Balance over the instances of `service` registered in etcd (watched live)."""
        return cls(service, discovery=Discovery(etcd, service), **kwargs)

    @classmethod
    def from_addresses(cls, addresses: Iterable[str], service: str = "static", **kwargs: Any) -> MeshClient:
        """Balance over a fixed list of host:port addresses."""
        return cls(service, instances=static_instances(addresses, service), **kwargs)

    async def start(self, timeout: float | None = None) -> bool:
        """Start discovery (if any) and wait up to `timeout` for a first endpoint; True if there is one."""
        if self._discovery is not None and self._unsubscribe is None:
            self._unsubscribe = self._discovery.subscribe(self._on_change)
            await self._discovery.start(timeout)
            self.set_endpoints(self._discovery.endpoints().values())
        return await self.wait_for_endpoints(1, 0.0 if timeout is None else timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._discovery is not None:
            await self._discovery.close()
        await self._channels.close()

    async def __aenter__(self) -> MeshClient:
        await self.start(2.0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- endpoints ----------------------------------------------------------------------

    def _on_change(self, changes: Changes, endpoints: Mapping[str, Instance]) -> None:
        if not self._apply_changes(changes):
            self.set_endpoints(endpoints.values())

    def _apply_changes(self, changes: Changes) -> bool:
        """Adopt one discovery change at a cost in proportion to its size (a client watching 2,000
        endpoints pays for the one that changed, not for all of them). False, with nothing done,
        when two instances share an address: only `set_endpoints` settles which one is used."""
        if self._shadowed or self._discovery is None or self._discovery.service is None:
            return False
        going = [*changes.removed, *changes.updated]  # names are instance ids for one service
        leaving: set[str] = set()
        for name in going:
            address = self._address_of.get(name)
            if address is not None:
                leaving.add(address)
        arriving: dict[str, Instance] = {}
        for inst in (*changes.added.values(), *changes.updated.values()):
            holder = self._instances.get(inst.address)
            taken = holder is not None and holder.id != inst.id and inst.address not in leaving
            if taken or inst.address in arriving:
                return False
            arriving[inst.address] = inst
        for address in leaving - arriving.keys():
            self._instances.pop(address, None)
            if self._stats.pop(address, None) is not None and not self._closed:
                with contextlib.suppress(RuntimeError):
                    self._channels.retire(address)
        for name in going:
            self._address_of.pop(name, None)
        for address, inst in arriving.items():
            self._instances[address] = inst
            self._address_of[inst.id] = address
            stats = self._stats.setdefault(address, EndpointStats(address))
            stats.instance_id, stats.weight = inst.id, inst.weight
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def set_endpoints(self, instances: Iterable[Instance]) -> None:
        """Adopt this endpoint set: new addresses get stats, departed ones' channels are retired."""
        by_address: dict[str, Instance] = {}
        count = 0
        for inst in instances:
            count += 1
            known = by_address.get(inst.address)
            if known is None or inst.started_at >= known.started_at:
                by_address[inst.address] = inst
        self._instances = by_address
        self._address_of = {inst.id: address for address, inst in by_address.items()}
        self._shadowed = count != len(by_address)
        for address in [a for a in self._stats if a not in by_address]:
            del self._stats[address]
            if not self._closed:
                with contextlib.suppress(RuntimeError):  # no running loop: nothing to close yet
                    self._channels.retire(address)
        for address, inst in by_address.items():
            stats = self._stats.setdefault(address, EndpointStats(address))
            stats.instance_id, stats.weight = inst.id, inst.weight
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def endpoints(self) -> list[str]:
        """Addresses currently balanced over."""
        return sorted(self._stats)

    def instances(self) -> list[Instance]:
        """The registry records of the endpoints balanced over (what each instance published)."""
        return [self._instances[address] for address in sorted(self._instances)]

    async def wait_for_endpoints(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least `count` endpoints are known; False after `timeout`."""

        async def enough() -> None:
            while len(self._stats) < count:
                await self._changed.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough(), max(0.0, timeout))
        return len(self._stats) >= count

    # -- calls ----------------------------------------------------------------------------

    @overload
    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        idempotent: bool | None = None,
    ) -> M: ...

    @overload
    async def unary(
        self,
        method: str,
        request: bytes | Message,
        response_type: None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        idempotent: bool | None = None,
    ) -> bytes: ...

    async def unary(
        self,
        method: str,
        request: bytes | Message,
        response_type: type[M] | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        idempotent: bool | None = None,
    ) -> M | bytes:
        """Call `method` (/package.Service/Method) on the best endpoint, retrying where safe.

        `request` is a message or its serialized bytes; the reply is parsed as `response_type`,
        or returned as bytes without one. Raises grpc.aio.AioRpcError like a plain stub call.
        """
        body = request if isinstance(request, bytes) else request.SerializeToString()
        parse = None if response_type is None else response_type.FromString
        reply: M | bytes = await self._call(
            self._channels.unary_unary, method, lambda: body, parse, timeout, metadata, idempotent
        )
        return reply

    async def stream_unary(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        idempotent: bool | None = None,
    ) -> M:
        """A client-streaming call; the messages are held so that a retry can send them again."""
        bodies = [r.SerializeToString() for r in requests]

        def attempt(address: str, left: float | None, meta: Metadata) -> KeptStatusCall:
            callable_ = self._channels.stream_unary(address, method, None, response_type.FromString)
            # A refusal before the upload ends must be retried or reported as the server sent it,
            # not as grpcio's INTERNAL "Failed execute_batch" (grpc/grpc#36066; mesh/kept_status.py).
            return KeptStatusCall(callable_(iter(bodies), timeout=left, metadata=meta))

        reply: M = await self._invoke(method, attempt, timeout, metadata, idempotent)
        return reply

    async def stream_stream(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        on_reply: Callable[[M], Awaitable[None]],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        idempotent: bool | None = None,
    ) -> None:
        """A bidirectional call whose requests are all known up front (held for a retry): each reply
        goes to `on_reply` as it arrives. A retried call (on another endpoint) starts over, so
        `on_reply` may hear the first replies again; the contract says how a reply shows that."""
        bodies = [r.SerializeToString() for r in requests]

        def attempt(address: str, left: float | None, meta: Metadata) -> Awaitable[None]:
            callable_ = self._channels.stream_stream(address, method, None, response_type.FromString)
            return _Replies(KeptStatusCall(callable_(iter(bodies), timeout=left, metadata=meta)), on_reply)

        await self._invoke(method, attempt, timeout, metadata, idempotent)

    async def _call(
        self,
        callable_at: Callable[[str, str, Serializer, Deserializer], Any],
        method: str,
        payload: Callable[[], Any],
        parse: Deserializer,
        timeout: float | None,
        metadata: Metadata,
        idempotent: bool | None,
    ) -> Any:
        """One call through `_invoke`: each attempt sends `payload()` on the picked endpoint's callable."""

        def attempt(address: str, left: float | None, meta: Metadata) -> Awaitable[Any]:
            call = callable_at(address, method, None, parse)
            return call(payload(), timeout=left, metadata=meta)  # type: ignore[no-any-return]

        return await self._invoke(method, attempt, timeout, metadata, idempotent)

    def ocr(self) -> OcrClient:
        """An OcrClient (recognize, info) whose calls are balanced by this client."""
        return OcrClient(self)

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()

    def _metadata(self, metadata: Metadata) -> Metadata:
        rid = request_id.get()
        if not rid or any(k == REQUEST_ID_KEY for k, _ in metadata):
            return metadata
        return (*metadata, (REQUEST_ID_KEY, rid))

    async def _await_endpoint(self, deadline: float | None) -> None:
        if self._stats:
            return
        left = self._left(deadline)
        if await self.wait_for_endpoints(
            1, self.endpoint_wait_s if left is None else min(left, self.endpoint_wait_s)
        ):
            return
        if deadline is not None and self._clock() >= deadline:
            raise local_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed waiting for an endpoint")
        where = " (etcd unreachable?)" if self._discovery is not None and not self._discovery.synced else ""
        raise local_error(grpc.StatusCode.UNAVAILABLE, f"no endpoints for service {self.service}{where}")

    async def _invoke(
        self,
        method: str,
        attempt: _Attempt[T],
        timeout: float | None,
        metadata: Metadata,
        idempotent: bool | None,
    ) -> T:
        if self._closed:
            raise RuntimeError("mesh client is closed")
        safe = self._idempotent(method) if idempotent is None else idempotent
        meta = self._metadata(metadata)
        start = self._clock()
        deadline = None if timeout is None else start + timeout
        self.budget.deposit(start)
        self.calls += 1
        tried: set[str] = set()
        attempts = unsent = 0
        while True:
            await self._await_endpoint(deadline)
            now = self._clock()
            chosen = pick(self._stats.values(), self._rng, now, exclude=tried, policy=self.policy)
            assert chosen is not None  # _await_endpoint raised otherwise
            target = chosen.endpoint
            left = self._left(deadline)
            if left is not None and left <= 0:
                self.failed_calls += 1
                raise local_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call")
            tried.add(target.address)
            attempts += 1
            began = self._clock()
            target.begin(began)
            outcome, hint = Outcome.CANCELLED, None
            work = 0.0
            try:
                pending = attempt(target.address, left, meta)
                result = await pending
                outcome = Outcome.OK
                reported = await _reported_wait_s(pending)
                if reported is not None:
                    target.report_wait(reported, self._clock())
                return result
            except grpc.aio.AioRpcError as err:
                failure = err
                status = errors.from_call_error(err)
                code, details = err.code(), err.details() or ""
                reason = errors.error_reason(status)
                outcome, hint = outcome_of(code, reason), errors.retry_delay_s(status)
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and is_local_limit(details):
                    outcome = Outcome.ERROR  # our own message limit: no endpoint does better
                if outcome is Outcome.ERROR:
                    self.failed_calls += 1
                    raise
                executed = executed_hint(code, details, reason)
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    work = errors.metadata_seconds(errors.error_metadata(status), "service_ms") or 0.0
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling() or self._closed:
                    raise
                # Not us: our channel was closed under the call (its endpoint left, grace ran out).
                outcome, code, executed = Outcome.UNREACHABLE, grpc.StatusCode.UNAVAILABLE, True
                failure = local_error(code, f"endpoint {target.address} left while the call ran")
            finally:
                ended = self._clock()
                target.end(outcome, ended, ended - began, self.policy, self._rng, hint)
            if code is grpc.StatusCode.UNAVAILABLE and not executed:
                unsent += 1
                if outcome is Outcome.UNREACHABLE:
                    target.eject(ended, self.policy, self._rng)  # refused: no second try needed to know
                if failed_identity_check(details):
                    log.warning(
                        "endpoint %s registered as %s did not prove it is %s (TLS handshake: %s); skipped",
                        target.address,
                        self.service,
                        self.service,
                        details,
                    )
            now = self._clock()
            following = pick(self._stats.values(), self._rng, now, exclude=tried, policy=self.policy)
            wait = 0.0 if following is None else attempt_delay(following, attempts, self.retry, self._rng)
            decision = should_retry(
                code,
                executed,
                attempts,
                self._left(deadline),
                self.budget,
                now,
                idempotent=safe,
                wait_s=wait,
                work_s=work,
                policy=self.retry,
                unsent=unsent,
            )
            if not decision.retry or (decision.charged and not self.budget.withdraw(now)):
                self.failed_calls += 1
                log.debug(
                    "not retrying",
                    extra={"method": method, "code": code.name, "why": decision.reason, "attempts": attempts},
                )
                raise failure
            self.retries += 1
            log.debug(
                "retrying",
                extra={
                    "method": method,
                    "code": code.name,
                    "from": target.address,
                    "wait_s": decision.delay_s,
                },
            )
            if decision.delay_s > 0:
                await asyncio.sleep(decision.delay_s)

    # -- status -----------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint: address, instance, in flight, EWMA ms, ejected, busy, requests, failures."""
        now = self._clock()
        rows = []
        for s in sorted(self._stats.values(), key=lambda s: s.address):
            rows.append(
                {
                    "address": s.address,
                    "instance_id": s.instance_id,
                    "weight": s.weight,
                    "in_flight": s.in_flight,
                    "ewma_ms": round(s.latency(now, self.policy) * 1000, 3),
                    "ejected": s.ejected(now),
                    "ejected_for_s": round(max(0.0, s.ejected_until - now), 3),
                    "busy": s.busy(now),
                    "requests": s.requests,
                    "failures": s.failures,
                    "rejections": s.rejections,
                }
            )
        return rows

    def status(self) -> dict[str, Any]:
        """The client as a whole: endpoints, panic mode, calls, retries, retry budget, discovery."""
        now = self._clock()
        return {
            "service": self.service,
            "endpoints": self.stats(),
            "panic": in_panic(list(self._stats.values()), now, self.policy.panic_threshold),
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "retries": self.retries,
            "retry_tokens": round(self.budget.available(now), 2),
            "retiring_channels": self._channels.retiring,
            "discovery": None if self._discovery is None else self._discovery.status(),
        }


class _Replies:
    """Awaiting it hands every reply of a streaming call to `on_reply`; its trailer stays readable."""

    def __init__(self, call: KeptStatusCall, on_reply: Callable[[Any], Awaitable[None]]) -> None:
        self.call = call
        self.on_reply = on_reply

    def __await__(self) -> Generator[Any, None, None]:
        return self.call.each_reply(self.on_reply).__await__()

    def trailing_metadata(self) -> Awaitable[Any]:
        return self.call.trailing_metadata()


async def _reported_wait_s(call: object) -> float | None:
    """The PREDICTED_WAIT_TRAILER of a finished call, in seconds (None when not sent)."""
    trailing = getattr(call, "trailing_metadata", None)
    if trailing is None:
        return None
    for key, value in await trailing() or ():
        if key == PREDICTED_WAIT_TRAILER:
            try:
                return float(value) / 1000
            except (TypeError, ValueError):
                return None
    return None


def split_targets(target: str) -> list[str]:
    """host:port addresses from "a:1,b:2" (spaces allowed)."""
    return [t.strip() for t in target.split(",") if t.strip()]
