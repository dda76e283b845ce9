"""One error vocabulary: every reason the code sends is an `ocrmesh.rpc.v1.ErrorReason`, the README
says what a client should do for each, and a client built from protos/ and third_party/ alone (no
googleapis package) decodes every detail kind."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mesh import errors
from ocr_svc import admission
from ocr_svc.guardrails import Reason

ROOT = Path(__file__).resolve().parents[2]
# The modules that build error statuses (ErrorInfo reasons, field violation reasons).
SENDERS = [
    "auth_svc/accounts.py",
    "auth_svc/passwords.py",
    "auth_svc/usernames.py",
    "auth_svc/tokens.py",
    "mesh/errors.py",
    "mesh/handler_wrapping.py",
    "mesh/jwks_source.py",
    "mesh/token_verify.py",
    "mesh/picking.py",
    "ocr_svc/admission.py",
    "ocr_svc/recognizer.py",
    "ocr_svc/servicer.py",
]
CODE_LIKE = re.compile(r"[A-Z][A-Z0-9_]{3,}\Z")
# Constants in those modules that are no reason: algorithm names and prefixes.
NOT_REASONS = {"ES256", "NFKC", "IMAGE_", "ERROR_REASON_", "ERROR_REASON_UNSPECIFIED"}


def _constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE_LIKE.match(node.value)
    }


def test_every_reason_the_code_sends_is_in_the_contract() -> None:
    sent = set().union(*(_constants(ROOT / name) for name in SENDERS)) - NOT_REASONS
    sent |= {f"IMAGE_{reason.value}" for reason in Reason}  # recognizer prefixes the guardrails' codes
    sent |= {
        admission.DEADLINE_UNREACHABLE,
        admission.QUEUE_WAIT_TOO_LONG,
        admission.QUEUE_MEMORY_FULL,
        admission.QUEUE_FULL,
    }
    assert len(sent) > 30  # the scan found the vocabulary
    assert sorted(sent - errors.REASONS) == [], "add these to protos/ocrmesh/rpc/v1/error_reason.proto"


def test_the_readme_says_what_to_do_for_every_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Error model", 1)[1].split("\n## ", 1)[0]
    missing = [reason for reason in sorted(errors.REASONS) if f"`{reason}`" not in section]
    assert missing == [], "README's error model section lacks these reasons"


def test_a_client_built_from_the_contracts_alone_decodes_every_detail(tmp_path: Path) -> None:
    out = tmp_path / "contracts.binpb"
    well_known = resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    vendored = sorted(
        str(p.relative_to(ROOT / "third_party")) for p in (ROOT / "third_party").rglob("*.proto")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{ROOT / 'third_party'}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *protos,
            *vendored,
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)

    def message(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    sent = [
        errors.bad_request(
            "bad", [errors.FieldViolation("image", "empty", "IMAGE_EMPTY")], reason="IMAGE_EMPTY"
        ),
        errors.retry_later("busy", 1.5, reason="QUEUE_FULL", metadata={"predicted_wait_ms": "1500"}),
        errors.simple(grpc.StatusCode.UNAUTHENTICATED, "no token", reason="TOKEN_MISSING"),
    ]
    decoded: dict[str, Any] = {}
    for error in sent:
        status = message("google.rpc.Status").FromString(error.status.SerializeToString())
        for detail in status.details:
            kind = detail.type_url.rsplit("/", 1)[1]
            decoded.setdefault(kind, message(kind).FromString(detail.value))
    assert set(decoded) == {"google.rpc.BadRequest", "google.rpc.ErrorInfo", "google.rpc.RetryInfo"}
    bad, info = decoded["google.rpc.BadRequest"], decoded["google.rpc.ErrorInfo"]
    assert bad.field_violations[0].reason == "IMAGE_EMPTY"
    assert info.domain == errors.DOMAIN and info.reason == "IMAGE_EMPTY"
    assert decoded["google.rpc.RetryInfo"].retry_delay.nanos == 500_000_000
    reasons = pool.FindEnumTypeByName("ocrmesh.rpc.v1.ErrorReason")
    assert {v.name.removeprefix(errors.REASON_PREFIX) for v in reasons.values} - {
        "UNSPECIFIED"
    } == errors.REASONS
