"""AuthConfig: defaults, flags and environment, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from auth_svc.config import DEFAULT_DB_URL, AuthConfig
from auth_svc.server import add_arguments
from mesh.config import ConfigError, load


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    config = load(AuthConfig, parse(), environ={})
    assert config.host == "127.0.0.1" and config.bcrypt_cost == 12
    assert config.db_url == DEFAULT_DB_URL and config.access_ttl_s == 900


def test_flags_beat_environment() -> None:
    env = {"OCRMESH_AUTH_BCRYPT_COST": "10", "OCRMESH_AUTH_DB_URL": "sqlite+aiosqlite:///x.db"}
    config = load(AuthConfig, parse("--bcrypt-cost", "11", "--port", "0"), environ=env)
    assert config.bcrypt_cost == 11 and config.port == 0
    assert config.db_url == "sqlite+aiosqlite:///x.db"
    assert load(AuthConfig, parse("--db", "postgresql+asyncpg://h/db"), environ={}).db_url == (
        "postgresql+asyncpg://h/db"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("--bcrypt-cost", "3"),
        ("--bcrypt-cost", "32"),
        ("--access-ttl-s", "0"),
        ("--db-schema", "x; drop"),
        ("--throttle-user-failures", "0"),
        ("--key-rotation-s", "100"),
        ("--key-publish-s", "10", "--key-check-s", "30"),
    ],
)
def test_invalid(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        load(AuthConfig, parse(*argv), environ={})


def test_passphrase_file(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"hunter2 hunter2\n")
    assert AuthConfig(key_passphrase_file=path).key_passphrase() == b"hunter2 hunter2"
    with pytest.raises(ConfigError, match="cannot read"):
        AuthConfig(key_passphrase_file=tmp_path / "missing").key_passphrase()
