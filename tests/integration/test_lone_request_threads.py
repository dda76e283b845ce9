"""A lone request runs its models on every idle core; requests running together, in one instance
or in two sharing the machine, go back to one thread each (real `ocrmesh serve ocr` processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocrmesh.ocr.v1 import ocr_pb2

from mesh import balancer
from mesh.ocr_client import OcrClient
from ocr_svc.idle_cores import IdleCores
from tests.corpus import CORPUS
from tests.integration import prometheus_text
from tests.integration.ocr_fixtures import OcrProcess, running_ocr

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
# Each job sleeps this long in its worker, busy, before its models run: jobs sent together overlap.
DELAY_MS = "1500"
# Whether the machine's run queue leaves the cores idle depends on what else runs (a test suite in
# parallel): tests/unit/test_idle_cores.py covers that check; here OCR jobs alone decide.
NO_RUN_QUEUE = ("--lone-request-max-others", "100000")


@pytest.fixture(scope="module")
def lock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lock file of the tests' own, so no other OCR process on the machine makes them narrow."""
    return tmp_path_factory.mktemp("cores") / "cores.lock"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, lock_file: Path) -> Iterator[OcrProcess]:
    args = (
        "--workers",
        "2",
        "--lone-request-threads",
        "2",
        "--idle-cores-file",
        str(lock_file),
        *NO_RUN_QUEUE,
    )
    with running_ocr(tmp_path_factory.mktemp("ocr"), *args, "--debug-delay-ms", DELAY_MS) as svc:
        yield svc


async def _recognize(address: str, count: int = 1) -> list[ocr_pb2.OcrResult]:
    async with balancer.direct_channel(address) as channel:
        client = OcrClient(channel)
        calls = (client.recognize(PHOTO.read_bytes(), PHOTO.name, timeout=120) for _ in range(count))
        return list(await asyncio.gather(*calls))


async def test_a_lone_request_runs_every_model_on_the_wide_sessions(service: OcrProcess) -> None:
    async with balancer.direct_channel(service.address) as channel:
        info = await OcrClient(channel).info()
    assert (info.threads_per_worker, info.lone_request_threads) == (1, 2)
    before = info.counters.widened
    runs_before = await asyncio.to_thread(prometheus_text.scrape, service.metrics)
    [result] = await _recognize(service.address)
    used = result.served_by
    assert "正品促销" in result.text
    assert used.threads == 2
    assert used.model_runs >= 3  # detector, classifier, recogniser at least once each
    assert used.wide_model_runs == used.model_runs
    async with balancer.direct_channel(service.address) as channel:
        info = await OcrClient(channel).info()
    assert info.counters.widened == before + 1
    metrics = await asyncio.to_thread(prometheus_text.scrape, service.metrics)
    assert metrics.value("ocrmesh_ocr_widened_total") == info.counters.widened
    for name, runs in (("model_runs", used.model_runs), ("wide_model_runs", used.wide_model_runs)):
        total = f"ocrmesh_ocr_{name}_total"
        assert metrics.value(total) - runs_before.value(total) == runs  # the job's runs, all wide


async def test_requests_running_together_go_back_to_one_thread(service: OcrProcess) -> None:
    """Both jobs are busy through the other's start, so each runs its first model runs (at least
    the detector) narrow; the one left running last may widen for its tail only."""
    results = await _recognize(service.address, count=2)
    assert len({r.served_by.worker_pid for r in results}) == 2  # one on each worker, at once
    for result in results:
        used = result.served_by
        assert "正品促销" in result.text  # the same reading either way
        assert used.model_runs >= 3
        assert used.wide_model_runs < used.model_runs


async def test_a_job_elsewhere_on_the_machine_keeps_a_request_narrow(
    service: OcrProcess, lock_file: Path
) -> None:
    """This test process stands in for another instance's busy worker, holding the same lock."""
    elsewhere = IdleCores(lock_file)
    try:
        with elsewhere.job():
            [narrow] = await _recognize(service.address)
        [wide] = await _recognize(service.address)
    finally:
        elsewhere.close()
    assert (narrow.served_by.threads, narrow.served_by.wide_model_runs) == (1, 0)
    assert wide.served_by.threads == 2 and wide.served_by.wide_model_runs == wide.served_by.model_runs
    assert [line.text for line in narrow.lines] == [line.text for line in wide.lines]


async def test_two_instances_sharing_the_machine_keep_each_other_narrow(
    service: OcrProcess, lock_file: Path, tmp_path: Path
) -> None:
    """The `ocrmesh up` layout: a second instance with its own worker, the same lock file."""
    args = (
        "--workers",
        "1",
        "--idle-cores-file",
        str(lock_file),
        "--debug-delay-ms",
        DELAY_MS,
        *NO_RUN_QUEUE,
    )
    with running_ocr(tmp_path, *args) as other:
        first, second = await asyncio.gather(_recognize(service.address), _recognize(other.address))
    for used in (first[0].served_by, second[0].served_by):
        assert used.model_runs >= 3
        assert used.wide_model_runs < used.model_runs


async def test_off_keeps_every_request_on_one_thread(tmp_path: Path, lock_file: Path) -> None:
    args = ("--workers", "1", "--lone-request-threads", "off", "--idle-cores-file", str(lock_file))
    with running_ocr(tmp_path, *args) as service:
        [result] = await _recognize(service.address)
        async with balancer.direct_channel(service.address) as channel:
            info = await OcrClient(channel).info()
    assert info.lone_request_threads == 1
    assert (result.served_by.threads, result.served_by.wide_model_runs) == (1, 0)
    assert result.served_by.model_runs >= 3
