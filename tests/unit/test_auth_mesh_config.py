"""Mesh settings of auth and OCR: etcd, registration, --require-auth and the token claims expected."""

from __future__ import annotations

import argparse

import pytest

from auth_svc.config import AuthConfig
from mesh.config import ConfigError, add_arguments, load
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from ocr_svc.config import OcrConfig


def parse(cls: type, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return parser.parse_args(list(argv))


def test_auth_reads_etcd_and_registration_settings() -> None:
    config = load(AuthConfig, parse(AuthConfig), environ={"OCRMESH_ETCD": "10.0.0.1:2379"})
    assert config.etcd == "10.0.0.1:2379" and config.lease_ttl_s == 5 and config.drain_linger_s == 1.0
    flags = parse(AuthConfig, "--etcd", "e:1", "--advertise", "auth-0.auth:50052", "--lease-ttl-s", "3")
    config = load(AuthConfig, flags, environ={"OCRMESH_ETCD": "ignored:2379"})
    assert (config.etcd, config.advertise, config.lease_ttl_s) == ("e:1", "auth-0.auth:50052", 3)
    assert load(AuthConfig, parse(AuthConfig), environ={}).etcd == ""
    with pytest.raises(ConfigError, match="lease-ttl-s"):
        load(AuthConfig, parse(AuthConfig, "--lease-ttl-s", "0"), environ={})


def test_ocr_require_auth_flag_env_and_defaults_match_the_auth_service() -> None:
    plain = load(OcrConfig, parse(OcrConfig), environ={})
    assert plain.require_auth is False
    assert (plain.auth_issuer, plain.auth_audience) == (AuthConfig().issuer, AuthConfig().audience)
    assert (plain.auth_issuer, plain.auth_audience) == (DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    on = load(OcrConfig, parse(OcrConfig, "--require-auth", "--etcd", "e:1"), environ={})
    assert on.require_auth is True
    env = {"OCRMESH_OCR_REQUIRE_AUTH": "true", "OCRMESH_ETCD": "e:1"}
    assert load(OcrConfig, parse(OcrConfig), environ=env).require_auth is True
    assert load(OcrConfig, parse(OcrConfig, "--no-require-auth"), environ=env).require_auth is False
    with pytest.raises(ConfigError, match="--require-auth needs --etcd"):
        load(OcrConfig, parse(OcrConfig, "--require-auth"), environ={})
