"""gRPC statuses with rich details (BadRequest, RetryInfo, ErrorInfo), built and read here.

Every reason, in ErrorInfo and in BadRequest field violations alike, is a value of the contract's
`ocrmesh.rpc.v1.ErrorReason` (protos/ocrmesh/rpc/v1/error_reason.proto) without its prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from ocrmesh.rpc.v1 import error_reason_pb2

DOMAIN = "ocrmesh.dev"
REASON_PREFIX = "ERROR_REASON_"
REASONS = frozenset(
    name.removeprefix(REASON_PREFIX)
    for name in error_reason_pb2.ErrorReason.keys()
    if name != "ERROR_REASON_UNSPECIFIED"
)
"""Every reason string a service may send (`ErrorReason` value names without the prefix)."""


def reason_value(reason: str) -> int:
    """The `ErrorReason` number of a reason string (0, UNSPECIFIED, for one this build does not know)."""
    try:
        return int(error_reason_pb2.ErrorReason.Value(REASON_PREFIX + reason))
    except ValueError:
        return 0


@dataclass(frozen=True)
class FieldViolation:
    """One thing wrong with a request field."""

    field: str
    description: str
    reason: str = ""


class RichError(Exception):
    """An error that knows its gRPC status and details; servicers raise it, `abort` sends it."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @property
    def code(self) -> grpc.StatusCode:
        return code_from_int(self.status.code)

    @property
    def message(self) -> str:
        return str(self.status.message)


def code_from_int(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def _pack(*details: object) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        if detail is None:
            continue
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


def _status(code: grpc.StatusCode, message: str, *details: object) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message, details=_pack(*details))


def _error_info(reason: str, metadata: dict[str, str] | None) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})


def bad_request(message: str, violations: Iterable[FieldViolation], reason: str = "BAD_REQUEST") -> RichError:
    """INVALID_ARGUMENT with google.rpc.BadRequest listing what is wrong."""
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=v.description, reason=v.reason
            )
            for v in violations
        ]
    )
    return RichError(_status(grpc.StatusCode.INVALID_ARGUMENT, message, detail, _error_info(reason, None)))


def retry_later(
    message: str, retry_after_s: float, reason: str = "OVERLOADED", metadata: dict[str, str] | None = None
) -> RichError:
    """RESOURCE_EXHAUSTED with google.rpc.RetryInfo saying when to come back."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(retry_after_s * 1e9)))
    detail = error_details_pb2.RetryInfo(retry_delay=delay)
    info = _error_info(reason, metadata)
    return RichError(_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, detail, info))


def unavailable(message: str, reason: str = "UNAVAILABLE", retry_after_s: float | None = None) -> RichError:
    """UNAVAILABLE, optionally with a retry hint; safe to retry on another instance."""
    retry = None
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_after_s * 1e9)))
        retry = error_details_pb2.RetryInfo(retry_delay=delay)
    return RichError(_status(grpc.StatusCode.UNAVAILABLE, message, retry, _error_info(reason, None)))


def simple(code: grpc.StatusCode, message: str, reason: str = "", **metadata: str) -> RichError:
    """Any other status, with an ErrorInfo reason when given."""
    info = _error_info(reason, metadata) if reason else None
    return RichError(_status(code, message, info))


def to_grpc_status(error: RichError) -> grpc.Status:
    """The form `context.abort_with_status` takes (details travel in grpc-status-details-bin)."""
    return rpc_status.to_status(error.status)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: RichError) -> None:
    """Send `error` with its details and end the RPC."""
    await context.abort_with_status(to_grpc_status(error))


def from_call_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status:
    """The rich status of a failed call; a plain status when the server sent no details."""
    status = rpc_status.from_call(error)
    if status is not None:
        return status
    code = error.code()
    return status_pb2.Status(code=code.value[0], message=error.details() or "")


def retry_delay_s(status: status_pb2.Status) -> float | None:
    """The server's RetryInfo delay in seconds, if it sent one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def field_violations(status: status_pb2.Status) -> list[FieldViolation]:
    """The BadRequest field violations in a status (empty when there are none)."""
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations)
    return found


def error_reason(status: status_pb2.Status) -> str:
    """The ErrorInfo reason in a status, or ''."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def error_metadata(status: status_pb2.Status) -> dict[str, str]:
    """The ErrorInfo metadata in a status (empty when there is none)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    return {}


def metadata_seconds(metadata: dict[str, str], key: str) -> float | None:
    """A millisecond figure from ErrorInfo metadata (e.g. "service_ms") in seconds, if present and valid."""
    try:
        return max(0.0, float(metadata[key]) / 1000)
    except (KeyError, ValueError):
        return None


OK_CODE = code_pb2.OK
