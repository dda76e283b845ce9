"""The README documents every key prefix ocrmesh writes in etcd (section "The registry's keys and values")."""

from __future__ import annotations

from pathlib import Path

from mesh import jwks_source, live_config, load_board, registry, session_revocations, xds_client_records

ROOT = Path(__file__).resolve().parents[2]


def test_every_etcd_key_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The registry's keys and values", 1)[1].split("\n### ", 1)[0]
    keys = {
        registry.ROOT: "<service>/<instance-id>",
        live_config.CONFIG_PREFIX: "<service>",
        jwks_source.JWKS_KEY: "",
        session_revocations.REVOKED_SESSIONS_KEY: "",
        load_board.LOAD_PREFIX: "<service>/<instance-id>",
        xds_client_records.PREFIX: "<node>",
    }
    missing = [key + tail for key, tail in keys.items() if f"`{key}{tail}`" not in section]
    assert missing == [], "document these keys, their writer, lease and value in the README"
