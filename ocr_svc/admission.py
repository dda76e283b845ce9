"""Admission in front of the workers: admit by predicted wait within the deadline and memory; the
queue takes requests in turn (one PDF's pages are one flow, so they cannot starve other callers)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ocr_svc.guardrails import ImageHeader
from ocr_svc.job import Job, JobOptions, JobResult

_ids = itertools.count(1)

DEADLINE_UNREACHABLE = "DEADLINE_UNREACHABLE"
"""The predicted completion does not fit the caller's deadline."""
QUEUE_WAIT_TOO_LONG = "QUEUE_WAIT_TOO_LONG"
"""The predicted wait is over the instance's maximum queue wait."""
QUEUE_MEMORY_FULL = "QUEUE_MEMORY_FULL"
"""The images already waiting hold the bytes or pixels the queue may hold."""
QUEUE_FULL = "QUEUE_FULL"
"""An operator's hard cap on the number of waiting requests (--queue-depth) is reached."""
REFUSAL_REASONS = (DEADLINE_UNREACHABLE, QUEUE_WAIT_TOO_LONG, QUEUE_MEMORY_FULL, QUEUE_FULL)


@dataclass(eq=False)
class Ticket:
    """One accepted request: waiting in the queue, then on a worker, then answered."""

    data: bytes
    header: ImageHeader  # inspected once, on admission; the worker decodes without inspecting again
    options: JobOptions
    deadline: float | None  # time.monotonic() value, None for no deadline
    future: asyncio.Future[JobResult]
    job_id: int = field(default_factory=lambda: next(_ids))
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    attempts: int = 0
    heavy: bool = False  # a large image: ONNX Runtime needs several hundred MiB for it
    page: int = 0  # a PDF's page this job reads (1-based); 0: the whole upload
    flow: int = 0  # tickets of one flow are taken in turn with other flows; 0: its own flow
    held_bytes: int = -1  # upload bytes this ticket counts in the queue's memory; -1: all of them

    def __post_init__(self) -> None:
        if self.flow == 0:
            self.flow = self.job_id
        if self.held_bytes < 0:
            self.held_bytes = len(self.data)

    @property
    def pixels(self) -> int:
        """Width x height from the header."""
        return self.header.pixels

    def job(self) -> Job:
        """What the worker is sent."""
        return Job(self.job_id, self.data, self.options, self.header, self.page)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    @property
    def abandoned(self) -> bool:
        """The caller went away (cancelled) or already got an answer."""
        return self.future.done()


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the queue may hold and how long a request may be asked to wait.

    A request is admitted when its predicted completion (wait for a worker + its own service
    time, times `safety` plus `slack_s`, plus `spread_weight` times the typical miss of one job's
    time over the jobs it waits through, see `completion_s`) fits its deadline, its predicted wait fits
    `max_queue_wait_s`, and the waiting images stay within `max_queued_bytes` and
    `max_queued_pixels` (the memory they hold). `max_queued` is an optional hard cap on the
    count (-1: none), for operators who want one.
    """

    max_queue_wait_s: float = 60.0
    max_queued_bytes: int = 256 * 2**20
    max_queued_pixels: int = 2_000_000_000
    max_queued: int = -1
    safety: float = 1.1
    slack_s: float = 0.1
    spread_weight: float = 2.0
    # Workers one flow (a PDF's pages) leaves to other callers while there are any: running or
    # waiting, or an image started or answered within `reserve_s`. Alone, a flow may use every worker.
    reserve_workers: int = 1
    reserve_s: float = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why a request is turned away now, and when coming back should find room."""

    reason: str
    retry_after_s: float
    predicted_wait_s: float


def predicted_wait_s(busy_elapsed: Sequence[float], queued: int, workers: int, service_s: float) -> float:
    """When a request joining the queue now would reach a worker (seconds from now).

    FIFO over `workers` workers; `busy_elapsed` holds how long each running job has run, every
    job takes `service_s` (an EWMA), and a job that overran counts as about to finish.
    """
    workers = max(1, workers)
    service_s = max(service_s, 0.0)
    free = [max(0.0, service_s - elapsed) for elapsed in busy_elapsed[:workers]]
    free += [0.0] * (workers - len(free))
    if queued <= 0 or service_s <= 0:
        return min(free)

    # The new job starts at the (queued + 1)-th earliest of the start times f_i + k * service_s:
    # bisect on the time by which that many starts have come (O(workers) per step, any queue length).
    def starts_by(t: float) -> int:
        return sum(int((t - f) // service_s) + 1 for f in free if t >= f)

    lo, hi = min(free), min(free) + queued * service_s
    for _ in range(64):
        mid = (lo + hi) / 2
        if starts_by(mid) >= queued + 1:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-6:
            break
    return hi


def completion_s(wait_s: float, service_s: float, spread_s: float, policy: AdmissionPolicy) -> float:
    """When a request admitted now would be answered, with margins: `safety` and `slack_s` for a
    machine that slows down as a whole, and `spread_weight` x `spread_s` x sqrt(jobs) for the
    jobs' own scatter (the jobs ahead on one worker plus its own: their misses add like
    independent errors). A quiet worker with steady jobs gets little more than `safety`; a
    shared, noisy one is asked for more room before it promises a deadline."""
    base = wait_s + service_s
    jobs = base / service_s if service_s > 0 else 1.0
    return base * policy.safety + policy.slack_s + policy.spread_weight * spread_s * math.sqrt(jobs)


def retry_hint_s(wait_s: float, cap_s: float) -> float:
    """The RetryInfo delay of a refusal: the predicted wait, at least 50 ms, at most `cap_s`."""
    return min(max(cap_s, 0.05), max(0.05, wait_s))


def admit(
    *,
    wait_s: float,
    service_s: float,
    time_remaining: float | None,
    queued: int,
    policy: AdmissionPolicy,
    spread_s: float = 0.0,
) -> Refusal | None:
    """None to admit, else why not: the cheap checks, made before the image is looked at."""
    hint = retry_hint_s(wait_s, policy.max_queue_wait_s)
    if policy.max_queued >= 0 and queued >= policy.max_queued:
        return Refusal(QUEUE_FULL, hint, wait_s)
    if wait_s > policy.max_queue_wait_s:
        # Room opens as jobs finish: no sooner than one job from now, however close to the bound.
        # A shorter hint (50 ms) had well-behaved clients spend their retries before any job ended.
        over = max(wait_s - policy.max_queue_wait_s, service_s)
        return Refusal(QUEUE_WAIT_TOO_LONG, retry_hint_s(over, hint), wait_s)
    if time_remaining is not None and wait_s > 0:
        # An idle worker always takes the request: only waiting can be refused for the deadline
        # (a deadline shorter than one job is the caller's to choose; it gets DEADLINE_EXCEEDED).
        if completion_s(wait_s, service_s, spread_s, policy) > time_remaining:
            return Refusal(DEADLINE_UNREACHABLE, hint, wait_s)
    return None


def fits_memory(
    *, held_bytes: int, held_pixels: int, size: int, pixels: int, queued: int, policy: AdmissionPolicy
) -> bool:
    """Whether one more image of `size` bytes and `pixels` may wait (the first always may)."""
    if queued == 0:
        return True
    return held_bytes + size <= policy.max_queued_bytes and held_pixels + pixels <= policy.max_queued_pixels


def flow_may_start(running: int, workers: int, reserve: int, others_about: bool) -> bool:
    """Whether a flow already running `running` jobs may start one more: up to `workers - reserve`
    while other callers are about, up to every worker when it is alone (or when there are too few
    workers to keep any).

    Jobs are not pre-empted, so an image arriving while a PDF's pages hold every worker would wait
    for a page to finish (seconds for a dense page); a worker kept for other callers serves it at once.
    """
    return workers <= reserve or running < workers - reserve or not others_about


def is_heavy(width: int, height: int, heavy_pixels: int, engine_side: int = 2000) -> bool:
    """Whether an image is big enough that its detection pass dominates memory.

    The engine scales images so the long side is at most `engine_side`, so the memory follows the
    working size, not the upload's size (a 4000x3000 photo and a 2000x1500 one cost the same).
    """
    if heavy_pixels <= 0 or width <= 0 or height <= 0:
        return False
    scale = min(1.0, engine_side / max(width, height))
    return width * height * scale * scale >= heavy_pixels


def heavy_may_start(running_heavy: int, limit: int) -> bool:
    """Whether one more heavy job may run now (limit 0: no limit)."""
    return limit <= 0 or running_heavy < limit


class AdmissionQueue:
    """Admitted tickets, taken flow by flow in turn (FIFO within a flow, and FIFO overall while every
    flow holds one ticket, as every image is its own flow); counts the bytes and pixels it holds;
    `take` waits. While other callers are about, one flow runs on at most all but
    `policy.reserve_workers` of the `workers` (`flow_may_start`); `done` says a taken ticket ended."""

    def __init__(
        self, policy: AdmissionPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or AdmissionPolicy()
        self.workers = 1  # the worker pool sets its size
        self._flows: OrderedDict[int, deque[Ticket]] = OrderedDict()  # in turn order
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._running: dict[int, int] = {}  # flow -> tickets taken and not done
        # image (one-ticket) flows -> when they last started or ended, while recent: a client
        # reading images one after another keeps its worker between calls (a PDF's own pages, or
        # a PDF sent before, do not hold a worker back from the next one)
        self._seen: dict[int, float] = {}
        self._clock = clock
        self.held_bytes = 0
        self.held_pixels = 0

    def __len__(self) -> int:
        return self._count

    @property
    def flows(self) -> int:
        """Flows with a ticket waiting: how many turns a new request waits for."""
        return len(self._flows)

    def fits(self, size: int, pixels: int) -> bool:
        """Whether an image of `size` bytes and `pixels` pixels may join now (memory bound)."""
        return fits_memory(
            held_bytes=self.held_bytes,
            held_pixels=self.held_pixels,
            size=size,
            pixels=pixels,
            queued=self._count,
            policy=self.policy,
        )

    def push(self, ticket: Ticket) -> None:
        """Queue an admitted ticket at the back of its flow, a new flow last in turn (admission was
        decided by the caller)."""
        self._hold(ticket)
        self._flows.setdefault(ticket.flow, deque()).append(ticket)
        self._count += 1
        self._wake_one()

    def requeue(self, ticket: Ticket) -> None:
        """Put a ticket back at the front, its flow first in turn (a retry after a worker died);
        ignores every bound."""
        self._hold(ticket)
        self._flows.setdefault(ticket.flow, deque()).appendleft(ticket)
        self._flows.move_to_end(ticket.flow, last=False)
        self._count += 1
        self._wake_one()

    def discard(self, ticket: Ticket) -> bool:
        """Remove a ticket whose caller gave up; True if it was still waiting."""
        flow = self._flows.get(ticket.flow)
        if flow is None:
            return False
        try:
            flow.remove(ticket)
        except ValueError:
            return False
        if not flow:
            del self._flows[ticket.flow]
        self._count -= 1
        self._release(ticket)
        return True

    async def take(self) -> Ticket:
        """The first ticket of the first flow in turn that may start one (that flow then goes
        last), waiting until there is one."""
        while (key := self._next_flow(self._clock())) is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            # Held back only by the reserve: look again when it may lapse (no one else about).
            lapse = self._reserve_lapses_in(self._clock()) if self._count else None
            try:
                await asyncio.wait_for(waiter, lapse)
            except TimeoutError:
                continue  # the waiter was cancelled, so no wake-up is lost on it
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up on to another taker
                raise
        flow = self._flows[key]
        ticket = flow.popleft()
        if flow:
            self._flows.move_to_end(key)
        else:
            del self._flows[key]
        self._count -= 1
        self._release(ticket)
        self._running[key] = self._running.get(key, 0) + 1
        if not ticket.page:
            self._seen[key] = self._clock()
        if self._count:
            self._wake_one()  # another flow may start on another idle worker
        return ticket

    def done(self, ticket: Ticket) -> None:
        """A ticket `take` gave out has ended (answered, failed, dropped or requeued)."""
        left = self._running.get(ticket.flow, 0) - 1
        if left > 0:
            self._running[ticket.flow] = left
        else:
            self._running.pop(ticket.flow, None)
        if not ticket.page:
            self._seen[ticket.flow] = self._clock()
        if self._count:
            self._wake_one()

    def _next_flow(self, now: float) -> int | None:
        """The first flow in turn with a ticket that may start now (None: none may)."""
        self._forget(now)
        for key in self._flows:
            running = self._running.get(key, 0)
            if flow_may_start(
                running, self.workers, self.policy.reserve_workers, self._others_about(key, now)
            ):
                return key
        return None

    def _others_about(self, key: int, now: float) -> bool:
        """Whether another flow waits or runs, or an image did within `reserve_s`."""
        if len(self._flows) > 1 or any(other != key for other in self._running):
            return True
        return any(other != key and now - at < self.policy.reserve_s for other, at in self._seen.items())

    def _reserve_lapses_in(self, now: float) -> float:
        """Seconds until the next caller seen stops counting as recent (when the reserve may lapse)."""
        ends = [at + self.policy.reserve_s - now for at in self._seen.values()]
        return max(0.01, min((end for end in ends if end > 0), default=self.policy.reserve_s))

    def _forget(self, now: float) -> None:
        """Drop the flows not running and not seen within `reserve_s`."""
        for key in [k for k, at in self._seen.items() if now - at >= self.policy.reserve_s]:
            if key not in self._running:
                del self._seen[key]

    def _hold(self, ticket: Ticket) -> None:
        self.held_bytes += ticket.held_bytes
        self.held_pixels += ticket.pixels

    def _release(self, ticket: Ticket) -> None:
        self.held_bytes -= ticket.held_bytes
        self.held_pixels -= ticket.pixels

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
