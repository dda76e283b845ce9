"""MeshClient retries a call cut mid-flight only where the contract declares the method side-effect free."""

from __future__ import annotations

import pytest
from ocrmesh.auth.v1 import auth_pb2  # noqa: F401  (puts the auth contract in the descriptor pool)
from ocrmesh.ocr.v1 import ocr_pb2  # noqa: F401  (the OCR contract)

from mesh.mesh_client import declared_idempotent


@pytest.mark.parametrize(
    "method",
    [
        "/ocrmesh.ocr.v1.OcrService/Recognize",
        "/ocrmesh.ocr.v1.OcrService/RecognizeStream",
        "/ocrmesh.ocr.v1.OcrService/RecognizeBatch",
        "/ocrmesh.ocr.v1.OcrService/GetInfo",
        "/ocrmesh.auth.v1.AuthService/WhoAmI",
        "/ocrmesh.auth.v1.AuthService/GetJwks",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_methods_declared_without_side_effects_may_run_twice(method: str) -> None:
    assert declared_idempotent(method)


@pytest.mark.parametrize(
    "method",
    [
        "/ocrmesh.auth.v1.AuthService/Register",
        "/ocrmesh.auth.v1.AuthService/Login",
        "/ocrmesh.auth.v1.AuthService/Refresh",
        "/ocrmesh.auth.v1.AuthService/Logout",
        "/ocrmesh.ocr.v1.OcrService/NoSuchMethod",  # unknown to the pool: not safe
        "/some.other.v1.Service/Recognize",
        "not a method path",
    ],
)
def test_methods_that_change_state_or_are_unknown_are_not_retried_once_sent(method: str) -> None:
    assert not declared_idempotent(method)
