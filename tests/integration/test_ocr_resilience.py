"""The OCR service under stress: overload sheds at once, dead work is skipped, crashes recover.

These use the test-only `--debug-delay-ms` flag so each job takes a known time on a 2-core box.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
import psutil
import pytest
from ocrmesh.ocr.v1 import ocr_pb2

from mesh import balancer, errors
from mesh.ocr_client import OcrClient
from tests.corpus import CORPUS
from tests.integration import prometheus_text
from tests.integration.ocr_fixtures import ROOT, running_ocr, stop

PHOTO = (CORPUS / "real" / "rapidocr_ch_en_num.jpg").read_bytes()
T = TypeVar("T")


async def _timed(coro: Awaitable[T]) -> tuple[T | grpc.aio.AioRpcError, float]:
    started = time.monotonic()
    try:
        return await coro, time.monotonic() - started
    except grpc.aio.AioRpcError as exc:
        return exc, time.monotonic() - started


async def test_overload_sheds_excess_at_once_and_serves_the_rest(tmp_path: Path) -> None:
    # 1 worker + 1 queue slot: of 6 simultaneous callers, 2 are accepted.
    with running_ocr(tmp_path, "--workers", "1", "--queue-depth", "1", "--debug-delay-ms", "1500") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            outcomes = await asyncio.gather(*(_timed(client.recognize(PHOTO, timeout=60)) for _ in range(6)))
            info = await client.info()
    ok = [(r, t) for r, t in outcomes if isinstance(r, ocr_pb2.OcrResult)]
    shed = [(r, t) for r, t in outcomes if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 2 and len(shed) == 4, [type(r).__name__ for r, _ in outcomes]
    for result, _ in ok:
        assert "正品促销" in result.text
    for exc, elapsed in shed:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = errors.retry_delay_s(errors.from_call_error(exc))
        assert delay is not None and 0.05 <= delay <= 10
        assert elapsed < 1.0, "rejection must be immediate, not after waiting"
    assert info.counters.rejected_busy == 4 and info.counters.completed >= 2


async def test_unreachable_deadlines_are_refused_and_expired_or_cancelled_work_never_computed(
    tmp_path: Path,
) -> None:
    # The instance has no service-time sample yet, so it predicts its 1 s seed while each job really
    # takes over 4 s: an optimistic prediction, the one case where admitted work can still expire.
    with running_ocr(tmp_path, "--workers", "1", "--queue-depth", "4", "--debug-delay-ms", "4000") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            before = (await client.info()).counters
            blocker = asyncio.ensure_future(client.recognize(PHOTO, timeout=60))
            await asyncio.sleep(0.3)  # the only worker is now busy
            # Cannot finish in 0.3 s even by the optimistic estimate: refused at once, retryable.
            refused, elapsed = await _timed(client.recognize(PHOTO, timeout=0.3))
            assert isinstance(refused, grpc.aio.AioRpcError)
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and elapsed < 0.3
            assert errors.error_reason(errors.from_call_error(refused)) == "DEADLINE_UNREACHABLE"
            # Fits the estimate, so it is admitted, then expires while queued behind the blocker.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recognize(PHOTO, timeout=2.5)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Cancelled by its caller while queued.
            doomed = asyncio.ensure_future(client.recognize(PHOTO, timeout=60))
            await asyncio.sleep(0.3)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert "正品促销" in (await blocker).text
            await asyncio.sleep(0.5)
            after = (await client.info()).counters
    # Only the blocker ran: neither the refused, the expired nor the cancelled request reached a worker.
    assert after.completed - before.completed == 1
    assert after.rejected_deadline_unreachable - before.rejected_deadline_unreachable == 1
    assert after.dropped_expired - before.dropped_expired == 1
    assert after.dropped_cancelled - before.dropped_cancelled == 1


async def test_a_paced_refusal_takes_room_as_soon_as_it_opens(tmp_path: Path) -> None:
    # One worker, one waiting slot, one refusal a run answered at once (rate 0, burst 1), holds of
    # up to 30 s: the second refused call is held, and is admitted when the slot frees (a few
    # seconds), not when its hold ends.
    args = ("--workers", "1", "--queue-depth", "1", "--debug-delay-ms", "1500")
    with running_ocr(tmp_path, *args, "--refusal-rate", "0", "--refusal-hold-s", "30") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            running = asyncio.ensure_future(client.recognize(PHOTO, timeout=60))
            await asyncio.sleep(0.3)
            waiting = asyncio.ensure_future(client.recognize(PHOTO, timeout=60))
            await asyncio.sleep(0.3)  # one running, one waiting: the queue is full
            refused, elapsed = await _timed(client.recognize(PHOTO, timeout=60))
            assert isinstance(refused, grpc.aio.AioRpcError) and elapsed < 10
            assert errors.error_reason(errors.from_call_error(refused)) == "QUEUE_FULL"
            held, elapsed = await _timed(client.recognize(PHOTO, timeout=60))
            assert isinstance(held, ocr_pb2.OcrResult), held
            assert "正品促销" in held.text
            assert elapsed < 20, f"held {elapsed:.1f}s: the room that opened was not taken"
            for call in (running, waiting):
                assert "正品促销" in (await call).text
            info = await client.info()
    assert info.counters.refusals_held == 1 and info.counters.admitted_after_hold == 1
    assert info.counters.rejected_queue_full == 1


async def test_killed_worker_is_replaced_and_its_request_retried(tmp_path: Path) -> None:
    with running_ocr(tmp_path, "--workers", "2", "--debug-delay-ms", "2000") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            call = asyncio.ensure_future(_timed(client.recognize(PHOTO, timeout=90)))
            await asyncio.sleep(0.5)
            info = await client.info()
            busy = [w.pid for w in info.worker_infos if w.state == "busy"]
            assert len(busy) == 1, info.worker_infos
            os.kill(busy[0], signal.SIGKILL)
            result, elapsed = await call
            assert isinstance(result, ocr_pb2.OcrResult), result
            assert "正品促销" in result.text and result.served_by.worker_pid != busy[0]
            assert elapsed < 60
            # The pool is back to full strength and keeps serving.
            for _ in range(100):
                info = await client.info()
                if all(w.state == "idle" and w.pid for w in info.worker_infos):
                    break
                await asyncio.sleep(0.2)
            assert busy[0] not in [w.pid for w in info.worker_infos]
            assert info.counters.worker_restarts >= 1 and info.counters.retried == 1
            again = await client.recognize(PHOTO, timeout=60)
            assert "正品促销" in again.text


async def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with running_ocr(tmp_path, "--workers", "1", "--queue-depth", "2", "--debug-delay-ms", "1500") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            calls = [asyncio.ensure_future(client.recognize(PHOTO, timeout=60)) for _ in range(2)]
            await asyncio.sleep(0.5)
            svc.proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, ocr_pb2.OcrResult) for r in results), results
        assert svc.proc.wait(30) == 0
        assert "draining" in svc.log_text()


def test_device_cuda_without_a_gpu_fails_clearly(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a CUDA execution provider; the no-GPU path cannot be shown")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "ocr",
            "--port",
            "0",
            "--device",
            "cuda",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        stop(proc)  # type: ignore[arg-type]
    assert proc.returncode == 2
    assert "--device cuda" in stderr and "CUDAExecutionProvider" in stderr
    assert "--device cpu" in stderr  # says what to do instead


async def test_heavy_images_run_one_at_a_time_while_light_ones_share_workers(tmp_path: Path) -> None:
    # With --heavy-pixels this low the photo counts as heavy: two of them on two free workers
    # must run one after the other (the second waits about one job's time), bounding memory.
    with running_ocr(
        tmp_path,
        "--workers",
        "2",
        "--debug-delay-ms",
        "1500",
        "--heavy-pixels",
        "100000",
        "--max-heavy-jobs",
        "1",
    ) as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            heavy = await asyncio.gather(*(client.recognize(PHOTO, timeout=60) for _ in range(2)))
    waits = sorted(r.timing.queue_ms for r in heavy)
    assert waits[0] < 700 and waits[1] >= 1200, waits
    with running_ocr(tmp_path, "--workers", "2", "--debug-delay-ms", "1500", "--heavy-pixels", "0") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            light = await asyncio.gather(*(client.recognize(PHOTO, timeout=60) for _ in range(2)))
    assert max(r.timing.queue_ms for r in light) < 700, [r.timing.queue_ms for r in light]


async def test_a_recycled_worker_serves_on_until_its_successor_is_warm(tmp_path: Path) -> None:
    # After 2 jobs the worker is due for recycling: its successor warms up (a process start and a
    # model load, seconds) while the old worker takes the next jobs, so the instance never stops.
    with running_ocr(tmp_path, "--workers", "1", "--recycle-after-jobs", "2") as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            first = [await client.recognize(PHOTO, timeout=60) for _ in range(2)]
            old = first[0].served_by.worker_pid
            assert first[1].served_by.worker_pid == old
            third = await client.recognize(PHOTO, timeout=60)  # sent as the successor starts
            assert third.served_by.worker_pid == old and "正品促销" in third.text
            for _ in range(300):  # the successor takes the slot once warm, between jobs
                info = await client.info()
                pids = [w.pid for w in info.worker_infos]
                if pids and pids[0] not in (0, old):
                    break
                await asyncio.sleep(0.2)
            assert len(pids) == 1 and pids[0] not in (0, old), info.worker_infos
            assert info.counters.failed == 0 and info.counters.worker_restarts == 0  # nothing crashed
            metrics = await asyncio.to_thread(prometheus_text.scrape, svc.metrics)
            assert metrics.value("ocrmesh_ocr_worker_recycles_total") == 1
            after = await client.recognize(PHOTO, timeout=60)
            assert after.served_by.worker_pid == pids[0] and "正品促销" in after.text
            for _ in range(100):  # the old worker exits on its own once replaced
                if not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE:
                    break
                await asyncio.sleep(0.1)
            assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
