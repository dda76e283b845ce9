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
        "RecognizePages",
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


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_buf_breaking_fails_on_a_removed_or_retyped_field(tmp_path: Path) -> None:
    """protos/breaking.py (run by `make test`) against git and image baselines, on a copy."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos" / "ocrmesh", repo / "protos" / "ocrmesh")
    shutil.copytree(ROOT / "third_party", repo / "third_party")
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    shutil.copy(ROOT / "protos" / "breaking.py", repo / "protos" / "breaking.py")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "contracts")
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")}
    env.pop("OCRMESH_BUF_AGAINST", None)
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    image = tmp_path / "released.binpb"
    subprocess.run([buf, "build", "-o", str(image)], cwd=repo, env=env, check=True)

    def breaking(against: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "protos/breaking.py", "--against", against]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)

    assert breaking("HEAD").returncode == 0
    assert breaking(str(image)).returncode == 0
    contract = repo / "protos" / "ocrmesh" / "ocr" / "v1" / "ocr.proto"
    original = contract.read_text()
    contract.write_text(original.replace("  double service_ms = 20;\n", "  reserved 20;\n"))
    for against in ("HEAD", str(image)):
        proc = breaking(against)
        assert proc.returncode != 0 and 'field "20" with name "service_ms"' in proc.stdout, proc.stdout
    contract.write_text(original.replace("uint32 queue_capacity = 8;", "uint64 queue_capacity = 8;"))
    assert "changed type" in breaking("HEAD").stdout
    # No history to compare with: skipped, loudly, not failed.
    shutil.rmtree(repo / ".git")
    alone = {**env, "GIT_CEILING_DIRECTORIES": str(tmp_path)}  # no repository above it either
    command = [sys.executable, "protos/breaking.py"]
    skipped = subprocess.run(command, cwd=repo, env=alone, capture_output=True, text=True)
    assert skipped.returncode == 0 and "SKIPPED" in skipped.stdout
