"""RapidOCR stages given other ONNX model files (e.g. int8 copies) with the same session options."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGES = ("det", "cls", "rec")


def load_like(session: Any, model: Path) -> Any:
    """A new ONNX Runtime session for `model` with `session`'s options, providers and provider
    options (so threads and device stay what the engine was built with)."""
    import onnxruntime

    providers = session.get_providers()
    options = session.get_provider_options()
    return onnxruntime.InferenceSession(
        str(model),
        sess_options=session.get_session_options(),
        providers=providers,
        provider_options=[options.get(p, {}) for p in providers],
    )


def swap_models(models: Any, files: Sequence[tuple[str, str]]) -> list[str]:
    """Give each named stage ("det", "cls" or "rec") of a loaded RapidOCR engine (`Models`) the
    model at its path; the names of the files loaded. The recogniser keeps its character list and
    decoder: only its session changes, so a replacement must read the same characters."""
    loaded = []
    for stage, path in files:
        if stage not in STAGES:
            raise ValueError(f"unknown model stage {stage!r} (one of {', '.join(STAGES)})")
        model = Path(path)
        if not model.is_file():
            raise FileNotFoundError(f"no model file for {stage} at {model}")
        holder = getattr(models, stage).session  # rapidocr's OrtInferSession
        holder.session = load_like(holder.session, model)
        loaded.append(model.name)
        log.info("the %s stage runs %s", stage, model)
    return loaded
