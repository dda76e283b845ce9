"""The OCR job contract, one typed shape from the servicer through the worker and the pipeline back.

The servicer builds `JobOptions`; the recognizer inspects the image header once and queues a job;
the worker process receives a `Job` (with that header, so the image is not inspected again), runs
the pipeline, which reads `Line`s with 4-point boxes, and answers with a `JobResult` (or
`JobRejected` / `JobError`); the recognizer adds the queue and total times to make a
`Recognition`, which the servicer turns into the protobuf answer. Everything here is picklable,
since jobs and answers cross the pipe to the worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ocr_svc.guardrails import ImageHeader

DEFAULT_MIN_SCORE = 0.5
"""Lines read with a lower score are dropped unless a request or the instance says otherwise."""

Point = tuple[float, float]
Box = tuple[Point, ...]
"""A text line's corners, clockwise from the top-left one, in the pixels of the upload as shown
(after EXIF orientation); empty when the caller asked for no boxes."""


def box_from_corners(corners: Any) -> Box:
    """A Box from 4 (x, y) corners (any sequence or an array of shape (4, 2))."""
    return tuple((float(x), float(y)) for x, y in corners)


@dataclass(frozen=True)
class JobOptions:
    """One request's switches; every field reaches the pipeline on every call, so none leak.

    `min_score` None takes the instance's default (`EngineSettings.min_score`)."""

    use_det: bool = True
    use_cls: bool = True
    use_rec: bool = True
    return_boxes: bool = True
    min_score: float | None = None
    use_text_layer: bool = False  # PDFs: a page's embedded text instead of OCR when it has some


@dataclass(frozen=True)
class Line:
    """One recognised text line."""

    text: str
    score: float
    box: Box = ()

    def scaled(self, scale: float) -> Line:
        """The same line with its box divided by `scale` (back from a downscaled image)."""
        if scale == 1.0 or not self.box:
            return self
        return Line(self.text, self.score, tuple((x / scale, y / scale) for x, y in self.box))


@dataclass(frozen=True)
class Reading:
    """What the pipeline read in one image: lines in reading order and the time each stage took."""

    lines: tuple[Line, ...]
    det_ms: float = 0.0
    cls_ms: float = 0.0
    rec_ms: float = 0.0
    decided: dict[str, Any] = field(default_factory=dict)  # what the pipeline chose (padding, passes)

    @property
    def texts(self) -> list[str]:
        return [line.text for line in self.lines]


@dataclass(frozen=True)
class PageSpan:
    """One PDF page of a result: its lines are `lines[first_line:first_line + line_count]` of the
    whole reading, with boxes in the pixels of the page rendered at `dpi`."""

    number: int  # 1-based
    width: int
    height: int
    dpi: float
    first_line: int
    line_count: int
    text_layer: bool = False  # read from the PDF's embedded text, not by OCR


@dataclass(frozen=True)
class ThreadUse:
    """The ONNX Runtime threads one job's model runs used: `threads` is the most any run used
    (more than the worker's own when the job ran alone on the machine), and how many of its
    `model_runs` ran on those wide sessions."""

    threads: int
    model_runs: int
    wide_runs: int

    def merged(self, other: ThreadUse | None) -> ThreadUse:
        """Two jobs of one request (a PDF's pages) as one."""
        if other is None:
            return self
        return ThreadUse(
            max(self.threads, other.threads),
            self.model_runs + other.model_runs,
            self.wide_runs + other.wide_runs,
        )


@dataclass(frozen=True)
class Job:
    """One OCR job as the worker receives it; `header` was checked against the limits in force
    when the job was queued."""

    job_id: int
    data: bytes
    options: JobOptions
    header: ImageHeader
    page: int = 0  # a PDF's page to read (1-based); 0: every page (or the image)
    # Work was waiting behind this job when it was sent: the worker stays marked busy after it
    # until its next job comes (ocr_svc/idle_cores.py), so a queue never looks like idle cores.
    more_queued: bool = False


@dataclass(frozen=True)
class JobResult:
    """A job the worker finished: what it read, the image size as shown, its own stage times."""

    job_id: int
    reading: Reading
    width: int
    height: int
    decode_ms: float
    worker_pid: int
    pages: tuple[PageSpan, ...] = ()  # a PDF's pages, in order; empty for an image
    threads: ThreadUse | None = None  # what its model runs used (None: not counted)


@dataclass(frozen=True)
class JobRejected:
    """The image failed to decode in the worker (bad pixel data past a good header)."""

    job_id: int
    reason: str
    field: str
    description: str


@dataclass(frozen=True)
class JobError:
    """The engine failed on this image (a bug, not the caller's fault)."""

    job_id: int
    message: str


JobAnswer = JobResult | JobRejected | JobError


@dataclass(frozen=True)
class Timing:
    """Where one request's time went, in milliseconds."""

    queue_ms: float
    decode_ms: float
    det_ms: float
    cls_ms: float
    rec_ms: float
    total_ms: float

    def by_stage(self) -> dict[str, float]:
        """{"queue": ..., "decode": ..., ..., "total": ...} (the metrics' stage labels)."""
        return {name.removesuffix("_ms"): getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Recognition:
    """A finished OCR request: the worker's result plus where the time went."""

    lines: tuple[Line, ...]
    width: int
    height: int
    timing: Timing
    worker_pid: int
    pages: tuple[PageSpan, ...] = ()  # a PDF's pages, in order; empty for an image
    threads: ThreadUse | None = None  # what its model runs used, over all its jobs
