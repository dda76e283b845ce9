from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PageSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAGE_SOURCE_UNSPECIFIED: _ClassVar[PageSource]
    PAGE_SOURCE_OCR: _ClassVar[PageSource]
    PAGE_SOURCE_TEXT_LAYER: _ClassVar[PageSource]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_CPU: _ClassVar[Device]
    DEVICE_CUDA: _ClassVar[Device]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_BMP: _ClassVar[ImageFormat]
    IMAGE_FORMAT_TIFF: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PDF: _ClassVar[ImageFormat]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_IDLE: _ClassVar[WorkerState]
    WORKER_STATE_BUSY: _ClassVar[WorkerState]
    WORKER_STATE_RETIRING: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]
PAGE_SOURCE_UNSPECIFIED: PageSource
PAGE_SOURCE_OCR: PageSource
PAGE_SOURCE_TEXT_LAYER: PageSource
DEVICE_UNSPECIFIED: Device
DEVICE_CPU: Device
DEVICE_CUDA: Device
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_BMP: ImageFormat
IMAGE_FORMAT_TIFF: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
IMAGE_FORMAT_PDF: ImageFormat
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_IDLE: WorkerState
WORKER_STATE_BUSY: WorkerState
WORKER_STATE_RETIRING: WorkerState
WORKER_STATE_STOPPED: WorkerState

class RecognizeOptions(_message.Message):
    __slots__ = ("use_det", "use_cls", "use_rec", "return_boxes", "language_hint", "min_score", "use_text_layer")
    USE_DET_FIELD_NUMBER: _ClassVar[int]
    USE_CLS_FIELD_NUMBER: _ClassVar[int]
    USE_REC_FIELD_NUMBER: _ClassVar[int]
    RETURN_BOXES_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_HINT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    USE_TEXT_LAYER_FIELD_NUMBER: _ClassVar[int]
    use_det: bool
    use_cls: bool
    use_rec: bool
    return_boxes: bool
    language_hint: str
    min_score: float
    use_text_layer: bool
    def __init__(self, use_det: _Optional[bool] = ..., use_cls: _Optional[bool] = ..., use_rec: _Optional[bool] = ..., return_boxes: _Optional[bool] = ..., language_hint: _Optional[str] = ..., min_score: _Optional[float] = ..., use_text_layer: _Optional[bool] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("image", "filename", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    filename: str
    options: RecognizeOptions
    def __init__(self, image: _Optional[bytes] = ..., filename: _Optional[str] = ..., options: _Optional[_Union[RecognizeOptions, _Mapping]] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: OcrResult
    def __init__(self, result: _Optional[_Union[OcrResult, _Mapping]] = ...) -> None: ...

class RecognizeStreamRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RecognizeStreamHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[RecognizeStreamHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RecognizeStreamHeader(_message.Message):
    __slots__ = ("filename", "options", "total_bytes")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    options: RecognizeOptions
    total_bytes: int
    def __init__(self, filename: _Optional[str] = ..., options: _Optional[_Union[RecognizeOptions, _Mapping]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class RecognizeStreamResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: OcrResult
    def __init__(self, result: _Optional[_Union[OcrResult, _Mapping]] = ...) -> None: ...

class RecognizePagesRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RecognizeStreamHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[RecognizeStreamHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RecognizePagesResponse(_message.Message):
    __slots__ = ("accepted", "page", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: PagesAccepted
    page: PageResult
    result: OcrResult
    def __init__(self, accepted: _Optional[_Union[PagesAccepted, _Mapping]] = ..., page: _Optional[_Union[PageResult, _Mapping]] = ..., result: _Optional[_Union[OcrResult, _Mapping]] = ...) -> None: ...

class PagesAccepted(_message.Message):
    __slots__ = ("page_count",)
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    page_count: int
    def __init__(self, page_count: _Optional[int] = ...) -> None: ...

class PageResult(_message.Message):
    __slots__ = ("page", "lines")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    page: Page
    lines: _containers.RepeatedCompositeFieldContainer[TextLine]
    def __init__(self, page: _Optional[_Union[Page, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[TextLine, _Mapping]]] = ...) -> None: ...

class RecognizeBatchRequest(_message.Message):
    __slots__ = ("item_id", "image", "filename", "options")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    image: bytes
    filename: str
    options: RecognizeOptions
    def __init__(self, item_id: _Optional[str] = ..., image: _Optional[bytes] = ..., filename: _Optional[str] = ..., options: _Optional[_Union[RecognizeOptions, _Mapping]] = ...) -> None: ...

class RecognizeBatchResponse(_message.Message):
    __slots__ = ("item_id", "status", "result")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    status: _status_pb2.Status
    result: OcrResult
    def __init__(self, item_id: _Optional[str] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., result: _Optional[_Union[OcrResult, _Mapping]] = ...) -> None: ...

class OcrResult(_message.Message):
    __slots__ = ("text", "lines", "width", "height", "timing", "served_by", "pages")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    text: str
    lines: _containers.RepeatedCompositeFieldContainer[TextLine]
    width: int
    height: int
    timing: Timing
    served_by: ServedBy
    pages: _containers.RepeatedCompositeFieldContainer[Page]
    def __init__(self, text: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[TextLine, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., pages: _Optional[_Iterable[_Union[Page, _Mapping]]] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("number", "width", "height", "dpi", "first_line", "line_count", "source")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DPI_FIELD_NUMBER: _ClassVar[int]
    FIRST_LINE_FIELD_NUMBER: _ClassVar[int]
    LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    number: int
    width: int
    height: int
    dpi: float
    first_line: int
    line_count: int
    source: PageSource
    def __init__(self, number: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., dpi: _Optional[float] = ..., first_line: _Optional[int] = ..., line_count: _Optional[int] = ..., source: _Optional[_Union[PageSource, str]] = ...) -> None: ...

class TextLine(_message.Message):
    __slots__ = ("text", "score", "box", "page")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    score: float
    box: _containers.RepeatedCompositeFieldContainer[Point]
    page: int
    def __init__(self, text: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., page: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "det_ms", "cls_ms", "rec_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    DET_MS_FIELD_NUMBER: _ClassVar[int]
    CLS_MS_FIELD_NUMBER: _ClassVar[int]
    REC_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    det_ms: float
    cls_ms: float
    rec_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., det_ms: _Optional[float] = ..., cls_ms: _Optional[float] = ..., rec_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ServedBy(_message.Message):
    __slots__ = ("instance_id", "device", "execution_provider", "models", "worker_pid", "version", "device_kind", "threads", "model_runs", "wide_model_runs")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_RUNS_FIELD_NUMBER: _ClassVar[int]
    WIDE_MODEL_RUNS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    device: str
    execution_provider: str
    models: _containers.RepeatedScalarFieldContainer[str]
    worker_pid: int
    version: str
    device_kind: Device
    threads: int
    model_runs: int
    wide_model_runs: int
    def __init__(self, instance_id: _Optional[str] = ..., device: _Optional[str] = ..., execution_provider: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., worker_pid: _Optional[int] = ..., version: _Optional[str] = ..., device_kind: _Optional[_Union[Device, str]] = ..., threads: _Optional[int] = ..., model_runs: _Optional[int] = ..., wide_model_runs: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("instance_id", "version", "device", "execution_provider", "models", "workers", "threads_per_worker", "queue_capacity", "queue_depth", "in_flight", "limits", "counters", "worker_infos", "uptime_seconds", "serving", "predicted_wait_ms", "max_queue_wait_ms", "queued_bytes", "max_queued_bytes", "service_ms", "queued_requests", "device_kind", "lone_request_threads")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    THREADS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_INFOS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    LONE_REQUEST_THREADS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    version: str
    device: str
    execution_provider: str
    models: _containers.RepeatedScalarFieldContainer[str]
    workers: int
    threads_per_worker: int
    queue_capacity: int
    queue_depth: int
    in_flight: int
    limits: Limits
    counters: Counters
    worker_infos: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    uptime_seconds: float
    serving: bool
    predicted_wait_ms: float
    max_queue_wait_ms: float
    queued_bytes: int
    max_queued_bytes: int
    service_ms: float
    queued_requests: int
    device_kind: Device
    lone_request_threads: int
    def __init__(self, instance_id: _Optional[str] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., execution_provider: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., workers: _Optional[int] = ..., threads_per_worker: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., worker_infos: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., uptime_seconds: _Optional[float] = ..., serving: _Optional[bool] = ..., predicted_wait_ms: _Optional[float] = ..., max_queue_wait_ms: _Optional[float] = ..., queued_bytes: _Optional[int] = ..., max_queued_bytes: _Optional[int] = ..., service_ms: _Optional[float] = ..., queued_requests: _Optional[int] = ..., device_kind: _Optional[_Union[Device, str]] = ..., lone_request_threads: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_image_bytes", "max_image_pixels", "formats", "max_side", "image_formats", "max_pdf_pages")
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FORMATS_FIELD_NUMBER: _ClassVar[int]
    MAX_PDF_PAGES_FIELD_NUMBER: _ClassVar[int]
    max_image_bytes: int
    max_image_pixels: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    max_side: int
    image_formats: _containers.RepeatedScalarFieldContainer[ImageFormat]
    max_pdf_pages: int
    def __init__(self, max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., max_side: _Optional[int] = ..., image_formats: _Optional[_Iterable[_Union[ImageFormat, str]]] = ..., max_pdf_pages: _Optional[int] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("accepted", "completed", "rejected_busy", "rejected_invalid", "dropped_expired", "dropped_cancelled", "worker_restarts", "retried", "failed", "rejected_deadline_unreachable", "rejected_queue_wait", "rejected_queue_memory", "rejected_queue_full", "refusals_held", "admitted_after_hold", "widened")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BUSY_FIELD_NUMBER: _ClassVar[int]
    REJECTED_INVALID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_DEADLINE_UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_QUEUE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    REJECTED_QUEUE_FULL_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_HELD_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_AFTER_HOLD_FIELD_NUMBER: _ClassVar[int]
    WIDENED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    completed: int
    rejected_busy: int
    rejected_invalid: int
    dropped_expired: int
    dropped_cancelled: int
    worker_restarts: int
    retried: int
    failed: int
    rejected_deadline_unreachable: int
    rejected_queue_wait: int
    rejected_queue_memory: int
    rejected_queue_full: int
    refusals_held: int
    admitted_after_hold: int
    widened: int
    def __init__(self, accepted: _Optional[int] = ..., completed: _Optional[int] = ..., rejected_busy: _Optional[int] = ..., rejected_invalid: _Optional[int] = ..., dropped_expired: _Optional[int] = ..., dropped_cancelled: _Optional[int] = ..., worker_restarts: _Optional[int] = ..., retried: _Optional[int] = ..., failed: _Optional[int] = ..., rejected_deadline_unreachable: _Optional[int] = ..., rejected_queue_wait: _Optional[int] = ..., rejected_queue_memory: _Optional[int] = ..., rejected_queue_full: _Optional[int] = ..., refusals_held: _Optional[int] = ..., admitted_after_hold: _Optional[int] = ..., widened: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("pid", "jobs_done", "rss_bytes", "state", "worker_state")
    PID_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_STATE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    jobs_done: int
    rss_bytes: int
    state: str
    worker_state: WorkerState
    def __init__(self, pid: _Optional[int] = ..., jobs_done: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., state: _Optional[str] = ..., worker_state: _Optional[_Union[WorkerState, str]] = ...) -> None: ...
