"""The auth service's frozen config: listen address, database, bcrypt, tokens, keys, throttle."""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mesh.config import ConfigError, setting
from mesh.jwks_source import DEFAULT_AUDIENCE, DEFAULT_ISSUER

DEFAULT_DB_URL = "sqlite+aiosqlite:///.ocrmesh/auth.db"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


@dataclass(frozen=True)
class AuthConfig:
    """Settings of one auth service instance (several may share one database)."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_AUTH_"

    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(50050, help="gRPC port (0 picks a free one)")
    instance_id: str = setting("", help="instance id in logs and the registry (default: random)")
    db_url: str = setting(
        DEFAULT_DB_URL,
        flag="--db",
        help="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB",
    )
    db_schema: str = setting("", help="PostgreSQL schema to use (search_path); empty: the default")
    db_wait_s: float = setting(30.0, help="at start, keep retrying an unreachable database this long")
    bcrypt_cost: int = setting(12, help="bcrypt work factor (4-31; each +1 doubles the time)")
    bcrypt_concurrency: int = setting(0, help="password hashes/checks run at once (0: one per core)")
    bcrypt_queue: int = setting(
        256, help="password checks allowed to wait for a slot; beyond, RESOURCE_EXHAUSTED"
    )
    access_ttl_s: float = setting(900.0, help="access token lifetime in seconds")
    refresh_ttl_s: float = setting(30 * 86400.0, help="refresh token lifetime in seconds")
    issuer: str = setting(DEFAULT_ISSUER, help="`iss` claim of access tokens")
    audience: str = setting(DEFAULT_AUDIENCE, help="`aud` claim of access tokens")
    key_rotation_s: float = setting(
        7 * 86400.0, help="make a new signing key when the newest is this old (0: never)"
    )
    key_publish_s: float = setting(
        120.0, help="a new key is in the JWKS this long before it signs (>= --key-check-s)"
    )
    key_check_s: float = setting(
        30.0, help="reload signing keys from the database (and rotate when due) this often"
    )
    key_passphrase_file: Path | None = setting(
        None, help="file holding a passphrase that encrypts private keys in the database"
    )
    throttle_user_failures: int = setting(5, help="failed logins per user name before exponential lockout")
    throttle_address_failures: int = setting(
        20, help="failed logins per client address before exponential lockout"
    )
    throttle_base_s: float = setting(1.0, help="first lockout in seconds (doubles each failure)")
    throttle_max_s: float = setting(900.0, help="longest lockout in seconds")
    throttle_register_per_address: int = setting(
        20, help="registrations per client address per hour before exponential lockout (60 s, doubling)"
    )
    trusted_proxies: str = setting(
        "",
        help="comma-separated IPs/CIDRs of the BFF and the gateway: the client address they pass in "
        "x-forwarded-for is believed from them only (empty: from nobody; throttles then key on the peer)",
    )
    grace_s: float = setting(10.0, help="on SIGTERM, time given to in-flight requests")
    etcd: str = setting(
        "",
        help="etcd endpoints (host:port,...) to register in and publish the JWKS to; empty: standalone",
        env="OCRMESH_ETCD",
    )
    advertise: str = setting("", help="address clients should dial (default: the bound host:port)")
    lease_ttl_s: int = setting(5, help="registry lease TTL in seconds (kept alive every TTL/3)")
    drain_linger_s: float = setting(
        1.0,
        help="after leaving the registry, keep serving this long so "
        "clients see the change before the instance says NOT_SERVING",
    )
    zone: str = setting("", help="zone label published in the registry")
    weight: int = setting(100, help="balancing weight published in the registry")
    metrics_port: int = setting(0, help="Prometheus /metrics port (0: a free one, -1: off)")
    ready_file: Path | None = setting(None, help="write {address, metrics} JSON here once serving")
    log_level: str = setting("info", help="log level", env="OCRMESH_LOG_LEVEL")

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """--trusted-proxies parsed (ValueError on a bad entry)."""
        return tuple(
            ipaddress.ip_network(item.strip(), strict=False)
            for item in self.trusted_proxies.split(",")
            if item.strip()
        )

    def validate(self) -> None:
        if not 4 <= self.bcrypt_cost <= 31:
            raise ConfigError("--bcrypt-cost must be between 4 and 31")
        if self.bcrypt_concurrency < 0 or self.bcrypt_queue < 0:
            raise ConfigError("--bcrypt-concurrency and --bcrypt-queue must be 0 or more")
        if self.access_ttl_s <= 0 or self.refresh_ttl_s <= 0:
            raise ConfigError("--access-ttl-s and --refresh-ttl-s must be positive")
        try:
            _ = self.proxy_networks
        except ValueError as exc:
            raise ConfigError(f"--trusted-proxies: {exc}") from None
        if self.key_rotation_s < 0 or self.key_publish_s < 0 or self.key_check_s <= 0:
            raise ConfigError("key timings must be positive (--key-rotation-s 0 means never)")
        if self.key_rotation_s and self.key_rotation_s <= self.key_publish_s + self.access_ttl_s:
            raise ConfigError("--key-rotation-s must exceed --key-publish-s + --access-ttl-s")
        if self.key_rotation_s and self.key_publish_s < self.key_check_s:
            # Every instance must have loaded a new key before any instance signs with it.
            raise ConfigError("--key-publish-s must be at least --key-check-s")
        if self.throttle_user_failures < 1 or self.throttle_address_failures < 1:
            raise ConfigError("throttle failure counts must be at least 1")
        if self.throttle_base_s <= 0 or self.throttle_max_s < self.throttle_base_s:
            raise ConfigError("--throttle-base-s must be positive and at most --throttle-max-s")
        if self.db_wait_s < 0:
            raise ConfigError("--db-wait-s must be 0 or more")
        if self.db_schema and not _SCHEMA_NAME.match(self.db_schema):
            raise ConfigError("--db-schema must be a lower-case SQL identifier")
        if self.lease_ttl_s < 1:
            raise ConfigError("--lease-ttl-s must be at least 1")
        if self.drain_linger_s < 0:
            raise ConfigError("--drain-linger-s must be 0 or more")
        if self.weight < 0:
            raise ConfigError("--weight must be 0 or more")
        if not self.issuer or not self.audience:
            raise ConfigError("--issuer and --audience must not be empty")

    @property
    def bcrypt_workers(self) -> int:
        return self.bcrypt_concurrency or max(1, os.cpu_count() or 1)

    @property
    def resolved_instance_id(self) -> str:
        return self.instance_id or f"auth-{uuid.uuid4().hex[:8]}"

    def key_passphrase(self) -> bytes | None:
        """The private-key passphrase read from its file (trailing newline dropped), or None."""
        if self.key_passphrase_file is None:
            return None
        try:
            text = self.key_passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"--key-passphrase-file: cannot read it ({exc.strerror})") from None
        if not text:
            raise ConfigError("--key-passphrase-file: the file is empty")
        return text
