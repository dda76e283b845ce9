"""The engine worker process: decode an image, run the engine, send back a typed answer."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import time
from multiprocessing.connection import Connection

from mesh import logs
from ocr_svc import pdf_input
from ocr_svc.engine import Engine, EngineInfo, EngineSettings, EngineStartError
from ocr_svc.guardrails import ImageRejected, Limits, decode
from ocr_svc.job import Job, JobAnswer, JobError, JobRejected, JobResult, Line, PageSpan, Reading

# How long a worker whose job had work queued behind it stays marked busy waiting for its next job.
QUEUED_LINGER_S = 0.25


@dataclasses.dataclass(frozen=True)
class WorkerReady:
    """The worker's first message once its engine is warm."""

    info: EngineInfo


@dataclasses.dataclass(frozen=True)
class WorkerFailed:
    """The worker's only message when its engine cannot start; `message` says what to do."""

    message: str


def _memory_trimmer() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's malloc_trim, or None where there is no glibc.

    glibc keeps memory freed by decoding and ONNX Runtime in its arenas: a warm worker sits at
    ~400 MiB without trimming and ~160 MiB with it, for ~5 ms per job. No library does this.
    """
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def handle(engine: Engine, limits: Limits, job: Job) -> JobAnswer:
    """Run one job, marked busy from its start (the caller ends that: `engine.end_job`); the answer
    to send back. The job's header was checked when it was queued, so the image is decoded without
    being inspected again; `limits` only words decoding errors."""
    tally = engine.begin_job()
    answer = _handle(engine, limits, job)
    if isinstance(answer, JobResult):
        answer = dataclasses.replace(answer, threads=tally.use())
    return answer


def _handle(engine: Engine, limits: Limits, job: Job) -> JobAnswer:
    started = time.perf_counter()
    if job.header.format == "PDF":
        return _handle_pdf(engine, limits, job, started)
    try:
        image = decode(job.data, limits, max_side=engine.settings.max_side, header=job.header)
    except ImageRejected as exc:
        return JobRejected(job.job_id, exc.reason, exc.field, exc.description)
    decode_ms = (time.perf_counter() - started) * 1000
    reading = engine.run(image.array, job.options)
    if image.scale != 1.0:
        reading = dataclasses.replace(
            reading, lines=tuple(line.scaled(image.scale) for line in reading.lines)
        )
    return JobResult(job.job_id, reading, image.width, image.height, decode_ms, os.getpid())


def _handle_pdf(engine: Engine, limits: Limits, job: Job, started: float) -> JobAnswer:
    """A PDF job: each page rendered at the DPI its size asks for and read in turn (or its text
    layer taken, when asked and present); lines of all pages in page order, with their spans."""
    try:
        pdf_limits = pdf_input.limits_for(limits, engine.settings.max_side)
        pages = pdf_input.inspect_pdf(job.data, pdf_limits, only_page=job.page).pages
    except ImageRejected as exc:
        return JobRejected(job.job_id, exc.reason, exc.field, exc.description)
    lines: list[Line] = []
    spans: list[PageSpan] = []
    det_ms = cls_ms = rec_ms = decode_ms = 0.0
    for page in pages:
        width, height = page.size_px
        text = pdf_input.page_text(job.data, page) if job.options.use_text_layer else []
        if text:
            spans.append(
                PageSpan(page.number, width, height, page.dpi, len(lines), len(text), text_layer=True)
            )
            lines.extend(Line(line, 1.0) for line in text)
            continue
        rendering = time.perf_counter()
        array = pdf_input.render_page(job.data, page)
        decode_ms += (time.perf_counter() - rendering) * 1000
        reading = engine.run(array, job.options)
        det_ms, cls_ms, rec_ms = det_ms + reading.det_ms, cls_ms + reading.cls_ms, rec_ms + reading.rec_ms
        spans.append(PageSpan(page.number, width, height, page.dpi, len(lines), len(reading.lines)))
        lines.extend(reading.lines)
    first = spans[0]
    whole = Reading(tuple(lines), det_ms, cls_ms, rec_ms, {"pages": len(spans)})
    return JobResult(job.job_id, whole, first.width, first.height, decode_ms, os.getpid(), tuple(spans))


def worker_main(conn: Connection, settings: EngineSettings, limits: Limits, log_level: str = "info") -> None:
    """Entry point of a spawned worker: warm up, report ready, then serve jobs until told to stop."""
    # The parent handles Ctrl-C and SIGTERM and stops workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup("ocr-worker", log_level)
    try:
        engine = Engine(settings)
    except EngineStartError as exc:
        conn.send(WorkerFailed(str(exc)))
        return
    except Exception as exc:  # any model-loading failure must reach the parent as a message
        conn.send(WorkerFailed(f"engine failed to start: {exc!r}"))
        return
    trim = _memory_trimmer()
    if trim is not None:
        trim(0)
    conn.send(WorkerReady(engine.info))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return  # parent went away
        if message is None:
            return
        job: Job = message
        try:
            reply: JobAnswer = handle(engine, limits, job)
        except Exception as exc:  # an engine bug on one image must not take the worker down
            reply = JobError(job.job_id, f"{type(exc).__name__}: {exc}")
        conn.send(reply)
        if trim is not None:
            trim(0)
        # With work queued behind it, the next job is on its way: stay busy until it comes, or
        # another worker would see idle cores in the gap and widen for a model run.
        if not (job.more_queued and conn.poll(QUEUED_LINGER_S)):
            engine.end_job()
