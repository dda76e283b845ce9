"""A second-language client: Node.js (@grpc/grpc-js, @grpc/proto-loader, protobufjs) built from
protos/ and third_party/ alone calls every RPC of both services on a real mesh (etcd, auth, OCR
with tokens, Envoy gateway), decodes every error detail kind, and checks health, reflection v1 and
v1alpha and gRPC-Web through Envoy.

Needs node and npm (`make test` installs Debian's nodejs and npm as root); the packages come from
the npm registry into tests/interop/node_modules (package-lock.json pins them). Without node, npm
or the registry the test is skipped with a loud note.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from etcd.launcher import EtcdProcess
from tests.corpus import CORPUS
from tests.integration.auth_fixtures import running_auth
from tests.integration.etcd_fixtures import etcd_fixture as etcd_fixture
from tests.integration.etcd_fixtures import eventually
from tests.integration.gateway_fixtures import cluster_hosts, running_gateway
from tests.integration.ocr_fixtures import running_ocr

HERE = Path(__file__).resolve().parent
PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
# Error details the client must decode, and where each comes from.
DETAIL_KINDS = {"google.rpc.BadRequest", "google.rpc.ErrorInfo", "google.rpc.RetryInfo"}


def _skip(why: str) -> None:
    pytest.skip(f"!!! the Node.js interop client was NOT run: {why} !!!")


def node_packages() -> str:
    """The node binary, with tests/interop/node_modules installed from package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _skip("node/npm are missing (apt-get install nodejs npm; `make test` does it as root)")
    assert node is not None and npm is not None
    lock, installed = HERE / "package-lock.json", HERE / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        try:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            _skip("npm ci took over 5 minutes (is the npm registry reachable?)")
        if proc.returncode != 0:
            _skip(f"npm ci failed (is the npm registry reachable?): {proc.stderr.strip()[-400:]}")
    return node


async def _run_client(node: str, config: dict[str, str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "client.mjs"),
        json.dumps(config),
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, err.decode()
    checks: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])["checks"]
    return checks


async def test_a_node_client_uses_every_rpc_and_decodes_every_error_detail(
    tmp_path: Path, etcd: EtcdProcess
) -> None:
    node = node_packages()
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    # One worker, one waiting call at most, and each job 0.5 s longer: four calls at once overflow it.
    ocr_args = ("--workers", "1", "--etcd", etcd.endpoint, "--require-auth", "--queue-depth", "1")
    with (
        running_auth(tmp_path / "auth", "--etcd", etcd.endpoint, "--db", db) as auth,
        running_ocr(tmp_path / "ocr", *ocr_args, "--debug-delay-ms", "500") as ocr,
        running_gateway(tmp_path / "gateway", etcd.endpoint) as gateway,
    ):

        async def routed() -> bool:
            hosts = await asyncio.to_thread(cluster_hosts, gateway.admin, "ocr")
            return ocr.address in hosts

        await eventually(routed, 30)
        user = f"node-{uuid.uuid4().hex[:8]}"
        config = {
            "auth": auth.address,
            "ocr": ocr.address,
            "gateway": gateway.address,
            "image": str(PHOTO),
            "user": user,
        }
        checks = await _run_client(node, config)

    failed = {name: c["error"] for name, c in checks.items() if not c["ok"]}
    assert failed == {}, failed
    c = checks
    # Health and both reflection versions.
    assert c["health_auth"]["status"] == c["health_ocr"]["status"] == "SERVING"
    for version in ("v1", "v1alpha"):
        services = set(c[f"reflection_{version}"]["services"])
        assert {"ocrmesh.ocr.v1.OcrService", "grpc.health.v1.Health"} <= services, version
        assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services
        assert "ocrmesh/ocr/v1/ocr.proto" in c[f"reflection_{version}"]["files"]
    # AuthService: every method, and its errors with their details.
    assert c["auth_register"]["username"] == user and c["auth_login"]["token_type"] == "Bearer"
    assert c["auth_whoami"]["username"] == user and c["auth_refresh"]["rotated"] is True
    assert c["auth_get_jwks"]["alg"] == "ES256" and c["auth_logout"]["revoked_sessions"] == 1
    taken = c["auth_register_taken"]
    assert (taken["code"], taken["reason"]) == ("ALREADY_EXISTS", "USERNAME_TAKEN")
    assert taken["domain"] == "ocrmesh.dev"
    invalid = c["auth_register_invalid"]
    assert invalid["code"] == "INVALID_ARGUMENT" and invalid["reason"] == "BAD_REQUEST"
    violations = invalid["details"]["google.rpc.BadRequest"]["field_violations"]
    assert {v["field"] for v in violations} == {"username", "password"}
    assert {v["reason"] for v in violations} == {"USERNAME_TOO_SHORT", "PASSWORD_TOO_SHORT"}
    assert c["auth_login_wrong"]["reason"] == "BAD_CREDENTIALS"
    assert c["auth_whoami_no_token"]["reason"] == "TOKEN_MISSING"
    # OcrService: every method, and its errors with their details.
    for name in ("ocr_recognize", "ocr_recognize_stream"):
        assert "正品促销" in c[name]["text"], name
    assert c["ocr_recognize"]["device_kind"] == "DEVICE_CPU" and c["ocr_recognize"]["width"] == 323
    bad = c["ocr_recognize_not_an_image"]
    assert (bad["code"], bad["reason"]) == ("INVALID_ARGUMENT", "IMAGE_NOT_AN_IMAGE")
    [violation] = bad["details"]["google.rpc.BadRequest"]["field_violations"]
    assert violation["field"] == "image" and violation["reason"] == "IMAGE_NOT_AN_IMAGE"
    assert c["ocr_recognize_no_token"]["code"] == "UNAUTHENTICATED"
    assert c["ocr_recognize_no_token"]["reason"] == "TOKEN_MISSING"
    items = c["ocr_recognize_batch"]["items"]
    assert items["photo"]["code"] == 0 and "正品促销" in items["photo"]["text"]
    assert items["junk"]["code"] == 3 and items["junk"]["reason"] == "IMAGE_NOT_AN_IMAGE"
    assert items["junk"]["violations"][0]["field"] == "image"
    info = c["ocr_get_info"]
    assert info["workers"] == 1 and info["device_kind"] == "DEVICE_CPU"
    assert "IMAGE_FORMAT_JPEG" in info["image_formats"]
    busy = c["ocr_busy"]
    assert busy["answered"] >= 1 and busy["refused"], busy
    for refusal in busy["refused"]:
        assert refusal["code"] == "RESOURCE_EXHAUSTED", refusal
        assert refusal["reason"] in {"QUEUE_FULL", "DEADLINE_UNREACHABLE", "QUEUE_WAIT_TOO_LONG"}, refusal
        assert "google.rpc.RetryInfo" in refusal["details"], refusal
        assert "predicted_wait_ms" in refusal["details"]["google.rpc.ErrorInfo"]["metadata"]
    # Every error above names a reason that the contract's ErrorReason enum declares.
    errors_seen = [v for v in c.values() if "reason_in_contract" in v] + busy["refused"]
    assert all(e["reason_in_contract"] for e in errors_seen), errors_seen
    kinds = set().union(*(e["details"] for e in errors_seen))
    assert kinds >= DETAIL_KINDS, kinds
    # gRPC-Web through Envoy (the browser's protocol): an answer with a token.
    web = c["grpc_web_get_info"]
    assert web["http"] == 200 and web["trailers"]["grpc-status"] == "0" and web["instance_id"], web
    # Without a token Envoy refuses it as gRPC-Web clients understand: HTTP 200, trailers-only, with
    # grpc-status UNAUTHENTICATED and why (it was HTTP 401, "Http response at 400 or 500 level").
    refused = c["grpc_web_no_token"]
    assert refused["http"] == 200 and refused["messages"] == 0, refused
    assert refused["trailers"]["grpc-status"] == "16", refused
    assert "Jwt_is_missing" in refused["trailers"]["grpc-message"], refused
