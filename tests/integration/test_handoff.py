"""Handoff between real OCR instances: a long queue forwards calls to an idle sibling (round-robin
clients send every instance the same share, whatever its queue), and a sibling that cannot take a
call costs the caller nothing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aetcd
import grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from etcd.launcher import EtcdProcess
from mesh.load_board import load_prefix
from mesh.processes import free_port
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.load_fixtures import LINE, LINE_ONLY
from tests.integration.ocr_fixtures import running_ocr

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

REQUEST = ocr_pb2.RecognizeRequest(image=LINE, options=LINE_ONLY)
# A known, steady service time, so that 8 calls queued on one worker wait well past the margin.
SLOW_JOBS = ("--workers", "1", "--debug-delay-ms", "300")


async def _load_entries(client: aetcd.Client) -> set[str]:
    got = await client.get_prefix(load_prefix("ocr").encode())
    return {kv.key.decode().removeprefix(load_prefix("ocr")) for kv in got.kvs}


async def _burst(address: str, calls: int) -> list[ocr_pb2.RecognizeResponse]:
    """`calls` Recognize calls at once, all to one instance (as one round-robin pick would send)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        await stub.Recognize(REQUEST, timeout=30)  # a first job: the instance knows its service time
        return list(await asyncio.gather(*(stub.Recognize(REQUEST, timeout=30) for _ in range(calls))))


async def test_a_long_queue_hands_calls_to_an_idle_sibling(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    common = ("--etcd", etcd.endpoint, *SLOW_JOBS)
    with (
        running_ocr(tmp_path, "--instance-id", "hand-a", *common) as a,
        running_ocr(tmp_path, "--instance-id", "hand-b", *common) as b,
    ):
        async with grpc.aio.insecure_channel(b.address) as channel:  # b knows its service time too
            await ocr_pb2_grpc.OcrServiceStub(channel).Recognize(REQUEST, timeout=30)
        await eventually(lambda: _has(etcd_client, {"hand-a", "hand-b"}), 30)
        await asyncio.sleep(1.5)  # a few beats: each has read the other's entry
        answers = await _burst(a.address, 8)
    served = Counter(answer.result.served_by.instance_id for answer in answers)
    # Without handoff all 8 wait on hand-a's one worker (the last ~2.5 s) while hand-b idles.
    assert served["hand-b"] >= 1 and served["hand-a"] >= 1, served
    assert all(answer.result.text for answer in answers)


async def test_a_sibling_that_cannot_take_the_call_costs_the_caller_nothing(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    with running_ocr(tmp_path, "--instance-id", "hand-alone", "--etcd", etcd.endpoint, *SLOW_JOBS) as alone:
        # A sibling that says it is idle, at an address where nothing listens (it died, or lied).
        ghost = json.dumps(
            {"address": f"127.0.0.1:{free_port()}", "wait_ms": 0, "workers": 4, "service_ms": 300}
        )
        lease = await etcd_client.lease(60)
        await etcd_client.put((load_prefix("ocr") + "ghost").encode(), ghost.encode(), lease=lease.id)
        await eventually(lambda: _has(etcd_client, {"hand-alone", "ghost"}), 30)
        await asyncio.sleep(1.5)
        answers = await _burst(alone.address, 8)
        log = alone.log_text()
    assert Counter(answer.result.served_by.instance_id for answer in answers) == {"hand-alone": 8}
    assert "handoff failed; serving here" in log


async def _has(client: aetcd.Client, ids: set[str]) -> bool:
    return ids <= await _load_entries(client)
