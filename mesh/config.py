"""Frozen service configs: CLI flags first, then OCRMESH_* environment variables, then defaults.

A config is a `@dataclass(frozen=True)` whose fields carry `help` (and optionally `env`, `flag`,
`choices`) in their metadata, built with `setting(...)`. `add_arguments` turns the fields into
argparse flags whose default is None, so `load` can tell "not given" from "given": a flag beats the
environment, which beats the field default. Errors name the flag and the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mesh import mesh_transport

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    env: str | None = None,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with the metadata `add_arguments` and `load` use."""
    meta = {"help": help, "env": env, "flag": flag, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def env_prefix(cls: type) -> str:
    return str(getattr(cls, "ENV_PREFIX", "OCRMESH_"))


def env_name(cls: type, field: dataclasses.Field[Any]) -> str:
    """The environment variable a field reads, e.g. OCRMESH_OCR_WORKERS."""
    explicit = field.metadata.get("env")
    return str(explicit) if explicit else env_prefix(cls) + field.name.upper()


def flag_name(field: dataclasses.Field[Any]) -> str:
    explicit = field.metadata.get("flag")
    return str(explicit) if explicit else "--" + field.name.replace("_", "-")


def env_names(cls: type) -> list[str]:
    """Every environment variable a config class reads (used to cross-check deploy files)."""
    return [env_name(cls, f) for f in dataclasses.fields(cls)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional) for `X | None` and Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _cast(raw: str, tp: Any, where: str) -> Any:
    base, optional = _base_type(tp)
    text = raw.strip()
    if optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if base is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected true/false")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is Path:
            return Path(text).expanduser()
        if typing.get_origin(base) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot use {raw!r} ({exc})") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per config field, each defaulting to None ("not given")."""
    hints = _field_types(cls)
    for field in dataclasses.fields(cls):
        tp, _ = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f" (env {env_name(cls, field)}; default {default!r})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = field.name.upper()
            kwargs["type"] = str
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(flag_name(field), help=str(field.metadata.get("help", "")) + shown, **kwargs)


def load(
    cls: type[T],
    given: Mapping[str, Any] | argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build `cls` from given values (flags), then the environment, then field defaults."""
    if isinstance(given, argparse.Namespace):
        given = vars(given)
    given = given or {}
    environ = os.environ if environ is None else environ
    hints = _field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.name
        var = env_name(cls, field)
        raw = given.get(name)
        if raw is not None:
            values[name] = _cast(raw, hints[name], flag_name(field)) if isinstance(raw, str) else raw
        elif var in environ:
            values[name] = _cast(environ[var], hints[name], var)
        choices = field.metadata.get("choices")
        if choices and name in values and values[name] not in choices:
            raise ConfigError(f"{flag_name(field)}/{var}: {values[name]!r} is not one of {choices}")
    try:
        config = cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def run_service(
    cls: type[T], ns: argparse.Namespace, prog: str, serve: Callable[[T], Coroutine[Any, Any, int]]
) -> int:
    """A serve command's `run(ns)`: load `cls` from flags and environment, then run `serve(config)`.

    An unusable setting ends the command with status 2 and "<prog>: <why>" on stderr. A command
    that took `mesh_transport.add_arguments` first takes on its mesh identity (or runs plaintext).
    """
    try:
        config = load(cls, ns)
        if hasattr(ns, "identity_dir"):
            mesh_transport.configure_from_args(ns, prog)
    except (ConfigError, mesh_transport.TransportError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))
