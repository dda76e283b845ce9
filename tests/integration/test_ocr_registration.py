"""The OCR service registers in a real etcd once warm, and leaves it first when it drains."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import aetcd

from etcd.launcher import EtcdProcess
from mesh.registry import instance_key
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.ocr_fixtures import running_ocr

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below


async def test_registers_after_warmup_and_revokes_on_sigterm(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    key = instance_key("ocr", "ocr-reg-1").encode()
    with running_ocr(
        tmp_path,
        "--workers",
        "1",
        "--instance-id",
        "ocr-reg-1",
        "--etcd",
        etcd.endpoint,
        "--lease-ttl-s",
        "3",
    ) as svc:
        # The ready file is written after warm-up; registration follows within a moment.
        async def present() -> bool:
            return await etcd_client.get(key) is not None

        async def absent() -> bool:
            return await etcd_client.get(key) is None

        await eventually(present, timeout=10)
        got = await etcd_client.get(key)
        record = json.loads(got.value)
        assert record["address"] == svc.address
        assert record["slots"] == 1 and record["device"] == "cpu"
        assert record["execution_provider"] == "CPUExecutionProvider"
        assert got.lease != 0
        svc.proc.send_signal(signal.SIGTERM)
        # The lease is revoked at the start of the drain, long before the 3 s TTL could expire.
        await eventually(absent, timeout=2.5)
        assert svc.proc.wait(30) == 0
