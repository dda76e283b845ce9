"""Instance records and the etcd key layout of the service registry (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROOT = "/ocrmesh/v1/services/"
"""Every registration lives under this prefix: ROOT + <service> + "/" + <instance-id>."""

_KNOWN = ("address", "version", "device", "slots", "zone", "weight", "started_at")


class RecordError(ValueError):
    """A key or value in the registry does not follow the layout; the message says why."""


_NAME = re.compile(r"[^/\s]+")


def check_name(kind: str, name: str) -> str:
    """`name` if it can be one segment of a key (service, instance), else RecordError saying why."""
    # One regex call, not a generator over the characters: every watcher checks every name of
    # every event it applies (2,000 endpoints x 200 watchers in the control-plane benchmark).
    if not _NAME.fullmatch(name) or not name.isprintable():
        raise RecordError(f"bad {kind} name {name!r}: non-empty, printable, no '/' or spaces")
    return name


def services_prefix() -> str:
    """The prefix that holds every service: `/ocrmesh/v1/services/`."""
    return ROOT


def service_prefix(service: str) -> str:
    """The prefix that holds one service's instances, with its trailing slash."""
    return f"{ROOT}{check_name('service', service)}/"


def instance_key(service: str, instance_id: str) -> str:
    """`/ocrmesh/v1/services/<service>/<instance-id>`."""
    return service_prefix(service) + check_name("instance", instance_id)


def parse_key(key: str | bytes) -> tuple[str, str]:
    """(service, instance id) of a registry key; RecordError when it is not one."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if not text.startswith(ROOT):
        raise RecordError(f"key {text!r} is not under {ROOT}")
    parts = text[len(ROOT) :].split("/")
    if len(parts) != 2:
        raise RecordError(f"key {text!r} is not {ROOT}<service>/<instance-id>")
    service, instance_id = parts
    return check_name("service", service), check_name("instance", instance_id)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecordError(f"{name}: expected an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RecordError(f"{name}: expected an integer, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise RecordError(f"{name}: expected an integer, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecordError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RecordError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RecordError(f"{name}: expected a finite number, got {value!r}")
    return number


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{name}: expected a string, got {value!r}")
    return value


@dataclass(frozen=True)
class Instance:
    """One registered instance: where it listens and what it offers.

    `service` and `id` come from the key; the other fields are the JSON value. Unknown value
    fields are kept in `extra` and written back, so newer writers and older readers coexist.
    """

    service: str
    id: str
    address: str
    version: str = ""
    device: str = ""
    slots: int = 1
    zone: str = ""
    weight: int = 100
    started_at: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_name("service", self.service)
        check_name("instance", self.id)
        if not self.address:
            raise RecordError(f"instance {self.service}/{self.id}: address is empty")
        if self.slots < 0 or self.weight < 0:
            raise RecordError(f"instance {self.service}/{self.id}: slots and weight must be >= 0")
        clash = sorted(set(self.extra) & {*_KNOWN, "service", "id"})
        if clash:
            raise RecordError(f"instance {self.service}/{self.id}: extra repeats {clash}")

    @property
    def key(self) -> str:
        return instance_key(self.service, self.id)

    def to_dict(self) -> dict[str, Any]:
        """The value as a dict: the known fields, then `extra`."""
        value: dict[str, Any] = {name: getattr(self, name) for name in _KNOWN}
        value.update(self.extra)
        return value

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, value: str | bytes, *, service: str, id: str) -> Instance:
        """Parse a registry value; unknown fields go to `extra`, missing ones take defaults."""
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"value of {service}/{id} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RecordError(f"value of {service}/{id} is not a JSON object")
        return cls.from_dict(data, service=service, id=id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, service: str, id: str) -> Instance:
        where = f"{service}/{id}"
        known: dict[str, Any] = {}
        if "address" not in data:
            raise RecordError(f"value of {where} has no address")
        known["address"] = _as_str(f"{where}.address", data["address"])
        for name in ("version", "device", "zone"):
            if data.get(name) is not None:
                known[name] = _as_str(f"{where}.{name}", data[name])
        for name in ("slots", "weight"):
            if data.get(name) is not None:
                known[name] = _as_int(f"{where}.{name}", data[name])
        if data.get("started_at") is not None:
            known["started_at"] = _as_float(f"{where}.started_at", data["started_at"])
        extra = {k: v for k, v in data.items() if k not in _KNOWN and k not in ("service", "id")}
        return cls(service=service, id=id, extra=extra, **known)

    @classmethod
    def from_kv(cls, key: str | bytes, value: str | bytes) -> Instance:
        """Build an instance from an etcd key and value."""
        service, instance_id = parse_key(key)
        return cls.from_json(value, service=service, id=instance_id)

    def replace(self, **changes: Any) -> Instance:
        """A copy with some fields changed (e.g. weight), for `Registration.update`."""
        return dataclasses.replace(self, **changes)
