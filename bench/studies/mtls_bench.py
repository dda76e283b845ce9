"""`ocrmesh bench mtls`: what mutual TLS between services costs, against plaintext, side by side.

Two OCR instances of the same build and settings on loopback, one plaintext (`--insecure`), one
with a workload identity from a throwaway mesh CA (mTLS, client certificate required, caller policy
on). In alternating rounds, so background load hits both alike: GetInfo latency at -c 1 (p50/p95;
the difference is what one mTLS hop adds) and Recognize throughput at -c 8 (mTLS/plaintext ratio).
The client side is a mesh workload too (`cli` identity), with one connection per worker as ghz has.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from bench.loadgen import LoadOptions, UnaryBytesCall, channel_options, connect
from bench.machine_facts import cpu_model
from bench.report_files import run_study
from bench.studies.gateway_bench import DEFAULT_IMAGE, latency_rounds, service, throughput_rounds
from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.workload_identity import WorkloadIdentity

GOAL_RATIO = 0.97


def mtls_calls(identity: WorkloadIdentity, service_name: str) -> Any:
    """A CallFactory opening mTLS channels as `identity`, requiring the peer to be `service_name`."""

    @contextlib.asynccontextmanager
    async def calls(target: str, path: str, options: LoadOptions) -> AsyncIterator[Sequence[UnaryBytesCall]]:
        channels = [
            grpc.aio.secure_channel(
                target,
                identity.channel_credentials(),
                options=[*channel_options(i), *identity.expected_peer_options(service_name)],
            )
            for i in range(options.connections)
        ]
        try:
            await asyncio.gather(*(connect(ch, options.connect_timeout_s) for ch in channels))
            yield [ch.unary_unary(path, _registered_method=True) for ch in channels]
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))

    return calls


async def measure(ns: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    ca = CertificateAuthority.create("bench.ocrmesh.local")
    for service_name in ("ocr", "cli"):
        identity_files.write(
            workdir / service_name, ca.issue(service_name, f"bench-{service_name}"), ca.cert_pem
        )
    client = WorkloadIdentity(workdir / "cli")
    common = ["serve", "ocr", "--port", "0", "--metrics-port", "-1", "--log-level", "warning"]
    common += ["--workers", str(ns.workers)]
    async with (
        service(workdir, "plain", [*common, "--insecure"]) as plain,
        service(workdir, "mtls", [*common, "--identity-dir", str(workdir / "ocr")]) as secured,
    ):
        targets = {"plaintext": str(plain["address"]), "mtls": str(secured["address"])}
        factories = {"mtls": mtls_calls(client, "ocr")}
        console.print(f"OCR plaintext {targets['plaintext']}, mTLS {targets['mtls']}")
        console.print(f"GetInfo latency, {ns.rounds} rounds x {ns.calls} calls per path ...")
        latency = await latency_rounds(targets, "", ns.calls, ns.rounds, factories)
        console.print(
            f"Recognize throughput at -c {ns.concurrency}, {ns.ocr_rounds} rounds x {ns.seconds:g}s ..."
        )
        throughput = await throughput_rounds(
            targets, "", ns.image, ns.concurrency, ns.seconds, ns.ocr_rounds, factories
        )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, grpcio {grpc.__version__} (shared machine; timings are noisy)",
        "workers": ns.workers,
        "latency": latency,
        "throughput": throughput,
        "goal_ratio": GOAL_RATIO,
    }


def markdown(r: dict[str, Any]) -> str:
    lat, thr = r["latency"], r["throughput"]
    med, ok = lat["median"], thr["median_ok_per_s"]
    met = "met" if thr["ratio"] >= GOAL_RATIO else "NOT met"
    return "\n".join(
        [
            f"# mTLS benchmark ({r['date']})",
            "",
            f"Machine: {r['machine']}.",
            "",
            f"Two OCR instances ({r['workers']} workers each), one plaintext and one requiring a mesh client",
            "certificate (TLS 1.3, ECDSA P-256 leaves, caller policy on); the client",
            "presents a `cli` identity. Rounds alternate between them. Produced by `ocrmesh bench mtls`.",
            "",
            f"## GetInfo latency, -c 1 ({lat['rounds']} rounds x {lat['calls_per_round']} calls per path, "
            "medians)",
            "",
            "| path | p50 ms | p95 ms |",
            "|---|---:|---:|",
            f"| plaintext | {med['plaintext']['p50_ms']:.3f} | {med['plaintext']['p95_ms']:.3f} |",
            f"| mTLS | {med['mtls']['p50_ms']:.3f} | {med['mtls']['p95_ms']:.3f} |",
            f"| **added per mTLS hop** | **{lat['added_p50_ms']:+.3f}** | **{lat['added_p95_ms']:+.3f}** |",
            "",
            f"Failed calls: {lat['failed']}.",
            "",
            f"## Recognize throughput, -c {thr['concurrency']} ({thr['image']}, {thr['rounds']} rounds x "
            f"{thr['seconds_per_round']:g} s per path)",
            "",
            "| path | OK/s (median) |",
            "|---|---:|",
            f"| plaintext | {ok['plaintext']:.2f} |",
            f"| mTLS | {ok['mtls']:.2f} |",
            "",
            f"mTLS/plaintext (median of per-round ratios): **{thr['ratio']:.3f}** (rounds: "
            f"{', '.join(f'{x:.3f}' for x in thr['ratios'])}); goal >= {GOAL_RATIO} -> {met}. "
            f"Failed calls: {thr['failed']}.",
            "",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image for the Recognize runs")
    parser.add_argument("-n", "--calls", type=int, default=2000, help="GetInfo calls per round and path")
    parser.add_argument("--rounds", type=int, default=5, help="GetInfo rounds (alternating paths)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="Recognize calls in flight")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per Recognize round and path")
    parser.add_argument("--ocr-rounds", type=int, default=4, help="Recognize rounds (alternating paths)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per OCR instance")
    parser.add_argument(
        "--out", type=Path, default=None, help="write OUT.json and OUT.md (e.g. docs/benchmarks/mtls-DATE)"
    )


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"mtls bench: no image at {ns.image}; pass --image PATH", file=sys.stderr)
        return 2
    if min(ns.calls, ns.rounds, ns.concurrency, ns.ocr_rounds, ns.workers) < 1 or ns.seconds <= 0:
        print("mtls bench: counts and --seconds must be positive", file=sys.stderr)
        return 2
    return 0 if run_study("mtls", ns, measure, markdown) is not None else 1
