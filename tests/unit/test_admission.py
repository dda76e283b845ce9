"""Admission: predicted wait, deadline and memory decide; flows in turn; retries to the front; discard."""

from __future__ import annotations

import asyncio
import functools
import heapq
import random

import pytest

from ocr_svc.admission import (
    DEADLINE_UNREACHABLE,
    QUEUE_FULL,
    QUEUE_WAIT_TOO_LONG,
    AdmissionPolicy,
    AdmissionQueue,
    Ticket,
    admit,
    completion_s,
    fits_memory,
    flow_may_start,
    predicted_wait_s,
    retry_hint_s,
)
from ocr_svc.guardrails import ImageHeader
from ocr_svc.job import JobOptions
from ocr_svc.refusal_pacing import PacingPolicy, RefusalPacer
from ocr_svc.workers import service_ewma, spread_ewma


def _ticket(deadline: float | None = None, size: int = 1, pixels: int = 0) -> Ticket:
    header = ImageHeader("PNG", width=pixels, height=1, mode="RGB", orientation=1, frames=1, bytes=size)
    return Ticket(b"x" * size, header, JobOptions(), deadline, asyncio.get_running_loop().create_future())


def _simulated_wait(busy_elapsed: list[float], queued: int, workers: int, service_s: float) -> float:
    """The obvious FIFO simulation the closed form must agree with."""
    free = [max(0.0, service_s - e) for e in busy_elapsed] + [0.0] * (workers - len(busy_elapsed))
    heapq.heapify(free)
    for _ in range(queued):
        heapq.heapreplace(free, free[0] + service_s)
    return free[0]


def test_predicted_wait_is_zero_with_an_idle_worker_and_follows_the_work_ahead() -> None:
    assert predicted_wait_s([], 0, 2, 1.0) == 0.0
    assert predicted_wait_s([0.5], 0, 2, 1.0) == 0.0  # one of two workers idle
    assert predicted_wait_s([0.5, 0.2], 0, 2, 1.0) == pytest.approx(0.5)
    assert predicted_wait_s([0.5, 0.2], 3, 2, 1.0) == pytest.approx(1.8, abs=1e-5)
    assert predicted_wait_s([5.0], 1, 1, 10.0) == pytest.approx(15.0, abs=1e-5)
    assert predicted_wait_s([3.0, 3.0], 4, 2, 1.0) == pytest.approx(2.0, abs=1e-5)  # overran: about to end


def test_predicted_wait_matches_a_fifo_simulation() -> None:
    rng = random.Random(7)
    for _ in range(500):
        workers = rng.randint(1, 6)
        busy = [rng.uniform(-1, 4) for _ in range(rng.randint(0, workers))]
        queued, service = rng.randint(0, 200), rng.uniform(0.01, 3.0)
        expected = _simulated_wait(busy, queued, workers, service)
        assert predicted_wait_s(busy, queued, workers, service) == pytest.approx(expected, abs=1e-5)


def test_admit_refuses_what_cannot_finish_before_the_deadline_and_says_when_to_come_back() -> None:
    policy = AdmissionPolicy(max_queue_wait_s=30.0)
    assert admit(wait_s=10.0, service_s=1.0, time_remaining=20.0, queued=20, policy=policy) is None
    assert admit(wait_s=10.0, service_s=1.0, time_remaining=None, queued=20, policy=policy) is None
    # An idle worker takes a request even when one job alone may not fit the deadline.
    assert admit(wait_s=0.0, service_s=5.0, time_remaining=1.0, queued=0, policy=policy) is None
    late = admit(wait_s=19.0, service_s=1.0, time_remaining=20.0, queued=38, policy=policy)
    assert late is not None and late.reason == DEADLINE_UNREACHABLE
    assert late.retry_after_s == pytest.approx(19.0) and late.predicted_wait_s == 19.0
    long = admit(wait_s=45.0, service_s=1.0, time_remaining=None, queued=90, policy=policy)
    assert (
        long is not None and long.reason == QUEUE_WAIT_TOO_LONG and long.retry_after_s == pytest.approx(15.0)
    )
    # Just over the bound: come back after one job, not in 50 ms (nothing can have changed by then).
    edge = admit(wait_s=30.1, service_s=0.8, time_remaining=None, queued=40, policy=policy)
    assert edge is not None and edge.reason == QUEUE_WAIT_TOO_LONG
    assert edge.retry_after_s == pytest.approx(0.8)
    capped = AdmissionPolicy(max_queued=2)
    full = admit(wait_s=0.5, service_s=1.0, time_remaining=None, queued=2, policy=capped)
    assert full is not None and full.reason == QUEUE_FULL
    assert admit(wait_s=0.5, service_s=1.0, time_remaining=None, queued=1, policy=capped) is None


def test_completion_asks_for_more_room_when_jobs_scatter() -> None:
    policy = AdmissionPolicy()
    steady = completion_s(wait_s=15.0, service_s=1.0, spread_s=0.0, policy=policy)
    assert steady == pytest.approx(16.0 * 1.1 + 0.1)
    # 16 jobs on the way (15 ahead on the worker, then its own) each missing by about 0.1 s.
    noisy = completion_s(wait_s=15.0, service_s=1.0, spread_s=0.1, policy=policy)
    assert noisy == pytest.approx(steady + 2.0 * 0.1 * 4.0)
    # The same request fits a 18 s deadline on a steady worker and is refused on a noisy one.
    fits = admit(wait_s=15.0, service_s=1.0, time_remaining=18.0, queued=15, policy=policy)
    assert fits is None
    refused = admit(wait_s=15.0, service_s=1.0, time_remaining=18.0, queued=15, policy=policy, spread_s=0.1)
    assert refused is not None and refused.reason == DEADLINE_UNREACHABLE


def test_spread_follows_the_misses_of_the_estimate() -> None:
    assert spread_ewma(0.0, 1.0, 0.3, samples=0) == 0.0  # the first job sets the estimate, no miss yet
    assert spread_ewma(0.0, 1.0, 1.5, samples=1) == pytest.approx(0.1)  # missed by 0.5, a fifth of it
    assert spread_ewma(0.1, 1.0, 1.0, samples=9) == pytest.approx(0.08)  # a hit shrinks it


def test_retry_hint_is_bounded() -> None:
    assert retry_hint_s(0.0, 30) == 0.05 and retry_hint_s(100.0, 30) == 30 and retry_hint_s(3.0, 30) == 3.0


def test_memory_bound_counts_bytes_and_pixels_but_always_lets_one_wait() -> None:
    policy = AdmissionPolicy(max_queued_bytes=100, max_queued_pixels=1000)
    fits = functools.partial(fits_memory, held_bytes=60, held_pixels=500, policy=policy)
    assert fits(size=40, pixels=500, queued=3)
    assert not fits(size=41, pixels=10, queued=3)
    assert not fits(size=1, pixels=501, queued=3)
    assert fits_memory(held_bytes=0, held_pixels=0, size=10**9, pixels=10**9, queued=0, policy=policy)


async def test_queue_counts_what_it_holds_and_take_is_fifo() -> None:
    q = AdmissionQueue(AdmissionPolicy(max_queued_bytes=25))
    a, b, c = _ticket(size=10, pixels=5), _ticket(size=10, pixels=7), _ticket(size=10)
    q.push(a)
    q.push(b)
    assert (q.held_bytes, q.held_pixels) == (20, 12)
    assert not q.fits(10, 0) and q.fits(5, 0)
    assert await q.take() is a
    assert q.fits(10, 0)
    q.push(c)
    assert [await q.take(), await q.take()] == [b, c]
    assert (q.held_bytes, q.held_pixels, len(q)) == (0, 0, 0)


async def test_requeue_goes_first() -> None:
    q = AdmissionQueue()
    waiting, retry = _ticket(), _ticket()
    q.push(waiting)
    q.requeue(retry)
    assert len(q) == 2
    assert await q.take() is retry


async def test_discard_frees_what_a_caller_who_left_held() -> None:
    q = AdmissionQueue()
    gone = _ticket(size=100, pixels=9)
    q.push(gone)
    assert q.discard(gone) and not q.discard(gone)
    assert (q.held_bytes, q.held_pixels, len(q)) == (0, 0, 0)


async def test_a_pdfs_pages_are_one_flow_taken_in_turn_with_other_callers() -> None:
    q = AdmissionQueue()
    pages = [_ticket(size=4) for _ in range(4)]
    for number, page in enumerate(pages[1:], start=2):
        page.flow, page.page, page.held_bytes = pages[0].flow, number, 1
    pages[0].page = 1
    for page in pages:
        q.push(page)
    assert (len(q), q.flows, q.held_bytes) == (4, 1, 7)
    image, other = _ticket(), _ticket()
    q.push(image)
    q.push(other)
    assert q.flows == 3
    # Page 1, then each waiting caller once, then the rest of the PDF: a 4-page PDF queued first
    # delays a single image by one page, not four.
    taken = [await q.take() for _ in range(6)]
    assert taken == [pages[0], image, other, pages[1], pages[2], pages[3]]
    assert (len(q), q.flows, q.held_bytes) == (0, 0, 0)
    # A page whose worker died goes back first, its flow first in turn.
    q.push(image)
    q.requeue(pages[2])
    assert await q.take() is pages[2]
    assert q.discard(image) and q.flows == 0


def test_a_flow_leaves_a_worker_to_other_callers_only_while_there_are_any() -> None:
    assert flow_may_start(running=0, workers=2, reserve=1, others_about=True)
    assert not flow_may_start(running=1, workers=2, reserve=1, others_about=True)
    assert flow_may_start(running=1, workers=2, reserve=1, others_about=False)  # alone: every worker
    assert flow_may_start(running=1, workers=1, reserve=1, others_about=True)  # no worker to keep
    assert flow_may_start(running=2, workers=4, reserve=1, others_about=True)
    assert not flow_may_start(running=3, workers=4, reserve=1, others_about=True)


async def test_a_pdf_alone_uses_every_worker_but_keeps_one_free_while_others_call() -> None:
    q = AdmissionQueue(AdmissionPolicy(reserve_workers=1, reserve_s=1.5))
    q.workers = 2
    pages = [_ticket() for _ in range(4)]
    for number, page in enumerate(pages, start=1):
        page.flow, page.page = pages[0].flow, number
    for page in pages:
        q.push(page)
    # Alone, the PDF takes both workers.
    assert [await q.take(), await q.take()] == pages[:2]
    q.done(pages[0])
    image = _ticket()
    q.push(image)
    # An image came: it is taken, and the PDF may not take the worker it frees back while it is recent.
    assert await q.take() is image
    q.done(image)
    blocked = asyncio.create_task(q.take())
    await asyncio.sleep(0.01)
    assert not blocked.done()  # one page runs; the other worker waits for other callers
    q.done(pages[1])
    assert await asyncio.wait_for(blocked, 1) is pages[2]  # its own page ended: the next may start
    # Once no other caller was seen for reserve_s, the PDF takes every worker again.
    second = asyncio.create_task(q.take())
    await asyncio.sleep(0.01)
    assert not second.done()
    assert await asyncio.wait_for(second, 10) is pages[3]


async def test_take_waits_and_a_cancelled_taker_does_not_lose_a_wakeup() -> None:
    q = AdmissionQueue()
    first = asyncio.ensure_future(q.take())
    second = asyncio.ensure_future(q.take())
    await asyncio.sleep(0)
    first.cancel()
    t = _ticket()
    q.push(t)
    assert await asyncio.wait_for(second, 1) is t


async def test_ticket_state() -> None:
    t = _ticket(deadline=10.0)
    assert t.expired(10.0) and not t.expired(9.9)
    assert not t.abandoned
    t.future.cancel()
    assert t.abandoned


def test_service_estimate_takes_the_first_job_then_moves_a_fifth_of_the_way() -> None:
    assert service_ewma(1.0, 0.3, samples=0) == 0.3
    assert service_ewma(1.0, 2.0, samples=5) == pytest.approx(1.2)


def test_refusals_go_out_at_once_within_the_rate_then_are_held_within_the_deadline() -> None:
    pacer = RefusalPacer(PacingPolicy(rate_per_s=10, burst=2, max_hold_s=1.0, max_held=3), now=0.0)
    assert pacer.hold_s(0.0, None) == 0 and pacer.hold_s(0.0, None) == 0  # the burst
    assert pacer.hold_s(0.0, None) == 1.0
    assert pacer.hold_s(0.0, 0.45) == pytest.approx(0.40)  # answered before the caller's deadline
    assert pacer.hold_s(0.0, 0.01) == 0.0
    assert pacer.hold_s(0.1, None) == 0.0  # a token came back after 0.1 s at 10/s
    pacer.held = 3
    assert pacer.hold_s(0.1, None) == 0.0  # too many held already: refuse at once


def test_heavy_follows_the_engine_working_size_not_the_upload() -> None:
    from ocr_svc.admission import heavy_may_start, is_heavy

    assert is_heavy(4000, 3000, heavy_pixels=3_000_000)  # works at 2000x1500 = 3.0 Mpx
    assert is_heavy(2000, 1500, heavy_pixels=3_000_000)  # the same cost as the 12 Mpx photo
    assert not is_heavy(1920, 1200, heavy_pixels=3_000_000)  # 2.3 Mpx
    assert not is_heavy(8000, 100, heavy_pixels=3_000_000)  # long strip: 2000x25 working size
    assert not is_heavy(4000, 3000, heavy_pixels=0)  # gating off
    assert heavy_may_start(0, 1) and not heavy_may_start(1, 1) and heavy_may_start(5, 0)
