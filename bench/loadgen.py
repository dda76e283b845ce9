"""The built-in ghz-compatible load generator: closed-loop grpc.aio workers sending raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from ocrmesh.auth.v1 import auth_pb2
from ocrmesh.ocr.v1 import ocr_pb2
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.durations import parse_duration
from bench.report import CallResult, build_report, ghz_options, go_code_name, go_error
from mesh.errors import from_call_error, retry_delay_s

# Files whose services `--call` can name (importing them fills the default descriptor pool).
KNOWN_FILES = (ocr_pb2.DESCRIPTOR, auth_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR)
RECOGNIZE_REQUEST = "ocrmesh.ocr.v1.RecognizeRequest"
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
DURATION_STOPS = ("close", "wait", "ignore")
_CLOSING = "grpc: the client connection is closing"  # what Go reports for calls cut at the end
_SETTLED = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


class BenchError(ValueError):
    """A problem with the bench's inputs, worded to be printed as one line."""


@dataclass(frozen=True)
class MethodInfo:
    """A unary method found in the descriptor pool: its names and request type."""

    full_name: str  # package.Service.Method
    path: str  # /package.Service/Method, as sent on the wire
    input_type: Descriptor


@dataclass(frozen=True)
class RequestData:
    """The serialized request message(s) to send; several are used round-robin, as ghz does."""

    messages: tuple[bytes, ...]
    json_value: Any = None  # the JSON given with -d/-D, reported as options.data
    binary: bool = False  # the data came as a serialized message (ghz's options.binary)
    source: str = ""  # the file it came from, if any


@dataclass(frozen=True)
class LoadOptions:
    """One load run, with ghz's flag semantics and defaults.

    `duration` and `timeout` take seconds or Go durations ("10s", "1m", "500ms"). With a
    duration, `total` is ignored (as in ghz). `rps` is one rate limit shared by all workers
    (0: none). `honor_retry_info`: after RESOURCE_EXHAUSTED carrying google.rpc.RetryInfo, the
    worker that got it waits the server's hint (at most `retry_cap_s`, never past the end of
    the run) before its next call, as a well-behaved client does; False gives ghz's behaviour
    of calling again at once (`--no-honor-retry`). `duration_stop` is ghz's `--duration-stop`:
    at the end of a timed run, `close` cuts in-flight calls and counts them as Canceled,
    `wait` lets them finish, `ignore` cuts them and leaves them out of the report.
    """

    call: str
    concurrency: int = 50
    total: int = 200
    duration: float | str = 0.0
    rps: int = 0
    timeout: float | str = 20.0
    metadata: Mapping[str, str] = field(default_factory=dict)
    connections: int = 1
    insecure: bool = False
    honor_retry_info: bool = True
    retry_cap_s: float = 5.0
    duration_stop: str = "close"
    connect_timeout: float | str = 10.0
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    count_errors: bool = False
    skip_first: int = 0

    def __post_init__(self) -> None:
        for attr in ("duration", "timeout", "connect_timeout"):
            value = getattr(self, attr)
            if isinstance(value, str):
                try:
                    object.__setattr__(self, attr, parse_duration(value))
                except ValueError as exc:
                    raise BenchError(f"{attr}: {exc}") from None
            elif value < 0:
                raise BenchError(f"{attr} must not be negative")
        if self.concurrency < 1:
            raise BenchError("concurrency must be at least 1")
        if self.connections < 1:
            raise BenchError("connections must be at least 1")
        if self.connections > self.concurrency:
            raise BenchError("number of connections cannot be greater than concurrency")
        if self.total < 1 and not self.duration_s:
            raise BenchError("set a total above 0 or a duration")
        if self.rps < 0 or self.skip_first < 0 or self.retry_cap_s < 0:
            raise BenchError("rps, skip_first and retry_cap_s must not be negative")
        if self.duration_stop not in DURATION_STOPS:
            raise BenchError(f"duration_stop must be one of {', '.join(DURATION_STOPS)}")

    @property
    def duration_s(self) -> float:
        return float(self.duration)

    @property
    def timeout_s(self) -> float:
        return float(self.timeout)

    @property
    def connect_timeout_s(self) -> float:
        return float(self.connect_timeout)

    def report_options(self, target: str, data: RequestData) -> dict[str, Any]:
        """The report's "options" object for this run, as ghz writes it."""
        return ghz_options(
            call=self.call,
            host=target,
            insecure=True,  # plaintext is the only transport for now, whatever was asked
            concurrency=self.concurrency,
            total=self.total,
            duration_ns=round(self.duration_s * 1e9),
            timeout_ns=round(self.timeout_s * 1e9),
            dial_timeout_ns=round(self.connect_timeout_s * 1e9),
            rps=self.rps,
            connections=self.connections,
            data=data.json_value,
            binary=data.binary,
            metadata=self.metadata,
            cpus=usable_cpus(),
            name=self.name,
            skip_first=self.skip_first,
            count_errors=self.count_errors,
        )

    def report_tags(self, engine: str) -> dict[str, str]:
        """The user's tags plus how this run was made (ghz's `tags` field: string to string)."""
        honored = self.honor_retry_info and engine == "builtin"
        return {
            **self.tags,
            "ocrmesh.engine": engine,
            "ocrmesh.honor-retry-info": "true" if honored else "false",
        }


def usable_cpus() -> int:
    """Cores this process may run on (ghz reports GOMAXPROCS as CPUs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def known_services() -> list[str]:
    """Full names of the services `--call` can name."""
    return sorted(s.full_name for f in KNOWN_FILES for s in f.services_by_name.values())


def resolve_method(call: str) -> MethodInfo:
    """The unary method named `package.Service.Method` or `package.Service/Method`."""
    name = call.strip().lstrip("/")
    service, sep, method = name.rpartition("/")
    if not sep:
        service, _, method = name.rpartition(".")
    if not service or not method or "/" in service:
        raise BenchError(f"--call {call!r}: expected package.Service.Method or package.Service/Method")
    try:
        found = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        raise BenchError(
            f"unknown service {service!r} in --call {call!r} (known: {', '.join(known_services())})"
        ) from None
    descriptor = found.methods_by_name.get(method)
    if descriptor is None:
        raise BenchError(
            f"service {service} has no method {method!r} "
            f"(methods: {', '.join(sorted(found.methods_by_name))})"
        )
    if descriptor.client_streaming or descriptor.server_streaming:
        raise BenchError(f"{service}.{method} is a streaming method; only unary calls are benched")
    return MethodInfo(f"{service}.{method}", f"/{service}/{method}", descriptor.input_type)


def read_input(path: str | Path, what: str) -> bytes:
    """A file's bytes, or a one-line BenchError naming the file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise BenchError(f"{what}: is a directory: {path}") from None
    except PermissionError:
        raise BenchError(f"{what}: permission denied: {path}") from None


def empty_request() -> RequestData:
    """No data given: send the request type's empty message (all fields unset)."""
    return RequestData(messages=(b"",))


def request_from_json(method: MethodInfo, text: str, source: str = "") -> RequestData:
    """Requests from ghz-style JSON (protobuf JSON mapping: bytes as base64): one object or an
    array of objects used round-robin."""
    where = source or "--data"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"bad JSON in {where}: {exc}") from None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) for item in items):
        raise BenchError(f"{where}: expected a JSON object or a non-empty array of objects")
    cls = message_factory.GetMessageClass(method.input_type)
    messages = []
    for item in items:
        message = cls()
        try:
            json_format.ParseDict(item, message)
        except json_format.ParseError as exc:
            raise BenchError(f"{where}: not a {method.input_type.full_name}: {exc}") from None
        messages.append(message.SerializeToString())
    return RequestData(tuple(messages), json_value=value, source=source)


def _split_delimited(data: bytes) -> list[bytes] | None:
    # varint length-prefixed messages filling the buffer exactly, or None
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        size = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                return None
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + size > len(data):
            return None
        parts.append(data[pos : pos + size])
        pos += size
    return parts


def delimited(messages: Sequence[bytes]) -> bytes:
    """Messages as ghz's count-delimited binary data (each prefixed by its varint length)."""
    out = bytearray()
    for message in messages:
        size = len(message)
        while size > 0x7F:
            out.append((size & 0x7F) | 0x80)
            size >>= 7
        out.append(size)
        out += message
    return bytes(out)


def request_from_binary(method: MethodInfo, data: bytes, source: str = "") -> RequestData:
    """Requests from ghz binary data: count-delimited messages (tried first, as ghz does), else
    one serialized message."""
    cls = message_factory.GetMessageClass(method.input_type)

    def parses(blob: bytes) -> bool:
        try:
            cls.FromString(blob)
        except DecodeError:
            return False
        return True

    parts = _split_delimited(data) if data else None
    if parts and all(parses(part) for part in parts):
        return RequestData(tuple(parts), binary=True, source=source)
    if not parses(data):
        raise BenchError(f"{source or 'binary data'}: not a serialized {method.input_type.full_name}")
    return RequestData((data,), binary=True, source=source)


def request_from_image(method: MethodInfo, path: str | Path) -> RequestData:
    """`--image PATH`: an ocrmesh.ocr.v1.RecognizeRequest carrying the file's bytes and name."""
    if method.input_type.full_name != RECOGNIZE_REQUEST:
        raise BenchError(
            f"--image builds a {RECOGNIZE_REQUEST}, but {method.full_name} takes "
            f"{method.input_type.full_name}; use -d/-D/-B instead"
        )
    image = read_input(path, "--image")
    request = ocr_pb2.RecognizeRequest(image=image, filename=Path(path).name)
    return RequestData((request.SerializeToString(),), binary=True, source=str(path))


class UnaryBytesCall(Protocol):
    """A unary call taking and returning serialized messages (a grpc.aio multi-callable)."""

    def __call__(
        self,
        request: bytes,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Awaitable[bytes]: ...


# (target, method path, options) -> async context yielding one call per connection.
CallFactory = Callable[
    [str, str, LoadOptions], contextlib.AbstractAsyncContextManager[Sequence[UnaryBytesCall]]
]


def channel_options(index: int) -> list[tuple[str, Any]]:
    """Channel arguments: no send limit, 64 MiB receive limit, and a connection of its own."""
    return [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # Channels with equal arguments would share one subchannel (one TCP connection).
        ("grpc.use_local_subchannel_pool", 1),
        ("ocrmesh.bench.connection", index),
    ]


async def connect(channel: grpc.aio.Channel, timeout_s: float) -> None:
    # Dial before the clock starts so the first calls do not pay for the handshake; an
    # unreachable target is not an error here: its calls fail UNAVAILABLE and are reported.
    if timeout_s <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            state = channel.get_state(try_to_connect=True)
            while state not in _SETTLED:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)


@contextlib.asynccontextmanager
async def insecure_calls(
    target: str, path: str, options: LoadOptions
) -> AsyncIterator[Sequence[UnaryBytesCall]]:
    """The default CallFactory: `options.connections` plaintext channels to one target."""
    channels = [
        grpc.aio.insecure_channel(target, options=channel_options(i)) for i in range(options.connections)
    ]
    try:
        await asyncio.gather(*(connect(ch, options.connect_timeout_s) for ch in channels))
        yield [ch.unary_unary(path, _registered_method=True) for ch in channels]
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


class _Run:
    """The shared state of one run: tickets, pacing, the stop flag and the recorded calls."""

    def __init__(self, options: LoadOptions, messages: tuple[bytes, ...]) -> None:
        self.messages = messages
        self.timeout = options.timeout_s or None
        self.metadata = tuple(options.metadata.items()) or None
        self.limit = 0 if options.duration_s else options.total
        self.interval_ns = round(1e9 / options.rps) if options.rps else 0
        self.honor = options.honor_retry_info
        self.retry_cap_s = options.retry_cap_s
        self.offset_ns = time.time_ns() - time.perf_counter_ns()
        self.began_ns = 0
        self.end_ns = 0  # perf_counter_ns at which a timed run ends (0: untimed)
        self.issued = 0
        self.errors = 0
        self.stopping = False
        self.record_cut = False
        self.results: list[CallResult] = []

    def start(self, duration_s: float) -> None:
        self.began_ns = time.perf_counter_ns()
        self.end_ns = self.began_ns + round(duration_s * 1e9) if duration_s else 0

    def take(self) -> int:
        """The next request number, or -1 when the run is over."""
        number = self.issued
        if self.stopping or (self.limit and number >= self.limit):
            return -1
        self.issued = number + 1
        return number

    async def worker(self, call: UnaryBytesCall) -> None:
        perf = time.perf_counter_ns
        record = self.results.append
        messages, count = self.messages, len(self.messages)
        timeout, metadata, offset = self.timeout, self.metadata, self.offset_ns
        while (number := self.take()) >= 0:
            if self.interval_ns:
                delay = self.began_ns + (number + 1) * self.interval_ns - perf()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                    if self.stopping:
                        return
            start = perf()
            try:
                await call(messages[number % count], timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                latency = perf() - start
                code = err.code()
                status = go_code_name(code.value[0])
                record(CallResult(start + offset, latency, status, go_error(status, err.details() or "")))
                self.errors += 1
                if self.honor and code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await self._back_off(err)
                continue
            except asyncio.CancelledError:
                if self.record_cut:
                    latency = perf() - start
                    record(CallResult(start + offset, latency, "Canceled", go_error("Canceled", _CLOSING)))
                    self.errors += 1
                raise
            record(CallResult(start + offset, perf() - start, "OK", ""))

    async def _back_off(self, err: grpc.aio.AioRpcError) -> None:
        delay = retry_delay_s(from_call_error(err))
        if not delay or delay <= 0:
            return
        delay = min(delay, self.retry_cap_s)
        if self.end_ns:
            delay = min(delay, (self.end_ns - time.perf_counter_ns()) / 1e9)
        if delay > 0:
            await asyncio.sleep(delay)

    async def stop(self, tasks: Sequence[asyncio.Task[None]], mode: str) -> None:
        """End the run the way ghz's --duration-stop says (close, wait or ignore)."""
        self.stopping = True
        if mode != "wait":
            self.record_cut = mode == "close"
            for task in tasks:
                task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome


def _settled(tasks: Sequence[asyncio.Task[None]]) -> asyncio.Future[None]:
    """Done when every task is done or one has failed; cancelling it leaves the tasks alone
    (unlike a gather, whose cancellation would cut the calls before `_Run.stop` decides how)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(tasks)

    def on_done(task: asyncio.Task[None]) -> None:
        nonlocal left
        left -= 1
        failed = not task.cancelled() and task.exception() is not None
        if not future.done() and (failed or left == 0):
            future.set_result(None)

    for task in tasks:
        task.add_done_callback(on_done)
    return future


async def _wait_for_end(run: _Run, tasks: Sequence[asyncio.Task[None]], stop: asyncio.Event | None) -> str:
    """Wait until the workers finish (normal), the duration passes (timeout) or `stop` is set
    (cancel); a worker's unexpected error is raised."""
    finished = _settled(tasks)
    waiters: set[asyncio.Future[Any]] = {finished}
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopped is not None:
        waiters.add(stopped)
    timeout = max(0.0, (run.end_ns - time.perf_counter_ns()) / 1e9) if run.end_ns else None
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        if stopped is not None:
            stopped.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if finished in done:
        return "normal"
    return "cancel" if stopped is not None and stopped in done else "timeout"


async def _show_progress(run: _Run, options: LoadOptions) -> None:
    timed = bool(options.duration_s)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[calls]} calls, {task.fields[errors]} errors"),
        TimeElapsedColumn(),
    )
    total = options.duration_s if timed else float(options.total)
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(options.call, total=total, calls=0, errors=0)
        while True:
            done = len(run.results)
            elapsed = (time.perf_counter_ns() - run.began_ns) / 1e9
            bar.update(task, completed=elapsed if timed else done, calls=done, errors=run.errors)
            await asyncio.sleep(0.2)


async def run_load(
    options: LoadOptions,
    target: str,
    request: bytes | Sequence[bytes] | RequestData,
    progress: bool = False,
    *,
    call_factory: CallFactory = insecure_calls,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run the load and return ghz's JSON report as a dict.

    `request` is the serialized request (several are sent round-robin). `call_factory` opens
    the connections and yields one call per connection (workers are spread over them, as ghz
    spreads them over its connections); swap it to bench through a balancer or with auth.
    Setting `stop` ends the run early with endReason "cancel" (wire it to SIGINT).
    """
    method = resolve_method(options.call)
    if isinstance(request, RequestData):
        data = request
    elif isinstance(request, bytes | bytearray):
        data = RequestData((bytes(request),), binary=True)
    else:
        data = RequestData(tuple(request), binary=True)
    if not data.messages:
        raise BenchError("no request message to send")
    run = _Run(options, data.messages)
    async with call_factory(target, method.path, options) as calls:
        if not calls:
            raise BenchError(f"no connection to {target}")
        run.start(options.duration_s)
        tasks = [asyncio.create_task(run.worker(calls[i % len(calls)])) for i in range(options.concurrency)]
        shower = asyncio.create_task(_show_progress(run, options)) if progress else None
        try:
            reason = await _wait_for_end(run, tasks, stop)
            await run.stop(tasks, options.duration_stop)
            total_ns = time.perf_counter_ns() - run.began_ns
        finally:
            for task in (*tasks, shower):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*tasks, *([shower] if shower else []), return_exceptions=True)
    return build_report(
        run.results,
        options.report_options(target, data),
        total_ns,
        reason,
        tags=options.report_tags("builtin"),
    )
