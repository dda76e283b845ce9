"""The OCR instance's request path: guardrails, admission, wait for a worker, map failures."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from mesh import errors
from ocr_svc.admission import AdmissionQueue, Ticket, admit, is_heavy, retry_after_s
from ocr_svc.engine import JobOptions
from ocr_svc.guardrails import ImageRejected, Limits, inspect
from ocr_svc.metrics import OcrMetrics
from ocr_svc.workers import JobFailed, WorkerPool

log = logging.getLogger(__name__)
# How close to its deadline a cancelled call counts as expired (see `recognize`).
EXPIRY_SLACK_S = 0.25


@dataclass
class Recognition:
    """A finished OCR job: the worker's result plus where the time went."""

    lines: list[tuple[str, float, list[float]]]
    width: int
    height: int
    timing_ms: dict[str, float]
    worker_pid: int


def _bad_image(exc: ImageRejected | tuple[str, str, str]) -> errors.RichError:
    reason, field, description = (
        (exc.reason, exc.field, exc.description) if isinstance(exc, ImageRejected) else exc
    )
    return errors.bad_request(
        f"invalid image: {description}",
        [errors.FieldViolation(field, description, reason)],
        reason=f"IMAGE_{reason}",
    )


class Recognizer:
    """Admits requests into the bounded queue and waits for the worker pool to answer them."""

    def __init__(self, pool: WorkerPool, queue: AdmissionQueue, limits: Limits, metrics: OcrMetrics):
        self.pool = pool
        self.queue = queue
        self.limits = limits
        self.metrics = metrics
        self.serving = False
        self.started = time.time()

    @property
    def counters(self) -> Any:
        return self.pool.counters

    def check_image(self, data: bytes) -> bool:
        """Header-only checks in the server process; returns whether the image is heavy.

        Raises INVALID_ARGUMENT with BadRequest for anything that must not reach a worker.
        """
        try:
            header = inspect(data, self.limits)
        except ImageRejected as exc:
            self.counters.rejected_invalid += 1
            raise _bad_image(exc) from None
        return is_heavy(header.width, header.height, self.pool.settings.heavy_pixels)

    def busy_error(self) -> errors.RichError:
        delay = retry_after_s(
            len(self.queue), self.pool.busy, self.pool.settings.size, self.pool.ewma_service_s
        )
        return errors.retry_later(
            f"OCR instance is at capacity ({self.pool.busy} running, {len(self.queue)} queued); "
            f"retry in {delay:.2f}s or on another instance",
            delay,
        )

    async def recognize(
        self,
        data: bytes,
        options: JobOptions,
        time_remaining: float | None,
        wait_for_room: bool = False,
    ) -> Recognition:
        """Run one image through the queue and a worker; raises RichError on any failure."""
        received = time.monotonic()
        if not self.serving:
            raise errors.unavailable(
                "OCR instance is not serving (warming up or draining)",
                reason="NOT_SERVING",
                retry_after_s=1.0,
            )
        if not wait_for_room and not admit(len(self.queue), self.queue.capacity):
            # Full: say so before spending anything on the image (a rejection storm stays cheap).
            self.counters.rejected_busy += 1
            raise self.busy_error()
        heavy = self.check_image(data)
        deadline = None if time_remaining is None else received + time_remaining
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        ticket = Ticket(data=data, options=options, deadline=deadline, future=future, heavy=heavy)
        while not self.queue.offer(ticket):
            busy = self.busy_error()
            if not wait_for_room:
                self.counters.rejected_busy += 1
                raise busy
            delay = errors.retry_delay_s(busy.status) or 0.1
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise errors.simple(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed waiting for room")
            await asyncio.sleep(delay)
        self.counters.accepted += 1
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if self.queue.discard(ticket):
                self.counters.dropped_expired += 1
            raise errors.simple(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded before the OCR finished",
                reason="DEADLINE",
            ) from None
        except asyncio.CancelledError:
            if self.queue.discard(ticket):
                # gRPC cancels the handler when the call's deadline passes, which can beat our own
                # timer by a few ms (more on a loaded machine): count that as expired, not cancelled.
                if deadline is not None and time.monotonic() >= deadline - EXPIRY_SLACK_S:
                    self.counters.dropped_expired += 1
                else:
                    self.counters.dropped_cancelled += 1
            raise
        except JobFailed as exc:
            raise self._failure(exc) from None
        started = ticket.started_at or received
        timing = {
            "queue": (started - ticket.enqueued_at) * 1000,
            "decode": result["decode_ms"],
            "det": result["det_ms"],
            "cls": result["cls_ms"],
            "rec": result["rec_ms"],
            "total": (time.monotonic() - received) * 1000,
        }
        self.metrics.observe(timing)
        return Recognition(
            lines=result["lines"],
            width=result["width"],
            height=result["height"],
            timing_ms=timing,
            worker_pid=result.get("pid", 0),
        )

    def _failure(self, exc: JobFailed) -> errors.RichError:
        if exc.kind == "rejected" and exc.detail:
            return _bad_image(exc.detail)
        if exc.kind == "expired":
            return errors.simple(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while queued", reason="DEADLINE"
            )
        if exc.kind == "crashed":
            return errors.unavailable(str(exc), reason="WORKER_CRASHED", retry_after_s=1.0)
        log.error("OCR job failed", extra={"error": str(exc)})
        return errors.simple(grpc.StatusCode.INTERNAL, f"OCR failed: {exc}", reason="ENGINE_ERROR")
