"""`ocrmesh eval`: CER of our OCR pipeline on a labelled manifest, optionally beside plain RapidOCR."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.report_files import table
from bench.stop_signals import run_stoppable
from bench.studies import accuracy_guard
from bench.studies.cer import Score, score
from mesh.console import output_console

OURS = "ours"
RAW = "raw"


@dataclass(frozen=True)
class Item:
    """One labelled image of a manifest."""

    file: str
    path: Path
    lang: str
    gt_lines: tuple[str, ...]
    gt_origin: str = ""


@dataclass
class Outcome:
    """What one engine returned for one image."""

    lines: list[str]
    seconds: float
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageResult:
    """One image as one engine read it, scored."""

    file: str
    lang: str
    gt_origin: str
    gt_chars: int
    edits: int
    cer: float
    bag: float
    seconds: float
    lines_out: int
    error: str | None
    pred: list[str]
    gt_norm: str
    pred_norm: str
    detail: dict[str, Any]


class ManifestError(Exception):
    """The manifest cannot be used; the message says why."""


def resolve(manifest: Path, file: str) -> Path:
    """An image path relative to the manifest's folder, or to the folder above it when the
    manifest names its own folder too (`large/large_4000x3000.jpg` in `large/manifest.jsonl`)."""
    here = manifest.parent / file
    above = manifest.parent.parent / file
    return above if not here.exists() and above.exists() else here


def load_manifest(path: Path) -> tuple[list[Item], int]:
    """Labelled items of a JSON-lines manifest (paths relative to it) and how many lines had no labels."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    items: list[Item] = []
    unlabelled = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(entry, dict) or "file" not in entry:
            raise ManifestError(f'{path}:{number}: each line must be an object with a "file" field')
        lines = entry.get("ground_truth_lines")
        if not isinstance(lines, list):
            unlabelled += 1
            continue
        items.append(
            Item(
                file=str(entry["file"]),
                path=resolve(path, str(entry["file"])),
                lang=str(entry.get("lang") or "unknown"),
                gt_lines=tuple(str(line) for line in lines),
                gt_origin=str(entry.get("gt_origin") or ""),
            )
        )
    return items, unlabelled


def score_item(item: Item, outcome: Outcome) -> ImageResult:
    s: Score = score(item.gt_lines, outcome.lines)
    return ImageResult(
        file=item.file,
        lang=item.lang,
        gt_origin=item.gt_origin,
        gt_chars=s.gt_chars,
        edits=s.edits,
        cer=s.cer,
        bag=s.bag,
        seconds=outcome.seconds,
        lines_out=len(outcome.lines),
        error=outcome.error,
        pred=outcome.lines,
        gt_norm=s.gt_norm,
        pred_norm=s.pred_norm,
        detail=outcome.detail,
    )


def summarize(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Mean, median and micro CER, mean bag, latency and throughput, and the same per language."""
    if not results:
        return {"images": 0}
    cers = [r.cer for r in results]
    seconds = [r.seconds for r in results]
    total_s = sum(seconds)
    by_lang: dict[str, dict[str, Any]] = {}
    for lang in sorted({r.lang for r in results}):
        group = [r for r in results if r.lang == lang]
        by_lang[lang] = {
            "images": len(group),
            "mean_cer": statistics.fmean(r.cer for r in group),
            "micro_cer": sum(r.edits for r in group) / max(1, sum(r.gt_chars for r in group)),
        }
    return {
        "images": len(results),
        "errors": sum(1 for r in results if r.error),
        "mean_cer": statistics.fmean(cers),
        "median_cer": statistics.median(cers),
        "micro_cer": sum(r.edits for r in results) / max(1, sum(r.gt_chars for r in results)),
        "mean_bag": statistics.fmean(r.bag for r in results),
        "total_s": total_s,
        "images_per_s": len(results) / total_s if total_s > 0 else 0.0,
        "latency_s": {
            "mean": statistics.fmean(seconds),
            "median": statistics.median(seconds),
            "max": max(seconds),
        },
        "lines_out": sum(r.lines_out for r in results),
        "by_lang": by_lang,
    }


def compare(ours: Sequence[ImageResult], raw: Sequence[ImageResult], regression: float) -> dict[str, Any]:
    """Throughput ratio and per-image CER changes of `ours` against `raw` (same images, same order)."""
    ours_summary, raw_summary = summarize(ours), summarize(raw)
    pairs = sorted(zip(ours, raw, strict=True), key=lambda pair: pair[0].cer - pair[1].cer, reverse=True)
    deltas: list[dict[str, Any]] = [
        {"file": o.file, "raw_cer": r.cer, "ours_cer": o.cer, "delta": o.cer - r.cer} for o, r in pairs
    ]
    raw_ips = raw_summary.get("images_per_s", 0.0)
    return {
        "throughput_ratio": ours_summary.get("images_per_s", 0.0) / raw_ips if raw_ips else 0.0,
        "mean_cer_change": ours_summary.get("mean_cer", 0.0) - raw_summary.get("mean_cer", 0.0),
        "regression_threshold": regression,
        "regressions": [d for d in deltas if d["delta"] > regression],
        "worst": deltas[:5],
        "better": sum(1 for d in deltas if d["delta"] < -1e-9),
        "worse": sum(1 for d in deltas if d["delta"] > 1e-9),
        "same": sum(1 for d in deltas if abs(d["delta"]) <= 1e-9),
    }


class Recognizer(Protocol):
    """An engine under evaluation: lines of text for one image file, in reading order."""

    name: str

    def recognize(self, item: Item) -> Outcome: ...

    def close(self) -> None: ...


class InProcessRecognizer:
    """Our pipeline in this process: guardrails decode, then `Engine.run` (what a worker does)."""

    name = OURS

    def __init__(self, threads: int, device: str) -> None:
        from ocr_svc.engine import Engine, EngineSettings
        from ocr_svc.guardrails import Limits
        from ocr_svc.job import JobOptions

        self.engine = Engine(EngineSettings(device=device, threads=threads))
        self.limits = Limits()
        self.options = JobOptions()
        self.description = (
            f"in-process pipeline, {self.engine.info.execution_provider}, {threads} ONNX Runtime thread(s)"
        )

    def recognize(self, item: Item) -> Outcome:
        from ocr_svc.guardrails import ImageRejected, decode

        started = time.perf_counter()
        try:
            image = decode(item.path.read_bytes(), self.limits, max_side=self.engine.settings.max_side)
            result = self.engine.run(image.array, self.options)
        except (ImageRejected, OSError) as exc:
            return Outcome([], time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        detail = dict(result.decided)
        detail.update(det_ms=result.det_ms, cls_ms=result.cls_ms, rec_ms=result.rec_ms)
        return Outcome(result.texts, elapsed, None, detail)

    def close(self) -> None:
        return None


class RawRecognizer:
    """Plain `RapidOCR()` with its defaults, given the file path, as BASELINE.md ran it."""

    name = RAW

    def __init__(self) -> None:
        from rapidocr import RapidOCR

        self.ocr = RapidOCR(params={"Global.log_level": "error"})
        self.ocr(_warmup_png())  # the first call loads the models
        self.description = "plain RapidOCR() defaults (file path in, ONNX Runtime default threads)"

    def recognize(self, item: Item) -> Outcome:
        from PIL import Image

        started = time.perf_counter()
        try:
            out = self.ocr(str(item.path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors
            return Outcome([], time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        texts = getattr(out, "txts", None) or ()
        return Outcome([str(t) for t in texts], elapsed)

    def close(self) -> None:
        return None


class ServiceRecognizer:
    """An OCR service over gRPC (`Recognize`), one image at a time, on a private event loop."""

    name = OURS

    def __init__(self, target: str, timeout: float, metadata: list[tuple[str, str]]) -> None:
        from mesh import balancer
        from mesh.ocr_client import OcrClient

        self.target = target
        self.timeout = timeout
        self.metadata = metadata
        self.loop = asyncio.new_event_loop()

        async def connect() -> Any:
            return balancer.direct_channel(target, "ocr")

        self.channel = self.loop.run_until_complete(connect())
        self.client = OcrClient(self.channel)
        info = self.loop.run_until_complete(self.client.info(timeout=timeout, metadata=metadata))
        self.description = f"OCR service at {target} ({info.execution_provider or 'unknown provider'})"

    def recognize(self, item: Item) -> Outcome:
        import grpc

        started = time.perf_counter()
        try:
            data = item.path.read_bytes()
            result = self.loop.run_until_complete(
                self.client.recognize(data, filename=item.file, timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.aio.AioRpcError as exc:
            return Outcome([], time.perf_counter() - started, f"{exc.code().name}: {exc.details()}")
        except OSError as exc:
            return Outcome([], time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        t = result.timing
        detail = {"det_ms": t.det_ms, "cls_ms": t.cls_ms, "rec_ms": t.rec_ms, "server_ms": t.total_ms}
        return Outcome([line.text for line in result.lines], elapsed, None, detail)

    def close(self) -> None:
        self.loop.run_until_complete(self.channel.close())
        self.loop.close()


def _warmup_png() -> Any:
    import numpy as np

    img = np.full((96, 320, 3), 255, dtype=np.uint8)
    for i in range(6):
        img[30:66, 20 + i * 48 : 44 + i * 48] = 20
    return img


class Recognizers:
    """The engines of one run, closed together."""

    def __init__(self, engines: list[Recognizer]) -> None:
        self.engines = engines

    def __enter__(self) -> list[Recognizer]:
        return self.engines

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for engine in self.engines:
            engine.close()


def evaluate(
    items: Sequence[Item], engines: Sequence[Recognizer], progress: Callable[[str], None] | None = None
) -> dict[str, list[ImageResult]]:
    """Every item through every engine, one after another; the engine that goes first alternates
    from image to image, so background load falls on all of them alike."""
    results: dict[str, list[ImageResult]] = {engine.name: [] for engine in engines}
    for index, item in enumerate(items):
        turn = list(engines) if index % 2 == 0 else list(reversed(engines))
        for engine in turn:
            outcome = engine.recognize(item)
            results[engine.name].append(score_item(item, outcome))
            if progress is not None:
                progress(f"{engine.name}: {item.file}")
    return results


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def per_image_rows(results: dict[str, list[ImageResult]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-image table (ours, and raw beside it when present)."""
    ours = results[OURS]
    raw = results.get(RAW)
    header = ["file", "lang", "GT chars", "CER", "bag", "s", "lines"]
    if raw is not None:
        header += ["raw CER", "raw bag", "raw s", "raw lines", "ΔCER"]
    rows = []
    for i, r in enumerate(ours):
        row = [r.file, r.lang, str(r.gt_chars), _f(r.cer), _f(r.bag), _f(r.seconds, 2), str(r.lines_out)]
        if r.error:
            row[6] += " (error)"
        if raw is not None:
            w = raw[i]
            row += [_f(w.cer), _f(w.bag), _f(w.seconds, 2), str(w.lines_out), f"{r.cer - w.cer:+.3f}"]
        rows.append(row)
    return header, rows


def summary_rows(summaries: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = list(summaries)
    header = ["", *names]
    keys = [
        ("mean CER", "mean_cer"),
        ("median CER", "median_cer"),
        ("micro CER", "micro_cer"),
        ("mean bag", "mean_bag"),
        ("images/s", "images_per_s"),
        ("total s", "total_s"),
    ]
    rows = [[label, *(_f(summaries[n][key]) for n in names)] for label, key in keys]
    rows.append(["median latency s", *(_f(summaries[n]["latency_s"]["median"]) for n in names)])
    rows.append(["lines out", *(str(summaries[n]["lines_out"]) for n in names)])
    rows.append(["errors", *(str(summaries[n]["errors"]) for n in names)])
    return header, rows


def language_rows(summaries: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = list(summaries)
    langs = sorted({lang for s in summaries.values() for lang in s["by_lang"]})
    header = ["lang", "images", *(f"{n} mean CER" for n in names), *(f"{n} micro CER" for n in names)]
    rows = []
    for lang in langs:
        first = summaries[names[0]]["by_lang"][lang]
        rows.append(
            [
                lang,
                str(first["images"]),
                *(_f(summaries[n]["by_lang"][lang]["mean_cer"]) for n in names),
                *(_f(summaries[n]["by_lang"][lang]["micro_cer"]) for n in names),
            ]
        )
    return header, rows


def markdown_report(report: dict[str, Any], results: dict[str, list[ImageResult]]) -> str:
    """The whole report as markdown: setup, summary, per language, comparison, per image."""
    summaries: dict[str, dict[str, Any]] = report["summary"]
    out = [
        f"# OCR eval ({report['started']})",
        "",
        f"Manifest `{report['manifest']}`: {summaries[OURS]['images']} labelled images"
        + (f" ({report['unlabelled']} without labels skipped)" if report["unlabelled"] else "")
        + ".",
        "",
        *(f"- {name}: {text}" for name, text in report["engines"].items()),
        f"- {report['machine']}; rapidocr {report['versions'].get('rapidocr')}, "
        f"onnxruntime {report['versions'].get('onnxruntime')}",
        "- CER = Levenshtein / GT length on the normalised concatenation of lines (NFKC, whitespace runs "
        "to one space, spaces touching CJK removed), lines in the engine's order; bag = order-free "
        "max(missing, extra) / GT characters (spaces ignored); images/s = images / summed seconds "
        "(one image at a time, engines alternating).",
        "",
        "## Summary",
        "",
        table(*summary_rows(summaries)),
        "",
        "## By language",
        "",
        table(*language_rows(summaries)),
        "",
    ]
    comparison = report.get("comparison")
    if comparison:
        out += [
            "## Ours against plain RapidOCR (same run)",
            "",
            f"- throughput: **{comparison['throughput_ratio']:.2f}x** raw "
            f"({summaries[OURS]['images_per_s']:.3f} vs {summaries[RAW]['images_per_s']:.3f} images/s)",
            f"- mean CER {summaries[OURS]['mean_cer']:.3f} vs {summaries[RAW]['mean_cer']:.3f}; "
            f"images better {comparison['better']}, same {comparison['same']}, worse {comparison['worse']}",
            f"- images more than {comparison['regression_threshold']:.2f} worse than raw: "
            + (", ".join(f"`{d['file']}` ({d['delta']:+.3f})" for d in comparison["regressions"]) or "none"),
            "- largest CER changes for the worse: "
            + ", ".join(
                f"`{d['file']}` {d['raw_cer']:.3f} -> {d['ours_cer']:.3f}" for d in comparison["worst"]
            ),
            "",
        ]
    out += ["## Per image", "", table(*per_image_rows(results)), ""]
    errors = [(name, r) for name, rs in results.items() for r in rs if r.error]
    if errors:
        out += ["## Errors", "", *(f"- {name} `{r.file}`: {r.error}" for name, r in errors), ""]
    return "\n".join(out)


def print_tables(console: Console, report: dict[str, Any], results: dict[str, list[ImageResult]]) -> None:
    for title, (header, rows) in (
        ("per image", per_image_rows(results)),
        ("by language", language_rows(report["summary"])),
        ("summary", summary_rows(report["summary"])),
    ):
        table = Table(title=title)
        for name in header:
            table.add_column(name, justify="left" if name in ("file", "lang", "") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    comparison = report.get("comparison")
    if comparison:
        regressions = (
            ", ".join(f"{d['file']} ({d['delta']:+.3f})" for d in comparison["regressions"]) or "none"
        )
        console.print(
            f"throughput {comparison['throughput_ratio']:.2f}x raw; "
            f"more than {comparison['regression_threshold']:.2f} worse than raw: {regressions}"
        )


def _versions() -> dict[str, str]:
    found = {}
    for name in ("rapidocr", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mesh import credentials

    parser.add_argument(
        "--manifest", required=True, type=Path, help="JSON-lines manifest (file, lang, ground_truth_lines)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--target", metavar="HOST:PORT", help="evaluate the OCR service at this address over gRPC"
    )
    where.add_argument(
        "--in-process", action="store_true", help="evaluate the pipeline in this process (the default)"
    )
    parser.add_argument(
        "--compare-raw", action="store_true", help="also run plain RapidOCR() defaults, alternating"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full results as JSON")
    parser.add_argument("--report", type=Path, metavar="FILE.md", help="write a markdown report")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ONNX Runtime threads in-process (default: all cores)",
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="in-process device")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per image over gRPC")
    parser.add_argument("--regression", type=float, default=0.05, help="flag images this much worse than raw")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    guard = parser.add_argument_group("regression guard (make test runs tests/accuracy/ this way)")
    guard.add_argument(
        "--expect",
        type=Path,
        metavar="FILE",
        help="fail (exit 3) when an image reads worse than this expected result allows",
    )
    guard.add_argument(
        "--tolerance",
        type=float,
        default=accuracy_guard.IMAGE_TOLERANCE,
        help=f"how much worse one image's CER may be with --expect (default "
        f"{accuracy_guard.IMAGE_TOLERANCE}; the mean may be {accuracy_guard.MEAN_TOLERANCE} worse)",
    )
    guard.add_argument(
        "--write-expected",
        type=Path,
        metavar="FILE",
        help="write this run's CER per image as the expected result",
    )
    credentials.add_arguments(parser, etcd_flag=True)


def _engines(ns: argparse.Namespace) -> list[Recognizer]:
    from mesh import credentials

    engines: list[Recognizer] = []
    try:
        if ns.target:
            meta = run_stoppable(credentials.resolve_metadata(ns))
            engines.append(ServiceRecognizer(ns.target, ns.timeout, meta))
        else:
            engines.append(InProcessRecognizer(ns.threads, ns.device))
        if ns.compare_raw:
            engines.append(RawRecognizer())
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    return engines


def run(ns: argparse.Namespace) -> int:
    import grpc

    from mesh import credentials

    console = output_console(stderr=ns.quiet)
    try:
        items, unlabelled = load_manifest(ns.manifest)
    except ManifestError as exc:
        print(f"ocrmesh eval: {exc}", file=sys.stderr)
        return 2
    if not items:
        print(f"ocrmesh eval: {ns.manifest} has no labelled images (ground_truth_lines)", file=sys.stderr)
        return 2
    missing = [str(i.path) for i in items if not i.path.is_file()]
    if missing:
        print(f"ocrmesh eval: manifest names missing files: {', '.join(missing[:5])}", file=sys.stderr)
        return 2
    expected: accuracy_guard.Expected | None = None
    if ns.expect:
        try:
            expected = accuracy_guard.load(ns.expect)
        except accuracy_guard.ExpectedError as exc:
            print(f"ocrmesh eval: {exc}", file=sys.stderr)
            return 2
    started = datetime.now(UTC)
    try:
        engines = _engines(ns)
    except credentials.CredentialsError as exc:
        print(f"ocrmesh eval: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(
            f"ocrmesh eval: cannot use the OCR service at {ns.target}: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    with (
        Recognizers(engines) as active,
        Progress(
            TextColumn("[bold]eval"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            disable=ns.quiet,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("", total=len(items) * len(active))
        results = evaluate(items, active, lambda what: bar.update(task, advance=1, description=what))
        descriptions = {e.name: str(getattr(e, "description", e.name)) for e in active}
    summaries = {name: summarize(rs) for name, rs in results.items()}
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "manifest": str(ns.manifest),
        "unlabelled": unlabelled,
        "engines": descriptions,
        "machine": f"Python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()})",
        "versions": _versions(),
        "summary": summaries,
    }
    if RAW in results:
        report["comparison"] = compare(results[OURS], results[RAW], ns.regression)
    if not ns.quiet:
        print_tables(console, report, results)
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        document = {**report, "images": {name: [asdict(r) for r in rs] for name, rs in results.items()}}
        ns.json.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if ns.report:
        ns.report.parent.mkdir(parents=True, exist_ok=True)
        ns.report.write_text(markdown_report(report, results), encoding="utf-8")
    if ns.write_expected:
        ns.write_expected.parent.mkdir(parents=True, exist_ok=True)
        written = accuracy_guard.dumps(accuracy_guard.expected_from(results[OURS]), str(ns.manifest))
        ns.write_expected.write_text(written, encoding="utf-8")
    if expected is not None:
        return _guard(expected, results[OURS], ns.tolerance)
    return 1 if all(r.error for r in results[OURS]) else 0


def _guard(expected: accuracy_guard.Expected, results: Sequence[ImageResult], tolerance: float) -> int:
    """Exit status of `--expect`: 0 when nothing read worse than allowed, else 3 with the list."""
    problems = accuracy_guard.check(expected, results, image_tolerance=tolerance)
    mean = statistics.fmean(r.cer for r in results)
    if problems:
        print(f"ocrmesh eval: accuracy regressed ({len(problems)}):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 3
    print(
        f"ocrmesh eval: accuracy as expected on {len(results)} images "
        f"(mean CER {mean:.4f}, expected {expected.mean_cer:.4f})",
        file=sys.stderr,
    )
    return 0
