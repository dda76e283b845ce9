"""RecognizeStream's upload bounds: a pause longer than the idle limit, or a trickle past the total."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from mesh import errors
from ocr_svc.servicer import bounded_upload


async def parts(pauses: list[float]) -> AsyncIterator[int]:
    for i, pause in enumerate(pauses):
        await asyncio.sleep(pause)
        yield i


async def collect(messages: AsyncIterator[int]) -> list[int]:
    return [m async for m in messages]


async def test_a_steady_upload_passes_whole() -> None:
    assert await collect(bounded_upload(parts([0.0, 0.01, 0.01]), idle_s=1.0, total_s=5.0)) == [0, 1, 2]


async def test_a_pause_over_the_idle_limit_ends_the_upload() -> None:
    got: list[int] = []
    with pytest.raises(errors.RichError) as raised:
        async for m in bounded_upload(parts([0.0, 0.0, 0.5]), idle_s=0.1, total_s=5.0):
            got.append(m)
    assert got == [0, 1]
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert errors.error_reason(raised.value.status) == "UPLOAD_STALLED"
    assert "nothing arrived for 0.1 s" in raised.value.message


async def test_a_trickle_is_ended_at_the_total_limit() -> None:
    with pytest.raises(errors.RichError) as raised:
        await collect(bounded_upload(parts([0.05] * 40), idle_s=0.2, total_s=0.3))
    assert "not finished in 0.3 s" in raised.value.message
