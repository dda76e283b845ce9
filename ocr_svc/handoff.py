"""Hand a request to a sibling instance whose queue is much shorter than this one's.

Clients that balance round robin over the instances' addresses themselves (grpc's round_robin,
a Kubernetes headless service) send every instance the same share of calls whatever its queue,
so the queues drift apart: one instance idles while callers wait at the other. The mesh client
and the gateway pick by predicted wait or outstanding calls and rarely trigger this; for the
rest, an instance whose predicted wait exceeds a sibling's by more than `margin_jobs` jobs
forwards the call there (once: a handed-off call is never handed on) and relays the answer.
The caller sees one ordinary answer; a sibling that cannot take it (unreachable, refusing, gone)
means the call is served here as if nothing happened.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from ocrmesh.ocr.v1 import ocr_pb2

from mesh.balancer import EndpointChannels
from mesh.load_board import Load, LoadBoard

log = logging.getLogger(__name__)

HANDOFF_HEADER = "ocrmesh-handoff-from"
"""Metadata on a handed-off call: the instance that forwarded it (such a call is served, never
forwarded again)."""
RECOGNIZE = "/ocrmesh.ocr.v1.OcrService/Recognize"
FORWARDED_METADATA = ("authorization", "x-request-id")
"""What of the caller's metadata the sibling needs: the token it checks, the id logs share."""
MARGIN_S = 0.25
"""Time kept for relaying the answer: a call is handed off only with more than this left."""
PATIENCE_JOBS = 3
PATIENCE_S = 2.0
"""A handed-off call gets the sibling's reported wait + this many of its jobs + this long to
answer, then is served here: a sibling that froze (SIGSTOP, a hung host) must not hold it
until its deadline."""


def pick_sibling(
    own_wait_s: float,
    own_service_s: float,
    own_workers: int,
    siblings: Sequence[Load],
    in_flight: Mapping[str, int],
    margin_jobs: float,
) -> Load | None:
    """The sibling to hand a new call to, or None to serve it here.

    A sibling's wait counts the calls we handed it since it last reported (`in_flight`), so one
    beat of stale news does not send it a burst. Hand off only when our predicted wait exceeds
    the shortest such wait by more than `margin_jobs` of our jobs: small differences are noise.
    """
    if margin_jobs <= 0 or own_service_s <= 0 or not siblings:
        return None
    best: Load | None = None
    best_wait = math.inf
    for sibling in siblings:
        service_s = sibling.service_s or own_service_s
        wait = sibling.wait_s + in_flight.get(sibling.instance_id, 0) * service_s / sibling.workers
        if wait < best_wait:
            best, best_wait = sibling, wait
    if best is None or own_wait_s <= best_wait + margin_jobs * own_service_s / max(1, own_workers):
        return None
    return best


class Handoff:
    """The load board, channels to the siblings, and the calls handed to each now."""

    def __init__(self, board: LoadBoard, margin_jobs: float) -> None:
        self.board = board
        self.margin_jobs = margin_jobs
        self.channels = EndpointChannels("ocr")
        self.in_flight: dict[str, int] = {}
        self.handed_off = 0
        self.fell_back = 0

    def pick(self, own_wait_s: float, own_service_s: float, own_workers: int) -> Load | None:
        """The sibling to forward a new call to now, if any (see `pick_sibling`)."""
        siblings = self.board.siblings()
        self.channels.keep_only({s.address for s in siblings})
        return pick_sibling(
            own_wait_s, own_service_s, own_workers, siblings, self.in_flight, self.margin_jobs
        )

    async def forward(
        self,
        sibling: Load,
        request: ocr_pb2.RecognizeRequest,
        metadata: Sequence[tuple[str, Any]],
        time_remaining: float | None,
    ) -> ocr_pb2.RecognizeResponse | None:
        """The sibling's answer, or None when it gave none that the caller should see
        (then the call is served here). Raises nothing."""
        if time_remaining is not None and time_remaining <= MARGIN_S:
            return None
        patience = sibling.wait_s + PATIENCE_JOBS * (sibling.service_s or 1.0) + PATIENCE_S
        timeout = patience if time_remaining is None else min(patience, time_remaining - MARGIN_S)
        sent = [(k, v) for k, v in metadata if k in FORWARDED_METADATA]
        sent.append((HANDOFF_HEADER, self.board.instance_id))
        call = self.channels.unary_unary(
            sibling.address,
            RECOGNIZE,
            ocr_pb2.RecognizeRequest.SerializeToString,
            ocr_pb2.RecognizeResponse.FromString,
        )
        self.in_flight[sibling.instance_id] = self.in_flight.get(sibling.instance_id, 0) + 1
        try:
            answer: ocr_pb2.RecognizeResponse = await call(
                request,
                metadata=sent,
                timeout=timeout,
                wait_for_ready=False,
            )
        except grpc.aio.AioRpcError as exc:
            # Whatever went wrong there (unreachable, refusing, a token it does not accept, a
            # crash mid-job), Recognize is safe to repeat: serve it here instead.
            self.fell_back += 1
            log.info(
                "handoff failed; serving here",
                extra={"sibling": sibling.instance_id, "code": exc.code().name, "details": exc.details()},
            )
            return None
        finally:
            left = self.in_flight.get(sibling.instance_id, 1) - 1
            if left > 0:
                self.in_flight[sibling.instance_id] = left
            else:
                self.in_flight.pop(sibling.instance_id, None)
        self.handed_off += 1
        return answer
