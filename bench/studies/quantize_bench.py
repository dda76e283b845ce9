"""`ocrmesh bench quantize`: int8 detector and recogniser against fp32, accuracy and throughput side by side.

Makes the int8 models (`ocr_svc.int8_models`, calibrated on synthetic pages, never on a
corpus image), then for every variant:

- CER on a labelled manifest (`ocrmesh eval`'s scoring), every variant in this process with the
  same ONNX Runtime threads, alternating image by image; CPU seconds per image beside the wall time,
  because CPU time hardly moves with what else runs on the machine;
- the engine's throughput (`ocrmesh bench engine`'s closed loop on the service's worker pool) in
  alternating rounds, so background load falls on every variant alike.

A variant is worth adopting only when its mean CER is at most `--bar` (0.005) worse than fp32's and
its throughput is higher. The report (markdown + JSON) goes to docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.machine_facts import machine
from bench.report_files import table, write_report
from bench.stop_signals import run_stoppable
from bench.studies.eval import ImageResult, InProcessRecognizer, Item, Outcome, evaluate, load_manifest
from ocr_svc.int8_models import SERVICE_VARIANT, VARIANTS, Built, Variant, build_variants

CORPUS = Path("../shared/ocr-corpus/real/manifest.jsonl")
IMAGE = Path("../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg")
FP32 = "fp32"
BAR = 0.005


class VariantRecognizer(InProcessRecognizer):
    """Our pipeline in this process with one variant's model files; records CPU time per image."""

    def __init__(self, variant: Variant, files: dict[str, str], threads: int) -> None:
        from ocr_svc.engine import Engine, EngineSettings
        from ocr_svc.guardrails import Limits
        from ocr_svc.job import JobOptions

        self.name = variant.name
        self.engine = Engine(
            EngineSettings(device="cpu", threads=threads, model_files=tuple(sorted(files.items())))
        )
        self.limits = Limits()
        self.options = JobOptions()
        self.description = f"{variant.note}; {threads} ONNX Runtime thread(s)"

    def recognize(self, item: Item) -> Outcome:
        cpu = time.process_time()
        outcome = super().recognize(item)
        outcome.detail["cpu_s"] = time.process_time() - cpu
        return outcome


def cer_comparison(base: Sequence[ImageResult], other: Sequence[ImageResult]) -> dict[str, Any]:
    """Mean CER, the change per image and CPU time of `other` against `base` (same images, same order)."""
    pairs = list(zip(base, other, strict=True))
    deltas: list[dict[str, Any]] = [
        {"file": o.file, "fp32": b.cer, "int8": o.cer, "delta": o.cer - b.cer}
        for b, o in sorted(pairs, key=lambda p: p[1].cer - p[0].cer, reverse=True)
    ]
    base_cpu = sum(float(r.detail.get("cpu_s", 0.0)) for r in base)
    other_cpu = sum(float(r.detail.get("cpu_s", 0.0)) for r in other)
    base_wall, other_wall = sum(r.seconds for r in base), sum(r.seconds for r in other)
    return {
        "mean_cer": statistics.fmean(r.cer for r in other),
        "mean_cer_delta": statistics.fmean(r.cer for r in other) - statistics.fmean(r.cer for r in base),
        "worst": deltas[:5],
        "worse": sum(1 for d in deltas if d["delta"] > 1e-9),
        "better": sum(1 for d in deltas if d["delta"] < -1e-9),
        "same_text": sum(1 for b, o in pairs if b.pred == o.pred),
        "cpu_s": other_cpu,
        "cpu_ratio": base_cpu / other_cpu if other_cpu else 0.0,  # > 1: int8 costs less CPU
        "wall_s": other_wall,
        "wall_ratio": base_wall / other_wall if other_wall else 0.0,
        "errors": sum(1 for r in other if r.error),
    }


async def throughput_rounds(
    image: bytes, built: Built, variants: Sequence[Variant], workers: int, rounds: int, round_s: float
) -> dict[str, Any]:
    """Closed-loop engine throughput of every variant, in alternating rounds; per variant the
    images/s of each round and in all, and per round the ratio to fp32 of the same round."""
    from bench.studies.engine_ceiling import EngineBench
    from ocr_svc.engine import EngineSettings

    benches: dict[str, EngineBench] = {}
    try:
        for variant in variants:
            files = tuple(sorted(built.files[variant.name].items()))
            settings = EngineSettings(device="cpu", threads=1, model_files=files)
            bench = EngineBench(image, workers, 1, 2 * workers, engine=settings)
            benches[variant.name] = bench
            await bench.start()
        per_round: dict[str, list[float]] = {v.name: [] for v in variants}
        for k in range(rounds):
            order = list(variants) if k % 2 == 0 else list(reversed(variants))
            for variant in order:
                bench = benches[variant.name]
                before = bench.elapsed_s
                done = await bench.run(round_s)
                per_round[variant.name].append(done / (bench.elapsed_s - before))
        out: dict[str, Any] = {}
        for name, bench in benches.items():
            result = bench.result()
            ratios = [v / f for v, f in zip(per_round[name], per_round[FP32], strict=True) if f]
            out[name] = {
                "images_per_s": result["images_per_s"],
                "rounds_images_per_s": per_round[name],
                "ratio_per_round": ratios,
                "median_ratio": statistics.median(ratios) if ratios else 0.0,
                "latency_s": result["latency_s"],
                "count": result["count"],
            }
        return out
    finally:
        for bench in benches.values():
            await bench.close()


def adopt(eval_row: dict[str, Any], throughput: dict[str, Any] | None, bar: float) -> tuple[bool, str]:
    """Whether a variant meets the bar: mean CER at most `bar` worse and more throughput."""
    if eval_row["mean_cer_delta"] > bar:
        return False, f"mean CER {eval_row['mean_cer_delta']:+.4f} is over the +{bar} bar"
    faster = throughput["median_ratio"] if throughput else eval_row["cpu_ratio"]
    if faster <= 1.0:
        return False, f"no faster (throughput {faster:.2f}x fp32)"
    return True, f"mean CER {eval_row['mean_cer_delta']:+.4f}, throughput {faster:.2f}x fp32"


def markdown(report: dict[str, Any]) -> str:
    cal = report["calibration"]
    rows = []
    for name, row in report["eval"].items():
        tp = report["throughput"].get(name) if report["throughput"] else None
        worst = row["worst"][0] if row["worst"] else None
        rows.append(
            [
                f"`{name}`",
                f"{row['mean_cer']:.4f}",
                f"{row['mean_cer_delta']:+.4f}",
                f"`{worst['file']}` {worst['delta']:+.3f}" if worst and worst["delta"] > 0 else "none",
                f"{row['worse']} / {row['better']} / {row['same_text']}",
                f"{row['cpu_ratio']:.2f}x",
                f"{tp['images_per_s']:.2f} ({tp['median_ratio']:.2f}x)" if tp else "-",
                "**yes**" if report["decision"][name]["adopt"] else "no",
            ]
        )
    out = [
        f"# int8 quantisation of the detector and recogniser ({report['started']})",
        "",
        f"- machine: {report['machine']}; onnxruntime {report['versions'].get('onnxruntime')}, "
        f"rapidocr {report['versions'].get('rapidocr')}",
        f"- accuracy: `{report['manifest']}` ({report['images']} images), every variant in this "
        f"process with {report['threads']} ONNX Runtime thread(s), alternating image by image",
        f"- throughput: `ocrmesh bench engine`'s closed loop on `{report['image']}`, "
        f"{report['workers']} worker(s) x 1 thread, {report['rounds']} alternating rounds of "
        f"{report['round_s']:.0f} s per variant"
        if report["throughput"]
        else "- throughput: not measured (--skip-throughput); CPU s per image from the eval only",
        f"- calibration: {cal.get('pages')} synthetic pages rendered with PIL (seed {cal.get('seed')}; "
        f"{cal.get('det_inputs')} detector inputs, {cal.get('rec_inputs')} line crops recorded from "
        f"the pipeline; fonts: {', '.join(cal.get('fonts', []))}); no corpus or tests/accuracy image",
        f"- models: `{report['cache']}`; static = QDQ, uint8 activations, int8 weights per channel, "
        "MinMax ranges, after `quant_pre_process`; dynamic = MatMul weights int8",
        f"- bar: mean CER at most +{report['bar']} against fp32 and higher throughput",
        "",
        table(
            [
                "variant",
                "mean CER",
                "vs fp32",
                "worst image",
                "worse / better / same text",
                "CPU per image (fp32 / int8)",
                "engine images/s (vs fp32)",
                "meets bar",
            ],
            rows,
        ),
        "",
        "CPU per image: fp32's CPU seconds over the eval's 33 images divided by the variant's (more than "
        "1: the variant costs less; CPU time hardly moves with other load on the machine). Engine "
        "images/s: all rounds together, and in brackets the median of each round's ratio to fp32's "
        "round beside it.",
        "",
        "## Decision",
        "",
        *(f"- `{name}`: {d['why']}" for name, d in report["decision"].items() if name != FP32),
        f"- `ocrmesh serve ocr --model-precision int8` (opt-in; fp32 stays the default) runs "
        f"`{SERVICE_VARIANT}`, made on a worker's first start into `--model-cache`.",
        "",
        "## Notes",
        "",
        "- RapidOCR's models are opset 11; per-channel QDQ needs DequantizeLinear's `axis` (opset 13), so "
        "they are converted first (an opset-11 per-channel model does not load).",
        "- `CalibMaxIntermediateOutputs` is not used: in onnxruntime 1.32 the MinMax calibrator drops, "
        "rather than merges, the ranges gathered before each flush, so all but the last few inputs "
        "would be ignored (a first run with it had calibrated on 3 detector inputs of 43).",
        "",
        "## Variants",
        "",
        *(f"- `{name}`: {note}" for name, note in report["variants"].items()),
        "",
        "## Largest per-image CER changes",
        "",
    ]
    for name, row in report["eval"].items():
        if name == FP32:
            continue
        changes = ", ".join(f"`{d['file']}` {d['fp32']:.3f} -> {d['int8']:.3f}" for d in row["worst"][:3])
        out.append(f"- `{name}`: {changes}")
    if report["throughput"]:
        out += ["", "## Throughput rounds (images/s)", ""]
        tp = report["throughput"]
        out.append(
            table(
                ["variant", *(f"round {k + 1}" for k in range(report["rounds"])), "all", "median ratio"],
                [
                    [
                        f"`{n}`",
                        *(f"{v:.2f}" for v in t["rounds_images_per_s"]),
                        f"{t['images_per_s']:.2f}",
                        f"{t['median_ratio']:.2f}",
                    ]
                    for n, t in tp.items()
                ],
            )
        )
    return "\n".join(out) + "\n"


def _versions() -> dict[str, str]:
    found = {}
    for name in ("onnxruntime", "rapidocr", "onnx"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(v.name for v in VARIANTS)
    parser.add_argument("--manifest", type=Path, default=CORPUS, help="labelled manifest (%(default)s)")
    parser.add_argument("--image", type=Path, default=IMAGE, help="throughput image (%(default)s)")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of: {names}")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(".ocrmesh/models"),
        help="folder for the int8 models (default: serve ocr's --model-cache, which then reuses them)",
    )
    parser.add_argument("--calibration-pages", type=int, default=32, help="synthetic calibration pages")
    parser.add_argument("--seed", type=int, default=20261207, help="seed of the calibration pages")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the eval")
    parser.add_argument("--workers", type=int, default=0, help="throughput worker processes (0: per core)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--round-s", type=float, default=15.0, help="seconds per variant per round")
    parser.add_argument("--skip-throughput", action="store_true", help="eval only")
    parser.add_argument("--bar", type=float, default=BAR, help="largest mean CER rise allowed")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="report folder")
    parser.add_argument("--stem", default="", help="report file name (default quantize-DATE)")


def run(ns: argparse.Namespace) -> int:
    from ocr_svc.config import default_workers
    from ocr_svc.engine import Engine, EngineSettings

    chosen = [v for v in VARIANTS if not ns.variants or v.name in ns.variants.split(",") or v.name == FP32]
    items, _ = load_manifest(ns.manifest)
    if not items:
        print(f"ocrmesh bench quantize: no labelled images in {ns.manifest}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    print(f"making the int8 models in {ns.cache} ...", file=sys.stderr)
    shipped = Engine(EngineSettings(device="cpu", threads=max(1, ns.threads), flush_subnormals=False))
    built = build_variants(shipped, chosen, ns.cache, ns.calibration_pages, ns.seed)
    del shipped
    print(f"eval of {len(chosen)} variants on {len(items)} images ...", file=sys.stderr)
    engines = [VariantRecognizer(v, built.files[v.name], ns.threads) for v in chosen]
    results = evaluate(items, engines)
    base = results[FP32]
    eval_rows = {v.name: cer_comparison(base, results[v.name]) for v in chosen}
    del engines
    throughput: dict[str, Any] = {}
    workers = ns.workers or default_workers()
    if not ns.skip_throughput:
        print(f"throughput, {ns.rounds} rounds ...", file=sys.stderr)
        throughput = run_stoppable(
            throughput_rounds(ns.image.read_bytes(), built, chosen, workers, ns.rounds, ns.round_s)
        )
    decision = {}
    for v in chosen:
        ok, why = adopt(eval_rows[v.name], throughput.get(v.name), ns.bar)
        decision[v.name] = {"adopt": ok and v.name != FP32, "why": why}
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": _versions(),
        "manifest": str(ns.manifest),
        "images": len(items),
        "image": str(ns.image),
        "threads": ns.threads,
        "workers": workers,
        "rounds": ns.rounds,
        "round_s": ns.round_s,
        "bar": ns.bar,
        "cache": str(built.folder),
        "calibration": built.calibration,
        "quantize_s": built.seconds,
        "variants": {v.name: v.note for v in chosen},
        "files": built.files,
        "eval": eval_rows,
        "throughput": throughput,
        "decision": decision,
        "per_image": {name: [asdict(r) for r in rs] for name, rs in results.items()},
    }
    text = markdown(report)
    stem = ns.stem or f"quantize-{started.date().isoformat()}"
    _, md_path = write_report(ns.out, stem, report, text)
    print(text)
    print(f"report: {md_path}", file=sys.stderr)
    return 0
