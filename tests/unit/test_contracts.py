"""The .proto contracts: buf lint is clean and the committed stubs match a fresh generation."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(out)], check=True)
    committed = ROOT / "protos" / "gen"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    kept = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == kept, "protos/gen has extra or missing files: run `make protos` and commit"
    drifted = [str(p) for p in fresh if not filecmp.cmp(out / p, committed / p, shallow=False)]
    assert not drifted, f"stubs drifted from the .proto files: {drifted}; run `make protos`"


def test_buf_lint_is_clean(tmp_path: Path) -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not Path(buf).exists():
        pytest.fail("buf is missing: it comes with the dev extra (`pip install -e '.[dev]'`)")
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")}
    proc = subprocess.run([buf, "lint"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_services_expose_the_contract() -> None:
    from ocrmesh.auth.v1 import auth_pb2
    from ocrmesh.ocr.v1 import ocr_pb2

    ocr = ocr_pb2.DESCRIPTOR.services_by_name["OcrService"]
    assert {m.name for m in ocr.methods} == {
        "Recognize",
        "RecognizeStream",
        "RecognizeBatch",
        "GetInfo",
    }
    auth = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
    assert {m.name for m in auth.methods} == {
        "Register",
        "Login",
        "Refresh",
        "Logout",
        "WhoAmI",
        "GetJwks",
    }
