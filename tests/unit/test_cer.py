"""CER and bag error as BASELINE.md defines them, checked against its own recorded rows."""

from __future__ import annotations

import json
import random

import pytest

from bench.studies.cer import bag_counts, join_lines, levenshtein, normalize, score
from tests.corpus import CORPUS


def reference_levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("我是中国人", "中国我是", 4),
        ("flaw", "lawn", 2),
        ("same", "same", 0),
    ],
)
def test_levenshtein_known_values(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_levenshtein_matches_the_textbook_dp_on_random_strings() -> None:
    rng = random.Random(8)
    alphabet = "ab c中文。"
    for _ in range(300):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert levenshtein(a, b) == reference_levenshtein(a, b), (a, b)


def test_normalize_nfkc_whitespace_and_spaces_next_to_cjk() -> None:
    assert normalize("Ａ：１２３") == "A:123"  # full-width to half-width
    assert normalize("-40℃深度") == "-40°C深度"
    assert normalize("  two   words\t here \n") == "two words here"
    assert normalize("大桶装 更划算") == "大桶装更划算"
    assert normalize("价￥ 10.0起") == "价¥ 10.0起"  # ¥ is not CJK: the space stays
    assert normalize("CUDA execution provider实现") == "CUDA execution provider实现"
    assert join_lines(["Our Life", "是一场", "is a waste"]) == "Our Life是一场is a waste"


def test_bag_ignores_order_and_spaces() -> None:
    assert bag_counts("ab cd", "dc ba") == (0, 0)
    assert bag_counts("abc", "abd") == (1, 1)
    assert bag_counts("abc", "") == (3, 0)


def test_empty_ground_truth_counts_every_predicted_character() -> None:
    assert score([], []).cer == 0.0
    assert score([], ["abc"]).cer == 3.0


BASELINE_ROWS = [
    "rapidocr_ch_en_num.jpg",  # ¥, ℃, spaces next to CJK, row order
    "rapidocr_test_letterbox_like.jpg",  # long mixed zh/en lines
    "rapidocr_en.jpg",  # English with spaces
    "paddleocr_6.jpg",  # bag divides by GT characters without spaces
    "paddleocr_12.jpg",  # digits separated by spaces
    "icdar2015_img_1.jpg",  # CER above the bag
    "rapidocr_text_rec.jpg",  # nothing predicted
]


@pytest.mark.parametrize("file", BASELINE_ROWS)
def test_score_reproduces_the_baseline_rows(file: str) -> None:
    manifest = {
        json.loads(line)["file"]: json.loads(line)
        for line in (CORPUS / "real" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    rows = {
        json.loads(line)["file"]: json.loads(line)
        for line in (CORPUS / "baseline_results.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    row = rows[file]
    got = score(manifest[file]["ground_truth_lines"], row["pred"])
    assert got.gt_norm == row["gt_norm"]
    assert got.pred_norm == row["pred_norm"]
    assert got.edits == row["edits"]
    assert got.gt_chars == row["gt_chars"]
    assert got.cer == pytest.approx(row["cer"])
    assert got.bag == pytest.approx(row["bag"])
