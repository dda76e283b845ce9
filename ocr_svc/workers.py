"""The pool of engine worker processes: spawn, warm, feed from the queue, recycle, respawn."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from mesh.tasks import cancel_and_wait
from ocr_svc.admission import AdmissionQueue, Ticket, heavy_may_start
from ocr_svc.engine import EngineInfo, EngineSettings, EngineStartError
from ocr_svc.guardrails import Limits
from ocr_svc.job import JobAnswer, JobRejected, JobResult
from ocr_svc.worker_process import WorkerFailed, WorkerReady, worker_main

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a job whose worker died is retried once on another worker


def service_ewma(current: float, sample: float, samples: int, weight: float = 0.2) -> float:
    """The per-job service time estimate after `sample`; the first sample replaces the seed."""
    return sample if samples == 0 else current + (sample - current) * weight


def spread_ewma(spread: float, estimate: float, sample: float, samples: int, weight: float = 0.2) -> float:
    """The typical miss of the estimate (an EWMA of |sample - estimate|, as TCP keeps RTTVAR beside
    SRTT); `estimate` is the service-time estimate before `sample` came in."""
    if samples == 0:
        return 0.0
    return spread + (abs(sample - estimate) - spread) * weight


class WorkerDied(Exception):
    """The worker process ended (crash, kill, OOM) or was killed for being stuck."""


class JobFailed(Exception):
    """A job could not be completed; `kind` says why: rejected, expired, crashed, error."""

    def __init__(self, kind: str, message: str, rejected: JobRejected | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.rejected = rejected  # what the worker said of an image it could not decode


@dataclass
class Counters:
    """Totals since start; read by GetInfo and the metrics collector."""

    accepted: int = 0
    completed: int = 0
    rejected_busy: int = 0  # refused by admission, for any of the reasons below
    rejected_deadline_unreachable: int = 0  # the predicted completion did not fit the deadline
    rejected_queue_wait: int = 0  # the predicted wait was over --max-queue-wait-s
    rejected_queue_memory: int = 0  # the waiting images held all the bytes or pixels allowed
    rejected_queue_full: int = 0  # the --queue-depth cap was reached
    refusals_held: int = 0  # refusals answered after a hold (a refusal storm was being paced)
    admitted_after_hold: int = 0  # held calls that found room when their hold ended
    rejected_invalid: int = 0
    dropped_expired: int = 0
    dropped_cancelled: int = 0
    worker_restarts: int = 0
    worker_recycles: int = 0
    retried: int = 0
    failed: int = 0
    widened: int = 0  # jobs with at least one model run on the wide sessions (ran alone)
    model_runs: int = 0  # ONNX model runs of completed jobs (det, cls and rec batches)
    wide_model_runs: int = 0  # of those, runs on the wide sessions


@dataclass(frozen=True)
class Started:
    """A warm worker process, not yet given a slot."""

    process: BaseProcess
    conn: Connection
    info: EngineInfo


@dataclass
class Slot:
    """One worker position; its process is replaced when it dies or is recycled."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    jobs_done: int = 0
    state: str = "starting"
    crashes_in_a_row: int = 0
    info: EngineInfo | None = None
    job_started_at: float | None = None  # monotonic time the running job was sent, None when idle
    # A planned recycle: the replacement warming up while this slot's worker goes on serving.
    successor: asyncio.Task[Started] | None = None
    recycle_why: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid or 0 if self.process else 0

    def rss_bytes(self) -> int:
        if not self.pid:
            return 0
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0


@dataclass
class PoolSettings:
    """How the pool runs its workers."""

    size: int
    recycle_after_jobs: int = 0
    max_worker_rss_bytes: int = 0
    job_timeout_s: float = 120.0
    start_timeout_s: float = 300.0
    heavy_pixels: int = 3_000_000
    max_heavy_jobs: int = 0  # 0: no limit


@dataclass
class WorkerPool:
    """Runs `size` worker processes that pull tickets from `queue` in order."""

    engine: EngineSettings
    limits: Limits
    settings: PoolSettings
    queue: AdmissionQueue
    counters: Counters = field(default_factory=Counters)
    busy: int = 0
    ewma_service_s: float = 1.0  # seconds a worker spends on one job; the first job sets it
    service_spread_s: float = 0.0  # how far one job's time typically lies from ewma_service_s
    service_samples: int = 0

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [Slot(i) for i in range(self.settings.size)]
        self.queue.workers = self.settings.size
        self._threads = ThreadPoolExecutor(
            max_workers=2 * self.settings.size + 2, thread_name_prefix="ocr-pipe"
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()  # replaced workers finishing their exit
        self._closing = False
        self.heavy_running = 0
        self._heavy_waiters: deque[asyncio.Future[None]] = deque()
        self.info: EngineInfo | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker and wait until all are warm; raises EngineStartError on failure."""
        spawns = [asyncio.ensure_future(self._spawn(slot)) for slot in self._slots]
        try:
            await asyncio.gather(*spawns)
        except BaseException:
            # The others may still be starting: cancelled, they stop their half-started processes.
            await asyncio.gather(*(cancel_and_wait(spawn) for spawn in spawns))
            await self.close()
            raise
        self.info = self._slots[0].info
        self._tasks = [asyncio.create_task(self._run_slot(s)) for s in self._slots]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop feeding workers, ask them to exit, kill any that do not."""
        self._closing = True
        await asyncio.gather(*(cancel_and_wait(task) for task in self._tasks))
        await asyncio.gather(*(self._drop_successor(s) for s in self._slots))
        await asyncio.gather(*(self._stop_process(s, timeout_s) for s in self._slots))
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._threads.shutdown(wait=False, cancel_futures=True)

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def busy_elapsed(self, now: float) -> list[float]:
        """How long each running job has been on its worker (for the predicted wait)."""
        return [now - s.job_started_at for s in self._slots if s.job_started_at is not None]

    # -- processes -------------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def _start_worker(self, index: int) -> Started:
        """Start a worker process for slot `index` and wait until its engine is warm; a worker that
        fails, hangs or is cancelled on the way is stopped (EngineStartError says why)."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.engine, self.limits, logging.getLevelName(logging.getLogger().level)),
            name=f"ocr-worker-{index}",
            daemon=True,
        )
        await self._call(proc.start)
        child.close()
        try:
            message = await asyncio.wait_for(self._call(parent.recv), timeout=self.settings.start_timeout_s)
        except (EOFError, OSError, TimeoutError) as exc:
            await self._end_process(proc, parent, 1.0)
            raise EngineStartError(
                f"worker {index} exited or hung while loading the models ({exc!r}); "
                "check memory and the logs above"
            ) from None
        except asyncio.CancelledError:
            await self._end_process(proc, parent, 1.0)
            raise
        if not isinstance(message, WorkerReady):
            await self._end_process(proc, parent, 1.0)
            raise EngineStartError(message.message if isinstance(message, WorkerFailed) else repr(message))
        return Started(proc, parent, message.info)

    async def _spawn(self, slot: Slot) -> None:
        slot.state = "starting"
        self._adopt(slot, await self._start_worker(slot.index))

    def _adopt(self, slot: Slot, started: Started) -> None:
        """Give `slot` the warm worker `started` (its previous process, if any, is the caller's)."""
        slot.process, slot.conn, slot.info = started.process, started.conn, started.info
        slot.jobs_done = 0
        slot.state = "idle"
        log.info(
            "worker ready",
            extra={
                "worker": slot.index,
                "pid": slot.pid,
                "provider": started.info.execution_provider,
                "warmup_ms": round(started.info.warmup_ms),
                "subnormal_weights_zeroed": started.info.subnormal_weights_zeroed,
            },
        )

    async def _stop_process(self, slot: Slot, timeout_s: float) -> None:
        proc, conn = slot.process, slot.conn
        slot.state = "stopped"
        slot.process, slot.conn = None, None
        if proc is not None:
            await self._end_process(proc, conn, timeout_s)

    async def _end_process(self, proc: BaseProcess, conn: Connection | None, timeout_s: float) -> None:
        """Ask a worker to exit (it finishes nothing: it is idle or its job is given up), kill it
        if it has not within `timeout_s`."""
        if conn is not None and proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        await self._call(proc.join, timeout_s)
        if proc.is_alive():
            proc.kill()
            await self._call(proc.join, 5.0)
        if conn is not None:
            conn.close()

    async def _replace(self, slot: Slot, why: str) -> None:
        """Stop the slot's process and start a fresh one, backing off if it keeps failing."""
        await self._drop_successor(slot)  # the worker died while its successor warmed: start afresh
        await self._stop_process(slot, 5.0)
        while not self._closing:
            delay = min(10.0, 0.5 * (2 ** max(0, slot.crashes_in_a_row - 1)))
            if slot.crashes_in_a_row:
                await asyncio.sleep(delay)
            try:
                await self._spawn(slot)
                log.warning("worker replaced", extra={"worker": slot.index, "why": why})
                return
            except EngineStartError as exc:
                slot.crashes_in_a_row += 1
                log.error("worker failed to restart", extra={"worker": slot.index, "error": str(exc)})

    # -- the work loop ---------------------------------------------------------------------

    async def _run_slot(self, slot: Slot) -> None:
        while not self._closing:
            if slot.process is None or not slot.process.is_alive():
                self.counters.worker_restarts += 1
                await self._replace(slot, "process was not alive")
                continue
            ticket = await self.queue.take()
            try:
                ran, died = await self._run_ticket(slot, ticket)
            finally:
                self.queue.done(ticket)  # before a replacement: its flow may go on elsewhere
            if died is not None:
                await self._replace(slot, died)
                continue
            if ran:
                await self._maybe_recycle(slot)
            await self._take_over(slot)

    async def _run_ticket(self, slot: Slot, ticket: Ticket) -> tuple[bool, str | None]:
        """Run a taken ticket on `slot` and deliver its answer: (whether it ran to an answer, why
        the worker died if it did: the ticket is requeued and the worker must be replaced)."""
        now = time.monotonic()
        if ticket.abandoned:
            self.counters.dropped_cancelled += 1
            return False, None
        if ticket.expired(now):
            self.counters.dropped_expired += 1
            ticket.future.set_exception(JobFailed("expired", "deadline passed while queued"))
            return False, None
        if ticket.heavy and not await self._acquire_heavy(ticket):
            return False, None
        ticket.started_at = ticket.started_at or time.monotonic()
        ticket.attempts += 1
        slot.state = "busy"
        slot.job_started_at = time.monotonic()
        self.busy += 1
        try:
            reply = await self._exchange(slot, ticket)
        except WorkerDied as exc:
            slot.crashes_in_a_row += 1
            self.counters.worker_restarts += 1
            self._after_crash(ticket, str(exc))
            return False, str(exc)
        finally:
            self.busy -= 1
            slot.job_started_at = None
            if ticket.heavy:
                self._release_heavy()
        slot.crashes_in_a_row = 0
        slot.jobs_done += 1
        slot.state = "idle"
        self._deliver(ticket, reply)
        return True, None

    async def _acquire_heavy(self, ticket: Ticket) -> bool:
        """Wait for a heavy-job permit, first come first served; False if the ticket died waiting.

        Bounds memory: each heavy job makes its worker grow by several hundred MiB for a while.
        A freed permit goes straight to the oldest waiter, so no heavy ticket can starve.
        """
        limit = self.settings.max_heavy_jobs
        if not self._heavy_waiters and heavy_may_start(self.heavy_running, limit):
            self.heavy_running += 1
            return True
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._heavy_waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release_heavy()
            raise
        if ticket.abandoned or ticket.expired(time.monotonic()):
            self._release_heavy()
            if ticket.abandoned:
                self.counters.dropped_cancelled += 1
            else:
                self.counters.dropped_expired += 1
                ticket.future.set_exception(JobFailed("expired", "deadline passed while queued"))
            return False
        return True

    def _release_heavy(self) -> None:
        self.heavy_running -= 1
        while self._heavy_waiters and heavy_may_start(self.heavy_running, self.settings.max_heavy_jobs):
            waiter = self._heavy_waiters.popleft()
            if not waiter.done():
                self.heavy_running += 1
                waiter.set_result(None)

    async def _exchange(self, slot: Slot, ticket: Ticket) -> JobAnswer:
        conn, proc = slot.conn, slot.process
        assert conn is not None and proc is not None
        # A PDF's pages run one after another in one job: the stuck-job limit applies per page.
        pages = ticket.header.frames if ticket.header.format == "PDF" and not ticket.page else 1
        limit_s = self.settings.job_timeout_s * max(1, pages)
        try:
            job = dataclasses.replace(ticket.job(), more_queued=len(self.queue) > 0)
            await self._call(conn.send, job)
            receiving = asyncio.ensure_future(self._call(conn.recv))
            try:
                reply: JobAnswer = await asyncio.wait_for(asyncio.shield(receiving), timeout=limit_s)
            except TimeoutError:
                proc.kill()
                with contextlib.suppress(EOFError, OSError):
                    await receiving
                raise WorkerDied(f"worker {slot.index} was stuck for {limit_s:.0f}s") from None
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise WorkerDied(f"worker {slot.index} (pid {proc.pid}) died: {exc!r}") from None
        return reply

    def _after_crash(self, ticket: Ticket, why: str) -> None:
        if ticket.abandoned:
            return
        if ticket.attempts < MAX_ATTEMPTS:
            self.counters.retried += 1
            log.warning("retrying job on another worker", extra={"job": ticket.job_id, "why": why})
            self.queue.requeue(ticket)
            return
        self.counters.failed += 1
        ticket.future.set_exception(
            JobFailed("crashed", f"the worker died twice while processing this image ({why})")
        )

    def _deliver(self, ticket: Ticket, reply: JobAnswer) -> None:
        if isinstance(reply, JobResult):
            # Per image: a PDF's pages are that many images' work, and must not inflate the estimate.
            service_s = (time.monotonic() - (ticket.started_at or time.monotonic())) / max(
                1, len(reply.pages)
            )
            self.service_spread_s = spread_ewma(
                self.service_spread_s, self.ewma_service_s, service_s, self.service_samples
            )
            self.ewma_service_s = service_ewma(self.ewma_service_s, service_s, self.service_samples)
            self.service_samples += 1
            self.counters.completed += 1
            if reply.threads is not None:
                self.counters.model_runs += reply.threads.model_runs
                self.counters.wide_model_runs += reply.threads.wide_runs
                if reply.threads.wide_runs:
                    self.counters.widened += 1
        if ticket.abandoned:
            return
        if isinstance(reply, JobResult):
            ticket.future.set_result(reply)
        elif isinstance(reply, JobRejected):
            self.counters.rejected_invalid += 1
            ticket.future.set_exception(JobFailed("rejected", reply.description, reply))
        else:
            self.counters.failed += 1
            ticket.future.set_exception(JobFailed("error", reply.message))

    async def _maybe_recycle(self, slot: Slot) -> None:
        """Replace a worker that has done its share of jobs or grown too big.

        After `recycle_after_jobs` the successor warms up beside the worker, which goes on serving
        until it is ready (the slot never stops; the instance holds one more worker's memory for
        those seconds). A worker above `max_worker_rss_bytes` is replaced at once instead: memory is
        what is short."""
        s = self.settings
        rss = slot.rss_bytes() if s.max_worker_rss_bytes else 0
        if rss > s.max_worker_rss_bytes:
            self.counters.worker_recycles += 1
            slot.state = "retiring"
            await self._replace(slot, f"recycled at RSS {rss // 2**20} MiB")
            return
        if s.recycle_after_jobs and slot.jobs_done >= s.recycle_after_jobs and slot.successor is None:
            self.counters.worker_recycles += 1
            slot.recycle_why = f"recycled after {slot.jobs_done} jobs"
            successor = asyncio.create_task(self._start_worker(slot.index))
            slot.successor = successor
            successor.add_done_callback(lambda done: self._successor_ready(slot, done))
            log.info("warming a successor", extra={"worker": slot.index, "why": slot.recycle_why})

    async def _drop_successor(self, slot: Slot) -> None:
        """Give up the slot's successor: stopped while it starts, or ended if it is already warm."""
        successor, slot.successor = slot.successor, None
        if successor is None:
            return
        await cancel_and_wait(successor)
        if not successor.cancelled() and successor.exception() is None:
            started = successor.result()
            await self._end_process(started.process, started.conn, 5.0)

    def _successor_ready(self, slot: Slot, successor: asyncio.Task[Started]) -> None:
        """The successor's start ended: an idle slot takes it at once (no job is on its worker);
        a busy one after its job (`_take_over`), and so does one whose successor failed."""
        if self._closing or slot.successor is not successor or slot.state != "idle":
            return
        if not successor.cancelled() and successor.exception() is None:
            self._hand_over(slot, successor.result())

    async def _take_over(self, slot: Slot) -> None:
        """Between jobs: if the slot's successor is warm, it takes the slot; if it failed to
        start, the slot's worker is replaced the plain way (stopped, then started, with backoff)."""
        successor = slot.successor
        if successor is None or not successor.done():
            return
        if successor.cancelled() or successor.exception() is not None:
            slot.successor = None
            why = "cancelled" if successor.cancelled() else str(successor.exception())
            log.error("successor failed to start", extra={"worker": slot.index, "error": why})
            await self._replace(slot, slot.recycle_why)
            return
        self._hand_over(slot, successor.result())

    def _hand_over(self, slot: Slot, started: Started) -> None:
        """The warm successor takes the slot; the old worker (idle now) exits in the background."""
        old, conn = slot.process, slot.conn
        slot.successor = None
        self._adopt(slot, started)
        log.warning("worker replaced", extra={"worker": slot.index, "why": slot.recycle_why})
        if old is not None:
            stopping = asyncio.create_task(self._end_process(old, conn, 5.0))
            self._retiring.add(stopping)
            stopping.add_done_callback(self._retiring.discard)
