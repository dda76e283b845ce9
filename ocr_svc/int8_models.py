"""int8 copies of the detector and the recogniser, calibrated on synthetic pages, kept in a cache folder.

The calibration inputs are the models' real inputs: the pipeline runs on the pages of
`ocr_svc.calibration_pages` with a recorder in place of the det and rec ONNX sessions, so
each stage is calibrated on exactly the tensors it gets in service (detection at the sizes the
pipeline picks, padding included; line crops 48 px high, padded to at least 192 px). Static
quantisation writes QDQ models (uint8 activations, int8 weights per channel, min/max ranges),
after conversion to opset 13 and ONNX Runtime's own pre-processing (shape inference and graph
fusions). Dynamic quantisation of the recogniser's MatMuls is the comparison point that needs no
calibration.

The detector is quantised from the copy the service runs (subnormal weights zeroed, see
ocr_svc/subnormal_weights.py). Files go to CACHE/<key>/, where the key hashes the source models,
the recipe and the calibration set: a second run with the same inputs reuses them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ocr_svc.calibration_pages import calibration_pages, cjk_characters, find_fonts

Feed = dict[str, npt.NDArray[np.float32]]

RECIPE_VERSION = 3  # bump when the way a model is quantised changes (new cache key)
QDQ_OPSET = 13  # per-channel QDQ needs DequantizeLinear's `axis` (opset 13)


@dataclass(frozen=True)
class Recipe:
    """How one stage's model is made: fp32 as shipped, static QDQ, or dynamic."""

    stage: str  # det | rec
    kind: str  # static | dynamic
    exclude_ends: bool = False  # static: keep the first conv and the output head in float

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.kind}{'-inner' if self.exclude_ends else ''}"


@dataclass(frozen=True)
class Variant:
    """One engine set-up under test: which stages run which int8 model (none: fp32 as served)."""

    name: str
    recipes: tuple[Recipe, ...]
    note: str


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", (), "the models as the service runs them (detector's subnormal weights zeroed)"),
    Variant(
        "int8-det+rec",
        (Recipe("det", "static"), Recipe("rec", "static")),
        "static QDQ int8 detector and recogniser",
    ),
    Variant("int8-det", (Recipe("det", "static"),), "static QDQ int8 detector, fp32 recogniser"),
    Variant(
        "int8-det-inner",
        (Recipe("det", "static", exclude_ends=True),),
        "static QDQ int8 detector with its first conv and output head left in float",
    ),
    Variant("int8-rec", (Recipe("rec", "static"),), "fp32 detector, static QDQ int8 recogniser"),
    Variant(
        "int8-rec-dynamic",
        (Recipe("rec", "dynamic"),),
        "fp32 detector, recogniser's MatMuls quantised dynamically (no calibration)",
    ),
)


# What `--model-precision int8` runs: the one variant that met the bar (mean CER no worse than
# +0.005 and more throughput; docs/benchmarks/quantize-2026-12-07.md).
SERVICE_VARIANT = "int8-det+rec"


@dataclass
class Calibration:
    """Recorded inputs of the detector and the recogniser on the calibration pages."""

    det: list[Feed]
    rec: list[Feed]
    pages: int
    fonts: list[str]
    seconds: float


class _Recorder:
    """Stands in for an ONNX Runtime session: keeps a copy of every input, then runs it."""

    def __init__(self, session: Any, into: list[Feed]) -> None:
        self._session = session
        self._into = into

    def run(self, output_names: Any, feed: dict[str, Any], *args: Any) -> Any:
        self._into.append({k: np.array(v, dtype=np.float32, copy=True) for k, v in feed.items()})
        return self._session.run(output_names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def record_inputs(engine: Any, pages: Sequence[npt.NDArray[np.uint8]]) -> tuple[list[Feed], list[Feed]]:
    """The detector's and the recogniser's inputs while `engine` (an ocr_svc Engine) reads `pages`."""
    from ocr_svc.job import JobOptions
    from ocr_svc.pipeline import Models

    models = Models.of(engine._ocr)
    det: list[Feed] = []
    rec: list[Feed] = []
    holders = ((models.det.session, det), (models.rec.session, rec))
    originals = [holder.session for holder, _ in holders]
    for holder, into in holders:
        holder.session = _Recorder(holder.session, into)
    try:
        for page in pages:
            engine.run(page, JobOptions())
    finally:
        for (holder, _), session in zip(holders, originals, strict=True):
            holder.session = session
    return det, rec


def sample(feeds: list[Feed], most: int, seed: int) -> list[Feed]:
    """At most `most` of `feeds`, a fixed random choice, in their recorded order."""
    if len(feeds) <= most:
        return feeds
    keep = sorted(random.Random(seed).sample(range(len(feeds)), most))
    return [feeds[i] for i in keep]


def calibrate(engine: Any, pages: int, seed: int, det_most: int = 48, rec_most: int = 400) -> Calibration:
    """Render `pages` synthetic pages and record what the detector and the recogniser get on them."""
    started = time.perf_counter()
    rec_holder = engine._ocr._load_rec_model().session
    chars = cjk_characters(rec_holder.get_character_list())
    fonts = find_fonts()
    images = calibration_pages(pages, chars, fonts, seed=seed)
    det, rec = record_inputs(engine, images)
    return Calibration(
        det=sample(det, det_most, seed),
        rec=sample(rec, rec_most, seed),
        pages=pages,
        fonts=sorted({f.path.name for f in fonts}),
        seconds=time.perf_counter() - started,
    )


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader over recorded inputs (duck-typed: the
    calibrator only calls get_next, and rewind between passes)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[Feed] = iter(self._feeds)

    def get_next(self) -> Feed | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __iter__(self) -> Iterator[Feed]:
        return iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def end_nodes(model: Any) -> list[str]:
    """Names of the first Conv and of the convolutions of the output head (the last three Conv or
    ConvTranspose nodes before the graph's output), the layers most sensitive to int8."""
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    names = [convs[0].name] if convs else []
    return names + [n.name for n in convs[-3:]]


def source_models(engine: Any) -> dict[str, Path]:
    """Paths of the detector and recogniser files RapidOCR loaded (`engine` must keep the shipped
    models: one built with flush_subnormals=False, whose results are the same)."""
    from ocr_svc.pipeline import Models

    models = Models.of(engine._ocr)
    paths = {}
    for stage in ("det", "rec"):
        session = getattr(models, stage).session.session
        path = getattr(session, "_model_path", None)
        if not path:
            raise ValueError(f"the {stage} session was not loaded from a file (flushed?)")
        paths[stage] = Path(str(path))
    return paths


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cache_key(sources: dict[str, Path], pages: int, seed: int) -> str:
    """A folder name that changes with the source models, the recipes and the calibration set."""
    parts = {
        "recipe": RECIPE_VERSION,
        "sources": {k: _digest(v) for k, v in sorted(sources.items())},
        "pages": pages,
        "seed": seed,
        "fonts": sorted(f.path.name for f in find_fonts()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _flushed_det(source: Path, into: Path) -> Path:
    """The detector as the service runs it on CPUs: subnormal weights zeroed."""
    import onnx

    from ocr_svc.subnormal_weights import flushed_model

    out = into / "det-fp32-flushed.onnx"
    if not out.exists():
        model, _ = flushed_model(source)
        onnx.save(model, str(out))
    return out


def _preprocessed(source: Path, into: Path, stage: str) -> Path:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = into / f"{stage}-fp32-pre.onnx"
    if not out.exists():
        upgraded = into / f"{stage}-fp32-opset{QDQ_OPSET}.onnx"
        onnx.save(at_opset(onnx.load(str(source)), QDQ_OPSET), str(upgraded))
        quant_pre_process(str(upgraded), str(out), skip_symbolic_shape=True)
        upgraded.unlink()
    return out


def at_opset(model: Any, opset: int) -> Any:
    """`model` converted to at least `opset` of the default domain (RapidOCR's models are opset 11,
    and a per-channel DequantizeLinear, with its `axis`, needs 13)."""
    import onnx
    from onnx import version_converter

    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current >= opset:
        return model
    converted = version_converter.convert_version(model, opset)
    onnx.checker.check_model(converted)
    return converted


def _keep_metadata(source: Path, target: Path) -> None:
    """The recogniser's character list lives in its metadata: copy it onto the int8 model."""
    import onnx

    src, out = onnx.load(str(source)), onnx.load(str(target))
    have = {p.key for p in out.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in have:
            out.metadata_props.append(prop)
    onnx.save(out, str(target))


def quantize(recipe: Recipe, source: Path, into: Path, calibration: Calibration | None) -> Path:
    """The int8 model of `recipe` in `into` (made now unless there already)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = into / f"{recipe.name}.onnx"
    if out.exists():
        return out
    pre = _preprocessed(source, into, recipe.stage)
    partial = out.with_suffix(".partial.onnx")
    if recipe.kind == "dynamic":
        quantize_dynamic(str(pre), str(partial), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    else:
        if calibration is None:
            raise ValueError("static quantisation needs calibration inputs")
        import onnx

        exclude = end_nodes(onnx.load(str(pre))) if recipe.exclude_ends else []
        feeds = calibration.det if recipe.stage == "det" else calibration.rec
        quantize_static(
            str(pre),
            str(partial),
            FeedReader(feeds),  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 the MinMax calibrator drops (does
            # not merge) the ranges collected before each flush, so all but the last few inputs
            # would be lost. Its augmented model returns each tensor's min and max only: memory
            # stays small without it.
        )
    _keep_metadata(source, partial)
    partial.replace(out)
    return out


@dataclass
class Built:
    """The model files of every variant, and how they were made."""

    folder: Path
    files: dict[str, dict[str, str]]  # variant -> stage -> path
    calibration: dict[str, Any]
    seconds: dict[str, float]


def build_variants(engine: Any, variants: Sequence[Variant], cache: Path, pages: int, seed: int) -> Built:
    """Quantise what `variants` need into CACHE/<key>/ (reusing files already there); `engine`
    is an ocr_svc Engine built with flush_subnormals=False (see `source_models`)."""
    sources = source_models(engine)
    folder = cache / cache_key(sources, pages, seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = {"det": _flushed_det(sources["det"], folder), "rec": sources["rec"]}
    recipes = {r.name: r for v in variants for r in v.recipes}
    made: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    calibration: Calibration | None = None
    about_file = folder / "calibration.json"
    for name, recipe in recipes.items():
        if (folder / f"{name}.onnx").exists():
            made[name] = folder / f"{name}.onnx"
            continue
        if recipe.kind == "static" and calibration is None:
            calibration = calibrate(engine, pages, seed)
            about = {k: v for k, v in asdict(calibration).items() if k not in ("det", "rec")}
            about.update(
                det_inputs=len(calibration.det),
                rec_inputs=len(calibration.rec),
                det_shapes=sorted({tuple(f["x"].shape[2:]) for f in calibration.det}),
                seed=seed,
            )
            about_file.write_text(json.dumps(about, indent=1) + "\n")
        started = time.perf_counter()
        made[name] = quantize(recipe, sources[recipe.stage], folder, calibration)
        seconds[name] = time.perf_counter() - started
    files = {v.name: {r.stage: str(made[r.name]) for r in v.recipes} for v in variants}
    about_calibration = json.loads(about_file.read_text()) if about_file.exists() else {}
    return Built(folder, files, about_calibration, seconds)


def ensure_int8(engine: Any, cache: Path, pages: int, seed: int = 20261207) -> dict[str, str]:
    """Stage -> file of the int8 detector and recogniser for `engine`'s models, made in CACHE now
    unless already there; under a file lock, so workers starting together make them once.
    `engine` must still have the shipped models loaded (see `source_models`)."""
    variant = next(v for v in VARIANTS if v.name == SERVICE_VARIANT)
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = build_variants(engine, [variant], cache, pages, seed)
    return built.files[SERVICE_VARIANT]
