"""The admission queue: bounded, FIFO, immediate reject, retries to the front, discard on give-up."""

from __future__ import annotations

import asyncio

from ocr_svc.admission import AdmissionQueue, Ticket, admit, retry_after_s
from ocr_svc.engine import JobOptions


def _ticket(deadline: float | None = None) -> Ticket:
    return Ticket(b"x", JobOptions(), deadline, asyncio.get_running_loop().create_future())


def test_admit_is_a_strict_bound() -> None:
    assert admit(0, 1) and not admit(1, 1) and not admit(0, 0)


def test_retry_after_grows_with_the_work_ahead_and_is_bounded() -> None:
    short = retry_after_s(queued=0, busy=1, workers=2, service_s=0.5)
    long = retry_after_s(queued=8, busy=2, workers=2, service_s=0.5)
    assert 0.05 <= short < long <= 10
    assert retry_after_s(queued=10_000, busy=2, workers=1, service_s=5) == 10
    assert retry_after_s(queued=0, busy=0, workers=4, service_s=0.0) == 0.05


async def test_offer_rejects_when_full_and_take_is_fifo() -> None:
    q = AdmissionQueue(capacity=2)
    a, b, c = _ticket(), _ticket(), _ticket()
    assert q.offer(a) and q.offer(b)
    assert not q.offer(c)
    assert await q.take() is a
    assert q.offer(c)
    assert [await q.take(), await q.take()] == [b, c]


async def test_requeue_goes_first_even_when_full() -> None:
    q = AdmissionQueue(capacity=1)
    waiting, retry = _ticket(), _ticket()
    assert q.offer(waiting)
    q.requeue(retry)
    assert len(q) == 2
    assert await q.take() is retry


async def test_discard_frees_the_slot_of_a_caller_who_left() -> None:
    q = AdmissionQueue(capacity=1)
    gone = _ticket()
    assert q.offer(gone)
    assert q.discard(gone) and not q.discard(gone)
    assert q.offer(_ticket())


async def test_take_waits_and_a_cancelled_taker_does_not_lose_a_wakeup() -> None:
    q = AdmissionQueue(capacity=4)
    first = asyncio.ensure_future(q.take())
    second = asyncio.ensure_future(q.take())
    await asyncio.sleep(0)
    first.cancel()
    t = _ticket()
    q.offer(t)
    assert await asyncio.wait_for(second, 1) is t


async def test_ticket_state() -> None:
    t = _ticket(deadline=10.0)
    assert t.expired(10.0) and not t.expired(9.9)
    assert not t.abandoned
    t.future.cancel()
    assert t.abandoned


def test_heavy_follows_the_engine_working_size_not_the_upload() -> None:
    from ocr_svc.admission import heavy_may_start, is_heavy

    assert is_heavy(4000, 3000, heavy_pixels=3_000_000)  # works at 2000x1500 = 3.0 Mpx
    assert is_heavy(2000, 1500, heavy_pixels=3_000_000)  # the same cost as the 12 Mpx photo
    assert not is_heavy(1920, 1200, heavy_pixels=3_000_000)  # 2.3 Mpx
    assert not is_heavy(8000, 100, heavy_pixels=3_000_000)  # long strip: 2000x25 working size
    assert not is_heavy(4000, 3000, heavy_pixels=0)  # gating off
    assert heavy_may_start(0, 1) and not heavy_may_start(1, 1) and heavy_may_start(5, 0)
