"""ONNX Runtime sessions rebuilt with subnormal weights flushed to zero: same outputs, far less CPU.

RapidOCR's PP-OCRv6 detector ships with about 256,000 subnormal float32 weights (|w| < 1.18e-38),
most of them in the two 768->384 1x1 convolutions of its neck. Multiplying by a subnormal makes
many x86 CPUs take a microcode assist per operation: on the 2-core Xeon this project is measured on,
those two small convolutions took 600 of the detector's 940 ms at 672x832 with one thread, and the
whole pass fell to 315 ms once they were zero. ONNX Runtime's `session.set_denormal_as_zero` does not
help here: it sets the flush-to-zero flags on its pool threads only, and a session with one intra-op
thread runs on the caller's thread. A subnormal weight is below anything float32 inference can
resolve, so zeroing it leaves every output bit-identical in practice (checked in the tests).

Nothing in onnxruntime or rapidocr does this, hence this module; `onnx` does the reading and writing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SMALLEST_NORMAL = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class Flushed:
    """What flushing did to one model."""

    model: str
    subnormal_weights: int
    tensors: int


def flush_array(values: np.ndarray) -> int:
    """Zero the subnormal entries of a float32 array in place; how many there were."""
    mask = (values != 0) & (np.abs(values) < SMALLEST_NORMAL)
    count = int(mask.sum())
    if count:
        values[mask] = 0
    return count


def flush_model(model: Any) -> tuple[int, int]:
    """Zero the subnormal float32 initializers of an `onnx.ModelProto` in place.

    Returns (weights zeroed, tensors touched). Initializers inside subgraphs are left alone
    (RapidOCR's models have none)."""
    from onnx import TensorProto, numpy_helper

    weights = tensors = 0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = np.array(numpy_helper.to_array(init), dtype=np.float32, copy=True)
        count = flush_array(values)
        if count:
            init.CopyFrom(numpy_helper.from_array(values, init.name))
            weights += count
            tensors += 1
    return weights, tensors


def flushed_model_bytes(path: Path) -> tuple[bytes, int, int]:
    """The model at `path` serialised with its subnormal weights zeroed, and the counts."""
    import onnx

    model = onnx.load(str(path))
    weights, tensors = flush_model(model)
    return model.SerializeToString(), weights, tensors


def rebuild_session(session: Any) -> tuple[Any, Flushed]:
    """`session` again, from the same model file with subnormal weights zeroed, with the same
    session options, providers and provider options; `session` itself when there were none."""
    import onnxruntime

    model_path = getattr(session, "_model_path", None)
    if not model_path:
        raise ValueError("the session was not created from a model file; nothing to reload")
    data, weights, tensors = flushed_model_bytes(Path(model_path))
    flushed = Flushed(model=Path(model_path).name, subnormal_weights=weights, tensors=tensors)
    if weights == 0:
        return session, flushed
    options = session.get_provider_options()
    providers = session.get_providers()
    rebuilt = onnxruntime.InferenceSession(
        data,
        sess_options=session.get_session_options(),
        providers=providers,
        provider_options=[options.get(p, {}) for p in providers],
    )
    return rebuilt, flushed


def flush_engine_sessions(models: Any) -> list[Flushed]:
    """Swap each loaded RapidOCR stage's ONNX session (det, cls, rec) for its flushed twin."""
    done = []
    for stage in (models.det, models.cls, models.rec):
        holder = getattr(stage, "session", None)  # rapidocr's OrtInferSession
        session = getattr(holder, "session", None)
        if session is None:
            continue
        rebuilt, flushed = rebuild_session(session)
        holder.session = rebuilt
        done.append(flushed)
        if flushed.subnormal_weights:
            log.info(
                "zeroed %d subnormal weights in %d tensors of %s",
                flushed.subnormal_weights,
                flushed.tensors,
                flushed.model,
            )
    return done
