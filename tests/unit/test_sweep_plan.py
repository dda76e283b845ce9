"""Sweep planning: flag parsing, cell and round order (one start per mesh), resume from recorded cells and
rounds, ETA, mix."""

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
    CellRound,
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
    schedule,
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


def _record(folder: Path, cell: Cell, settings: Settings, round_: int | None = None) -> Path:
    path = cell_file(folder, cell, round_ or 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"cell": {"key": cell.key}, "settings": settings.fingerprint()}
    if round_ is not None:  # records from before rounds have no "round": they are round 1
        record["round"] = round_
    path.write_text(json.dumps(record))
    return path


def test_rounds_run_each_mesh_round_by_round_alternating_the_order() -> None:
    cells = plan((1, 2), (1,), ("direct", "gateway"), (4, 64))
    order = [(u.cell.key, u.round) for u in schedule(cells, 3)]
    one = ["ocr1-auth1-direct-c4", "ocr1-auth1-direct-c64", "ocr1-auth1-gateway-c4", "ocr1-auth1-gateway-c64"]
    two = [key.replace("ocr1", "ocr2") for key in one]
    assert order == [
        *[(k, 1) for k in one],
        *[(k, 2) for k in reversed(one)],
        *[(k, 3) for k in one],
        *[(k, 1) for k in two],
        *[(k, 2) for k in reversed(two)],
        *[(k, 3) for k in two],
    ]
    # each mesh's units are contiguous (one start per mesh); one round is the plan itself
    meshes = [u.mesh for u in schedule(cells, 3)]
    assert meshes == sorted(meshes)
    assert [u.cell for u in schedule(cells, 1)] == cells
    # over an even number of rounds every cell sits at every place of its round equally often
    places: dict[str, list[int]] = {}
    for i, unit in enumerate(schedule(cells[:4], 4)):
        places.setdefault(unit.cell.key, []).append(i % 4)
    assert all(sum(p) == 6 for p in places.values()), places


def test_round_files_keep_the_one_round_name_for_round_1(tmp_path: Path) -> None:
    cell = Cell(2, 1, "gateway", 16)
    assert cell_file(tmp_path, cell) == tmp_path / "cells" / "ocr2-auth1-gateway-c16.json"
    assert cell_file(tmp_path, cell, 1) == cell_file(tmp_path, cell)
    assert cell_file(tmp_path, cell, 3).name == "ocr2-auth1-gateway-c16.r3.json"
    assert CellRound(cell, 3).key == "ocr2-auth1-gateway-c16.r3"


def test_resume_with_rounds_skips_recorded_cell_rounds_and_keeps_schedule_order(tmp_path: Path) -> None:
    cells = plan((1,), (1,), ("direct",), (4, 16, 64))
    _record(tmp_path, cells[0], SETTINGS)  # a one-round sweep's file, from before rounds: round 1
    _record(tmp_path, cells[1], SETTINGS, 1)
    _record(tmp_path, cells[2], SETTINGS, 2)
    other = Settings(image_sha256="cd" * 32, duration_s=20.0, warmup_s=3.0, workers=1)
    _record(tmp_path, cells[1], other, 2)  # another image: measured again
    done = recorded(tmp_path, SETTINGS)
    assert set(done) == {(cells[0].key, 1), (cells[1].key, 1), (cells[2].key, 2)}
    todo = pending(schedule(cells, 2), done)
    assert [(u.cell.concurrency, u.round) for u in todo] == [(64, 1), (16, 2), (4, 2)]
    assert estimate_remaining_s(todo, 25.0, 30.0, (1, 1)) == 3 * 25.0
    # the same folder with --rounds 1 is complete but for c64, whatever round 2 holds
    assert [(u.cell.concurrency, u.round) for u in pending(schedule(cells, 1), done)] == [(64, 1)]


def test_resume_skips_cells_recorded_with_the_same_settings_only(tmp_path: Path) -> None:
    cells = plan((1, 2), (1,), ("direct",), (1, 4))
    _record(tmp_path, cells[0], SETTINGS)
    other = Settings(image_sha256="ab" * 32, duration_s=5.0, warmup_s=3.0, workers=1)
    _record(tmp_path, cells[1], other)  # a shorter run: not comparable, measured again
    cell_file(tmp_path, cells[2]).write_text("{not json")  # a torn write: measured again
    done = recorded(tmp_path, SETTINGS)
    assert set(done) == {(cells[0].key, 1)}
    assert [u.cell for u in pending(schedule(cells, 1), done)] == cells[1:]
    assert SETTINGS.fingerprint() != other.fingerprint()
    with_mix = Settings(image_sha256="ab" * 32, duration_s=20.0, warmup_s=3.0, workers=1, mix=(("login", 1),))
    assert with_mix.fingerprint() != SETTINGS.fingerprint()


def test_eta_counts_cells_and_the_mesh_starts_still_ahead() -> None:
    units = schedule(plan((1, 2), (1,), ("direct",), (1, 4)), 1)
    assert estimate_remaining_s(units, 25.0, 30.0, None) == 4 * 25.0 + 2 * 30.0
    assert estimate_remaining_s(units, 25.0, 30.0, (1, 1)) == 4 * 25.0 + 30.0
    assert estimate_remaining_s(schedule(plan((1,), (1,), ("direct",), (1, 4)), 3), 25.0, 30.0, None) == (
        6 * 25.0 + 30.0
    )
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
