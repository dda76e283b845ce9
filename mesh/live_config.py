"""Central live configuration: settings under /ocrmesh/v1/config/<service>, validated, applied live.

The value is a JSON object of overrides, e.g. {"queue_depth": 8, "log_level": "debug"}. Each
instance polls its key (a bounded get every `interval` seconds) rather than watching it: one small
key does not need a watch, and polling needs no re-establishment after etcd is killed, frozen or
compacted. An update is validated as a whole; if any value is bad it is rejected and logged, and
the settings in force stay. Removing an override reverts that setting to the instance's own value.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.etcd_client import ClientFactory
from mesh.key_poller import poll_key
from mesh.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CONFIG_PREFIX = "/ocrmesh/v1/config/"
LOG_LEVELS = ("debug", "info", "warning", "error")


def config_key(service: str) -> str:
    return CONFIG_PREFIX + service


@dataclass(frozen=True)
class LiveSetting:
    """One setting that may change while an instance runs."""

    name: str
    kind: type  # int, float or str
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(value cast to kind, None) or (None, what is wrong)."""
        if self.kind is int and isinstance(value, bool):
            return None, f"{self.name}: expected an integer, got {value!r}"
        try:
            cast = self.kind(value)
        except (TypeError, ValueError):
            return None, f"{self.name}: expected {self.kind.__name__}, got {value!r}"
        if self.kind is int and isinstance(value, float) and value != int(value):
            return None, f"{self.name}: expected an integer, got {value!r}"
        if self.minimum is not None and cast < self.minimum:
            return None, f"{self.name}: must be at least {self.minimum:g}, got {cast!r}"
        if self.choices and cast not in self.choices:
            return None, f"{self.name}: must be one of {', '.join(self.choices)}, got {cast!r}"
        return cast, None


def validate(table: Mapping[str, LiveSetting], raw: Any) -> tuple[dict[str, Any], list[str]]:
    """Validated overrides and a list of problems; any problem means the update is rejected."""
    if not isinstance(raw, Mapping):
        return {}, [f"expected a JSON object of settings, got {type(raw).__name__}"]
    good: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in raw.items():
        setting = table.get(name)
        if setting is None:
            problems.append(f"{name}: not a live setting (known: {', '.join(sorted(table))})")
            continue
        cast, problem = setting.check(value)
        if problem:
            problems.append(problem)
        else:
            good[name] = cast
    return good, problems


def parse_assignments(table: Mapping[str, LiveSetting], pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs from the CLI, validated; raises ValueError listing every problem."""
    raw: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r}: expected NAME=VALUE")
        raw[name.strip()] = value.strip()
    good, problems = validate(table, raw)
    if problems:
        raise ValueError("; ".join(problems))
    return good


class LiveConfig:
    """Keeps an instance's live settings in step with its etcd key."""

    def __init__(
        self,
        endpoints: str,
        service: str,
        table: Mapping[str, LiveSetting],
        base: Mapping[str, Any],
        apply: Callable[[dict[str, Any]], None],
        *,
        interval: float = 0.5,
        call_timeout: float = 1.0,
    ) -> None:
        self.key = config_key(service)
        self.table = table
        self.base = dict(base)
        self.effective = dict(base)
        self._apply = apply
        self._factory = ClientFactory(endpoints, call_timeout)
        self.interval = interval
        self.call_timeout = call_timeout
        self._task: asyncio.Task[None] | None = None
        self.rejected = 0
        self.applied = 0
        self.last_error = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"live config {self.key}")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def consider(self, raw_value: bytes | None) -> bool:
        """Validate and apply one value of the key (None: deleted); True if settings changed."""
        if raw_value is None:
            overrides: dict[str, Any] = {}
        else:
            try:
                parsed = json.loads(raw_value)
            except ValueError as exc:
                return self._reject([f"not JSON: {exc}"])
            overrides, problems = validate(self.table, parsed)
            if problems:
                return self._reject(problems)
        effective = {**self.base, **overrides}
        if effective == self.effective:
            return False
        changed = {k: v for k, v in effective.items() if self.effective.get(k) != v}
        self._apply(effective)
        self.effective = effective
        self.applied += 1
        self.last_error = ""
        log.info("live settings applied", extra={"key": self.key, "changed": changed})
        return True

    def _reject(self, problems: list[str]) -> bool:
        self.rejected += 1
        self.last_error = "; ".join(problems)
        log.error(
            "live settings rejected; keeping the settings in force",
            extra={"key": self.key, "problems": problems},
        )
        return False

    async def _run(self) -> None:
        await poll_key(
            self._factory,
            self.key,
            interval=self.interval,
            call_timeout=self.call_timeout,
            on_change=self.consider,
            on_error=self._unreachable,
        )

    def _unreachable(self, exc: BaseException) -> None:
        # etcd away: keep the settings in force (poll_key tries again on a fresh client).
        log.debug("live settings unreadable", extra={"key": self.key, "error": repr(exc)})
