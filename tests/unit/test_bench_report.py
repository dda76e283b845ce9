"""The ghz-schema report, summary text, durations, request building and ghz command line."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocrmesh.ocr.v1 import ocr_pb2

from bench import ghz
from bench.durations import format_duration, parse_duration, parse_duration_ns
from bench.loadgen import (
    BenchError,
    LoadOptions,
    delimited,
    request_from_binary,
    request_from_image,
    request_from_json,
    resolve_method,
)
from bench.report import (
    CallResult,
    build_report,
    ghz_options,
    go_error,
    go_time,
    histogram,
    latency_distribution,
    nano_unit,
    summary_text,
)

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z
RE = "ResourceExhausted"
RE_ERROR = go_error(RE, "queue full")


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def ok(start_ms: int, latency_ms: float) -> CallResult:
    return CallResult(T0 + start_ms * MS, round(latency_ms * MS), "OK", "")


def rejected(start_ms: int, latency_ms: float) -> CallResult:
    return CallResult(T0 + start_ms * MS, round(latency_ms * MS), RE, RE_ERROR)


def options(**extra: object) -> dict[str, object]:
    base = ghz_options(call="a.B.C", host="h:1", insecure=True, concurrency=2, total=10)
    return {**base, **extra}


def test_latency_distribution_uses_ghz_rank_rule() -> None:
    ordered = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    got = {d["percentage"]: d["latency"] for d in latency_distribution(ordered)}
    # rank = p% of n; a whole rank steps back one (0-based), else it is truncated
    assert got == {
        10: 1 * MS,
        25: 3 * MS,
        50: 5 * MS,
        75: 8 * MS,
        90: 9 * MS,
        95: 10 * MS,
        99: 10 * MS,
    }


def test_histogram_has_eleven_marks_and_counts_each_latency_once() -> None:
    buckets = histogram([0.010, 0.010, 0.0145, 0.020])
    assert len(buckets) == 11
    assert buckets[0]["mark"] == pytest.approx(0.010)
    assert buckets[-1]["mark"] == 0.020
    assert [b["count"] for b in buckets] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert [b["frequency"] for b in buckets][:1] == [0.5]
    assert sum(b["frequency"] for b in buckets) == pytest.approx(1.0)


def test_histogram_of_equal_latencies_puts_all_in_the_first_bucket() -> None:
    buckets = histogram([0.005] * 3)
    assert [b["count"] for b in buckets] == [3] + [0] * 10


def test_report_counts_rps_average_and_distributions(utc: None) -> None:
    results = [ok(0, 10), rejected(1, 2), ok(2, 20), ok(3, 30), rejected(4, 4)]
    report = build_report(results, options(), 2_000 * MS, "normal", date_ns=T0)
    assert report["date"] == "2023-11-14T22:13:20Z"
    assert report["endReason"] == "normal"
    assert report["count"] == 5
    assert report["total"] == 2_000 * MS
    assert report["rps"] == pytest.approx(2.5)
    assert report["average"] == pytest.approx(13.2 * MS, abs=1)  # every call counts
    assert report["fastest"] == 10 * MS  # successful calls only
    assert report["slowest"] == 30 * MS
    assert report["statusCodeDistribution"] == {"OK": 3, RE: 2}
    assert report["errorDistribution"] == {"rpc error: code = ResourceExhausted desc = queue full": 2}
    assert sum(b["count"] for b in report["histogram"]) == 3
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert len(report["details"]) == 5
    first = report["details"][0]
    # ghz stamps details with the end of the call
    assert first == {
        "timestamp": "2023-11-14T22:13:20.01Z",
        "latency": 10 * MS,
        "error": "",
        "status": "OK",
    }
    assert report["details"][1]["error"] == RE_ERROR
    assert "tags" not in report
    json.dumps(report)  # plain JSON types throughout


def test_count_errors_and_skip_first_follow_ghz() -> None:
    results = [ok(0, 50), rejected(1, 1), ok(2, 20)]
    counted = build_report(results, options(**{"count-errors": True}), 1_000 * MS, "normal")
    assert counted["fastest"] == 1 * MS
    skipped = build_report(results, options(skipFirst=1), 1_000 * MS, "normal")
    assert skipped["count"] == 2
    assert skipped["statusCodeDistribution"] == {"OK": 1, RE: 1}


def test_report_with_no_calls_has_nulls_like_ghz() -> None:
    report = build_report([], options(), 5 * MS, "cancel", tags={"b": "2", "a": "1"})
    assert report["count"] == 0
    assert report["rps"] == 0.0
    assert report["average"] == report["fastest"] == report["slowest"] == 0
    assert report["histogram"] is None
    assert report["latencyDistribution"] is None
    assert report["details"] is None
    assert report["errorDistribution"] == {} and report["statusCodeDistribution"] == {}
    assert list(report["tags"]) == ["a", "b"]


def test_report_with_only_errors_keeps_counts_but_no_latency_stats() -> None:
    report = build_report([rejected(0, 3)], options(), 1_000 * MS, "timeout")
    assert report["count"] == 1 and report["average"] == 3 * MS
    assert report["histogram"] is None and report["fastest"] == 0
    assert len(report["details"]) == 1


def test_report_rejects_an_unknown_end_reason() -> None:
    with pytest.raises(ValueError, match="end reason"):
        build_report([], options(), 1, "finished")


def test_ghz_options_omit_empty_fields_and_max_total_with_duration() -> None:
    opts = ghz_options(
        call="a.B/C",
        host="h:1",
        insecure=False,
        concurrency=4,
        total=200,
        duration_ns=10_000 * MS,
        timeout_ns=20_000 * MS,
        metadata={"z": "1", "a": "2"},
        cpus=2,
    )
    assert opts["total"] == 2_147_483_647
    assert opts["duration"] == 10_000 * MS and opts["timeout"] == 20_000 * MS
    assert opts["insecure"] is False and opts["binary"] is False and opts["CPUs"] == 2
    assert list(opts["metadata"]) == ["a", "z"]
    for absent in ("rps", "data", "name", "skipFirst", "count-errors", "dial-timeout"):
        assert absent not in opts
    assert opts["load-schedule"] == "const" and opts["concurrency-schedule"] == "const"


def test_go_time_formats_like_go(utc: None) -> None:
    assert go_time(T0) == "2023-11-14T22:13:20Z"
    assert go_time(T0 + 123_000_000) == "2023-11-14T22:13:20.123Z"
    assert go_time(T0 + 1) == "2023-11-14T22:13:20.000000001Z"
    assert go_time(T0 + 123_000_000, nano=False) == "2023-11-14T22:13:20Z"


def test_go_time_writes_the_local_offset() -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        assert go_time(T0) == "2023-11-15T03:43:20+05:30"
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_nano_unit_matches_ghz_format() -> None:
    assert nano_unit(9_999) == "9999 ns"
    assert nano_unit(12_345_678) == "12.35 ms"
    assert nano_unit(1_234_000_000) == "1.23 s"


def test_summary_text_has_ghz_sections_and_layout() -> None:
    results = [ok(0, 10), ok(1, 10), ok(2, 14.5), ok(3, 20), rejected(4, 1)]
    report = build_report(results, options(name="run 1"), 1_000 * MS, "normal")
    text = summary_text(report)
    assert text.startswith("\nSummary:\n  Name:\t\trun 1\n  Count:\t5\n")
    assert "  Total:\t1.00 s\n" in text
    assert "  Slowest:\t20.00 ms\n  Fastest:\t10.00 ms\n" in text
    assert "  Requests/sec:\t5.00\n\nResponse time histogram:\n" in text
    assert "  10.000 [2] |" + "∎" * 40 + "\n" in text
    assert "  20.000 [1] |" + "∎" * 20 + "\n" in text
    assert "\nLatency distribution:\n  10 % in 10.00 ms \n" in text
    assert "  99 % in 20.00 ms \n\n" in text
    # tabwriter layout, padding 3
    assert "Status code distribution:\n  [OK]                  4 responses   \n" in text
    assert "  [ResourceExhausted]   1 responses   \n" in text
    assert f"Error distribution:\n  [1]   {RE_ERROR}   \n" in text


def test_summary_text_of_an_empty_report() -> None:
    text = summary_text(build_report([], options(), 1, "normal"))
    assert "Response time histogram:\n\nLatency distribution:\n\n" in text
    assert "Status code distribution" not in text and "Error distribution" not in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m", 60.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("2", 2.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "x", "10 s", "-1s", "1s2", "s", "1.2.3s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for seconds in (20.0, 0.5, 0.000_25, 90.0, 0.0):
        assert parse_duration_ns(format_duration(seconds)) == round(seconds * 1e9)
    assert format_duration(20) == "20s" and format_duration(0.5) == "500ms"


def test_resolve_method_accepts_both_forms_and_names_what_is_wrong() -> None:
    dotted = resolve_method("ocrmesh.ocr.v1.OcrService.Recognize")
    slashed = resolve_method("/ocrmesh.ocr.v1.OcrService/Recognize")
    assert dotted == slashed
    assert dotted.path == "/ocrmesh.ocr.v1.OcrService/Recognize"
    assert dotted.input_type.full_name == "ocrmesh.ocr.v1.RecognizeRequest"
    assert resolve_method("grpc.health.v1.Health/Check").path == "/grpc.health.v1.Health/Check"
    with pytest.raises(BenchError, match=r"no method 'Recognise'.*Recognize"):
        resolve_method("ocrmesh.ocr.v1.OcrService.Recognise")
    with pytest.raises(BenchError, match=r"unknown service 'ocr\.OcrService'"):
        resolve_method("ocr.OcrService.Recognize")
    with pytest.raises(BenchError, match="streaming"):
        resolve_method("ocrmesh.ocr.v1.OcrService.RecognizeStream")
    with pytest.raises(BenchError, match=r"expected package\.Service\.Method"):
        resolve_method("Recognize")


def test_requests_from_json_binary_and_image(tmp_path: Path) -> None:
    method = resolve_method("ocrmesh.ocr.v1.OcrService.Recognize")
    data = request_from_json(method, '{"image": "aGk=", "filename": "a.png"}')
    assert ocr_pb2.RecognizeRequest.FromString(data.messages[0]).image == b"hi"
    assert data.json_value == {"image": "aGk=", "filename": "a.png"} and not data.binary
    several = request_from_json(method, '[{"filename": "a"}, {"filename": "b"}]')
    assert len(several.messages) == 2
    with pytest.raises(BenchError, match="bad JSON"):
        request_from_json(method, "{nope")
    with pytest.raises(BenchError, match=r"not a ocrmesh\.ocr\.v1\.RecognizeRequest"):
        request_from_json(method, '{"picture": "x"}')

    one = ocr_pb2.RecognizeRequest(image=b"\x89PNG" * 50, filename="x.png").SerializeToString()
    two = ocr_pb2.RecognizeRequest(filename="y.png").SerializeToString()
    assert request_from_binary(method, one).messages == (one,)
    assert request_from_binary(method, delimited([one, two])).messages == (one, two)

    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8jpeg")
    built = ocr_pb2.RecognizeRequest.FromString(request_from_image(method, image).messages[0])
    assert built.image == b"\xff\xd8jpeg" and built.filename == "photo.jpg"
    with pytest.raises(BenchError, match="no such file"):
        request_from_image(method, tmp_path / "missing.jpg")
    info = resolve_method("ocrmesh.ocr.v1.OcrService.GetInfo")
    with pytest.raises(BenchError, match="--image builds"):
        request_from_image(info, image)


def test_load_options_parse_durations_and_check_limits() -> None:
    opts = LoadOptions(call="a.B.C", duration="1m", timeout="500ms")
    assert opts.duration_s == 60.0 and opts.timeout_s == 0.5
    with pytest.raises(BenchError, match="connections"):
        LoadOptions(call="a.B.C", concurrency=1, connections=2)
    with pytest.raises(BenchError, match="duration"):
        LoadOptions(call="a.B.C", duration="soon")


def test_ghz_command_line_mirrors_the_options() -> None:
    method = resolve_method("ocrmesh.ocr.v1.OcrService/Recognize")
    opts = LoadOptions(
        call="ocrmesh.ocr.v1.OcrService/Recognize",
        concurrency=8,
        duration="30s",
        rps=40,
        timeout="5s",
        metadata={"authorization": "Bearer t"},
        connections=2,
        name="sweep",
    )
    cmd = ghz.ghz_command(
        opts,
        "127.0.0.1:50051",
        method,
        protoset_path="p.bin",
        data_path="d.bin",
        data_is_binary=True,
        ghz="/usr/bin/ghz",
    )
    assert cmd[0] == "/usr/bin/ghz" and cmd[-1] == "127.0.0.1:50051"
    pairs = dict(itertools.pairwise(cmd[1:-1]))
    assert pairs["--call"] == "ocrmesh.ocr.v1.OcrService.Recognize"
    assert pairs["--protoset"] == "p.bin" and pairs["-B"] == "d.bin"
    assert pairs["-c"] == "8" and pairs["-z"] == "30s" and "-n" not in pairs
    assert pairs["--rps"] == "40" and pairs["-t"] == "5s" and pairs["--connections"] == "2"
    assert json.loads(pairs["-m"]) == {"authorization": "Bearer t"}
    assert json.loads(pairs["--tags"])["ocrmesh.honor-retry-info"] == "false"
    assert pairs["-O"] == "json" and "--insecure" in cmd and pairs["--name"] == "sweep"

    counted = ghz.ghz_command(
        LoadOptions(call="a.B.C", total=100, concurrency=4),
        "h:1",
        method,
        protoset_path="p",
        data_path="d.json",
        data_is_binary=False,
    )
    pairs = dict(itertools.pairwise(counted[1:-1]))
    assert pairs["-n"] == "100" and pairs["-D"] == "d.json" and "-z" not in pairs
    assert "--rps" not in pairs and "-m" not in pairs


def test_protoset_holds_the_service_and_its_imports() -> None:
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(
        ghz.protoset(resolve_method("ocrmesh.ocr.v1.OcrService.Recognize"))
    ).file
    names = [f.name for f in files]
    assert names[-1] == "ocrmesh/ocr/v1/ocr.proto"
    assert "google/rpc/status.proto" in names[:-1]


def test_engine_ghz_without_the_binary_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    method = resolve_method("ocrmesh.ocr.v1.OcrService.GetInfo")
    with pytest.raises(BenchError, match=r"no `ghz` binary on PATH; install it from https://ghz.sh"):
        ghz.run_ghz(
            LoadOptions(call=method.full_name),
            "127.0.0.1:1",
            method,
            request_from_json(method, "{}"),
        )
