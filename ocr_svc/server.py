"""`ocrmesh serve ocr`: start the server, warm the workers, serve, drain on SIGTERM, stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from types import TracebackType

import grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import config as mesh_config
from mesh import lifecycle, logs, mesh_transport, ocr_limits
from mesh.instance_registration import join_registry, leave_registry
from mesh.interceptors import RequestCountInterceptor
from mesh.jwks_source import JwksAuthInterceptor, JwksSource
from mesh.lease import Registration
from mesh.live_config import LiveConfig
from mesh.load_board import LoadBoard
from mesh.token_verify import TokenVerifier
from ocr_svc import live_settings
from ocr_svc.admission import AdmissionQueue
from ocr_svc.config import OcrConfig
from ocr_svc.engine import EngineSettings, EngineStartError
from ocr_svc.guardrails import Limits
from ocr_svc.handoff import Handoff
from ocr_svc.metrics import OcrMetrics
from ocr_svc.recognizer import Recognizer
from ocr_svc.refusal_pacing import RefusalPacer
from ocr_svc.servicer import InstanceFacts, OcrServicer
from ocr_svc.workers import PoolSettings, WorkerPool

log = logging.getLogger(__name__)

OCR_CALLERS = ("gateway", "bff", "cli", "admin", "ocr")
"""Mesh identities that may call OcrService (with mTLS): the edges, people's commands, and sibling
OCR instances handing a call over. Health and reflection stay open to every mesh workload."""

SERVICE_NAME = ocr_pb2.DESCRIPTOR.services_by_name["OcrService"].full_name
REGISTRY_SERVICE = "ocr"


class OcrInstance:
    """One OCR service instance; `async with` starts it warm and drains it on exit."""

    def __init__(self, config: OcrConfig) -> None:
        self.config = config
        self.instance_id = config.resolved_instance_id
        self.address = ""
        self.metrics_url = ""
        self.registration: Registration | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self.live: LiveConfig | None = None
        limits = Limits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
        self.queue = AdmissionQueue(config.admission_policy)
        self.pool = WorkerPool(
            engine=EngineSettings(
                device=config.device,
                threads=config.threads_per_worker,
                lone_threads=config.lone_threads,
                idle_cores_file=config.idle_cores_file,
                lone_max_others=config.lone_request_max_others,
                cuda_device_id=config.cuda_device_id,
                min_score=config.min_score,
                max_side=config.max_side,
                debug_delay_ms=config.debug_delay_ms,
                model_precision=config.model_precision,
                model_cache=config.model_cache,
                int8_calibration_pages=config.int8_calibration_pages,
            ),
            limits=limits,
            settings=PoolSettings(
                size=config.worker_count,
                recycle_after_jobs=config.recycle_after_jobs,
                max_worker_rss_bytes=config.max_worker_rss_mb * 2**20,
                job_timeout_s=config.job_timeout_s,
                heavy_pixels=config.heavy_pixels,
                max_heavy_jobs=config.heavy_job_limit,
            ),
            queue=self.queue,
        )
        self.metrics = OcrMetrics(lambda: (len(self.queue), self.pool.busy, self.pool.counters))
        self.recognizer = Recognizer(
            self.pool, self.queue, limits, self.metrics, RefusalPacer(config.pacing_policy, time.monotonic())
        )
        # With --require-auth every OcrService call needs an access token, checked locally
        # against the JWKS the auth service publishes in etcd; health and reflection stay open.
        self.jwks: JwksSource | None = None
        interceptors: list[grpc.aio.ServerInterceptor] = [
            RequestCountInterceptor(SERVICE_NAME, self.metrics.count_request)
        ]
        hardened = not config.bench_unhardened
        if not hardened:
            log.warning(
                "UNHARDENED for the hardening benchmark only (--bench-unhardened): revoked sessions "
                "are not checked and streams per connection are not capped; never run it like this"
            )
        if config.require_auth:
            verifier = TokenVerifier(
                issuer=config.auth_issuer, audience=config.auth_audience, check_sessions=hardened
            )
            self.jwks = JwksSource(config.etcd, verifier)
            interceptors.append(JwksAuthInterceptor(self.jwks))
        self.server = lifecycle.new_server(
            max_receive_bytes=config.max_image_bytes + 2**20,
            interceptors=interceptors,
            callers={SERVICE_NAME: OCR_CALLERS},
            cap_streams=hardened,
        )
        self.health = lifecycle.Health(self.server, [SERVICE_NAME])
        self.servicer = OcrServicer(
            self.recognizer,
            InstanceFacts(
                self.instance_id,
                config.device,
                "",
                (),
                config.worker_count,
                config.threads_per_worker,
            ),
            stream_idle_s=config.stream_idle_s,
            stream_upload_s=config.stream_upload_s,
            max_uploads_per_caller=config.max_uploads_per_caller,
        )
        ocr_pb2_grpc.add_OcrServiceServicer_to_server(self.servicer, self.server)
        lifecycle.enable_reflection(self.server, [SERVICE_NAME])

    async def start(self) -> None:
        """Listen (health NOT_SERVING), warm every worker, then report SERVING."""
        c = self.config
        self.address = lifecycle.bind(self.server, c.host, c.port)
        await self.health.set(False)
        await self.server.start()
        if self.jwks is not None:
            await self.jwks.start()  # loads while the engines warm up
        if c.metrics_port >= 0:
            port = self.metrics.serve(c.host, c.metrics_port)
            self.metrics_url = f"http://{c.host}:{port}/metrics"
        try:
            await self.pool.start()
        except BaseException:
            await self.server.stop(0)
            if self.jwks is not None:
                await self.jwks.close()
            self.metrics.close()
            raise
        info = self.pool.info
        assert info is not None
        self.servicer.facts = InstanceFacts(
            self.instance_id,
            info.device,
            info.execution_provider,
            tuple(info.models),
            c.worker_count,
            c.threads_per_worker,
            info.lone_threads,
        )
        self.recognizer.serving = True
        await self.health.set(True)
        if c.etcd:
            self.live = LiveConfig(
                c.etcd,
                REGISTRY_SERVICE,
                live_settings.TABLE,
                live_settings.base_values(self),
                lambda values: live_settings.apply(self, values),
            )
            await self.live.start()
            await self._register(info.device, info.execution_provider)
            if c.handoff_margin_jobs > 0:
                self.servicer.handoff = Handoff(self._load_board(), c.handoff_margin_jobs)
                self.servicer.handoff.board.start()
        if self.jwks is not None and not self.jwks.ready:
            log.warning(
                "no JWKS in etcd yet: OcrService calls get UNAVAILABLE until an auth service publishes one",
                extra={"key": self.jwks.key, "etcd": c.etcd},
            )
        lifecycle.write_ready_file(
            c.ready_file,
            {
                "address": self.address,
                "metrics": self.metrics_url,
                "instance_id": self.instance_id,
                "execution_provider": info.execution_provider,
                "device": info.device,
                "require_auth": c.require_auth,
                "hardened": not c.bench_unhardened,
            },
        )
        log.info(
            "serving",
            extra={
                "address": self.address,
                "provider": info.execution_provider,
                "workers": c.worker_count,
            },
        )

    async def _register(self, device: str, provider: str) -> None:
        """Publish this warm instance under a lease; keeps trying in the background if etcd is away."""
        c = self.config
        self.registration, registered = await join_registry(
            c,
            service=REGISTRY_SERVICE,
            instance_id=self.instance_id,
            address=self.address,
            device=device,
            slots=c.worker_count,
            extra={
                "execution_provider": provider,
                "metrics": self.metrics_url,
                "queue_capacity": max(0, c.queue_depth),
                "max_queue_wait_s": c.max_queue_wait_s,
                "require_auth": c.require_auth,
                ocr_limits.RECORD_KEY: self._published_limits().to_record(),
            },
        )
        if not registered:
            log.warning(
                "etcd not reachable yet; serving anyway and registering when it is", extra={"etcd": c.etcd}
            )

    def _load_board(self) -> LoadBoard:
        """This instance's entry among its siblings' predicted waits (for handoffs)."""
        c, r = self.config, self.recognizer
        return LoadBoard(
            c.etcd,
            REGISTRY_SERVICE,
            self.instance_id,
            c.advertise or self.address,
            lambda: (r.predicted_wait_s(), c.worker_count, r.pool.ewma_service_s),
        )

    def _published_limits(self) -> ocr_limits.ImageLimits:
        limits = self.recognizer.limits
        return ocr_limits.ImageLimits(limits.max_bytes, limits.max_pixels, limits.formats)

    def publish_limits(self) -> None:
        """Put the image limits now in force into this instance's registry record (callers that
        check uploads first, like the BFF, read them there); written in the background."""
        registration = self.registration
        if registration is None:
            return  # not registered yet: the record will carry the limits then
        record = registration.instance
        extra = {**record.extra, ocr_limits.RECORD_KEY: self._published_limits().to_record()}
        if extra != dict(record.extra):
            task = asyncio.get_running_loop().create_task(registration.update(record.replace(extra=extra)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Leave the registry, stop taking work (NOT_SERVING), let in-flight requests finish, stop."""
        if self.live is not None:
            await self.live.close()
        handoff, self.servicer.handoff = self.servicer.handoff, None  # new calls are served here
        if handoff is not None:
            await handoff.board.close()
        await leave_registry(self.registration, self.config.drain_linger_s)
        self.recognizer.serving = False
        await self.health.set(False)
        await self.server.stop(self.config.grace_s)
        if handoff is not None:
            await handoff.channels.close()  # after the calls forwarded through them have ended
        if self.jwks is not None:
            await self.jwks.close()
        await self.pool.close()
        self.metrics.close()

    async def __aenter__(self) -> OcrInstance:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain()


async def serve(config: OcrConfig) -> int:
    """Run one instance until SIGINT/SIGTERM."""
    logs.setup("ocr", config.log_level)
    instance = OcrInstance(config)
    try:
        await instance.start()
    except EngineStartError as exc:
        print(f"ocrmesh: the OCR engine could not start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ocrmesh: {exc}", file=sys.stderr)
        return 2
    info = instance.servicer.facts
    print(
        f"OCR service {instance.instance_id} listening on {instance.address} "
        f"({config.worker_count} workers x {config.threads_per_worker} thread, "
        f"{info.lone_request_threads} alone on the machine, "
        f"{info.execution_provider}); metrics {instance.metrics_url or 'off'}"
        + ("; access tokens required" if config.require_auth else ""),
        flush=True,
    )
    return await lifecycle.drain_on_stop_signal(instance.drain, config.grace_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mesh_config.add_arguments(parser, OcrConfig)
    mesh_transport.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    return mesh_config.run_service(OcrConfig, ns, "ocrmesh serve ocr", serve)
