"""`ocrmesh ocr` and `ocrmesh info`: send images to OCR instances (direct or balanced), describe one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from ocrmesh.ocr.v1 import ocr_pb2
from rich.table import Table

from mesh import balancer, credentials, errors
from mesh.console import output_console
from mesh.mesh_client import MeshClient, split_targets
from mesh.ocr_client import OcrClient

DEFAULT_TARGET = "127.0.0.1:50051"


def explain(exc: grpc.aio.AioRpcError, target: str, timeout: float) -> str:
    """A one-line, actionable explanation of a failed call."""
    status = errors.from_call_error(exc)
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE and "not serving" not in (exc.details() or ""):
        return (
            f"cannot reach an OCR service at {target} ({exc.details()}). "
            "Start one with `make up` or `ocrmesh serve ocr`, or pass --target HOST:PORT."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g}s; raise --timeout or try a smaller image"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        found = errors.field_violations(status)
        detail = "; ".join(f"{v.field}: {v.description}" for v in found) or status.message
        return f"the service rejected the image: {detail}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = errors.retry_delay_s(status)
        hint = f" (server suggests retrying in {delay:.2f}s)" if delay is not None else ""
        return f"the service is busy: {status.message}{hint}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"the service needs an access token ({status.message or exc.details()}): pass "
            "--login USER (password from OCRMESH_PASSWORD or a prompt) or --token / OCRMESH_TOKEN"
        )
    return f"{code.name}: {status.message or exc.details()}"


def _options(ns: argparse.Namespace) -> ocr_pb2.RecognizeOptions:
    options = ocr_pb2.RecognizeOptions()
    if ns.no_det:
        options.use_det = False
    if ns.no_cls:
        options.use_cls = False
    if ns.min_score is not None:
        options.min_score = ns.min_score
    if ns.text_layer:
        options.use_text_layer = True
    return options


def _mesh_client(ns: argparse.Namespace) -> tuple[MeshClient | None, str]:
    """A balancing client when --etcd or several --target addresses are given, and where it calls."""
    if ns.etcd:
        where = f"{ns.service} instances registered in etcd at {ns.etcd}"
        return MeshClient.from_etcd(ns.etcd, ns.service), where
    targets = split_targets(ns.target)
    if len(targets) > 1:
        return MeshClient.from_addresses(targets, ns.service), ", ".join(targets)
    return None, ns.target


async def _ocr(ns: argparse.Namespace) -> int:
    paths = [Path(p) for p in ns.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"ocrmesh ocr: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        metadata = await credentials.resolve_metadata(ns)
    except credentials.CredentialsError as exc:
        print(f"ocrmesh ocr: {exc}", file=sys.stderr)
        return 2
    if ns.via == "xds":
        from gateway.proxyless import xds_channel

        where = f"xds:///{ns.service} (control plane {ns.xds})"
        async with xds_channel(ns.service, ns.xds) as channel:
            return await _recognize_all(ns, OcrClient(channel), paths, where, metadata)
    mesh, where = _mesh_client(ns)
    async with contextlib.AsyncExitStack() as stack:
        if mesh is None:
            client = OcrClient(await stack.enter_async_context(balancer.direct_channel(ns.target, "ocr")))
        else:
            await stack.enter_async_context(mesh)
            if not await mesh.wait_for_endpoints(1, min(ns.timeout, 5.0)):
                print(f"ocrmesh ocr: no {ns.service} instances found ({where})", file=sys.stderr)
                return 1
            client = mesh.ocr()
        return await _recognize_all(ns, client, paths, where, metadata)


async def _recognize_all(
    ns: argparse.Namespace, client: OcrClient, paths: list[Path], where: str, metadata: credentials.Metadata
) -> int:
    outputs: list[dict[str, Any]] = []
    failed = 0
    for path in paths:
        try:
            result = await client.recognize(
                path.read_bytes(), path.name, _options(ns), timeout=ns.timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            failed += 1
            print(f"ocrmesh ocr: {path}: {explain(exc, where, ns.timeout)}", file=sys.stderr)
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                break
            continue
        if ns.json:
            outputs.append(
                {
                    "file": str(path),
                    **json_format.MessageToDict(result, preserving_proto_field_name=True),
                }
            )
            continue
        if len(paths) > 1:
            print(f"==> {path} <==")
        print(result.text)
        if ns.timing:
            t = result.timing
            print(
                f"[{len(result.lines)} lines, {result.width}x{result.height}, total "
                f"{t.total_ms:.0f} ms (queue {t.queue_ms:.0f}, decode {t.decode_ms:.0f}, "
                f"det {t.det_ms:.0f}, cls {t.cls_ms:.0f}, rec {t.rec_ms:.0f}); "
                f"{result.served_by.instance_id} {result.served_by.execution_provider}]",
                file=sys.stderr,
            )
    if ns.json:
        print(json.dumps(outputs if len(paths) > 1 else (outputs or [{}])[0], ensure_ascii=False, indent=2))
    return 1 if failed else 0


async def _info(ns: argparse.Namespace) -> int:
    try:
        metadata = await credentials.resolve_metadata(ns)
    except credentials.CredentialsError as exc:
        print(f"ocrmesh info: {exc}", file=sys.stderr)
        return 2
    async with balancer.direct_channel(ns.target, "ocr") as channel:
        try:
            info = await OcrClient(channel).info(timeout=ns.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"ocrmesh info: {explain(exc, ns.target, ns.timeout)}", file=sys.stderr)
            return 1
    if ns.json:
        print(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True), indent=2))
        return 0
    console = output_console()
    table = Table(title=f"OCR instance {info.instance_id} at {ns.target}", show_header=False)
    c = info.counters
    rows = [
        ("serving", "yes" if info.serving else "no"),
        ("version", info.version),
        ("device / provider", f"{info.device} / {info.execution_provider}"),
        ("models", ", ".join(info.models)),
        (
            "workers",
            f"{info.workers} x {info.threads_per_worker} thread "
            f"({info.lone_request_threads} for a request alone on the machine; "
            f"{info.counters.widened} did)",
        ),
        (
            "queue",
            f"{info.queue_depth} waiting ({info.queued_bytes / 2**20:.1f} of "
            f"{info.max_queued_bytes / 2**20:.0f} MiB); {info.in_flight} running; "
            f"a new call would wait ~{info.predicted_wait_ms / 1000:.1f} s "
            f"(limit {info.max_queue_wait_ms / 1000:.0f} s, ~{info.service_ms / 1000:.2f} s per image)",
        ),
        (
            "limits",
            f"{info.limits.max_image_bytes // 2**20} MiB, "
            f"{info.limits.max_image_pixels / 1e6:.0f} Mpx, {', '.join(info.limits.formats)}",
        ),
        (
            "requests",
            f"{c.accepted} accepted, {c.completed} completed, {c.rejected_busy} busy, "
            f"{c.rejected_invalid} invalid, {c.dropped_expired} expired, "
            f"{c.dropped_cancelled} cancelled, {c.failed} failed",
        ),
        ("workers restarted", f"{c.worker_restarts} (jobs retried: {c.retried})"),
        ("uptime", f"{info.uptime_seconds:.0f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    for w in info.worker_infos:
        table.add_row(f"worker {w.pid}", f"{w.state}, {w.jobs_done} jobs, {w.rss_bytes / 2**20:.0f} MiB")
    console.print(table)
    return 0


def add_ocr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to recognise")
    parser.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help="OCR service host:port; several, comma-separated, are balanced over; with --etcd the "
        "calls are balanced over the instances registered there instead",
    )
    parser.add_argument("--service", default="ocr", help="service name in the registry (with --etcd)")
    parser.add_argument(
        "--via",
        choices=("direct", "xds"),
        default="direct",
        help="direct: call --target (a gateway too) or --etcd instances; xds: proxyless gRPC, balanced by "
        "gRPC's own xDS client from the control plane at --xds (no Envoy in the path)",
    )
    parser.add_argument(
        "--xds",
        default=os.environ.get("OCRMESH_XDS", "127.0.0.1:18000"),
        help="control plane HOST:PORT for --via xds (`serve gateway` or `serve xds`; env OCRMESH_XDS)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON with lines, boxes, timings")
    parser.add_argument("--timing", action="store_true", help="print timings to stderr")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per image")
    parser.add_argument("--no-det", action="store_true", help="skip detection (one line image)")
    parser.add_argument("--no-cls", action="store_true", help="skip the direction classifier")
    parser.add_argument("--min-score", type=float, default=None, help="drop lines below this score")
    parser.add_argument(
        "--text-layer",
        action="store_true",
        help="PDFs: take a page's embedded text, when it has some, without OCR",
    )
    credentials.add_arguments(parser, etcd_flag=True)


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help="OCR service host:port")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    credentials.add_arguments(parser, etcd_flag=True)


def run_ocr(ns: argparse.Namespace) -> int:
    return asyncio.run(_ocr(ns))


def run_info(ns: argparse.Namespace) -> int:
    return asyncio.run(_info(ns))
