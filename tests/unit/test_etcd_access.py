"""etcd's access policy (mesh/etcd_access.py): what it grants, how it becomes etcd permissions, and
the README's table of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from aetcd import rpc

from etcd.auth_setup import role_permissions, user_roles
from etcd.launcher import EtcdConfig, EtcdError, EtcdProcess
from mesh.config import ConfigError
from mesh.etcd_access import ADMIN, POLICY, ROOT_PREFIX, may, permissions
from mesh.jwks_source import JWKS_KEY
from mesh.live_config import config_key
from mesh.load_board import load_prefix
from mesh.registry import instance_key
from mesh.session_revocations import REVOKED_SESSIONS_KEY
from mesh.spiffe_id import SERVICES
from mesh.xds_client_records import client_key

ROOT = Path(__file__).resolve().parents[2]


def test_each_service_writes_only_its_own_keys() -> None:
    assert may("ocr", instance_key("ocr", "a"), write=True)
    assert may("ocr", load_prefix("ocr") + "a", write=True)
    assert not may("ocr", instance_key("auth", "a"), write=True)
    assert not may("ocr", load_prefix("ocrx") + "a")  # a prefix ends at its '/'
    assert not may("ocr", JWKS_KEY, write=True) and may("ocr", JWKS_KEY)
    assert not may("ocr", config_key("ocr"), write=True) and may("ocr", config_key("ocr"))
    assert not may("ocr", config_key("auth"))
    assert may("auth", JWKS_KEY, write=True) and may("auth", REVOKED_SESSIONS_KEY, write=True)
    assert not may("auth", instance_key("auth", "a")) and may("auth", instance_key("auth", "a"), write=True)
    for reader in ("gateway", "xds", "bff", "cli"):
        assert may(reader, instance_key("ocr", "a")) and not may(reader, instance_key("ocr", "a"), write=True)
    assert may("gateway", client_key("n"), write=True) and not may("bff", client_key("n"), write=True)
    assert not may("etcd", JWKS_KEY) and not may("nobody", JWKS_KEY)
    assert may(ADMIN, config_key("ocr"), write=True)
    assert set(POLICY) | {ADMIN} <= set(SERVICES)
    assert all(key.startswith(ROOT_PREFIX) for role in POLICY for key in permissions(role))


def test_grants_become_etcd_permissions() -> None:
    perms = role_permissions("ocr")
    assert (rpc.Permission.READWRITE, b"/ocrmesh/v1/services/ocr/", b"/ocrmesh/v1/services/ocr0") in perms
    assert (rpc.Permission.READ, JWKS_KEY.encode(), b"") in perms
    assert (rpc.Permission.WRITE, b"/ocrmesh/v1/services/auth/", b"/ocrmesh/v1/services/auth0") in (
        role_permissions("auth")
    )
    assert user_roles()[ADMIN] == "root" and user_roles()["root"] == "root"
    assert user_roles()["ocr"] == "ocr"


def _row(role: str) -> str:
    def short(key: str) -> str:
        return f"`{key.removeprefix(ROOT_PREFIX)}`"

    granted = permissions(role)
    if list(granted) == [ROOT_PREFIX]:
        reads = f"everything under `{ROOT_PREFIX}`"
    else:
        reads = ", ".join(short(key) for key, (read, _) in granted.items() if read) or "-"
    writes = ", ".join(short(key) for key, (_, write) in granted.items() if write) or "-"
    return f"| `{role}` | {reads} | {writes} |"


def test_the_readme_table_is_the_policy() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### etcd access", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    expected = [_row(role) for role in POLICY]
    assert rows[: len(expected)] == expected, "README's etcd access table and mesh/etcd_access.POLICY differ"
    assert rows[len(expected) :] == [
        "| `admin` | everything (etcd's `root` role: also users, roles, maintenance) | everything |"
    ]


def test_etcd_with_an_identity_serves_tls_only_and_requires_client_certificates(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "data", identity_dir=tmp_path / "id", admin_identity_dir=tmp_path / "admin")
    command = etcd.command()
    assert etcd.url.startswith("https://") and etcd.peer_url.startswith("https://")
    for flag in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert flag in command
    assert command[command.index("--trusted-ca-file") + 1] == str((tmp_path / "id" / "ca.pem").resolve())
    assert command[command.index("--peer-cert-allowed-cn") + 1] == "etcd"
    plain = EtcdProcess(tmp_path / "data").command()
    assert "--client-cert-auth" not in plain and not any(arg.startswith("https") for arg in plain)
    with pytest.raises(EtcdError, match="admin identity needs"):
        EtcdProcess(tmp_path / "data", admin_identity_dir=tmp_path / "admin")
    with pytest.raises(ConfigError, match="needs identity_dir"):
        EtcdConfig(admin_identity_dir=tmp_path / "admin").validate()
