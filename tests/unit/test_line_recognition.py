"""Tight-width recognition batches: pure batching and tensor steps, real reads beside RapidOCR's own."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterator

import numpy as np
import pytest

from ocr_svc.engine import Engine, EngineSettings
from ocr_svc.guardrails import Limits, decode
from ocr_svc.job import JobOptions, Reading
from ocr_svc.line_recognition import batch_tensor, batches, input_width
from ocr_svc.pipeline import run_pipeline
from tests.corpus import CORPUS


def test_input_width_keeps_the_aspect_ratio_at_48_rows() -> None:
    assert input_width(np.zeros((24, 100, 3), np.uint8)) == 200
    assert input_width(np.zeros((96, 1, 3), np.uint8)) == 1  # never zero wide


def test_batches_group_similar_widths_and_keep_every_index_once() -> None:
    widths = [300, 50, 120, 49, 800]
    assert batches(widths, 2) == [[3, 1], [2, 0], [4]]
    assert batches(widths, 1) == [[3], [1], [2], [0], [4]]
    assert sorted(i for group in batches(widths, 3) for i in group) == list(range(5))


def test_batch_tensor_pads_to_the_widest_crop_not_to_320() -> None:
    white = np.full((48, 100, 3), 255, np.uint8)
    black = np.zeros((24, 30, 3), np.uint8)
    tensor = batch_tensor([white, black], [100, 60], min_width=64)
    assert tensor.shape == (2, 3, 48, 104)  # 100 rounded up to a multiple of 8
    assert np.allclose(tensor[0, :, :, :100], 1.0) and np.allclose(tensor[0, :, :, 100:], 0.0)
    assert np.allclose(tensor[1, :, :, :60], -1.0) and np.allclose(tensor[1, :, :, 60:], 0.0)
    assert batch_tensor([black], [60], min_width=192).shape == (1, 3, 48, 192)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield Engine(EngineSettings(device="cpu", threads=1))


@pytest.mark.parametrize("name", ["rapidocr_ch_en_num.jpg", "paddleocr_8.jpg", "rapidocr_en.jpg"])
def test_tight_batches_read_what_rapidocrs_recogniser_reads(engine: Engine, name: str) -> None:
    image = decode((CORPUS / "real" / name).read_bytes(), Limits(), max_side=4096).array
    settings = engine.settings.pipeline
    assert settings.tight_rec
    tight = run_pipeline(engine._ocr, image, JobOptions(), settings)
    plain = run_pipeline(engine._ocr, image, JobOptions(), dataclasses.replace(settings, tight_rec=False))

    def normal(result: Reading) -> list[str]:
        return [unicodedata.normalize("NFKC", text) for text in result.texts]

    assert len(tight.lines) >= 4
    assert normal(tight) == normal(plain)
    assert [line.box for line in tight.lines] == [line.box for line in plain.lines]
