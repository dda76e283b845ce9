"""OcrService servicer: converts protobuf to and from the recognizer's plain values, nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.rpc import status_pb2
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import __version__, errors
from mesh.peer_address import peer_ip
from mesh.picking import PREDICTED_WAIT_TRAILER
from mesh.tasks import cancel_and_wait
from mesh.token_verify import current_claims
from ocr_svc import contract_enums
from ocr_svc.handoff import HANDOFF_HEADER, Handoff
from ocr_svc.job import JobOptions, Line, PageSpan, Recognition
from ocr_svc.recognizer import AdmittedSink, PageSink, Recognizer

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# A chunked upload's messages: RecognizeStream's and RecognizePages' have the same fields.
Upload: TypeAlias = ocr_pb2.RecognizeStreamRequest | ocr_pb2.RecognizePagesRequest


@dataclass(frozen=True)
class InstanceFacts:
    """What GetInfo and served_by report about this instance."""

    instance_id: str
    device: str
    execution_provider: str
    models: tuple[str, ...]
    workers: int
    threads_per_worker: int
    lone_request_threads: int = 0


def job_options(options: ocr_pb2.RecognizeOptions) -> JobOptions:
    """Unset fields take defaults, so nothing from one request carries into the next."""
    return JobOptions(
        use_det=options.use_det if options.HasField("use_det") else True,
        use_cls=options.use_cls if options.HasField("use_cls") else True,
        use_rec=options.use_rec if options.HasField("use_rec") else True,
        return_boxes=options.return_boxes if options.HasField("return_boxes") else True,
        min_score=options.min_score if options.HasField("min_score") else None,
        use_text_layer=options.use_text_layer if options.HasField("use_text_layer") else False,
    )


def to_line(line: Line, page: int) -> ocr_pb2.TextLine:
    box = [ocr_pb2.Point(x=x, y=y) for x, y in line.box]
    return ocr_pb2.TextLine(text=line.text, score=line.score, box=box, page=page)


def to_page(span: PageSpan) -> ocr_pb2.Page:
    return ocr_pb2.Page(
        number=span.number,
        width=span.width,
        height=span.height,
        dpi=span.dpi,
        first_line=span.first_line,
        line_count=span.line_count,
        source=ocr_pb2.PAGE_SOURCE_TEXT_LAYER if span.text_layer else ocr_pb2.PAGE_SOURCE_OCR,
    )


def to_result(rec: Recognition, facts: InstanceFacts) -> ocr_pb2.OcrResult:
    page_of = [0] * len(rec.lines)
    for span in rec.pages:
        page_of[span.first_line : span.first_line + span.line_count] = [span.number] * span.line_count
    lines = [to_line(line, page) for line, page in zip(rec.lines, page_of, strict=True)]
    t = rec.timing
    return ocr_pb2.OcrResult(
        text=_text(rec),
        pages=[to_page(span) for span in rec.pages],
        lines=lines,
        width=rec.width,
        height=rec.height,
        timing=ocr_pb2.Timing(
            queue_ms=t.queue_ms,
            decode_ms=t.decode_ms,
            det_ms=t.det_ms,
            cls_ms=t.cls_ms,
            rec_ms=t.rec_ms,
            total_ms=t.total_ms,
        ),
        served_by=ocr_pb2.ServedBy(
            instance_id=facts.instance_id,
            device=facts.device,
            device_kind=contract_enums.device(facts.device),
            execution_provider=facts.execution_provider,
            models=list(facts.models),
            worker_pid=rec.worker_pid,
            version=__version__,
            threads=rec.threads.threads if rec.threads else 0,
            model_runs=rec.threads.model_runs if rec.threads else 0,
            wide_model_runs=rec.threads.wide_runs if rec.threads else 0,
        ),
    )


class OcrServicer(ocr_pb2_grpc.OcrServiceServicer):  # type: ignore[misc]
    """gRPC face of a Recognizer."""

    def __init__(
        self,
        recognizer: Recognizer,
        facts: InstanceFacts,
        stream_idle_s: float = 30.0,
        stream_upload_s: float = 300.0,
        max_uploads_per_caller: int = 4,
    ) -> None:
        self.recognizer = recognizer
        self.facts = facts
        # An upload that stalls, or trickles, must not hold its bytes (up to the image limit) for ever.
        self.stream_idle_s = stream_idle_s
        self.stream_upload_s = stream_upload_s
        self.handoff: Handoff | None = None  # set once registered, with --etcd
        # Each unfinished upload holds up to the image limit: one caller (token subject, or
        # address without auth) may run only so many at once.
        self.max_uploads_per_caller = max_uploads_per_caller
        self._uploads: dict[str, int] = {}

    async def Recognize(
        self, request: ocr_pb2.RecognizeRequest, context: Context
    ) -> ocr_pb2.RecognizeResponse:
        try:
            answer = await self._hand_off(request, context)
            if answer is None:
                rec = await self.recognizer.recognize(
                    request.image, job_options(request.options), context.time_remaining()
                )
                answer = ocr_pb2.RecognizeResponse(result=to_result(rec, self.facts))
        except errors.RichError as exc:
            await errors.abort(context, exc)
            raise  # unreachable: abort raises
        self._tell_wait(context)
        return answer

    async def _hand_off(
        self, request: ocr_pb2.RecognizeRequest, context: Context
    ) -> ocr_pb2.RecognizeResponse | None:
        """A sibling's answer when this instance's queue is much longer than its (see handoff.py)."""
        handoff, r = self.handoff, self.recognizer
        if handoff is None or not r.serving:
            return None
        metadata = tuple(context.invocation_metadata() or ())
        if any(key == HANDOFF_HEADER for key, _ in metadata):
            return None  # handed to us: served here, never passed on
        sibling = handoff.pick(r.predicted_wait_s(), r.pool.ewma_service_s, r.pool.settings.size)
        if sibling is None:
            return None
        await r.check_upload(request.image)  # a bad image is refused here, not shipped
        return await handoff.forward(sibling, request, metadata, context.time_remaining())

    def _tell_wait(self, context: Context) -> None:
        """Say in the trailer how long the next request would wait here (balancers prefer less)."""
        wait_ms = round(self.recognizer.predicted_wait_s() * 1000)
        context.set_trailing_metadata(((PREDICTED_WAIT_TRAILER, str(wait_ms)),))

    async def RecognizeStream(
        self, request_iterator: AsyncIterator[ocr_pb2.RecognizeStreamRequest], context: Context
    ) -> ocr_pb2.RecognizeStreamResponse:
        rec = await self._recognize_upload(request_iterator, context)
        return ocr_pb2.RecognizeStreamResponse(result=to_result(rec, self.facts))

    async def RecognizePages(
        self, request_iterator: AsyncIterator[ocr_pb2.RecognizePagesRequest], context: Context
    ) -> None:
        """RecognizeStream's upload, answered step by step: accepted, each page, the result."""

        async def accepted(page_count: int) -> None:
            await context.write(
                ocr_pb2.RecognizePagesResponse(accepted=ocr_pb2.PagesAccepted(page_count=page_count))
            )

        async def page(span: PageSpan, lines: tuple[Line, ...]) -> None:
            read = ocr_pb2.PageResult(
                page=to_page(span), lines=[to_line(line, span.number) for line in lines]
            )
            await context.write(ocr_pb2.RecognizePagesResponse(page=read))

        rec = await self._recognize_upload(request_iterator, context, accepted, page)
        await context.write(ocr_pb2.RecognizePagesResponse(result=to_result(rec, self.facts)))

    async def _recognize_upload(
        self,
        request_iterator: AsyncIterator[Upload],
        context: Context,
        on_admitted: AdmittedSink | None = None,
        on_page: PageSink | None = None,
    ) -> Recognition:
        """A chunked upload read and recognised, within the caller's share of concurrent uploads."""
        caller = _caller(context)
        if self._uploads.get(caller, 0) >= self.max_uploads_per_caller:
            await errors.abort(context, _too_many_uploads(self.max_uploads_per_caller))
        self._uploads[caller] = self._uploads.get(caller, 0) + 1
        try:
            return await self._read_and_recognize(request_iterator, context, on_admitted, on_page)
        finally:
            left = self._uploads[caller] - 1
            if left:
                self._uploads[caller] = left
            else:
                del self._uploads[caller]

    async def _read_and_recognize(
        self,
        request_iterator: AsyncIterator[Upload],
        context: Context,
        on_admitted: AdmittedSink | None,
        on_page: PageSink | None,
    ) -> Recognition:
        limit = self.recognizer.limits.max_bytes
        header: ocr_pb2.RecognizeStreamHeader | None = None
        chunks: list[bytes] = []
        size = 0
        try:
            async for message in bounded_upload(request_iterator, self.stream_idle_s, self.stream_upload_s):
                part = message.WhichOneof("part")
                if part == "header":
                    if header is not None or chunks:
                        raise _stream_error("the header must be the first message, sent once")
                    header = message.header
                    if header.total_bytes > limit:
                        raise _too_big(header.total_bytes, limit)
                elif part == "chunk":
                    size += len(message.chunk)
                    if size > limit:
                        raise _too_big(size, limit)
                    chunks.append(message.chunk)
            options = header.options if header is not None else ocr_pb2.RecognizeOptions()
            rec = await self.recognizer.recognize(
                b"".join(chunks),
                job_options(options),
                context.time_remaining(),
                on_admitted=on_admitted,
                on_page=on_page,
            )
        except errors.RichError as exc:
            await errors.abort(context, exc)
            raise
        self._tell_wait(context)
        return rec

    async def RecognizeBatch(
        self, request_iterator: AsyncIterator[ocr_pb2.RecognizeBatchRequest], context: Context
    ) -> AsyncIterator[ocr_pb2.RecognizeBatchResponse]:
        # At most one item per worker in flight per stream: the stream is its own backpressure,
        # and a batch client cannot fill the queue that other callers share.
        room = asyncio.Semaphore(self.facts.workers)
        results: asyncio.Queue[ocr_pb2.RecognizeBatchResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(item: ocr_pb2.RecognizeBatchRequest) -> None:
            try:
                rec = await self.recognizer.recognize(
                    item.image,
                    job_options(item.options),
                    context.time_remaining(),
                    wait_for_room=True,
                )
                reply = ocr_pb2.RecognizeBatchResponse(
                    item_id=item.item_id,
                    status=status_pb2.Status(code=0, message="OK"),
                    result=to_result(rec, self.facts),
                )
            except errors.RichError as exc:
                reply = ocr_pb2.RecognizeBatchResponse(item_id=item.item_id, status=exc.status)
            finally:
                room.release()
            await results.put(reply)

        async def read_items() -> None:
            async for item in request_iterator:
                await room.acquire()
                task = asyncio.create_task(one(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await results.put(None)

        reader = asyncio.create_task(read_items())
        try:
            while (reply := await results.get()) is not None:
                yield reply
            await reader
        finally:
            for task in list(tasks):
                task.cancel()
            await cancel_and_wait(reader)

    async def GetInfo(self, request: ocr_pb2.GetInfoRequest, context: Context) -> ocr_pb2.GetInfoResponse:
        r = self.recognizer
        c = r.counters
        limits = r.limits
        return ocr_pb2.GetInfoResponse(
            instance_id=self.facts.instance_id,
            version=__version__,
            device=self.facts.device,
            device_kind=contract_enums.device(self.facts.device),
            execution_provider=self.facts.execution_provider,
            models=list(self.facts.models),
            workers=self.facts.workers,
            threads_per_worker=self.facts.threads_per_worker,
            lone_request_threads=self.facts.lone_request_threads,
            queue_capacity=max(0, r.queue.policy.max_queued),
            queue_depth=len(r.queue),
            queued_requests=len(r.queue),
            predicted_wait_ms=r.predicted_wait_s() * 1000,
            max_queue_wait_ms=r.queue.policy.max_queue_wait_s * 1000,
            queued_bytes=r.queue.held_bytes,
            max_queued_bytes=r.queue.policy.max_queued_bytes,
            service_ms=r.pool.ewma_service_s * 1000,
            in_flight=r.pool.busy,
            limits=ocr_pb2.Limits(
                max_image_bytes=limits.max_bytes,
                max_image_pixels=limits.max_pixels,
                formats=list(limits.formats),
                image_formats=contract_enums.image_formats(limits.formats),
                max_side=r.pool.engine.max_side,
                max_pdf_pages=limits.max_pdf_pages if "PDF" in limits.formats else 0,
            ),
            counters=ocr_pb2.Counters(
                accepted=c.accepted,
                completed=c.completed,
                rejected_busy=c.rejected_busy,
                rejected_invalid=c.rejected_invalid,
                dropped_expired=c.dropped_expired,
                dropped_cancelled=c.dropped_cancelled,
                worker_restarts=c.worker_restarts,
                retried=c.retried,
                failed=c.failed,
                rejected_deadline_unreachable=c.rejected_deadline_unreachable,
                rejected_queue_wait=c.rejected_queue_wait,
                rejected_queue_memory=c.rejected_queue_memory,
                rejected_queue_full=c.rejected_queue_full,
                refusals_held=c.refusals_held,
                admitted_after_hold=c.admitted_after_hold,
                widened=c.widened,
            ),
            worker_infos=[
                ocr_pb2.WorkerInfo(
                    pid=s.pid,
                    jobs_done=s.jobs_done,
                    rss_bytes=s.rss_bytes(),
                    state=s.state,
                    worker_state=contract_enums.worker_state(s.state),
                )
                for s in r.pool.slots()
            ],
            uptime_seconds=time.time() - r.started,
            serving=r.serving,
        )


M = TypeVar("M")


async def bounded_upload(messages: AsyncIterator[M], idle_s: float, total_s: float) -> AsyncIterator[M]:
    """`messages`, ended with DEADLINE_EXCEEDED (reason UPLOAD_STALLED) when the next one takes
    over `idle_s` or the whole upload over `total_s`."""
    iterator = aiter(messages)
    ends = time.monotonic() + total_s
    while True:
        left = ends - time.monotonic()
        wait = min(idle_s, left)
        try:
            message = await asyncio.wait_for(anext(iterator), max(0.0, wait))
        except StopAsyncIteration:
            return
        except TimeoutError:
            why = f"nothing arrived for {idle_s:g} s" if wait == idle_s else f"not finished in {total_s:g} s"
            raise errors.simple(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"upload ended: {why}; send the image's chunks without pauses",
                reason="UPLOAD_STALLED",
            ) from None
        yield message


def _caller(context: Context) -> str:
    """Who is calling: the access token's subject when tokens are checked, else the peer's address."""
    claims = current_claims.get()
    if claims is not None:
        return "sub:" + str(claims["sub"])
    return "peer:" + peer_ip(str(context.peer() or ""))


def _too_many_uploads(limit: int) -> errors.RichError:
    return errors.retry_later(
        f"you have {limit} RecognizeStream uploads running here already: finish one first",
        1.0,
        reason="UPLOADS_PER_CALLER",
    )


def _stream_error(message: str) -> errors.RichError:
    return errors.bad_request(
        message, [errors.FieldViolation("header", message, "STREAM_ORDER")], reason="STREAM_ORDER"
    )


def _too_big(size: int, limit: int) -> errors.RichError:
    description = f"image is {size} bytes; the limit is {limit} bytes: compress or scale it down first"
    return errors.bad_request(
        f"invalid image: {description}",
        [errors.FieldViolation("image", description, "IMAGE_TOO_MANY_BYTES")],
        reason="IMAGE_TOO_MANY_BYTES",
    )


def _text(rec: Recognition) -> str:
    """Lines joined with newlines; a PDF's pages joined with a form feed on its own line."""
    if not rec.pages:
        return "\n".join(line.text for line in rec.lines)
    return "\n\f\n".join(
        "\n".join(line.text for line in rec.lines[span.first_line : span.first_line + span.line_count])
        for span in rec.pages
    )
