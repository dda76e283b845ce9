"""ONNX Runtime sessions rebuilt with subnormal weights flushed to zero: same outputs, far less CPU.

RapidOCR's PP-OCRv6 detector ships with about 256,000 subnormal float32 weights (|w| < 1.18e-38),
most of them in the two 768->384 1x1 convolutions of its neck. Multiplying by a subnormal makes
many x86 CPUs take a microcode assist per operation: on the 2-core Xeon this project is measured
on, those two small convolutions took 600 of the detector's 940 ms at 672x832 with one thread, and
the whole pass fell to 315 ms once they were zero. ONNX Runtime's `session.set_denormal_as_zero`
does not help here: it sets the flush-to-zero flags on its pool threads only, and a session with
one intra-op thread runs on the caller's thread. Each product with a subnormal weight is far below
float32's resolution of the sums it is added to, so zeroing the weights leaves the outputs
unchanged (checked bit for bit in the tests).

Only sessions running on the CPU are rebuilt: GPUs handle subnormals at full speed. A model is only
reloaded when its subnormal weights are a noticeable share of all its weights (`MIN_SHARE`): the
recogniser has 241 of 5.3 million, costs the same with or without them, and a second load of its
21 MB would only add memory.

Nothing in onnxruntime or rapidocr does this, hence this module; `onnx` does the reading and writing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SMALLEST_NORMAL = np.finfo(np.float32).tiny
MIN_SHARE = 1e-3  # reload a model only if at least this share of its float weights is subnormal
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Flushed:
    """What flushing did to one model."""

    model: str
    subnormal_weights: int
    tensors: int
    float_weights: int
    reloaded: bool
    why_not: str = ""  # why the shipped model was kept, when it was


def flush_array(values: np.ndarray) -> int:
    """Zero the subnormal entries of a float32 array in place; how many there were."""
    mask = (values != 0) & (np.abs(values) < SMALLEST_NORMAL)
    count = int(mask.sum())
    if count:
        values[mask] = 0
    return count


def weight_tensors(model: Any) -> list[Any]:
    """The float32 weight tensors of a model's main graph: initializers and Constant nodes' values
    (the angle classifier keeps all its weights in Constant nodes). Subgraphs are left alone;
    RapidOCR's models have none."""
    from onnx import TensorProto

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value" and a.HasField("t"))
    return [t for t in tensors if t.data_type == TensorProto.FLOAT]


def flush_model(model: Any) -> tuple[int, int, int]:
    """Zero the subnormal float32 weights of an `onnx.ModelProto` in place.

    Returns (weights zeroed, tensors touched, float weights in all)."""
    from onnx import numpy_helper

    weights = tensors = total = 0
    for tensor in weight_tensors(model):
        values = np.array(numpy_helper.to_array(tensor), dtype=np.float32, copy=True)
        total += values.size
        count = flush_array(values)
        if count:
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
            weights += count
            tensors += 1
    return weights, tensors, total


def flushed_model(path: Path) -> tuple[Any, Flushed]:
    """The model at `path` (an `onnx.ModelProto`) with its subnormal weights zeroed, and the counts
    (`reloaded` is left False: the caller decides)."""
    import onnx

    model = onnx.load(str(path))
    weights, tensors, total = flush_model(model)
    return model, Flushed(path.name, weights, tensors, total, reloaded=False)


def rebuild_session(session: Any, min_share: float = MIN_SHARE) -> tuple[Any, Flushed]:
    """`session` again, from the same model file with subnormal weights zeroed, with the same
    session options, providers and provider options.

    `session` itself when it does not run on the CPU (GPUs handle subnormals at full speed, and a CUDA
    session is better not rebuilt from options read back from it) or when fewer than `min_share` of
    its weights were subnormal."""
    import onnxruntime

    model_path = getattr(session, "_model_path", None)
    if not model_path:
        raise ValueError("the session was not created from a model file; nothing to reload")
    providers = session.get_providers()
    if providers[:1] != [CPU_PROVIDER]:
        name = Path(model_path).name
        return session, Flushed(name, 0, 0, 0, reloaded=False, why_not=f"runs on {providers[0]}")
    model, flushed = flushed_model(Path(model_path))
    share = flushed.subnormal_weights / flushed.float_weights if flushed.float_weights else 0.0
    if flushed.subnormal_weights == 0 or share < min_share:
        return session, replace(flushed, why_not=f"{share:.4%} of its weights are subnormal")
    options = session.get_provider_options()
    rebuilt = onnxruntime.InferenceSession(
        model.SerializeToString(),
        sess_options=session.get_session_options(),
        providers=providers,
        provider_options=[options.get(p, {}) for p in providers],
    )
    return rebuilt, replace(flushed, reloaded=True)


def reload_errors() -> tuple[type[Exception], ...]:
    """What a failed reload raises: no `onnx`, a file gone or unreadable, ONNX Runtime refusing it."""
    from google.protobuf.message import DecodeError
    from onnxruntime.capi import onnxruntime_pybind11_state as ort

    return (
        ImportError,
        OSError,
        ValueError,
        DecodeError,
        ort.Fail,
        ort.InvalidArgument,
        ort.InvalidGraph,
        ort.InvalidProtobuf,
        ort.NoSuchFile,
        ort.EPFail,
        ort.RuntimeException,
    )


def flush_engine_sessions(models: Any) -> list[Flushed]:
    """Swap each loaded RapidOCR stage's ONNX session (det, cls, rec) for its flushed twin where
    that is worth it (see `MIN_SHARE`). A stage whose reload fails keeps its session, loudly: the
    results are the same, only slower on CPUs that trap subnormals."""
    done = []
    for name, stage in (("det", models.det), ("cls", models.cls), ("rec", models.rec)):
        holder: Any = getattr(stage, "session", None)  # rapidocr's OrtInferSession
        session = getattr(holder, "session", None)
        if holder is None or session is None:
            continue
        try:
            holder.session, flushed = rebuild_session(session)
        except reload_errors() as exc:
            model = Path(getattr(session, "_model_path", None) or name).name
            log.warning(
                "could not reload %s with its subnormal weights zeroed (%s: %s); keeping the model as "
                "shipped, which gives the same results but is slower on CPUs that trap subnormals",
                model,
                type(exc).__name__,
                exc,
            )
            done.append(Flushed(model, 0, 0, 0, reloaded=False, why_not=f"{type(exc).__name__}: {exc}"))
            continue
        done.append(flushed)
        if flushed.reloaded:
            log.info(
                "reloaded %s with %d subnormal weights (in %d tensors) set to zero",
                flushed.model,
                flushed.subnormal_weights,
                flushed.tensors,
            )
    return done
