"""Live settings through real etcd: `ocrmesh config set` reaches a running OCR instance in < 2 s."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import aetcd
import grpc
import pytest

from etcd.launcher import EtcdProcess
from mesh import balancer, errors
from mesh.live_config import config_key
from mesh.ocr_client import OcrClient
from mesh.ocr_limits import RECORD_KEY, ImageLimits
from mesh.registry import service_prefix
from tests.corpus import CORPUS
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.ocr_fixtures import ROOT, running_ocr

__all__ = ["etcd_client_fixture", "etcd_fixture"]
PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "config", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


async def _capacity_becomes(client: OcrClient, value: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await client.info()).queue_capacity == value:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"queue capacity did not become {value} within {timeout}s")


async def test_config_set_applies_live_and_bad_values_are_rejected(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    with running_ocr(tmp_path, "--workers", "1", "--etcd", etcd.endpoint) as svc:
        async with balancer.direct_channel(svc.address) as channel:
            client = OcrClient(channel)
            assert (await client.info()).queue_capacity == 0  # no cap: admission by predicted wait
            # The etcd flag may come after the action too (issue 19: it was an argparse error).
            proc = _cli(
                "set",
                "ocr",
                "queue_depth=7",
                "max_image_pixels=100000",
                "max_queue_wait_s=12.5",
                "--etcd",
                etcd.endpoint,
            )
            assert proc.returncode == 0, proc.stderr
            took = await _capacity_becomes(client, 7, timeout=2.0)
            info = await client.info()
            assert info.limits.max_image_pixels == 100_000
            assert info.max_queue_wait_ms == pytest.approx(12_500)
            # The new pixel limit is enforced at once: the 323x430 photo (139k px) is now too big.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recognize(PHOTO.read_bytes(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            [violation] = errors.field_violations(errors.from_call_error(caught.value))
            assert violation.reason == "IMAGE_TOO_MANY_PIXELS"
            # ... and published in the instance's registry record, where the BFF reads it.
            await eventually(functools.partial(_published_pixels, etcd_client, 100_000), timeout=3.0)
            # A bad value written behind the CLI's back is rejected by the instance; 7 stays.
            await etcd_client.put(config_key("ocr").encode(), json.dumps({"queue_depth": "lots"}).encode())
            await asyncio.sleep(1.5)
            assert (await client.info()).queue_capacity == 7
            assert "live settings rejected" in svc.log_text()
            # The CLI refuses bad values before they reach etcd.
            bad = _cli("set", "--etcd", etcd.endpoint, "ocr", "queue_depth=-3")
            assert bad.returncode == 2 and "at least -1" in bad.stderr
            # Unsetting goes back to the instance's own value.
            assert (
                _cli(
                    "--etcd",
                    etcd.endpoint,
                    "unset",
                    "ocr",
                    "queue_depth",
                    "max_image_pixels",
                    "max_queue_wait_s",
                ).returncode
                == 0
            )
            await _capacity_becomes(client, 0, timeout=2.0)
            assert (await client.info()).max_queue_wait_ms == pytest.approx(60_000)
    assert took < 2.0


async def _published_pixels(etcd_client: aetcd.Client, pixels: int) -> bool:
    """Whether some OCR registry record publishes `pixels` as its image pixel limit."""
    records = await etcd_client.get_prefix(service_prefix("ocr").encode())
    found = [ImageLimits.from_record(json.loads(kv.value).get(RECORD_KEY)) for kv in records]
    return any(limits is not None and limits.max_image_pixels == pixels for limits in found)
