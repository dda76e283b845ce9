"""The built-in load generator against a real grpc.aio server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from bench import load_cli
from bench.loadgen import BenchError, LoadOptions, request_from_json, resolve_method, run_load
from bench.sweep_paths import round_robin_calls
from mesh.errors import abort, retry_later

RECOGNIZE = "ocrmesh.ocr.v1.OcrService.Recognize"
REQUEST = ocr_pb2.RecognizeRequest(image=b"not really an image", filename="x.png")
PAYLOAD = REQUEST.SerializeToString()


class FakeOcr(ocr_pb2_grpc.OcrServiceServicer):  # type: ignore[misc]
    """Recognize sleeps a little; every `reject_every`-th call is refused with a retry hint."""

    def __init__(self, delay_s: float = 0.005, reject_every: int = 0, retry_s: float = 0.3):
        self.delay_s = delay_s
        self.reject_every = reject_every
        self.retry_s = retry_s
        self.calls = 0
        self.peers: set[str] = set()

    async def Recognize(
        self, request: ocr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> ocr_pb2.RecognizeResponse:
        self.calls += 1
        self.peers.add(context.peer())
        if self.reject_every and self.calls % self.reject_every == 0:
            await abort(context, retry_later("queue full", self.retry_s))
        await asyncio.sleep(self.delay_s)
        return ocr_pb2.RecognizeResponse(result=ocr_pb2.OcrResult(text=request.filename))

    async def GetInfo(
        self, request: ocr_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ocr_pb2.GetInfoResponse:
        return ocr_pb2.GetInfoResponse()


@asynccontextmanager
async def serving(servicer: FakeOcr) -> AsyncIterator[str]:
    server = grpc.aio.server()
    ocr_pb2_grpc.add_OcrServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ocrmesh bench")
    load_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_total_with_concurrency_makes_exactly_n_calls() -> None:
    async with serving(FakeOcr()) as target:
        options = LoadOptions(call=RECOGNIZE, total=50, concurrency=5)
        report = await run_load(options, target, PAYLOAD, progress=False)
    assert report["endReason"] == "normal"
    assert report["count"] == 50 and len(report["details"]) == 50
    assert report["statusCodeDistribution"] == {"OK": 50}
    assert report["errorDistribution"] == {}
    assert 5_000_000 <= report["fastest"] <= report["average"] <= report["slowest"] < 1e9
    assert 0 < report["total"] < 5e9
    assert report["rps"] == pytest.approx(50 / (report["total"] / 1e9))


async def test_duration_ends_the_run_with_reason_timeout() -> None:
    async with serving(FakeOcr()) as target:
        options = LoadOptions(call=RECOGNIZE, duration="1s", concurrency=4)
        report = await run_load(options, target, PAYLOAD)
    assert report["endReason"] == "timeout"
    assert 0.95e9 <= report["total"] < 1.5e9
    assert report["options"]["total"] == 2_147_483_647  # ghz ignores -n with -z
    statuses = report["statusCodeDistribution"]
    assert statuses["OK"] > 20
    assert set(statuses) <= {"OK", "Canceled"} and statuses.get("Canceled", 0) <= 4


async def test_rps_limits_all_workers_together() -> None:
    async with serving(FakeOcr()) as target:
        options = LoadOptions(call=RECOGNIZE, duration="1s", rps=20, concurrency=5)
        report = await run_load(options, target, PAYLOAD)
    assert 14 <= report["count"] <= 26
    assert report["options"]["rps"] == 20


async def test_rejections_are_counted_like_ghz() -> None:
    servicer = FakeOcr(reject_every=5, retry_s=0.01)
    async with serving(servicer) as target:
        options = LoadOptions(call=RECOGNIZE, total=50, concurrency=5, honor_retry_info=False)
        report = await run_load(options, target, PAYLOAD)
    assert report["count"] == 50
    assert report["statusCodeDistribution"] == {"OK": 40, "ResourceExhausted": 10}
    assert report["errorDistribution"] == {"rpc error: code = ResourceExhausted desc = queue full": 10}
    rejected = [d for d in report["details"] if d["status"] == "ResourceExhausted"]
    assert len(rejected) == 10 and all(d["error"].startswith("rpc error:") for d in rejected)
    assert sum(b["count"] for b in report["histogram"]) == 40  # successes only, as ghz


async def test_honoring_retry_info_slows_the_rejected_workers() -> None:
    async def count(honor: bool) -> dict[str, object]:
        async with serving(FakeOcr(reject_every=4, retry_s=0.3)) as target:
            options = LoadOptions(call=RECOGNIZE, duration="0.8s", concurrency=2, honor_retry_info=honor)
            return await run_load(options, target, PAYLOAD)

    hammering = await count(False)
    polite = await count(True)
    assert polite["count"] * 3 < hammering["count"]  # type: ignore[operator]
    assert polite["statusCodeDistribution"]["ResourceExhausted"] > 0  # type: ignore[index]
    assert polite["total"] < 1.2e9  # type: ignore[operator]  # waits stop at the end of the run
    assert polite["tags"]["ocrmesh.honor-retry-info"] == "true"  # type: ignore[index]
    assert hammering["tags"]["ocrmesh.honor-retry-info"] == "false"  # type: ignore[index]


async def test_unknown_method_is_a_clear_error() -> None:
    options = LoadOptions(call="ocrmesh.ocr.v1.OcrService.Recognise", total=1, concurrency=1)
    with pytest.raises(BenchError, match="has no method 'Recognise'"):
        await run_load(options, "127.0.0.1:1", PAYLOAD)


async def test_report_has_every_ghz_key_with_ghz_types() -> None:
    async with serving(FakeOcr()) as target:
        options = LoadOptions(
            call="ocrmesh.ocr.v1.OcrService/Recognize",
            total=20,
            concurrency=2,
            metadata={"x-run": "schema"},
            name="schema",
        )
        report = await run_load(options, target, PAYLOAD)
    report = json.loads(json.dumps(report))  # what a JSON consumer sees
    expected = {
        "date": str,
        "name": str,
        "endReason": str,
        "options": dict,
        "count": int,
        "total": int,
        "average": int,
        "fastest": int,
        "slowest": int,
        "rps": float,
        "errorDistribution": dict,
        "statusCodeDistribution": dict,
        "latencyDistribution": list,
        "histogram": list,
        "details": list,
        "tags": dict,
    }
    assert list(report) == list(expected)  # ghz's field order
    for key, kind in expected.items():
        assert isinstance(report[key], kind), key
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert all(isinstance(d["latency"], int) for d in report["latencyDistribution"])
    assert len(report["histogram"]) == 11
    for bucket in report["histogram"]:
        assert isinstance(bucket["mark"], float) and isinstance(bucket["count"], int)
        assert isinstance(bucket["frequency"], float)
    for detail in report["details"]:
        assert set(detail) == {"timestamp", "latency", "error", "status"}
        assert isinstance(detail["timestamp"], str) and isinstance(detail["latency"], int)
    opts = report["options"]
    assert opts["call"] == "ocrmesh.ocr.v1.OcrService/Recognize" and opts["host"] == target
    assert opts["concurrency"] == 2 and opts["total"] == 20 and opts["timeout"] == 20 * 10**9
    assert opts["metadata"] == {"x-run": "schema"} and opts["binary"] is True
    assert isinstance(opts["CPUs"], int) and isinstance(opts["insecure"], bool)


async def test_any_unary_method_works_from_json_data() -> None:
    method = resolve_method("ocrmesh.ocr.v1.OcrService/GetInfo")
    async with serving(FakeOcr()) as target:
        options = LoadOptions(call=method.full_name, total=30, concurrency=3)
        report = await run_load(options, target, request_from_json(method, "{}"))
        health_check = LoadOptions(call="grpc.health.v1.Health.Check", total=10, concurrency=2)
        healthy = await run_load(health_check, target, b"")
    assert report["statusCodeDistribution"] == {"OK": 30}
    assert report["options"]["data"] == {} and report["options"]["binary"] is False
    assert healthy["statusCodeDistribution"] == {"OK": 10}


async def test_connections_open_separate_transports() -> None:
    servicer = FakeOcr()
    async with serving(servicer) as target:
        options = LoadOptions(call=RECOGNIZE, total=40, concurrency=4, connections=2)
        report = await run_load(options, target, PAYLOAD)
    assert report["statusCodeDistribution"] == {"OK": 40}
    assert len(servicer.peers) == 2


async def test_stop_event_ends_the_run_with_reason_cancel() -> None:
    stop = asyncio.Event()
    async with serving(FakeOcr()) as target:
        options = LoadOptions(call=RECOGNIZE, duration="10s", concurrency=2)
        asyncio.get_running_loop().call_later(0.3, stop.set)
        report = await run_load(options, target, PAYLOAD, stop=stop)
    assert report["endReason"] == "cancel" and report["total"] < 2e9
    assert report["statusCodeDistribution"]["OK"] > 0


def test_cli_writes_a_json_report_for_an_image(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8 pretend jpeg")
    out = tmp_path / "reports" / "run.json"

    async def main() -> int:
        async with serving(FakeOcr()) as target:
            args = cli("--image", str(image), "-n", "12", "-c", "3", "-O", "json")
            args.output, args.no_progress, args.host = str(out), True, target
            return await asyncio.to_thread(load_cli.run, args)

    assert asyncio.run(main()) == 0
    report = json.loads(out.read_text())
    assert report["count"] == 12 and report["statusCodeDistribution"] == {"OK": 12}
    assert report["options"]["call"] == RECOGNIZE


def test_cli_unreachable_server_still_reports_and_hints(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{closed_port()}"
    args = cli("--call", RECOGNIZE, "-n", "6", "-c", "2", "--no-progress", "-O", "json", target)
    assert load_cli.run(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["statusCodeDistribution"] == {"Unavailable": 6}
    assert "hint: the first calls to" in captured.err and "UNAVAILABLE" in captured.err


def test_cli_input_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = [
        (("--call", "ocrmesh.ocr.v1.OcrService.Nope", "h:1"), "has no method 'Nope'"),
        (("--image", str(tmp_path / "missing.jpg"), "h:1"), "no such file"),
        (("--call", RECOGNIZE, "-d", "{bad", "h:1"), "bad JSON in --data"),
        (("--call", RECOGNIZE, "-m", "[1]", "h:1"), "--metadata: expected a JSON object"),
        (("--call", RECOGNIZE), "no target"),
        (("h:1",), "--call is required"),
    ]
    for argv, message in cases:
        assert load_cli.run(cli(*argv)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


async def test_plain_round_robin_client_spreads_over_instances_and_retries_at_once() -> None:
    # The peers bench's ghz-like client: one channel, round_robin over two real servers; told
    # RESOURCE_EXHAUSTED with a 0.3 s hint, it calls again at once instead of waiting.
    first, second = FakeOcr(reject_every=2), FakeOcr(reject_every=2)
    async with serving(first) as a, serving(second) as b:
        options = LoadOptions(call=RECOGNIZE, total=40, concurrency=2, honor_retry_info=False)
        began = asyncio.get_running_loop().time()
        report = await run_load(options, f"ipv4:{a},{b}", PAYLOAD, call_factory=round_robin_calls)
        elapsed = asyncio.get_running_loop().time() - began
    refused = first.calls // 2 + second.calls // 2  # every second call on each server
    assert report["statusCodeDistribution"] == {"OK": 40 - refused, "ResourceExhausted": refused}
    # Both instances serve (round_robin only picks connected ones, so the first calls may go to one).
    assert first.calls + second.calls == 40 and min(first.calls, second.calls) >= 10
    # 20 refusals honoured would sleep 20 x 0.3 s / 2 clients = 3 s; at once they cost nothing.
    assert elapsed < 3.0
