"""Common ghz command lines parse: flags with no effect are noted, unsupported ones refused with why."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import ghz_flags, load_cli
from mesh.processes import free_port

GET_INFO = "ocrmesh.ocr.v1.OcrService.GetInfo"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ocrmesh bench")
    load_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_with_no_effect_parse_and_the_run_happens(capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: every call fails Unavailable, quickly
    ns = _parse(
        *("--call", GET_INFO, "-n", "2", "-c", "1", "-t", "1s", "--connect-timeout", "1s", "-O", "json"),
        *("--proto", "protos/ocrmesh/ocr/v1/ocr.proto", "-i", "protos,third_party", "--protoset", "x.pb"),
        *("--skipTLS", "--cpus", "2", "--reflect-metadata", '{"a": "b"}', "--lb-strategy", "pick_first"),
        *("--load-schedule", "const", "--no-progress", nobody),
    )
    assert load_cli.run(ns) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["count"] == 2 and set(report["statusCodeDistribution"]) == {"Unavailable"}
    for flag in ("--proto", "--skipTLS", "--cpus", "--reflect-metadata", "--lb-strategy", "--load-schedule"):
        assert f"{flag} has no effect" in err, (flag, err)


@pytest.mark.parametrize(
    "argv",
    [
        ("--async",),
        ("-x", "10s"),
        ("--max-duration", "10s"),
        ("-e",),
        ("--stream-call-count", "3"),
        ("--lb-strategy", "round_robin"),
        ("--load-schedule", "step", "--load-start", "5", "--load-step", "5"),
        ("--concurrency-schedule", "line", "--concurrency-end", "20"),
    ],
)
def test_unsupported_flags_are_refused_with_the_reason(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    ns = _parse("--call", GET_INFO, *argv, "127.0.0.1:1")
    assert load_cli.run(ns) == 2
    err = capsys.readouterr().err
    marker = " is not supported: "
    refusals = [part.split(marker)[0] for part in err.split(";") if marker in part]
    assert any(argv[0] in refusal.split()[-1].split("/") for refusal in refusals), err
    assert "unrecognized arguments" not in err


def test_every_flag_says_what_it_does() -> None:
    for flag in ghz_flags.FLAGS:
        assert len(flag.why) > 20 and flag.flags[-1].startswith("--"), flag
