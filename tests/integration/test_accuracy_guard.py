"""The accuracy regression guard: `ocrmesh eval` on tests/accuracy/ (a fast subset of the shared corpus
and two light-on-transparent images made for it) against its committed expected result."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.studies import accuracy_guard
from tests.corpus import ROOT

ACCURACY = ROOT / "tests" / "accuracy"
MANIFEST = ACCURACY / "manifest.jsonl"
EXPECTED = ACCURACY / "expected.json"


def _eval(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cli", "eval", "--quiet", "--threads", "1", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_pipeline_reads_the_subset_as_well_as_expected(tmp_path: Path) -> None:
    done = _eval("--manifest", str(MANIFEST), "--expect", str(EXPECTED), "--json", str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy as expected on 17 images" in done.stderr
    run = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    read = {r["file"]: r["pred"] for r in run["images"]["ours"]}
    # White ink on a clear background: composited onto white it read nothing.
    assert read["light_text_on_transparent.png"] == ["Open 24 hours, free Wi-Fi"]
    assert read["light_zh_en_on_transparent.png"] == ["透明背景文字", "Transparent background"]


def test_a_worse_reading_fails_with_exit_3_naming_the_image(tmp_path: Path) -> None:
    # One fast image of the subset that really reads at CER 0.111, against an expectation that
    # says it read perfectly: as if the pipeline had just lost a character there.
    line = next(
        entry
        for entry in MANIFEST.read_text(encoding="utf-8").splitlines()
        if json.loads(entry)["file"].endswith("cnocr_hybrid.png")
    )
    entry = json.loads(line)
    entry["file"] = str((ACCURACY / entry["file"]).resolve())
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps(entry, ensure_ascii=False) + "\n", encoding="utf-8")
    real_cer = accuracy_guard.load(EXPECTED).images["../../../shared/ocr-corpus/real/cnocr_hybrid.png"]
    assert real_cer > 0.05  # the doctored expectation below is really stricter than the truth
    expected = tmp_path / "expected.json"
    expected.write_text(
        accuracy_guard.dumps(accuracy_guard.Expected({entry["file"]: 0.0}, 0.0), str(manifest)),
        encoding="utf-8",
    )
    done = _eval("--manifest", str(manifest), "--expect", str(expected))
    assert done.returncode == 3, done.stderr[-3000:]
    assert "accuracy regressed" in done.stderr and "cnocr_hybrid.png: CER" in done.stderr
    assert "mean CER" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{}", encoding="utf-8")
    done = _eval("--manifest", str(manifest), "--expect", str(broken))
    assert done.returncode == 2 and "format 1" in done.stderr


# The decision itself, on made-up results.


@dataclass(frozen=True)
class _Result:
    file: str
    cer: float
    error: str | None = None


EXPECTATION = accuracy_guard.Expected({"a.png": 0.0, "b.png": 0.2}, 0.1)


def test_as_good_within_tolerance_passes_and_better_always_does() -> None:
    assert accuracy_guard.check(EXPECTATION, [_Result("a.png", 0.0), _Result("b.png", 0.2)]) == []
    assert accuracy_guard.check(EXPECTATION, [_Result("a.png", 0.0), _Result("b.png", 0.0)]) == []
    assert accuracy_guard.check(EXPECTATION, [_Result("a.png", 0.0), _Result("b.png", 0.202)]) == []


@pytest.mark.parametrize(
    ("results", "needle"),
    [
        ([_Result("a.png", 0.02), _Result("b.png", 0.2)], "a.png: CER 0.020"),
        ([_Result("a.png", 0.0), _Result("b.png", 0.2, "INTERNAL: boom")], "b.png: failed"),
        ([_Result("a.png", 0.0)], "b.png: expected but not in this run"),
        ([_Result("a.png", 0.0), _Result("b.png", 0.2), _Result("c.png", 0.0)], "c.png: not in the expected"),
        ([_Result("a.png", 0.009), _Result("b.png", 0.209)], "mean CER 0.1090"),
    ],
)
def test_what_got_worse_is_named(results: list[_Result], needle: str) -> None:
    problems = accuracy_guard.check(EXPECTATION, results)
    assert any(needle in problem for problem in problems), problems


def test_the_committed_expectation_round_trips(tmp_path: Path) -> None:
    written = accuracy_guard.expected_from([_Result("b.png", 0.2), _Result("a.png", 0.0)])
    path = tmp_path / "expected.json"
    path.write_text(accuracy_guard.dumps(written, "m.jsonl"), encoding="utf-8")
    assert accuracy_guard.load(path) == accuracy_guard.Expected({"a.png": 0.0, "b.png": 0.2}, 0.1)
    assert list(json.loads(path.read_text(encoding="utf-8"))["images"]) == ["a.png", "b.png"]
