"""The OCR service's one frozen config: listen address, worker layout, device, limits, queue."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mesh.config import ConfigError, setting
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from ocr_svc.admission import AdmissionPolicy
from ocr_svc.idle_cores import lone_threads, usable_cores
from ocr_svc.refusal_pacing import PacingPolicy


def default_workers() -> int:
    """One engine process per core measured fastest on CPU (2 cores: 2 processes x 1 thread)."""
    return max(1, os.cpu_count() or 1)


def default_instance_id() -> str:
    return f"ocr-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class OcrConfig:
    """Settings of one OCR service instance."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_OCR_"

    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(50051, help="gRPC port (0 picks a free one)")
    instance_id: str = setting("", help="instance id in responses and the registry (default: random)")
    workers: int = setting(0, help="engine worker processes (0: one per core)")
    threads_per_worker: int = setting(1, help="ONNX Runtime intra-op threads per worker")
    lone_request_threads: str = setting(
        "auto",
        help="ONNX Runtime threads a request's model runs use while it is the only job running on "
        "the machine (every worker of every instance sharing --idle-cores-file idle); others use "
        "--threads-per-worker. auto: every usable core; off: never more; or a number",
    )
    lone_request_max_others: int = setting(
        -1,
        help="a lone request widens only while the rest of the machine used at most this many "
        "cores (plus a quarter) over the last moments (/proc/stat; with no recent window: at most "
        "this many other runnable tasks, /proc/loadavg), so it never contends with other work; -1: "
        "cores minus --lone-request-threads (0 when it takes every core); a large number stops the "
        "check (e.g. in a container that sees the host's count)",
    )
    idle_cores_file: str = setting(
        "",
        help="lock file the workers of every instance on this machine mark themselves busy in "
        "(default: /dev/shm/ocrmesh-idle-cores-UID.lock); instances sharing cores must share it",
    )
    device: str = setting("auto", help="execution device", choices=("auto", "cpu", "cuda"))
    cuda_device_id: int = setting(0, help="GPU index for --device cuda")
    model_precision: str = setting(
        "fp32",
        help="fp32: the models as shipped; int8: static int8 detector and recogniser (CPU only; "
        "made on first start, a few minutes, and kept in --model-cache)",
        choices=("fp32", "int8"),
    )
    model_cache: str = setting(".ocrmesh/models", help="folder for the int8 models")
    int8_calibration_pages: int = setting(
        32, help="synthetic pages the int8 models are calibrated on (a new number makes new models)"
    )
    queue_depth: int = setting(
        -1,
        help="hard cap on requests waiting for a worker (-1: none; admission then goes by "
        "predicted wait, deadline and memory)",
    )
    max_queue_wait_s: float = setting(
        60.0, help="refuse a request whose predicted wait for a worker is longer than this"
    )
    max_queued_mb: int = setting(256, help="memory the waiting images may hold, in MiB of uploads")
    max_queued_mpx: int = setting(2000, help="pixels the waiting images may hold, in megapixels")
    refusal_rate: float = setting(
        5.0,
        help="refusals per second answered at once; past that each refusal is held "
        "up to --refusal-hold-s (paces clients that retry at once)",
    )
    refusal_hold_s: float = setting(2.0, help="longest hold of a paced refusal (0: never hold)")
    handoff_margin_jobs: float = setting(
        3.0,
        help="with --etcd: forward a new call to a sibling instance whose predicted wait is shorter "
        "than this one's by more than this many jobs (0: never forward)",
    )
    max_image_bytes: int = setting(20 * 1024 * 1024, help="largest accepted upload in bytes")
    max_image_pixels: int = setting(40_000_000, help="largest accepted image in pixels (from header)")
    max_side: int = setting(4096, help="longer images are scaled down to this side before OCR")
    min_score: float = setting(0.5, help="drop lines whose recognition score is lower")
    recycle_after_jobs: int = setting(2000, help="replace a worker after this many jobs (0: never)")
    max_worker_rss_mb: int = setting(1024, help="replace a worker whose RSS exceeds this (0: never)")
    heavy_pixels: int = setting(
        3_000_000,
        help="images whose working size reaches this many pixels "
        "count as heavy (several hundred MiB per job; 0: none are)",
    )
    max_heavy_jobs: int = setting(
        -1, help="heavy images processed at once (-1: half the workers, at least 1; 0: no limit)"
    )
    job_timeout_s: float = setting(120.0, help="kill a worker stuck on one job for this long")
    grace_s: float = setting(20.0, help="on SIGTERM, time given to in-flight requests")
    stream_idle_s: float = setting(
        30.0, help="RecognizeStream: end an upload that sends nothing for this long (DEADLINE_EXCEEDED)"
    )
    max_uploads_per_caller: int = setting(
        4, help="RecognizeStream uploads one caller (token subject, or address) may run at once"
    )
    stream_upload_s: float = setting(
        300.0, help="RecognizeStream: end an upload not finished in this long, whatever its deadline"
    )
    bench_unhardened: bool = setting(
        False,
        help="FOR THE HARDENING BENCHMARK ONLY (`ocrmesh bench hardening`): turn off the per-call "
        "abuse protections of issue 17 (revoked-session polling and checks, the cap of streams per "
        "connection) to measure what they cost; logs a warning; never use it in a deployment",
    )
    metrics_port: int = setting(0, help="Prometheus /metrics port (0: a free one, -1: off)")
    ready_file: Path | None = setting(None, help="write {address, metrics} JSON here once serving")
    etcd: str = setting(
        "", help="etcd endpoints (host:port,...) to register in; empty: standalone", env="OCRMESH_ETCD"
    )
    advertise: str = setting("", help="address clients should dial (default: the bound host:port)")
    lease_ttl_s: int = setting(5, help="registry lease TTL in seconds (kept alive every TTL/3)")
    drain_linger_s: float = setting(
        1.0,
        help="after leaving the registry, keep serving this long so "
        "clients see the change before the instance says NOT_SERVING",
    )
    zone: str = setting("", help="zone label published in the registry")
    weight: int = setting(100, help="balancing weight published in the registry")
    require_auth: bool = setting(
        False,
        help="require a valid access token on every OcrService call, "
        "verified with the JWKS the auth service publishes in etcd (needs --etcd)",
    )
    auth_issuer: str = setting(DEFAULT_ISSUER, help="with --require-auth: the `iss` tokens must carry")
    auth_audience: str = setting(DEFAULT_AUDIENCE, help="with --require-auth: the `aud` tokens must carry")
    log_level: str = setting("info", help="log level", env="OCRMESH_LOG_LEVEL")
    debug_delay_ms: int = setting(0, help="TEST ONLY: sleep this long in the worker per job")

    def validate(self) -> None:
        if self.max_uploads_per_caller < 1:
            raise ConfigError("--max-uploads-per-caller must be at least 1")
        if self.stream_idle_s <= 0 or self.stream_upload_s <= 0:
            raise ConfigError("--stream-idle-s and --stream-upload-s must be positive")
        if self.workers < 0:
            raise ConfigError("--workers must be 0 (auto) or more")
        if self.model_precision == "int8" and self.device == "cuda":
            raise ConfigError("--model-precision int8 is for the CPU: use --device cpu (or auto), or fp32")
        if self.int8_calibration_pages < 1:
            raise ConfigError("--int8-calibration-pages must be at least 1")
        if self.threads_per_worker < 1:
            raise ConfigError("--threads-per-worker must be at least 1")
        if self.lone_request_threads not in ("auto", "off") and not (
            self.lone_request_threads.isdigit() and int(self.lone_request_threads) >= 1
        ):
            raise ConfigError("--lone-request-threads must be auto, off or a number of threads (1 or more)")
        if self.lone_request_max_others < -1:
            raise ConfigError("--lone-request-max-others must be -1 (auto) or 0 and more")
        if self.queue_depth < -1:
            raise ConfigError("--queue-depth must be -1 (no cap) or 0 and more")
        if self.max_queue_wait_s <= 0 or self.max_queued_mb < 1 or self.max_queued_mpx < 1:
            raise ConfigError("--max-queue-wait-s, --max-queued-mb and --max-queued-mpx must be positive")
        if self.refusal_rate < 0 or self.refusal_hold_s < 0 or self.handoff_margin_jobs < 0:
            raise ConfigError(
                "--refusal-rate, --refusal-hold-s and --handoff-margin-jobs must not be negative"
            )
        if self.max_image_bytes < 1 or self.max_image_pixels < 1 or self.max_side < 32:
            raise ConfigError("image limits must be positive (max side at least 32)")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError("--min-score must be between 0 and 1")
        if self.require_auth and not self.etcd:
            raise ConfigError("--require-auth needs --etcd: the token keys (JWKS) come from etcd")
        if self.require_auth and not (self.auth_issuer and self.auth_audience):
            raise ConfigError("--auth-issuer and --auth-audience must not be empty")

    @property
    def worker_count(self) -> int:
        return self.workers or default_workers()

    @property
    def lone_threads(self) -> int:
        """Threads of the wide sessions (equal to --threads-per-worker: none are made)."""
        return lone_threads(self.lone_request_threads, self.threads_per_worker, usable_cores())

    @property
    def heavy_job_limit(self) -> int:
        return max(1, self.worker_count // 2) if self.max_heavy_jobs < 0 else self.max_heavy_jobs

    @property
    def admission_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            max_queue_wait_s=self.max_queue_wait_s,
            max_queued_bytes=self.max_queued_mb * 2**20,
            max_queued_pixels=self.max_queued_mpx * 1_000_000,
            max_queued=self.queue_depth,
        )

    @property
    def pacing_policy(self) -> PacingPolicy:
        return PacingPolicy(
            rate_per_s=self.refusal_rate, burst=max(1.0, self.refusal_rate), max_hold_s=self.refusal_hold_s
        )

    @property
    def resolved_instance_id(self) -> str:
        return self.instance_id or default_instance_id()
