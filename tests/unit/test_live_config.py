"""Live settings: validation rejects whole updates, removing an override reverts to the base."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh.live_config import LiveConfig, parse_assignments, validate
from ocr_svc.live_settings import TABLE


def test_validate_casts_and_reports_every_problem() -> None:
    good, problems = validate(TABLE, {"queue_depth": "8", "log_level": "debug"})
    assert good == {"queue_depth": 8, "log_level": "debug"} and problems == []
    _, problems = validate(
        TABLE, {"queue_depth": -3, "log_level": "loud", "colour": 1, "max_image_bytes": 1.5}
    )
    assert len(problems) == 4
    assert any("queue_depth" in p and "at least -1" in p for p in problems)
    assert any("colour" in p and "not a live setting" in p for p in problems)
    _, problems = validate(TABLE, ["queue_depth"])
    assert problems and "JSON object" in problems[0]


def test_cli_assignments() -> None:
    assert parse_assignments(TABLE, ["queue_depth=3", "recycle_after_jobs=0"]) == {
        "queue_depth": 3,
        "recycle_after_jobs": 0,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignments(TABLE, ["queue_depth"])
    with pytest.raises(ValueError, match="queue_depth"):
        parse_assignments(TABLE, ["queue_depth=many"])


def test_consider_applies_rejects_and_reverts() -> None:
    applied: list[dict[str, Any]] = []
    base = {
        "queue_depth": 4,
        "max_image_bytes": 100,
        "max_image_pixels": 10,
        "recycle_after_jobs": 0,
        "max_worker_rss_mb": 0,
        "log_level": "info",
    }
    live = LiveConfig("127.0.0.1:1", "ocr", TABLE, base, applied.append)
    assert live.consider(json.dumps({"queue_depth": 9}).encode())
    assert applied[-1]["queue_depth"] == 9 and live.effective["queue_depth"] == 9
    # One bad value rejects the whole update; the settings in force stay.
    assert not live.consider(json.dumps({"queue_depth": 2, "log_level": "loud"}).encode())
    assert live.effective["queue_depth"] == 9 and live.rejected == 1 and "log_level" in live.last_error
    assert not live.consider(b"{not json")
    assert live.rejected == 2
    # Same value again: nothing to do.
    assert not live.consider(json.dumps({"queue_depth": 9}).encode())
    # Key deleted: back to the instance's own values.
    assert live.consider(None)
    assert applied[-1] == base and len(applied) == 2
