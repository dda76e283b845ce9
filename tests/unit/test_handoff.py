"""Which sibling a call is handed to, and the load entries siblings exchange."""

from __future__ import annotations

import pytest

from mesh.load_board import Load, load_prefix
from mesh.registry import RecordError
from ocr_svc.handoff import pick_sibling


def load(instance_id: str, wait_s: float, workers: int = 1, service_s: float = 1.0) -> Load:
    return Load(instance_id, f"127.0.0.1:{5000 + len(instance_id)}", wait_s, workers, service_s, 0.0)


def test_a_sibling_shorter_by_more_than_the_margin_gets_the_call() -> None:
    picked = pick_sibling(8.0, 1.0, 1, [load("b", 2.0)], {}, margin_jobs=3)
    assert picked is not None and picked.instance_id == "b"


def test_a_difference_within_the_margin_keeps_the_call_here() -> None:
    assert pick_sibling(4.9, 1.0, 1, [load("b", 2.0)], {}, margin_jobs=3) is None
    # The margin is in jobs of this instance: with 2 workers a job frees a slot every 0.5 s.
    assert pick_sibling(4.9, 1.0, 2, [load("b", 2.0)], {}, margin_jobs=3) is not None


def test_the_shortest_sibling_wins() -> None:
    picked = pick_sibling(10.0, 1.0, 1, [load("b", 3.0), load("c", 1.0), load("d", 2.0)], {}, margin_jobs=3)
    assert picked is not None and picked.instance_id == "c"


def test_calls_already_handed_over_count_against_a_sibling() -> None:
    # c reported 1 s, but we sent it 5 calls since: 1 + 5 x 1 s = 6 s, so b (3 s) is shorter.
    siblings = [load("b", 3.0), load("c", 1.0)]
    picked = pick_sibling(10.0, 1.0, 1, siblings, {"c": 5}, margin_jobs=3)
    assert picked is not None and picked.instance_id == "b"
    # With enough in flight to both, nobody is shorter by the margin any more.
    assert pick_sibling(10.0, 1.0, 1, siblings, {"b": 5, "c": 7}, margin_jobs=3) is None


def test_no_siblings_no_margin_or_no_service_time_means_no_handoff() -> None:
    assert pick_sibling(100.0, 1.0, 1, [], {}, margin_jobs=3) is None
    assert pick_sibling(100.0, 1.0, 1, [load("b", 0.0)], {}, margin_jobs=0) is None
    assert pick_sibling(100.0, 0.0, 1, [load("b", 0.0)], {}, margin_jobs=3) is None


def test_load_entries_round_trip_and_bad_ones_are_refused() -> None:
    entry = Load("ocr-1", "10.0.0.5:50051", 2.5, 2, 0.8, 0.0)
    back = Load.from_json("ocr-1", entry.to_json().encode(), 7.0)
    assert (back.address, back.wait_s, back.workers, back.service_s, back.heard_at) == (
        "10.0.0.5:50051",
        2.5,
        2,
        0.8,
        7.0,
    )
    for bad in (
        b"not json",
        b'{"address": "x:1"}',
        b'{"address": "", "wait_ms": 1, "workers": 1, "service_ms": 1}',
    ):
        with pytest.raises(RecordError):
            Load.from_json("ocr-1", bad, 0.0)
    assert load_prefix("ocr") == "/ocrmesh/v1/load/ocr/"
    with pytest.raises(ValueError):
        load_prefix("../registry")
