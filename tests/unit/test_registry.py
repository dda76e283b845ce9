"""Unit tests for the registry key layout and instance records."""

from __future__ import annotations

import json

import pytest

from mesh.etcd_client import parse_endpoints
from mesh.registry import (
    Instance,
    RecordError,
    instance_key,
    parse_key,
    service_prefix,
    services_prefix,
)


def test_key_layout() -> None:
    assert services_prefix() == "/ocrmesh/v1/services/"
    assert service_prefix("ocr") == "/ocrmesh/v1/services/ocr/"
    assert instance_key("ocr", "host-1.42") == "/ocrmesh/v1/services/ocr/host-1.42"
    assert parse_key("/ocrmesh/v1/services/ocr/host-1.42") == ("ocr", "host-1.42")
    assert parse_key(b"/ocrmesh/v1/services/auth/a") == ("auth", "a")


@pytest.mark.parametrize(
    "key",
    [
        "/ocrmesh/v1/services/ocr",
        "/ocrmesh/v1/services/ocr/",
        "/ocrmesh/v1/services//x",
        "/ocrmesh/v1/services/ocr/a/b",
        "/ocrmesh/v2/services/ocr/a",
        "ocr/a",
        "/ocrmesh/v1/services/ocr/a b",
    ],
)
def test_parse_key_rejects_foreign_keys(key: str) -> None:
    with pytest.raises(RecordError):
        parse_key(key)


@pytest.mark.parametrize("name", ["", "a/b", " a", "a\n"])
def test_names_are_checked(name: str) -> None:
    with pytest.raises(RecordError):
        instance_key("ocr", name)
    with pytest.raises(RecordError):
        service_prefix(name)


def test_round_trip_keeps_every_field() -> None:
    inst = Instance(
        service="ocr",
        id="i-1",
        address="10.0.0.5:50051",
        version="0.1.0",
        device="cuda",
        slots=4,
        zone="eu-1a",
        weight=50,
        started_at=1700000000.25,
        extra={"provider": "CUDAExecutionProvider", "health": "serving"},
    )
    value = json.loads(inst.to_json())
    assert value == {
        "address": "10.0.0.5:50051",
        "version": "0.1.0",
        "device": "cuda",
        "slots": 4,
        "zone": "eu-1a",
        "weight": 50,
        "started_at": 1700000000.25,
        "provider": "CUDAExecutionProvider",
        "health": "serving",
    }
    assert Instance.from_kv(inst.key, inst.to_json().encode()) == inst
    assert inst.key == "/ocrmesh/v1/services/ocr/i-1"


def test_unknown_fields_are_kept_and_missing_fields_default() -> None:
    inst = Instance.from_json(
        '{"address": "h:1", "future_field": [1, 2], "weight": "7"}', service="ocr", id="a"
    )
    assert inst.address == "h:1"
    assert inst.weight == 7
    assert inst.slots == 1 and inst.device == "" and inst.started_at == 0.0
    assert inst.extra == {"future_field": [1, 2]}
    assert json.loads(inst.to_json())["future_field"] == [1, 2]


def test_key_fields_in_the_value_do_not_override_the_key() -> None:
    inst = Instance.from_json('{"address": "h:1", "service": "x", "id": "y"}', service="ocr", id="a")
    assert (inst.service, inst.id, dict(inst.extra)) == ("ocr", "a", {})


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"{}",
        b'{"address": 5}',
        b'{"address": "h:1", "slots": "many"}',
        b'{"address": "h:1", "slots": 1.5}',
        b'{"address": "h:1", "weight": true}',
        b'{"address": "h:1", "weight": -1}',
        b'{"address": "h:1", "started_at": "yesterday"}',
        b'{"address": ""}',
    ],
)
def test_bad_values_raise_record_error(value: bytes) -> None:
    with pytest.raises(RecordError):
        Instance.from_json(value, service="ocr", id="a")


def test_replace_and_extra_clash() -> None:
    inst = Instance("ocr", "a", "h:1")
    assert inst.replace(weight=0).weight == 0
    with pytest.raises(RecordError):
        Instance("ocr", "a", "h:1", extra={"weight": 3})


def test_parse_endpoints() -> None:
    assert parse_endpoints("127.0.0.1:2379") == (("127.0.0.1", 2379),)
    assert parse_endpoints("http://a:1, b:2,") == (("a", 1), ("b", 2))
    assert parse_endpoints(["[::1]:2379"]) == (("::1", 2379),)
    for bad in ("", "nohost", "a:b", ":1"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)
