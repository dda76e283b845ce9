"""The contract's enums (Device, ImageFormat, WorkerState) for the instance's plain names."""

from __future__ import annotations

from collections.abc import Iterable

from ocrmesh.ocr.v1 import ocr_pb2


def _value(enum: object, prefix: str, name: str) -> int:
    """The number of `PREFIX_NAME` in `enum`, or 0 (UNSPECIFIED) for a name the contract lacks."""
    try:
        return int(enum.Value(f"{prefix}_{name.upper()}"))  # type: ignore[attr-defined]
    except ValueError:
        return 0


def device(name: str) -> ocr_pb2.Device.ValueType:
    """The value of a device name: "cpu" is DEVICE_CPU, "cuda" DEVICE_CUDA."""
    return _value(ocr_pb2.Device, "DEVICE", name)


def worker_state(name: str) -> ocr_pb2.WorkerState.ValueType:
    """The value of a worker state name: "idle" is WORKER_STATE_IDLE, and so on."""
    return _value(ocr_pb2.WorkerState, "WORKER_STATE", name)


def image_formats(names: Iterable[str]) -> list[ocr_pb2.ImageFormat.ValueType]:
    """Pillow's format names as ImageFormat values; names the contract lacks are left out."""
    values = [_value(ocr_pb2.ImageFormat, "IMAGE_FORMAT", name) for name in names]
    return [value for value in values if value]
