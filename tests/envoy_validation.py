"""Tests' check that the real Envoy accepts a bootstrap document (`envoy --mode validate`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from gateway.envoy_process import find_envoy


def assert_envoy_accepts(doc: dict[str, Any], tmp_path: Path) -> None:
    """Write `doc` under `tmp_path` and fail with Envoy's own words unless it validates."""
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(doc))
    done = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
