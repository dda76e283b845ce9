"""`ocrmesh bench [ghz flags] HOST:PORT`: ghz's flags in, ghz's report out, built-in or real ghz."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import ghz_flags, mix
from bench.durations import parse_duration
from bench.ghz import run_ghz
from bench.loadgen import (
    DURATION_STOPS,
    BenchError,
    CallFactory,
    LoadOptions,
    MethodInfo,
    RequestData,
    empty_request,
    insecure_calls,
    read_input,
    request_from_binary,
    request_from_image,
    request_from_json,
    resolve_method,
    run_load,
)
from bench.mesh_calls import mesh_call_factory
from bench.report import summary_text
from bench.stop_signals import run_stoppable
from mesh import credentials
from mesh.mesh_client import split_targets

PROG = "ocrmesh bench"
RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"

EPILOG = f"""\
Flags follow ghz (https://ghz.sh/docs/options) and the report is ghz's JSON schema.
examples:
  {PROG} --call {RECOGNIZE} --image photo.jpg -c 4 -z 30s 127.0.0.1:50051
  {PROG} --call ocrmesh.ocr.v1.OcrService/GetInfo -d '{{}}' -n 1000 -c 10 -O json 127.0.0.1:50051
  {PROG} --call {RECOGNIZE} --image photo.jpg -c 8 -z 30s --etcd 127.0.0.1:2379 --service ocr

With --etcd (or several comma-separated targets) calls go through ocrmesh's balancing client:
p2c over in-flight x latency, ejection, and retries of UNAVAILABLE/RESOURCE_EXHAUSTED on another
instance within the deadline and a retry budget (--connections is then ignored).

Rejections: when a call fails RESOURCE_EXHAUSTED with a google.rpc.RetryInfo hint, the worker
that got it waits that long (at most --retry-cap, never past the end of the run) before its
next call, as a well-behaved client does. --no-honor-retry calls again at once, which is what
ghz does (hammering an overloaded server).
Not supported (yet): TLS, call-data templates, streaming methods, load/concurrency schedules.
ghz's other common flags parse: --proto, --protoset, -i, --skipTLS, --cpus and --reflect-metadata
have no effect here (see below why); --async, -x, -e, --lb-strategy (but pick_first),
--stream-call-count and the --load-*/--concurrency-* schedules (but --load-schedule const) are
refused with the reason, and nothing runs.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("host", nargs="?", help="host:port to load (ghz's argument)")
    parser.add_argument(
        "--target",
        help="host:port to load (same as the positional argument; several, comma-separated: balanced)",
    )
    parser.add_argument(
        "--etcd", default="", help="etcd endpoints: balance over the instances of --service registered there"
    )
    parser.add_argument("--service", default="ocr", help="service to balance over with --etcd (default ocr)")
    parser.add_argument(
        "--call",
        help="method as package.Service.Method or package.Service/Method "
        f"(default with --image: {RECOGNIZE})",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="workers (default 50)")
    parser.add_argument("-n", "--total", type=int, default=200, help="calls to make (default 200)")
    parser.add_argument(
        "-z", "--duration", default="0", help="run this long instead of -n (e.g. 10s, 1m, 500ms)"
    )
    parser.add_argument(
        "-r", "--rps", type=int, default=0, help="rate limit for all workers together (0: none)"
    )
    parser.add_argument("-t", "--timeout", default="20s", help="per-call timeout (0: none)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("-d", "--data", help="request as JSON (an array: used round-robin; @: stdin)")
    data.add_argument("-D", "--data-file", help="file holding the request as JSON")
    data.add_argument(
        "-b", "--binary", action="store_true", help="read a serialized request from stdin (ghz -b)"
    )
    data.add_argument(
        "-B", "--binary-file", help="file holding a serialized request (or count-delimited ones)"
    )
    data.add_argument("--image", help="send this image file in an ocrmesh.ocr.v1.RecognizeRequest")
    meta = parser.add_mutually_exclusive_group()
    meta.add_argument("-m", "--metadata", help='request metadata as a JSON object {"key":"value"}')
    meta.add_argument("-M", "--metadata-file", help="file holding the metadata JSON object")
    credentials.add_arguments(parser)
    parser.add_argument("--insecure", action="store_true", help="plaintext (accepted; the only mode for now)")
    parser.add_argument(
        "-O",
        "--format",
        choices=("summary", "json", "pretty"),
        default="summary",
        help="report format (default summary)",
    )
    parser.add_argument("-o", "--output", help="write the report here instead of stdout")
    parser.add_argument("--connections", type=int, default=1, help="connections (default 1)")
    parser.add_argument("--connect-timeout", default="10s", help="initial dial timeout")
    parser.add_argument(
        "--duration-stop",
        choices=DURATION_STOPS,
        default="close",
        help="with -z, calls in flight at the end: close (count as Canceled), wait, ignore",
    )
    parser.add_argument("--name", default="", help="a name for the run, kept in the report")
    parser.add_argument("--tags", help="JSON object of string tags kept in the report")
    parser.add_argument(
        "--count-errors", action="store_true", help="include failed calls in latency statistics"
    )
    parser.add_argument(
        "--skipFirst", dest="skip_first", type=int, default=0, help="leave the first N calls out"
    )
    parser.add_argument(
        "--engine",
        choices=("builtin", "ghz"),
        default="builtin",
        help="builtin (default) or the ghz binary found on PATH",
    )
    parser.add_argument(
        "--no-honor-retry",
        action="store_true",
        help="ignore RetryInfo hints and call again at once (ghz's behaviour)",
    )
    parser.add_argument("--retry-cap", default="5s", help="longest RetryInfo wait honoured")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--mix",
        default="",
        help="mixed workload, e.g. login=1,ocr=9: logins of the --login account among the --image calls "
        "(per-kind figures on stderr)",
    )
    ghz_flags.add_arguments(parser)


def _target(ns: argparse.Namespace) -> str:
    if ns.host and ns.target and ns.host != ns.target:
        raise BenchError(f"two targets given: {ns.host} and --target {ns.target}")
    target = ns.host or ns.target
    if ns.etcd:
        if target:
            raise BenchError(f"give either --etcd or a target, not both (got {target})")
        return f"etcd://{ns.etcd}/{ns.service}"
    if not target:
        raise BenchError("no target: give host:port (or --target host:port, or --etcd URL)")
    return str(target)


def _call_factory(ns: argparse.Namespace, target: str) -> CallFactory:
    """Direct channels to one target; the balancing MeshClient for --etcd or several targets."""
    if ns.etcd:
        return mesh_call_factory(ns.etcd, ns.service)
    if len(split_targets(target)) > 1:
        return mesh_call_factory(None, ns.service)
    return insecure_calls


def _string_map(text: str, what: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"bad JSON in {what}: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BenchError(f'{what}: expected a JSON object of strings, like {{"key": "value"}}')
    return {str(k): v for k, v in value.items()}


def _request(ns: argparse.Namespace, method: MethodInfo) -> RequestData:
    if ns.image:
        return request_from_image(method, ns.image)
    if ns.data is not None:
        text = sys.stdin.read() if ns.data == "@" else ns.data
        return request_from_json(method, text, "stdin" if ns.data == "@" else "--data")
    if ns.data_file:
        raw = read_input(ns.data_file, "--data-file")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise BenchError(f"--data-file {ns.data_file}: not UTF-8 JSON") from None
        return request_from_json(method, text, ns.data_file)
    if ns.binary:
        return request_from_binary(method, sys.stdin.buffer.read(), "stdin")
    if ns.binary_file:
        return request_from_binary(method, read_input(ns.binary_file, "--binary-file"), ns.binary_file)
    return empty_request()


def _options(ns: argparse.Namespace, call: str) -> LoadOptions:
    metadata: dict[str, str] = {}
    if ns.metadata:
        metadata = _string_map(ns.metadata, "--metadata")
    elif ns.metadata_file:
        raw = read_input(ns.metadata_file, "--metadata-file")
        metadata = _string_map(raw.decode("utf-8", errors="replace"), ns.metadata_file)
    try:
        retry_cap_s = parse_duration(ns.retry_cap)
    except ValueError as exc:
        raise BenchError(f"--retry-cap: {exc}") from None
    return LoadOptions(
        call=call,
        concurrency=ns.concurrency,
        total=ns.total,
        duration=ns.duration,
        rps=ns.rps,
        timeout=ns.timeout,
        metadata=metadata,
        connections=ns.connections,
        insecure=ns.insecure,
        honor_retry_info=not ns.no_honor_retry,
        retry_cap_s=retry_cap_s,
        duration_stop=ns.duration_stop,
        connect_timeout=ns.connect_timeout,
        name=ns.name,
        tags=_string_map(ns.tags, "--tags") if ns.tags else {},
        count_errors=ns.count_errors,
        skip_first=ns.skip_first,
    )


async def _run_builtin(
    options: LoadOptions,
    target: str,
    data: RequestData,
    progress: bool,
    call_factory: CallFactory = insecure_calls,
) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:  # Ctrl-C ends the run with endReason "cancel" and still reports, as ghz does
        loop.add_signal_handler(signal.SIGINT, stop.set)
        handled = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
        handled = False
    try:
        return await run_load(options, target, data, progress, call_factory=call_factory, stop=stop)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


def render(report: Mapping[str, Any], fmt: str) -> str:
    """The report as ghz prints it: summary text, compact JSON or indented JSON."""
    if fmt == "summary":
        return summary_text(report)
    if fmt == "pretty":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False) + "\n"


def unreachable_hint(report: Mapping[str, Any], target: str, concurrency: int) -> str | None:
    """A hint when the first calls all failed UNAVAILABLE (nothing listening, wrong address)."""
    first = (report.get("details") or [])[: max(1, concurrency)]
    if not first or any(d["status"] != "Unavailable" for d in first):
        return None
    desc = first[0]["error"].partition(" desc = ")[2]
    return (
        f"hint: the first calls to {target} failed UNAVAILABLE ({desc}); "
        "is the server running and listening on that address?"
    )


def run(ns: argparse.Namespace) -> int:
    try:
        for note in ghz_flags.check(ns):
            print(f"{PROG}: note: {note}", file=sys.stderr)
        target = _target(ns)
        call = ns.call or (RECOGNIZE if ns.image else None)
        if not call:
            raise BenchError(f"--call is required (for example --call {RECOGNIZE})")
        method = resolve_method(call)
        data = _request(ns, method)
        options = _options(ns, call)
        try:
            # --token / --login / OCRMESH_TOKEN become an authorization header on every call.
            auth = run_stoppable(credentials.resolve_metadata(ns))
        except credentials.CredentialsError as exc:
            raise BenchError(str(exc)) from None
        if auth:
            options = dataclasses.replace(options, metadata={**options.metadata, **dict(auth)})
        factory = _call_factory(ns, target)
        recorder = None
        if ns.mix:
            if ns.engine == "ghz" or not ns.image:
                raise BenchError("--mix needs --image and the builtin engine")
            data, factory, recorder = run_stoppable(mix.for_load_cli(ns.mix, ns, data, factory))
        if ns.engine == "ghz":
            if factory is not insecure_calls:
                raise BenchError("ghz cannot balance: use --engine builtin with --etcd or several targets")
            if options.honor_retry_info:
                print(
                    f"{PROG}: note: ghz does not honour RetryInfo; rejected calls are retried "
                    "at once (as with --no-honor-retry)",
                    file=sys.stderr,
                )
            report = run_ghz(options, target, method, data)
        else:
            report = run_stoppable(_run_builtin(options, target, data, not ns.no_progress, factory))
    except BenchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    text = render(report, ns.format)
    if ns.output:
        try:
            path = Path(ns.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"{PROG}: cannot write {ns.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    if recorder is not None:
        for kind, part in recorder.reports(int(report["total"])).items():
            print(f"{PROG}: {kind}: {mix.summary_line(part)}", file=sys.stderr)
    hint = unreachable_hint(report, target, options.concurrency)
    if hint:
        print(f"{PROG}: {hint}", file=sys.stderr)
    return 0
