"""One RapidOCR engine in one worker process: build for a device, verify its provider, run a job."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ocr_svc.idle_cores import IdleCores, default_lock_file, default_max_others, usable_cores
from ocr_svc.job import DEFAULT_MIN_SCORE, JobOptions, Reading
from ocr_svc.model_files import swap_models
from ocr_svc.pipeline_settings import PipelineSettings
from ocr_svc.recent_load import RecentLoad
from ocr_svc.subnormal_weights import flush_engine_sessions
from ocr_svc.thread_choice import ThreadTally, install

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


class EngineStartError(RuntimeError):
    """The engine cannot run as configured (e.g. CUDA asked for but unusable); says what to do."""


@dataclass(frozen=True)
class EngineSettings:
    """What a worker needs to build its engine; pickled to the worker process."""

    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1
    cuda_device_id: int = 0
    min_score: float = DEFAULT_MIN_SCORE
    max_side: int = 4096
    debug_delay_ms: int = 0
    # Zero the models' subnormal weights (outputs unchanged, detection ~3x cheaper on CPUs that
    # trap subnormals; see ocr_svc/subnormal_weights.py). Off only to measure the difference.
    flush_subnormals: bool = True
    # (stage, path): ONNX models run in place of RapidOCR's own for these stages (det, cls, rec),
    # with the same session options; `ocrmesh bench quantize` measures int8 copies this way.
    model_files: tuple[tuple[str, str], ...] = ()
    # fp32: the models as shipped. int8: static QDQ int8 detector and recogniser, made from them
    # on first use (calibrated on synthetic pages) and kept in `model_cache`; CPU only
    # (ocr_svc/int8_models.py, docs/benchmarks/quantize-2026-12-07.md).
    model_precision: str = "fp32"
    model_cache: str = ".ocrmesh/models"
    int8_calibration_pages: int = 32
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    # Intra-op threads of each model's wide twin, run when a job is the only one busy on the
    # machine (ocr_svc/thread_choice.py); equal to `threads`: no twins, every run uses `threads`.
    lone_threads: int = 1
    # The machine-wide lock file the workers of every instance mark themselves busy in
    # (ocr_svc/idle_cores.py); empty: the default one.
    idle_cores_file: str = ""
    # A wide run also needs the rest of the machine at most this many cores busy (IdleCores.may_widen);
    # -1: `default_max_others`; a large number: the rest of the machine is not looked at.
    lone_max_others: int = -1


@dataclass
class EngineInfo:
    """What the worker reports once warm."""

    pid: int
    device: str
    execution_provider: str
    models: list[str] = field(default_factory=list)
    warmup_ms: float = 0.0
    subnormal_weights_zeroed: int = 0
    lone_threads: int = 1  # threads a lone job's model runs use (1 thread per worker otherwise)


def _ort_params(settings: EngineSettings, use_cuda: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": settings.threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        "EngineConfig.onnxruntime.use_cuda": use_cuda,
    }
    if use_cuda:
        params["EngineConfig.onnxruntime.cuda_ep_cfg.device_id"] = settings.cuda_device_id
        # EXHAUSTIVE re-searches conv algorithms for every new input shape: recognition crawls.
        params["EngineConfig.onnxruntime.cuda_ep_cfg.cudnn_conv_algo_search"] = "DEFAULT"
    return params


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def choose_device(requested: str, providers: list[str]) -> str:
    """Resolve auto/cpu/cuda against the providers this ONNX Runtime build offers (pure)."""
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if CUDA_EP not in providers:
            raise EngineStartError(
                "--device cuda was requested but this ONNX Runtime has no CUDAExecutionProvider "
                f"(available: {', '.join(providers) or 'none'}). Install the gpu extra "
                "(`pip install 'ocrmesh[gpu]'`, not together with onnxruntime) on a machine with an "
                "NVIDIA GPU, CUDA and cuDNN, or run with --device cpu."
            )
        return "cuda"
    return "cuda" if CUDA_EP in providers else "cpu"


def _session_providers(engine: Any) -> list[str]:
    providers: list[str] = []
    for stage in ("text_det", "text_cls", "text_rec"):
        part = getattr(engine, stage, None)
        session = getattr(getattr(part, "session", None), "session", None)
        if session is not None:
            providers.extend(p for p in session.get_providers()[:1] if p not in providers)
    return providers


def _model_names(engine: Any) -> list[str]:
    cfg = engine.cfg
    names = []
    for stage, task in (("Det", "det"), ("Cls", "cls"), ("Rec", "rec")):
        part = cfg[stage]
        version = getattr(part.ocr_version, "value", part.ocr_version)
        model_type = getattr(part.model_type, "value", part.model_type)
        names.append(f"{version}_{task}_{model_type}")
    return names


def _warmup_image() -> np.ndarray:
    """A small synthetic image with dark strokes, so det, cls and rec all run once."""
    img = np.full((96, 320, 3), 255, dtype=np.uint8)
    for i in range(6):
        img[30:66, 20 + i * 48 : 44 + i * 48] = 20
    return img


class Engine:
    """A warmed RapidOCR engine bound to one device; not thread-safe, one per process."""

    def __init__(self, settings: EngineSettings) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
        # OpenCV, RapidOCR and the pipeline are imported here, in the worker, never by the server.
        import cv2
        from rapidocr import RapidOCR

        from ocr_svc.pipeline import Models, run_pipeline

        self._run_pipeline = run_pipeline
        cv2.setNumThreads(settings.threads)
        self.settings = settings
        device = choose_device(settings.device, available_providers())
        started = time.perf_counter()
        self._ocr = RapidOCR(params=_ort_params(settings, use_cuda=device == "cuda"))
        model_files = settings.model_files
        if settings.model_precision == "int8":
            if device == "cuda":
                raise EngineStartError("--model-precision int8 is for the CPU: use --device cpu, or fp32")
            from ocr_svc.int8_models import ensure_int8

            made = ensure_int8(self, Path(settings.model_cache), settings.int8_calibration_pages)
            model_files = (*sorted(made.items()), *model_files)
        zeroed = 0
        if settings.flush_subnormals:
            flushed = flush_engine_sessions(Models.of(self._ocr))
            zeroed = sum(f.subnormal_weights for f in flushed if f.reloaded)
        swapped = swap_models(Models.of(self._ocr), model_files) if model_files else []
        self.tally = ThreadTally(settings.threads, settings.threads)
        self.cores: IdleCores | None = None
        if device == "cpu" and settings.lone_threads > settings.threads:
            path = Path(settings.idle_cores_file) if settings.idle_cores_file else default_lock_file()
            others = settings.lone_max_others
            if others < 0:
                others = default_max_others(usable_cores(), settings.lone_threads)
            self.cores = IdleCores(path, others, recent=RecentLoad())
            self.tally.wide_threads = settings.lone_threads
        if device == "cpu":
            install(Models.of(self._ocr), settings.lone_threads, self.cores, self.tally)
        if self.cores is not None:
            self.tally.forced = True
            self.run(_warmup_image(), JobOptions())  # the wide twins' first runs
        self.tally.forced = False
        self.run(_warmup_image(), JobOptions())  # loads det, cls and rec sessions
        self.tally.forced = None
        providers = _session_providers(self._ocr)
        provider = providers[0] if providers else CPU_EP
        if device == "cuda" and provider != CUDA_EP:
            raise EngineStartError(
                f"--device cuda: ONNX Runtime created the sessions on {provider} instead of "
                f"{CUDA_EP} (CUDA or cuDNN libraries missing or mismatched). Check "
                "`python -c 'import onnxruntime; print(onnxruntime.get_device())'`, or use --device cpu."
            )
        if settings.device == "auto" and device == "cpu":
            log.warning("no CUDA execution provider available; --device auto is using the CPU")
        self.info = EngineInfo(
            pid=os.getpid(),
            device="cuda" if provider == CUDA_EP else "cpu",
            execution_provider=provider,
            models=[*_model_names(self._ocr), *swapped],
            warmup_ms=(time.perf_counter() - started) * 1000,
            subnormal_weights_zeroed=zeroed,
            lone_threads=self.tally.wide_threads,
        )

    def begin_job(self) -> ThreadTally:
        """A job starts: marked busy machine-wide (with wide twins; still marked after a lingering
        `end_job`), and its model runs tallied from zero."""
        self.tally.reset()
        if self.cores is not None:
            self.cores.start_job()
        return self.tally

    def end_job(self) -> None:
        """No job for now: the cores this worker kept busy are idle for others."""
        if self.cores is not None:
            self.cores.end_job()

    def run(self, image: np.ndarray, options: JobOptions) -> Reading:
        """OCR one BGR image; boxes are in the coordinates of `image`."""
        if self.settings.debug_delay_ms:
            time.sleep(self.settings.debug_delay_ms / 1000)
        if options.min_score is None:
            options = dataclasses.replace(options, min_score=self.settings.min_score)
        # Every switch is passed on every call, and the pipeline never changes the RapidOCR
        # instance's own settings: nothing from one request reaches the next.
        reading: Reading = self._run_pipeline(self._ocr, image, options, self.settings.pipeline)
        return reading
