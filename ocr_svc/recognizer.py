"""The OCR instance's request path: guardrails, admission, wait for a worker, map failures."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh import errors
from ocr_svc.admission import (
    DEADLINE_UNREACHABLE,
    QUEUE_MEMORY_FULL,
    QUEUE_WAIT_TOO_LONG,
    AdmissionQueue,
    Refusal,
    Ticket,
    admit,
    is_heavy,
    predicted_wait_s,
    retry_hint_s,
)
from ocr_svc.guardrails import ImageHeader, ImageRejected, Limits, inspect
from ocr_svc.job import JobOptions, JobRejected, JobResult, Line, PageSpan, Recognition, Timing
from ocr_svc.metrics import OcrMetrics
from ocr_svc.refusal_pacing import RefusalPacer
from ocr_svc.workers import JobFailed, WorkerPool

log = logging.getLogger(__name__)
# Told the page count once admitted, then each PDF page in page order as soon as it and the pages
# before it are read (its span's first_line counts the lines of those pages).
AdmittedSink = Callable[[int], Awaitable[None]]
PageSink = Callable[[PageSpan, tuple[Line, ...]], Awaitable[None]]
# How close to its deadline a cancelled call counts as expired (see `recognize`).
EXPIRY_SLACK_S = 0.25
HOLD_RECHECK_MIN_S = 0.05  # a held call looks for room at most this often


def _bad_image(exc: ImageRejected | JobRejected) -> errors.RichError:
    # One vocabulary (ocrmesh.rpc.v1.ErrorReason): the field violation and ErrorInfo say the same.
    reason, field, description = f"IMAGE_{exc.reason}", exc.field, exc.description
    return errors.bad_request(
        f"invalid image: {description}", [errors.FieldViolation(field, description, reason)], reason=reason
    )


class Recognizer:
    """Admits requests by predicted wait and memory, and waits for the worker pool to answer them."""

    def __init__(
        self,
        pool: WorkerPool,
        queue: AdmissionQueue,
        limits: Limits,
        metrics: OcrMetrics,
        pacer: RefusalPacer | None = None,
    ):
        self.pool = pool
        self.queue = queue
        self.limits = limits
        self.metrics = metrics
        self.pacer = pacer or RefusalPacer(now=time.monotonic())
        # PDFium is not thread-safe: one PDF header check at a time, off the event loop.
        self._pdf_check = asyncio.Lock()
        self.serving = False
        self.started = time.time()

    @property
    def counters(self) -> Any:
        return self.pool.counters

    def predicted_wait_s(self, now: float | None = None) -> float:
        """How long a request arriving now would wait for a worker."""
        now = time.monotonic() if now is None else now
        return predicted_wait_s(
            self.pool.busy_elapsed(now), self.queue.flows, self.pool.settings.size, self.pool.ewma_service_s
        )

    def waiting(self) -> int:
        """Queued requests that no idle worker is about to take (what the --queue-depth cap counts)."""
        return max(0, len(self.queue) - max(0, self.pool.settings.size - self.pool.busy))

    def check_image(self, data: bytes) -> ImageHeader:
        """Header-only checks in the server process: the image's size, format and pixels.

        Raises INVALID_ARGUMENT with BadRequest for anything that must not reach a worker.
        """
        try:
            return inspect(data, self.limits)
        except ImageRejected as exc:
            self.counters.rejected_invalid += 1
            raise _bad_image(exc) from None

    async def check_upload(self, data: bytes) -> ImageHeader:
        """`check_image`, with a PDF's check (it parses every page, ~0.6 ms a page) in a thread."""
        if not data.startswith(b"%PDF-") or "PDF" not in self.limits.formats:
            return self.check_image(data)
        async with self._pdf_check:
            return await asyncio.to_thread(self.check_image, data)

    def _refusal(
        self, data: bytes, header: ImageHeader | None, now: float, left: float | None
    ) -> Refusal | None:
        """Why `data` may not join the queue now (None: it may); `header` None: not looked at yet."""
        wait = self.predicted_wait_s(now)
        refusal = admit(
            wait_s=wait,
            service_s=self.pool.ewma_service_s,
            spread_s=self.pool.service_spread_s,
            time_remaining=left,
            queued=self.waiting(),
            policy=self.queue.policy,
        )
        if refusal is None and header is not None and not self.queue.fits(len(data), header.pixels):
            refusal = Refusal(QUEUE_MEMORY_FULL, retry_hint_s(wait, self.queue.policy.max_queue_wait_s), wait)
        return refusal

    def busy_error(self, refusal: Refusal, left: float | None) -> errors.RichError:
        """RESOURCE_EXHAUSTED with RetryInfo (the predicted wait) and ErrorInfo saying why."""
        wait, hint = refusal.predicted_wait_s, refusal.retry_after_s
        ahead = f"{self.pool.busy} running, {len(self.queue)} waiting"
        if refusal.reason == DEADLINE_UNREACHABLE:
            why = (
                f"a worker is free in about {wait:.1f}s ({ahead}) and a job takes "
                f"{self.pool.ewma_service_s:.1f}s: more than the {max(0.0, left or 0.0):.1f}s left before "
                "your deadline"
            )
        elif refusal.reason == QUEUE_WAIT_TOO_LONG:
            why = f"the predicted wait of {wait:.1f}s ({ahead}) is over this instance's maximum queue wait"
        elif refusal.reason == QUEUE_MEMORY_FULL:
            why = f"the images waiting ({ahead}) hold all the memory the queue may use"
        else:
            why = f"the queue holds as many requests as --queue-depth allows ({ahead})"
        return errors.retry_later(
            f"OCR instance is at capacity: {why}; retry in {hint:.2f}s or on another instance",
            hint,
            reason=refusal.reason,
            metadata={
                "predicted_wait_ms": str(round(wait * 1000)),
                "service_ms": str(round(self.pool.ewma_service_s * 1000)),
                "service_spread_ms": str(round(self.pool.service_spread_s * 1000)),
            },
        )

    def _count_refusal(self, reason: str) -> None:
        c = self.counters
        c.rejected_busy += 1
        if reason == DEADLINE_UNREACHABLE:
            c.rejected_deadline_unreachable += 1
        elif reason == QUEUE_WAIT_TOO_LONG:
            c.rejected_queue_wait += 1
        elif reason == QUEUE_MEMORY_FULL:
            c.rejected_queue_memory += 1
        else:
            c.rejected_queue_full += 1

    async def _admit(self, data: bytes, deadline: float | None, wait_for_room: bool) -> ImageHeader:
        """Wait for admission: at once, after one pacing hold, or (`wait_for_room`) until there is
        room; returns the image's header. Raises the refusal, or INVALID_ARGUMENT for a bad image.

        The cheap checks come before the image is looked at, so a refusal costs next to nothing.
        """
        header: ImageHeader | None = None
        held_until: float | None = None  # a paced refusal: when its hold ends
        while True:
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            refusal = self._refusal(data, header, now, left)
            if refusal is None and header is None:
                header = await self.check_upload(data)
                refusal = self._refusal(data, header, now, left)
            if refusal is None:
                assert header is not None
                if held_until is not None:
                    self.counters.admitted_after_hold += 1
                return header
            if wait_for_room and refusal.reason != DEADLINE_UNREACHABLE:
                delay = min(refusal.retry_after_s, 1.0)
                if left is not None and delay >= left:
                    self._count_refusal(DEADLINE_UNREACHABLE)
                    raise self.busy_error(
                        Refusal(DEADLINE_UNREACHABLE, refusal.retry_after_s, refusal.predicted_wait_s), left
                    )
                await asyncio.sleep(delay)
                continue
            if held_until is None:
                hold = self.pacer.hold_s(now, left)
                if hold > 0:
                    held_until = now + hold
                    self.counters.refusals_held += 1
            if held_until is None or now >= held_until:
                self._count_refusal(refusal.reason)
                raise self.busy_error(refusal, left)
            # Look again as jobs end (about every job's time per worker), so a held call takes
            # room as soon as it opens instead of at the end of its hold.
            step = max(HOLD_RECHECK_MIN_S, self.pool.ewma_service_s / max(1, self.pool.settings.size))
            self.pacer.held += 1
            try:
                await asyncio.sleep(min(held_until - now, step))
            finally:
                self.pacer.held -= 1

    async def recognize(
        self,
        data: bytes,
        options: JobOptions,
        time_remaining: float | None,
        wait_for_room: bool = False,
        on_admitted: AdmittedSink | None = None,
        on_page: PageSink | None = None,
    ) -> Recognition:
        """Run one image through the queue and a worker; raises RichError on any failure.

        `on_admitted` and `on_page` hear of the progress (RecognizePages streams it)."""
        received = time.monotonic()
        if not self.serving:
            raise errors.unavailable(
                "OCR instance is not serving (warming up or draining)",
                reason="NOT_SERVING",
                retry_after_s=1.0,
            )
        deadline = None if time_remaining is None else received + time_remaining
        header = await self._admit(data, deadline, wait_for_room)
        tickets = self._tickets(data, header, options, deadline)
        for ticket in tickets:
            self.queue.push(ticket)
        self.counters.accepted += 1
        try:
            if on_admitted is not None:
                await on_admitted(header.frames if header.format == "PDF" else 1)
            results: list[JobResult] = []
            lines_before = 0
            for ticket in tickets:
                result = await self._answer(ticket, deadline)
                results.append(result)
                if on_page is not None:
                    for span in result.pages:
                        own = result.reading.lines[span.first_line : span.first_line + span.line_count]
                        await on_page(
                            dataclasses.replace(span, first_line=lines_before + span.first_line), own
                        )
                lines_before += len(result.reading.lines)
        finally:
            for ticket in tickets:  # a page failed or the caller left: the other pages are dropped
                if self.queue.discard(ticket) or not ticket.future.done():
                    ticket.future.cancel()
        first = tickets[0]
        started = first.started_at or received
        timing = Timing(
            queue_ms=(started - first.enqueued_at) * 1000,
            decode_ms=sum(result.decode_ms for result in results),
            det_ms=sum(result.reading.det_ms for result in results),
            cls_ms=sum(result.reading.cls_ms for result in results),
            rec_ms=sum(result.reading.rec_ms for result in results),
            total_ms=(time.monotonic() - received) * 1000,
        )
        self.metrics.observe(timing)
        if len(results) == 1:
            result = results[0]
            return Recognition(
                result.reading.lines,
                result.width,
                result.height,
                timing,
                result.worker_pid,
                result.pages,
                result.threads,
            )
        lines: list[Line] = []
        spans: list[PageSpan] = []
        for result in results:  # one page each, in page order
            spans.extend(dataclasses.replace(span, first_line=len(lines)) for span in result.pages)
            lines.extend(result.reading.lines)
        threads = None
        for result in results:
            threads = result.threads.merged(threads) if result.threads else threads
        return Recognition(
            tuple(lines),
            results[0].width,
            results[0].height,
            timing,
            results[0].worker_pid,
            tuple(spans),
            threads,
        )

    def _tickets(
        self, data: bytes, header: ImageHeader, options: JobOptions, deadline: float | None
    ) -> list[Ticket]:
        """One ticket for an image; one per page for a PDF, all in one flow (taken in turn with other
        callers, spread over the workers), sharing the upload's bytes in the queue's memory count."""
        pages = header.frames if header.format == "PDF" else 1
        loop = asyncio.get_running_loop()
        heavy = is_heavy(header.width, header.height, self.pool.settings.heavy_pixels)
        first = Ticket(data, header, options, deadline, loop.create_future(), heavy=heavy)
        if pages == 1:
            return [first]
        share = len(data) // pages
        first.page, first.held_bytes = 1, len(data) - share * (pages - 1)
        rest = [
            Ticket(
                data,
                header,
                options,
                deadline,
                loop.create_future(),
                heavy=heavy,
                page=number,
                flow=first.flow,
            )
            for number in range(2, pages + 1)
        ]
        for ticket in rest:
            ticket.held_bytes = share
        return [first, *rest]

    async def _answer(self, ticket: Ticket, deadline: float | None) -> JobResult:
        """The worker's answer to one queued ticket, or the RichError its failure maps to."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
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

    def _failure(self, exc: JobFailed) -> errors.RichError:
        if exc.kind == "rejected" and exc.rejected is not None:
            return _bad_image(exc.rejected)
        if exc.kind == "expired":
            return errors.simple(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while queued", reason="DEADLINE"
            )
        if exc.kind == "crashed":
            return errors.unavailable(str(exc), reason="WORKER_CRASHED", retry_after_s=1.0)
        log.error("OCR job failed", extra={"error": str(exc)})
        return errors.simple(grpc.StatusCode.INTERNAL, f"OCR failed: {exc}", reason="ENGINE_ERROR")
