"""Config loading precedence and validation; rich error details survive a round trip."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from mesh import config, errors
from ocr_svc.config import OcrConfig
from ocr_svc.engine import EngineStartError, choose_device


def test_flags_beat_env_beat_defaults() -> None:
    env = {"OCRMESH_OCR_WORKERS": "3", "OCRMESH_OCR_PORT": "6000", "OCRMESH_LOG_LEVEL": "debug"}
    c = config.load(OcrConfig, {"port": "7000"}, env)
    assert c.port == 7000 and c.workers == 3 and c.log_level == "debug"
    assert config.load(OcrConfig, {}, {}).port == 50051


def test_argparse_flags_map_to_fields() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, OcrConfig)
    ns = parser.parse_args(["--workers", "2", "--device", "cpu", "--ready-file", "/tmp/r.json"])
    c = config.load(OcrConfig, ns, {})
    assert (c.workers, c.device, c.ready_file) == (2, "cpu", Path("/tmp/r.json"))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OCRMESH_OCR_WORKERS": "many"}, "OCRMESH_OCR_WORKERS"),
        ({"OCRMESH_OCR_DEVICE": "tpu"}, "tpu"),
        ({"OCRMESH_OCR_MIN_SCORE": "2"}, "min-score"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle):
        config.load(OcrConfig, {}, env)


def test_env_names_are_listed_for_deploy_cross_checks() -> None:
    names = config.env_names(OcrConfig)
    assert "OCRMESH_OCR_WORKERS" in names and "OCRMESH_LOG_LEVEL" in names


def test_admission_defaults_to_predicted_wait_with_no_count_cap() -> None:
    policy = config.load(OcrConfig, {"workers": "3"}, {}).admission_policy
    assert policy.max_queued == -1 and policy.max_queue_wait_s == 60.0
    assert policy.max_queued_bytes == 256 * 2**20
    capped = config.load(OcrConfig, {"queue_depth": "5", "max_queue_wait_s": "8"}, {}).admission_policy
    assert capped.max_queued == 5 and capped.max_queue_wait_s == 8.0


def test_rich_errors_round_trip_through_grpc_status() -> None:
    busy = errors.retry_later("busy", 1.25)
    status = rpc_status.to_status(busy.status)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.retry_delay_s(busy.status) == pytest.approx(1.25)
    assert errors.error_reason(busy.status) == "OVERLOADED"
    waited = errors.retry_later(
        "busy", 2.0, reason="DEADLINE_UNREACHABLE", metadata={"predicted_wait_ms": "2000"}
    )
    assert errors.error_reason(waited.status) == "DEADLINE_UNREACHABLE"
    bad = errors.bad_request("bad", [errors.FieldViolation("image", "empty", "EMPTY")])
    assert errors.field_violations(bad.status) == [errors.FieldViolation("image", "empty", "EMPTY")]
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT


def test_device_choice_never_falls_back_silently_for_cuda() -> None:
    cpu_only = ["CPUExecutionProvider"]
    assert choose_device("auto", cpu_only) == "cpu"
    assert choose_device("auto", ["CUDAExecutionProvider", *cpu_only]) == "cuda"
    assert choose_device("cpu", ["CUDAExecutionProvider", *cpu_only]) == "cpu"
    with pytest.raises(EngineStartError, match="--device cpu"):
        choose_device("cuda", cpu_only)
