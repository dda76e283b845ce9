"""The engine worker process: decode an image, run the engine, send back plain results."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from mesh import logs
from ocr_svc.engine import Engine, EngineSettings, EngineStartError, JobOptions
from ocr_svc.guardrails import ImageRejected, Limits, decode


@dataclass(frozen=True)
class Job:
    """One OCR job as the worker sees it."""

    job_id: int
    data: bytes
    options: JobOptions
    limits: Limits | None = None  # the limits in force when the job was queued (live settings)


def _memory_trimmer() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's malloc_trim, or None where there is no glibc.

    glibc keeps memory freed by decoding and ONNX Runtime in its arenas: a warm worker sits at
    ~400 MiB without trimming and ~160 MiB with it, for ~5 ms per job. No library does this.
    """
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _scale_boxes(lines: list[tuple[str, float, list[float]]], scale: float) -> list[Any]:
    if scale == 1.0:
        return lines
    return [(t, s, [v / scale for v in box]) for t, s, box in lines]


def handle(engine: Engine, limits: Limits, job: Job) -> tuple[Any, ...]:
    """Run one job; returns the message to send back."""
    started = time.perf_counter()
    try:
        image = decode(job.data, job.limits or limits, max_side=engine.settings.max_side)
    except ImageRejected as exc:
        return ("rejected", job.job_id, exc.reason, exc.field, exc.description)
    decode_ms = (time.perf_counter() - started) * 1000
    result = engine.run(image.array, job.options)
    result["lines"] = _scale_boxes(result["lines"], image.scale)
    result.update(width=image.width, height=image.height, decode_ms=decode_ms, pid=os.getpid())
    return ("ok", job.job_id, result)


def worker_main(conn: Connection, settings: EngineSettings, limits: Limits, log_level: str = "info") -> None:
    """Entry point of a spawned worker: warm up, report ready, then serve jobs until told to stop."""
    # The parent handles Ctrl-C and SIGTERM and stops workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup("ocr-worker", log_level)
    try:
        engine = Engine(settings)
    except EngineStartError as exc:
        conn.send(("failed", str(exc)))
        return
    except Exception as exc:  # any model-loading failure must reach the parent as a message
        conn.send(("failed", f"engine failed to start: {exc!r}"))
        return
    trim = _memory_trimmer()
    if trim is not None:
        trim(0)
    conn.send(("ready", engine.info))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return  # parent went away
        if message is None:
            return
        job: Job = message
        try:
            reply = handle(engine, limits, job)
        except Exception as exc:  # an engine bug on one image must not take the worker down
            reply = ("error", job.job_id, f"{type(exc).__name__}: {exc}")
        conn.send(reply)
        if trim is not None:
            trim(0)
