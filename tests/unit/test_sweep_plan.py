"""Sweep planning: flag parsing, cell order (one start per mesh), resume from recorded cells, ETA, mix."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.loadgen import LoadOptions, run_load
from bench.mix import MixRecorder, mixed_factory, mixed_request, sequence
from bench.sweep_plan import (
    Cell,
    PlanError,
    Settings,
    cell_file,
    counts_type,
    estimate_remaining_s,
    parse_counts,
    parse_mix,
    parse_paths,
    pending,
    plan,
    recorded,
)

SETTINGS = Settings(image_sha256="ab" * 32, duration_s=20.0, warmup_s=3.0, workers=1)


def test_flags_parse_sorted_and_distinct_with_errors_that_show_an_example() -> None:
    assert parse_counts("4,1,2,2", "--ocr") == (1, 2, 4)
    assert parse_counts("0,1", "--auth", minimum=0) == (0, 1)
    with pytest.raises(PlanError, match="below 1"):
        parse_counts("0,1", "--ocr")
    with pytest.raises(PlanError, match="like 1,2,4"):
        parse_counts("one", "--concurrency")
    as_flag = counts_type("--concurrency")  # the benches' -c: argparse's error, the same rules
    assert as_flag("8,1,1") == [1, 8]
    with pytest.raises(argparse.ArgumentTypeError, match="--concurrency: 0 is below 1"):
        as_flag("0,2")
    assert parse_paths("gateway, direct") == ("direct", "gateway")
    with pytest.raises(PlanError, match="direct,gateway,bff"):
        parse_paths("direct,envoy")
    assert parse_mix("login=1,ocr=9") == {"login": 1, "ocr": 9}
    with pytest.raises(PlanError, match="login=1,ocr=9"):
        parse_mix("signup=1")


def test_plan_groups_cells_by_mesh_then_path_then_rising_concurrency() -> None:
    cells = plan((2, 1), (1,), ("gateway", "direct"), (16, 1))
    assert [c.key for c in cells] == [
        "ocr1-auth1-direct-c1",
        "ocr1-auth1-direct-c16",
        "ocr1-auth1-gateway-c1",
        "ocr1-auth1-gateway-c16",
        "ocr2-auth1-direct-c1",
        "ocr2-auth1-direct-c16",
        "ocr2-auth1-gateway-c1",
        "ocr2-auth1-gateway-c16",
    ]
    meshes = [c.mesh for c in cells]
    # each mesh's cells are contiguous, so each mesh starts once
    assert meshes == sorted(meshes)
    assert len(plan((1, 2), (1, 2), ("direct", "gateway", "bff"), (1, 2, 4, 8, 16, 32, 64))) == 2 * 2 * 3 * 7


def _record(folder: Path, cell: Cell, settings: Settings) -> Path:
    path = cell_file(folder, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell": {"key": cell.key}, "settings": settings.fingerprint()}))
    return path


def test_resume_skips_cells_recorded_with_the_same_settings_only(tmp_path: Path) -> None:
    cells = plan((1, 2), (1,), ("direct",), (1, 4))
    _record(tmp_path, cells[0], SETTINGS)
    other = Settings(image_sha256="ab" * 32, duration_s=5.0, warmup_s=3.0, workers=1)
    _record(tmp_path, cells[1], other)  # a shorter run: not comparable, measured again
    cell_file(tmp_path, cells[2]).write_text("{not json")  # a torn write: measured again
    done = recorded(tmp_path, SETTINGS)
    assert set(done) == {cells[0].key}
    assert pending(cells, done) == cells[1:]
    assert SETTINGS.fingerprint() != other.fingerprint()
    with_mix = Settings(image_sha256="ab" * 32, duration_s=20.0, warmup_s=3.0, workers=1, mix=(("login", 1),))
    assert with_mix.fingerprint() != SETTINGS.fingerprint()


def test_eta_counts_cells_and_the_mesh_starts_still_ahead() -> None:
    cells = plan((1, 2), (1,), ("direct",), (1, 4))
    assert estimate_remaining_s(cells, 25.0, 30.0, None) == 4 * 25.0 + 2 * 30.0
    assert estimate_remaining_s(cells, 25.0, 30.0, (1, 1)) == 4 * 25.0 + 30.0
    assert estimate_remaining_s([], 25.0, 30.0, None) == 0.0


def test_mix_spreads_logins_among_ocr_calls_and_rotates_accounts() -> None:
    order = sequence({"login": 1, "ocr": 9}, users=3)
    assert len(order) == 30
    assert [kind for kind, _ in order].count("login") == 3
    assert [user for kind, user in order if kind == "login"] == [0, 1, 2]
    assert [kind for kind, _ in order[:10]].count("ocr") == 9
    spread = [kind for kind, _ in sequence({"login": 2, "ocr": 2}, users=1)]
    assert spread in (["ocr", "login", "ocr", "login"], ["login", "ocr", "login", "ocr"])
    assert {kind for kind, _ in sequence({"ocr": 1}, users=4)} == {"ocr"}


async def test_mixed_calls_go_to_their_own_connection_and_are_counted_per_kind() -> None:
    sent: dict[str, list[bytes]] = {"ocr": [], "login": []}

    def transport(kind: str, fail_every: int = 0) -> Callable[..., Any]:
        # stands in for a gRPC connection: what the mix does with calls is under test, not gRPC
        @contextlib.asynccontextmanager
        async def factory(target: str, path: str, options: LoadOptions) -> AsyncIterator[Sequence[Any]]:
            async def call(request: bytes, *, timeout: float | None = None, metadata: object = None) -> bytes:
                sent[kind].append(request)
                if fail_every and len(sent[kind]) % fail_every == 0:
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "busy"
                    )
                return b""

            yield [call]

        return factory

    data, kinds = mixed_request({"login": 1, "ocr": 3}, b"image-request", [("u0", "p0"), ("u1", "p1")])
    recorder = MixRecorder()
    factory = mixed_factory(transport("ocr", fail_every=3), transport("login"), "auth", kinds, recorder)
    options = LoadOptions(call="ocrmesh.ocr.v1.OcrService.Recognize", concurrency=1, total=16)
    report = await run_load(options, "ocr", data, False, call_factory=factory)
    assert len(sent["login"]) == 4 and len(sent["ocr"]) == 12
    assert set(sent["ocr"]) == {b"image-request"} and len(set(sent["login"])) == 2
    by_kind = recorder.reports(int(report["total"]))
    assert by_kind["login"]["statusCodeDistribution"] == {"OK": 4}
    assert by_kind["ocr"]["statusCodeDistribution"] == {"OK": 8, "ResourceExhausted": 4}
    assert report["count"] == 16
