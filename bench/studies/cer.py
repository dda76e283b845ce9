"""Character error rate (CER) and order-free "bag" error, exactly as the corpus BASELINE.md defines them."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Ideographs (CJK Unified + extensions, compatibility), CJK symbols and punctuation, kana, Hangul,
# and what NFKC leaves of the full-width/half-width block: spaces touching these are dropped.
_CJK = (
    "\u2e80-\u2fdf"  # radicals
    "\u3000-\u303f"  # CJK symbols and punctuation (。「」、…)
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3100-\u312f\u31a0-\u31bf"  # bopomofo
    "\u3400-\u4dbf"  # extension A
    "\u4e00-\u9fff"  # unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # compatibility ideographs
    "\ufe30-\ufe4f"  # CJK compatibility forms
    "\uff00-\uffef"  # half-width and full-width forms
    "\U00020000-\U0003134f"  # extensions B-G
)
_SPACE_NEXT_TO_CJK = re.compile(f"(?<=[{_CJK}]) | (?=[{_CJK}])")
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, whitespace runs to one space (trimmed), then spaces touching a CJK character removed."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return _SPACE_NEXT_TO_CJK.sub("", text)


def join_lines(lines: Sequence[str]) -> str:
    """Lines in order, joined and normalised as one string."""
    return normalize(" ".join(lines))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1); O(len(a)) numpy work per char of b."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    codes_a = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
    steps = np.arange(len(a) + 1, dtype=np.int64)
    previous = steps.copy()
    for i, char in enumerate(b, start=1):
        # Substitution or match from the diagonal, deletion from above ...
        best = np.empty_like(previous)
        best[0] = i
        best[1:] = np.minimum(previous[:-1] + (codes_a != ord(char)), previous[1:] + 1)
        # ... then insertions along the row: cur[j] = min_k<=j (best[k] + j - k).
        previous = np.minimum.accumulate(best - steps) + steps
    return int(previous[-1])


def bag_counts(gt_norm: str, pred_norm: str) -> tuple[int, int]:
    """(missing, extra) character counts, order-free, spaces ignored."""
    gt = Counter(gt_norm.replace(" ", ""))
    pred = Counter(pred_norm.replace(" ", ""))
    return sum((gt - pred).values()), sum((pred - gt).values())


@dataclass(frozen=True)
class Score:
    """One image scored against its ground truth."""

    gt_norm: str
    pred_norm: str
    edits: int
    gt_chars: int
    cer: float
    bag: float


def score(gt_lines: Sequence[str], pred_lines: Sequence[str]) -> Score:
    """CER = Levenshtein(gt, pred) / len(gt) on the normalised concatenations (spaces count);
    bag = max(missing, extra) / len(gt without spaces), spaces ignored on both sides.

    An empty ground truth divides by 1, so any predicted text counts as that many errors.
    """
    gt_norm = join_lines(gt_lines)
    pred_norm = join_lines(pred_lines)
    edits = levenshtein(gt_norm, pred_norm)
    missing, extra = bag_counts(gt_norm, pred_norm)
    return Score(
        gt_norm=gt_norm,
        pred_norm=pred_norm,
        edits=edits,
        gt_chars=len(gt_norm),
        cer=edits / max(1, len(gt_norm)),
        bag=max(missing, extra) / max(1, len(gt_norm.replace(" ", ""))),
    )
