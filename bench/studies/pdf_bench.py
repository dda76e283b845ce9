"""`ocrmesh bench pdf`: a 20-page scan's pages/s and peak RSS, an image caller's p95 beside it, and
how fast broken or oversized PDFs are refused."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.machine_facts import cpu_model
from bench.pdf_files import refused_pdfs, scan_pdf
from bench.process_rss import RssSampler
from bench.report_files import table, write_report
from bench.stop_signals import run_stoppable
from bench.studies.foundation import ocr_service
from bench.studies.instance_layout import percentile
from mesh import __version__, balancer, errors
from mesh.console import output_console
from mesh.ocr_client import OcrClient
from ocr_svc.admission import AdmissionPolicy

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "ocr-corpus" / "real"
# Scanned pages from the shared corpus: documents, book pages, screenshots, signs; cycled to 20 pages.
PAGES = (
    "tesseract_phototest.tif",
    "paddleocr_1.jpg",
    "cnocr_multi-line_en_black.png",
    "paddleocr_15.jpg",
    "tesseract_8071_093.3B.png",
    "paddleocr_9.jpg",
    "easyocr_chinese.jpg",
    "paddleocr_12.jpg",
    "icdar2015_img_1.jpg",
    "paddleocr_img_12.jpg",
)
console = Console(stderr=True)
QUIET_S = AdmissionPolicy().reserve_s + 1.0


def page_texts(result: Any) -> list[list[str]]:
    """Each page's lines, in page order, from an OcrResult."""
    return [
        [line.text for line in result.lines[page.first_line : page.first_line + page.line_count]]
        for page in result.pages
    ]


async def read_pdf(client: OcrClient, pdf: bytes, timeout_s: float) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await client.recognize(pdf, "scan.pdf", timeout=timeout_s)
    return time.perf_counter() - started, result


async def image_latencies(
    client: OcrClient, image: bytes, count: int, timeout_s: float, busy: asyncio.Event | None = None
) -> list[float]:
    """`count` sequential reads of `image` (one caller, closed loop); with `busy`, only calls made
    wholly while it is set (the PDF in flight) count, and the caller keeps going until it has them."""
    seconds: list[float] = []
    while len(seconds) < count:
        if busy is not None and not busy.is_set():
            await busy.wait()
        started = time.perf_counter()
        await client.recognize(image, "image.jpg", timeout=timeout_s)
        took = time.perf_counter() - started
        if busy is None or busy.is_set():
            seconds.append(took)
    return seconds


async def loaded(
    client: OcrClient, pdf: bytes, image: bytes, count: int, timeout_s: float
) -> tuple[list[float], list[float]]:
    """One caller sends the PDF again and again while another reads `count` single images; the
    image latencies measured while a PDF was in flight, and the time of each PDF that finished
    meanwhile (the one in flight at the end is cancelled: its caller left)."""
    busy = asyncio.Event()
    pdf_s: list[float] = []

    async def pdf_caller() -> None:
        while True:
            busy.set()
            took, _ = await read_pdf(client, pdf, timeout_s)
            busy.clear()
            pdf_s.append(took)

    sender = asyncio.create_task(pdf_caller())
    try:
        images = await image_latencies(client, image, count, timeout_s, busy)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return images, pdf_s


async def settle(client: OcrClient) -> None:
    """Wait until the instance runs and holds nothing (a cancelled PDF's last pages finish)."""
    while True:
        info = await client.info()
        if not info.in_flight and not info.queued_requests:
            return
        await asyncio.sleep(0.1)


async def refusals(client: OcrClient, address: str, repeats: int) -> dict[str, Any]:
    """Each refused PDF sent `repeats` times: its code, reason and slowest answer; health after."""
    out: dict[str, Any] = {}
    for name, (data, reason) in refused_pdfs().items():
        times: list[float] = []
        got: tuple[str, str] = ("OK", "")
        for _ in range(repeats):
            started = time.perf_counter()
            try:
                await client.recognize(data, f"{name}.pdf", timeout=10)
            except grpc.aio.AioRpcError as exc:
                got = (exc.code().name, errors.error_reason(errors.from_call_error(exc)))
            times.append(time.perf_counter() - started)
        out[name] = {
            "bytes": len(data),
            "code": got[0],
            "reason": got[1],
            "expected_reason": reason,
            "max_ms": max(times) * 1000,
            "median_ms": sorted(times)[len(times) // 2] * 1000,
        }
    async with balancer.direct_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ocrmesh.ocr.v1.OcrService"), timeout=5
        )
    out["health_after"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    return out


async def measure(
    pages: Sequence[Path],
    image_path: Path,
    samples: int,
    rounds: int,
    workers: int,
    timeout_s: float,
    pdf_runs: int = 2,
) -> dict[str, Any]:
    pdf = await asyncio.to_thread(scan_pdf, pages)
    image = await asyncio.to_thread(image_path.read_bytes)
    unloaded_s: list[float] = []
    loaded_s: list[float] = []
    alone: list[dict[str, Any]] = []
    pdf_under_load_s: list[float] = []
    rounds_out: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with tempfile.TemporaryDirectory(prefix="pdf-bench-") as tmp:
        args = ["--threads-per-worker", "1"] + (["--workers", str(workers)] if workers else [])
        with ocr_service(Path(tmp), *args) as svc:
            async with balancer.direct_channel(svc.address) as channel:
                client = OcrClient(channel)
                console.print(f"OCR instance at {svc.address}; warming up")
                await image_latencies(client, image, 4, timeout_s)
                with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
                    task = progress.add_task("PDF alone", total=pdf_runs + rounds * 2)
                    for run_no in range(1, pdf_runs + 1):
                        progress.update(task, description=f"{len(pages)}-page PDF alone, run {run_no}")
                        # Alone means no image for a while: for reserve_s (10 s) after one, a
                        # PDF leaves a worker to other callers.
                        await asyncio.sleep(QUIET_S)
                        with RssSampler(svc.proc.pid, every_s=0.05) as rss:
                            took, result = await read_pdf(client, pdf, timeout_s)
                        texts = page_texts(result)
                        alone.append(
                            {
                                "seconds": took,
                                "pages_per_s": len(result.pages) / took,
                                "peak_rss_mib": rss.peak / 2**20,
                                "page_numbers_in_order": [p.number for p in result.pages]
                                == list(range(1, len(pages) + 1)),
                                "lines_per_page": [len(lines) for lines in texts],
                                "pages_with_text": sum(1 for lines in texts if lines),
                                "load_avg_1m": psutil.getloadavg()[0],
                            }
                        )
                        progress.advance(task)
                    # Image alone and image beside the PDF in short alternating rounds, so that both
                    # see the same background load on a shared machine.
                    for round_no in range(1, rounds + 1):
                        progress.update(task, description=f"round {round_no}: image alone")
                        await settle(client)
                        alone_s = await image_latencies(client, image, samples, timeout_s)
                        unloaded_s += alone_s
                        progress.advance(task)
                        progress.update(task, description=f"round {round_no}: image beside the PDF")
                        images, pdf_times = await loaded(client, pdf, image, samples, timeout_s)
                        loaded_s += images
                        pdf_under_load_s += pdf_times
                        rounds_out.append(
                            {
                                "p95_alone_s": percentile(sorted(alone_s), 95),
                                "p95_beside_pdf_s": percentile(sorted(images), 95),
                                "load_avg_1m": psutil.getloadavg()[0],
                            }
                        )
                        progress.advance(task)
                    await settle(client)
                refused = await refusals(client, svc.address, 5)
    p95_unloaded = percentile(sorted(unloaded_s), 95)
    p95_loaded = percentile(sorted(loaded_s), 95)
    return {
        "pdf": {
            "pages": len(pages),
            "bytes": len(pdf),
            "page_images": [path.name for path in pages],
            "alone": alone,
            "pages_per_s": max(a["pages_per_s"] for a in alone),
            "peak_rss_mib": max(a["peak_rss_mib"] for a in alone),
            "seconds_under_load": pdf_under_load_s,
            "pages_per_s_under_load": len(pages) * len(pdf_under_load_s) / sum(pdf_under_load_s)
            if pdf_under_load_s
            else 0.0,
        },
        "fairness": {
            "image": image_path.name,
            "unloaded": {
                "n": len(unloaded_s),
                "p50_s": percentile(sorted(unloaded_s), 50),
                "p95_s": p95_unloaded,
            },
            "loaded": {"n": len(loaded_s), "p50_s": percentile(sorted(loaded_s), 50), "p95_s": p95_loaded},
            "p95_ratio": p95_loaded / p95_unloaded if p95_unloaded else 0.0,
            "median_round_ratio": statistics.median(
                r["p95_beside_pdf_s"] / r["p95_alone_s"] for r in rounds_out if r["p95_alone_s"]
            ),
            "goal": 2.0,
        },
        "rounds": rounds_out,
        "refusals": refused,
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "ocrmesh": __version__,
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "cpu_model": cpu_model(),
            "machine": platform.machine(),
            "workers": workers or psutil.cpu_count(),
            "samples": samples,
            "rounds": rounds,
            "pdf_runs": pdf_runs,
            "load_avg": list(psutil.getloadavg()),
        },
    }


def markdown(result: dict[str, Any]) -> str:
    m, pdf, fair, refused = result["meta"], result["pdf"], result["fairness"], result["refusals"]
    ratio = fair["p95_ratio"]
    lines = [
        f"# A {pdf['pages']}-page scanned PDF beside an image caller ({m['date']})",
        "",
        f"ocrmesh {m['ocrmesh']}, Python {m['python']}, {m['cpus']} CPUs ({m['cpu_model']}, {m['machine']}), "
        f"load average at the end {', '.join(f'{v:.1f}' for v in m['load_avg'])} (a shared machine). "
        f"One OCR instance, {m['workers']} workers x 1 ONNX Runtime thread, default limits, over one "
        "direct gRPC channel. Reproduce with `ocrmesh bench pdf`.",
        "",
        f"The PDF: {pdf['pages']} pages, {pdf['bytes'] / 2**20:.1f} MiB, scans of corpus images at 200 DPI "
        f"({', '.join(dict.fromkeys(pdf['page_images']))}), each rendered by the instance near 2400 px "
        "on its long side (72-300 DPI).",
        "",
        "## Pages/s and memory",
        "",
        table(
            [
                "run",
                "seconds",
                "pages/s",
                "peak RSS (MiB)",
                "pages in order",
                "pages with text",
                "load avg",
                "lines/page",
            ],
            [
                [
                    i,
                    f"{a['seconds']:.1f}",
                    f"{a['pages_per_s']:.2f}",
                    f"{a['peak_rss_mib']:.0f}",
                    a["page_numbers_in_order"],
                    f"{a['pages_with_text']}/{pdf['pages']}",
                    f"{a.get('load_avg_1m', 0.0):.1f}",
                    " ".join(map(str, a["lines_per_page"])),
                ]
                for i, a in enumerate(pdf["alone"], 1)
            ],
            "rrrrrrrr",
        ),
        "",
        "Peak RSS is the instance's whole process tree (server and workers), sampled every 50 ms while "
        "the PDF ran alone (each run after 11 s without any call).",
        "",
        "## Fairness: one caller's single image while another caller's PDF is read",
        "",
        f"A caller reads `{fair['image']}` over and over, one call at a time: alone, then while a second "
        "caller sends the PDF back to back (only image calls made wholly while a PDF was in flight count; "
        "the PDF in flight when they are done is cancelled, and the instance is idle again before the "
        f"next round). {m['rounds']} alternating round(s) of {m['samples']} calls each.",
        "",
        table(
            ["image caller", "calls", "p50 (s)", "p95 (s)"],
            [
                [
                    "alone",
                    fair["unloaded"]["n"],
                    f"{fair['unloaded']['p50_s']:.2f}",
                    f"{fair['unloaded']['p95_s']:.2f}",
                ],
                [
                    "beside the PDF",
                    fair["loaded"]["n"],
                    f"{fair['loaded']['p50_s']:.2f}",
                    f"{fair['loaded']['p95_s']:.2f}",
                ],
            ],
            "lrrr",
        ),
        "",
        "Per round (the machine is shared: its 1-minute load average at the end of each round):",
        "",
        table(
            ["round", "p95 alone (s)", "p95 beside the PDF (s)", "ratio", "load avg"],
            [
                [
                    i,
                    f"{r['p95_alone_s']:.2f}",
                    f"{r['p95_beside_pdf_s']:.2f}",
                    f"{r['p95_beside_pdf_s'] / r['p95_alone_s']:.2f}x" if r["p95_alone_s"] else "-",
                    f"{r['load_avg_1m']:.1f}",
                ]
                for i, r in enumerate(result.get("rounds", []), 1)
            ],
            "rrrrr",
        ),
        "",
        f"Median of the per-round ratios: **{fair['median_round_ratio']:.2f}x**. "
        f"p95 beside the PDF / p95 alone, all rounds pooled: **{ratio:.2f}x** "
        f"(goal: within {fair['goal']:.0f}x: "
        f"{'met' if ratio <= fair['goal'] else 'NOT met'}). {_under_load(pdf)} While others are "
        "about, a PDF runs on all workers but one (`AdmissionPolicy.reserve_workers`), and on every worker "
        "once no image was seen for 10 s (`reserve_s`); the PDF-alone runs above wait that long first.",
        "",
        "## Refused from the header",
        "",
        "Each sent 5 times; INVALID_ARGUMENT expected, with the reason shown.",
        "",
        table(
            ["PDF", "bytes", "code", "reason", "median (ms)", "slowest (ms)"],
            [
                [name, r["bytes"], r["code"], r["reason"], f"{r['median_ms']:.1f}", f"{r['max_ms']:.1f}"]
                for name, r in refused.items()
                if name != "health_after"
            ],
            "lrllrr",
        ),
        "",
        f"Health after: {refused['health_after']}.",
        "",
    ]
    return "\n".join(lines)


def _under_load(pdf: dict[str, Any]) -> str:
    took = pdf["seconds_under_load"]
    if not took:
        return "No PDF finished within a round (each round's last one is cancelled)."
    seconds = ", ".join(f"{s:.1f}" for s in took)
    rate = pdf["pages_per_s_under_load"]
    return f"The PDFs that finished beside the image caller took {seconds} s ({rate:.2f} pages/s)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=int, default=20, help="pages in the PDF (corpus scans, cycled)")
    parser.add_argument(
        "--image", type=Path, default=REAL / "rapidocr_ch_en_num.jpg", help="the other caller's image"
    )
    parser.add_argument("--samples", type=int, default=15, help="image calls per round and condition")
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating rounds: image alone, beside the PDF"
    )
    parser.add_argument("--pdf-runs", type=int, default=2, help="runs of the PDF alone (pages/s, RSS)")
    parser.add_argument("--workers", type=int, default=0, help="OCR workers (0: one per core)")
    parser.add_argument("-t", "--timeout", type=float, default=300.0, help="deadline of each call, seconds")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks", help="folder for pdf-DATE.json and .md"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")


def run(ns: argparse.Namespace) -> int:
    prog = "ocrmesh bench pdf"
    pages = [REAL / PAGES[i % len(PAGES)] for i in range(ns.pages)]
    missing = [p for p in [*pages, ns.image] if not p.is_file()]
    if missing:
        print(f"{prog}: no such file: {missing[0]}", file=sys.stderr)
        return 2
    if (
        not 1 <= ns.pages <= 100
        or min(ns.samples, ns.rounds, ns.pdf_runs) < 1
        or ns.workers < 0
        or ns.timeout <= 0
    ):
        print(f"{prog}: need 1-100 --pages, --samples and --rounds >= 1, --workers >= 0", file=sys.stderr)
        return 2
    try:
        result = run_stoppable(
            measure(pages, ns.image, ns.samples, ns.rounds, ns.workers, ns.timeout, ns.pdf_runs)
        )
    except (RuntimeError, grpc.aio.AioRpcError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    _, md_path = write_report(ns.out, f"pdf-{dt.date.today().isoformat()}", result, markdown(result))
    fair = result["fairness"]
    summary = Table(title=f"{ns.pages}-page PDF on one OCR instance")
    for column in ("pages/s", "peak RSS MiB", "image p95 alone s", "image p95 beside PDF s", "ratio"):
        summary.add_column(column)
    summary.add_row(
        f"{result['pdf']['pages_per_s']:.2f}",
        f"{result['pdf']['peak_rss_mib']:.0f}",
        f"{fair['unloaded']['p95_s']:.2f}",
        f"{fair['loaded']['p95_s']:.2f}",
        f"{fair['p95_ratio']:.2f}x",
    )
    output_console().print(summary)
    if ns.json:
        print(json.dumps(result, indent=2))
    print(f"report: {md_path}")
    return 0
