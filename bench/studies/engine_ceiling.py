"""`ocrmesh bench engine`: the raw engine ceiling with the service's worker layout, no gRPC."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bench.durations import parse_duration
from bench.stop_signals import run_stoppable
from ocr_svc.admission import AdmissionQueue, Ticket
from ocr_svc.config import default_workers
from ocr_svc.engine import EngineSettings
from ocr_svc.guardrails import Limits, inspect
from ocr_svc.job import JobOptions, JobResult
from ocr_svc.workers import PoolSettings, WorkerPool


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted values (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class EngineBench:
    """A warm worker pool fed in a closed loop, straight, without gRPC; reusable across rounds."""

    def __init__(
        self,
        image: bytes,
        workers: int,
        threads: int,
        concurrency: int,
        device: str = "cpu",
        engine: EngineSettings | None = None,
    ):
        self.image = image
        self.header = inspect(image, Limits())  # checked once, as the OCR server does
        self.workers = workers
        self.threads = threads
        self.concurrency = concurrency
        self.queue = AdmissionQueue()  # the closed loop holds at most `concurrency` tickets
        self.pool = WorkerPool(
            engine=engine or EngineSettings(device=device, threads=threads),
            limits=Limits(),
            settings=PoolSettings(size=workers),
            queue=self.queue,
        )
        self.latencies: list[float] = []
        self.elapsed_s = 0.0
        self.warmup_s = 0.0

    async def start(self) -> None:
        started = time.perf_counter()
        await self.pool.start()
        self.warmup_s = time.perf_counter() - started
        # One untimed image per worker: the first real image pays one-off allocations.
        await asyncio.gather(*(self._one([]) for _ in range(self.workers)))

    async def _one(self, into: list[float]) -> None:
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        self.queue.push(
            Ticket(data=self.image, header=self.header, options=JobOptions(), deadline=None, future=future)
        )
        await future
        into.append(time.perf_counter() - t0)

    async def run(self, duration_s: float, total: int = 0, progress: bool = False) -> int:
        """One closed-loop round; adds to the totals and returns the images done in it."""
        done: list[float] = []
        launched = 0
        with Progress(
            TextColumn("engine ceiling"),
            BarColumn(),
            TextColumn("{task.completed:.0f}"),
            TimeRemainingColumn(),
            disable=not progress,
            transient=True,
        ) as bar:
            task = bar.add_task("run", total=total or duration_s)
            t_start = time.perf_counter()
            stop_at = t_start + duration_s

            async def client() -> None:
                nonlocal launched
                while (launched < total) if total else (time.perf_counter() < stop_at):
                    launched += 1
                    await self._one(done)
                    bar.update(
                        task, completed=len(done) if total else min(duration_s, time.perf_counter() - t_start)
                    )

            await asyncio.gather(*(client() for _ in range(self.concurrency)))
            self.elapsed_s += time.perf_counter() - t_start
        self.latencies += done
        return len(done)

    def result(self) -> dict[str, Any]:
        lat = self.latencies
        info = self.pool.info
        return {
            "kind": "engine-ceiling",
            "workers": self.workers,
            "threads_per_worker": self.threads,
            "concurrency": self.concurrency,
            "execution_provider": info.execution_provider if info else "",
            "count": len(lat),
            "elapsed_s": self.elapsed_s,
            "images_per_s": len(lat) / self.elapsed_s if self.elapsed_s else 0.0,
            "latency_s": {
                "mean": statistics.fmean(lat) if lat else 0.0,
                "p50": percentile(lat, 50),
                "p95": percentile(lat, 95),
            },
            "warmup_s": self.warmup_s,
        }

    async def close(self) -> None:
        await self.pool.close()


async def measure_engine(
    image: bytes,
    workers: int,
    threads: int,
    concurrency: int,
    duration_s: float,
    total: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Closed-loop OCR of `image` straight on the worker pool; returns throughput and latency."""
    bench = EngineBench(image, workers, threads, concurrency, device)
    await bench.start()
    try:
        await bench.run(duration_s, total, progress)
        return bench.result()
    finally:
        await bench.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="image file to recognise repeatedly")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="ORT threads per worker")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=0,
        help="images in flight (0: 2 per worker, enough to keep workers busy)",
    )
    parser.add_argument("-z", "--duration", default="20s", help="how long to run (e.g. 30s, 1m)")
    parser.add_argument("-n", "--total", type=int, default=0, help="stop after this many images")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-o", "--output", type=Path, help="also write the JSON result here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(ns: argparse.Namespace) -> int:
    if not ns.image.is_file():
        print(f"ocrmesh bench engine: no such file: {ns.image}", file=sys.stderr)
        return 2
    workers = ns.workers or default_workers()
    result = run_stoppable(
        measure_engine(
            ns.image.read_bytes(),
            workers,
            ns.threads_per_worker,
            ns.concurrency or 2 * workers,
            parse_duration(ns.duration),
            ns.total,
            ns.device,
            progress=not ns.no_progress,
        )
    )
    result["image"] = str(ns.image)
    text = json.dumps(result, indent=2)
    if ns.output:
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(text)
    if ns.json:
        print(text)
    else:
        lat = result["latency_s"]
        print(
            f"engine ceiling: {result['images_per_s']:.2f} images/s "
            f"({result['count']} images in {result['elapsed_s']:.1f}s, {workers} workers x "
            f"{ns.threads_per_worker} thread, {result['execution_provider']}); latency mean "
            f"{lat['mean'] * 1000:.0f} ms, p50 {lat['p50'] * 1000:.0f} ms, p95 {lat['p95'] * 1000:.0f} ms"
        )
    return 0
