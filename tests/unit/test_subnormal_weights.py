"""Zeroing subnormal model weights: which values go, a real ONNX model before and after, the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.guardrails import Limits, decode
from ocr_svc.job import JobOptions
from ocr_svc.subnormal_weights import (
    SMALLEST_NORMAL,
    flush_array,
    flush_engine_sessions,
    flush_model,
    rebuild_session,
)
from tests.corpus import CORPUS


def test_only_subnormal_values_are_zeroed() -> None:
    values = np.array(
        [0.0, 1e-39, -1e-39, SMALLEST_NORMAL, -SMALLEST_NORMAL, 1e-45, 0.5, -3.0], dtype=np.float32
    )
    assert flush_array(values) == 3
    assert values.tolist() == pytest.approx(
        [0.0, 0.0, 0.0, float(SMALLEST_NORMAL), -float(SMALLEST_NORMAL), 0.0, 0.5, -3.0], rel=0, abs=0
    )
    assert flush_array(values) == 0  # nothing left


def matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """y = x @ W + b, with W and b as initializers (b holds one subnormal value)."""
    bias = np.array([1e-40, 0.25], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_model_is_rebuilt_with_the_same_options_and_outputs(tmp_path: Path) -> None:
    weight = np.array([[1e-39, 2.0], [3.0, -5e-40], [0.5, 1.0]], dtype=np.float32)
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(weight), str(path))

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    original = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rebuilt, flushed = rebuild_session(original)

    assert rebuilt is not original
    assert (flushed.model, flushed.subnormal_weights, flushed.tensors, flushed.float_weights) == (
        "m.onnx",
        3,
        2,
        8,
    )
    assert flushed.reloaded
    assert rebuilt.get_session_options().intra_op_num_threads == 1
    assert rebuilt.get_providers() == original.get_providers()
    x = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(rebuilt.run(None, {"x": x})[0], original.run(None, {"x": x})[0])

    # The flushed model really has no subnormal weights left, and the file on disk is untouched.
    model = onnx.load(str(path))
    assert flush_model(model) == (3, 2, 8)
    assert flush_model(model) == (0, 0, 8)


def test_a_few_subnormals_among_many_weights_keep_the_session(tmp_path: Path) -> None:
    # Like the recogniser: 241 of 5.3 million weights, no measurable cost, not worth a second load.
    weight = np.ones((3, 2000), dtype=np.float32)
    weight[0, 0] = 1e-39
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2000])],
        [numpy_helper.from_array(weight, "W")],
    )
    path = tmp_path / "few.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    same, flushed = rebuild_session(session)
    assert same is session
    assert (flushed.subnormal_weights, flushed.float_weights, flushed.reloaded) == (1, 6000, False)
    assert flushed.why_not == "0.0167% of its weights are subnormal"
    rebuilt, forced = rebuild_session(session, min_share=0.0)
    assert rebuilt is not session and forced.reloaded


def test_weights_held_in_constant_nodes_are_flushed_too() -> None:
    # The angle classifier keeps every weight in a Constant node rather than an initializer.
    weight = np.array([[1e-40, 1.0], [2.0, 3.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")),
            helper.make_node("MatMul", ["x", "W"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert flush_model(model) == (1, 1, 4)
    assert numpy_helper.to_array(model.graph.node[0].attribute[0].t)[0, 0] == 0.0


def test_a_model_without_subnormals_keeps_its_session(tmp_path: Path) -> None:
    path = tmp_path / "clean.onnx"
    onnx.save(matmul_model(np.ones((3, 2), dtype=np.float32)), str(path))
    model = onnx.load(str(path))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "b"))
    onnx.save(model, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    same, flushed = rebuild_session(session)
    assert same is session and flushed.subnormal_weights == 0 and not flushed.reloaded


class CudaSessionStandIn:
    """A GPU cannot exist on the CI machines, so a CUDA session is stood in for by the two things
    rebuild_session reads first: the model path and the providers ONNX Runtime reports."""

    _model_path = "/nonexistent/det.onnx"

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_cuda_session_is_kept_as_it_is() -> None:
    # GPUs handle subnormals at full speed, and a CUDA session is not rebuilt from options read back from
    # it. The model file is not even opened (the path does not exist).
    session = CudaSessionStandIn()
    same, flushed = rebuild_session(session)
    assert same is session
    assert (flushed.model, flushed.reloaded, flushed.why_not) == (
        "det.onnx",
        False,
        "runs on CUDAExecutionProvider",
    )


def test_a_session_from_bytes_is_refused_with_a_reason() -> None:
    data = matmul_model(np.ones((3, 2), dtype=np.float32)).SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="not created from a model file"):
        rebuild_session(session)


def stage(session: onnxruntime.InferenceSession) -> SimpleNamespace:
    """Where RapidOCR keeps a stage's ONNX session: `stage.session.session`."""
    return SimpleNamespace(session=SimpleNamespace(session=session))


def test_a_failed_reload_keeps_the_shipped_session_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weight = np.array([[1e-39, 2.0], [3.0, -5e-40], [0.5, 1.0]], dtype=np.float32)
    good, gone = tmp_path / "good.onnx", tmp_path / "gone.onnx"
    for path in (good, gone):
        onnx.save(matmul_model(weight), str(path))
    sessions = [
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (good, gone)
    ]
    gone.unlink()  # loaded, then removed from disk: the reload cannot read it
    models = SimpleNamespace(det=stage(sessions[0]), cls=SimpleNamespace(), rec=stage(sessions[1]))

    with caplog.at_level(logging.WARNING, logger="ocr_svc.subnormal_weights"):
        done = flush_engine_sessions(models)

    assert [(f.model, f.reloaded) for f in done] == [("good.onnx", True), ("gone.onnx", False)]
    assert models.det.session.session is not sessions[0]
    assert models.rec.session.session is sessions[1]  # kept, still usable
    x = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)
    assert models.rec.session.session.run(None, {"x": x})[0].shape == (1, 2)
    assert done[1].why_not.startswith("FileNotFoundError")
    assert "could not reload gone.onnx" in caplog.text


def test_the_engine_reads_exactly_the_same_with_flushed_weights() -> None:
    # RapidOCR's shipped detector carries ~256k subnormal weights (ocr_svc/subnormal_weights.py).
    flushed = Engine(EngineSettings(device="cpu", threads=1))
    kept = Engine(EngineSettings(device="cpu", threads=1, flush_subnormals=False))
    assert flushed.info.subnormal_weights_zeroed > 0
    assert kept.info.subnormal_weights_zeroed == 0
    for name in ("rapidocr_ch_en_num.jpg", "rapidocr_short.png"):
        image = decode((CORPUS / "real" / name).read_bytes(), Limits(), max_side=4096).array
        ours, theirs = flushed.run(image, JobOptions()), kept.run(image, JobOptions())
        assert ours.lines, name
        assert ours.lines == theirs.lines, name  # texts, scores and boxes all equal
