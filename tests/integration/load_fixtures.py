"""Closed-loop Recognize load through a MeshClient for chaos tests, and etcd-registered OCR instances."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from ocrmesh.ocr.v1 import ocr_pb2

from mesh.mesh_client import MeshClient
from tests.corpus import CORPUS
from tests.integration.ocr_fixtures import OcrProcess, start_ocr, stop

# One text line, no detection: the cheapest real recognition (about 0.1-0.3 s on 2 cores).
LINE = (CORPUS / "real" / "cnocr_rand_cn1.png").read_bytes()
LINE_ONLY = ocr_pb2.RecognizeOptions(use_det=False, use_cls=False)


@dataclass(frozen=True)
class Workload:
    """What each caller of a ClosedLoop sends, and the deadline a real client would give it."""

    name: str
    image: bytes
    options: ocr_pb2.RecognizeOptions | None
    deadline_s: float


LINE_WORK = Workload("line", LINE, LINE_ONLY, 20.0)
# The corpus photo a user would send (18 lines, full pipeline: about 0.7 s per image on one core),
# with a deadline that holds 8 callers queued on one surviving single-worker instance.
PHOTO_WORK = Workload("photo", (CORPUS / "real" / "rapidocr_ch_en_num.jpg").read_bytes(), None, 30.0)


@dataclass(frozen=True)
class Served:
    """One OK call: when it ended (monotonic) and which instance answered."""

    at: float
    instance_id: str


@dataclass(frozen=True)
class Failed:
    """One failed call: when it ended, its status code and details."""

    at: float
    code: grpc.StatusCode
    details: str


class ClosedLoop:
    """`concurrency` callers doing Recognize through one MeshClient, each starting its next call as
    soon as the last one ends, until `stop()`; records who served each call and every failure.

        async with ClosedLoop(mesh, 8) as load:
            await load.wait_served("ocr-a", 3, timeout=30)
            ...
        assert not load.failures
    """

    def __init__(
        self,
        mesh: MeshClient,
        concurrency: int = 8,
        deadline_s: float | None = None,
        work: Workload = LINE_WORK,
    ) -> None:
        self.mesh = mesh
        self.concurrency = concurrency
        self.work = work
        self.deadline_s = work.deadline_s if deadline_s is None else deadline_s
        self.served: list[Served] = []
        self.failures: list[Failed] = []
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ClosedLoop:
        self._running = True
        self._tasks = [asyncio.create_task(self._caller()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop starting calls; the calls in flight finish (each within its deadline) and count."""
        self._running = False
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def _caller(self) -> None:
        client = self.mesh.ocr()
        while self._running:
            try:
                result = await client.recognize(
                    self.work.image, options=self.work.options, timeout=self.deadline_s
                )
            except grpc.aio.AioRpcError as exc:
                self.failures.append(Failed(time.monotonic(), exc.code(), exc.details() or ""))
                continue
            self.served.append(Served(time.monotonic(), result.served_by.instance_id))

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """OK calls per instance that ended within [since, until]."""
        return Counter(s.instance_id for s in self.served if since <= s.at <= until)

    async def wait_served(
        self, instance_id: str, calls: int, timeout: float, since: float | None = None
    ) -> float:
        """Wait until `instance_id` served `calls` calls ending after `since` (default: now);
        returns the seconds waited, AssertionError (with the counts so far) after `timeout`."""
        start = time.monotonic()
        since = start if since is None else since
        while self.counts(since)[instance_id] < calls:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"{instance_id} served {self.counts(since)[instance_id]} of {calls} calls within "
                    f"{timeout}s; all served since: {dict(self.counts(since))}; "
                    f"failures: {self.describe_failures()}"
                )
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    def describe_failures(self) -> list[tuple[str, str]]:
        return [(f.code.name, f.details) for f in self.failures[:10]]

    def summary(self) -> str:
        codes = Counter(f.code.name for f in self.failures)
        return (
            f"{self.work.name}: {len(self.served)} OK {dict(self.counts())}, "
            f"{len(self.failures)} failed {dict(codes)}"
        )


def start_instances(tmp: Path, ids: Sequence[str], *args: str) -> list[OcrProcess]:
    """Start OCR instances named `ids` (see `start_instance`) in parallel (each warms up for
    seconds); all of them or none."""
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [pool.submit(start_instance, tmp, one, *args) for one in ids]
    started = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        for svc in started:
            stop(svc.proc)
        raise failed[0]  # type: ignore[misc]
    return started


def start_instance(tmp: Path, instance_id: str, *args: str) -> OcrProcess:
    """One OCR instance with 1 worker and room for a closed loop of 8 in its queue (chaos is not
    overload: with one instance left, every caller's call must fit), plus `args` (--etcd ...)."""
    return start_ocr(tmp, "--workers", "1", "--queue-depth", "16", "--instance-id", instance_id, *args)
