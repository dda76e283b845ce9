"""The BFF's one frozen config: listen address, etcd, upload limits, timeouts, cookies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mesh.config import ConfigError, setting


@dataclass(frozen=True)
class BffConfig:
    """Settings of one BFF instance (it keeps no state of its own: run as many as you like)."""

    ENV_PREFIX: ClassVar[str] = "OCRMESH_BFF_"

    etcd: str = setting(
        "127.0.0.1:2379",
        help="etcd endpoints (host:port,...) where the auth and OCR services are registered",
        env="OCRMESH_ETCD",
    )
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8000, help="HTTP port (0 picks a free one)")
    ready_file: Path | None = setting(
        None, help="write {address, url} JSON here once serving and the auth and OCR services are found"
    )
    ready_wait_s: float = setting(
        30.0, help="wait this long for auth and OCR endpoints before writing the ready file anyway"
    )
    max_upload_bytes: int = setting(
        10 * 1024 * 1024, help="largest accepted image upload in bytes (413 above)"
    )
    ocr_timeout_s: float = setting(60.0, help="deadline of one recognition, queueing and retries included")
    auth_timeout_s: float = setting(15.0, help="deadline of one call to the auth service")
    status_timeout_s: float = setting(3.0, help="per etcd or instance call on the status page")
    cookie_secure: str = setting(
        "auto",
        help="mark cookies Secure: auto (when the request came over https), always, never",
        choices=("auto", "always", "never"),
    )
    admins: str = setting(
        "",
        help="comma-separated user names who see the status page in full (instances, addresses, "
        "balancer); everyone else sees how many instances of each service are healthy",
    )
    log_level: str = setting("info", help="log level", env="OCRMESH_LOG_LEVEL")

    def admin_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.admins.split(",") if name.strip())

    def validate(self) -> None:
        if not self.etcd.strip():
            raise ConfigError("--etcd is required: the BFF finds the auth and OCR services there")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be 0-65535")
        if self.max_upload_bytes < 1024:
            raise ConfigError("--max-upload-bytes must be at least 1024")
        if min(self.ocr_timeout_s, self.auth_timeout_s, self.status_timeout_s) <= 0:
            raise ConfigError("timeouts must be positive")
        if self.ready_wait_s < 0:
            raise ConfigError("--ready-wait-s must be 0 or more")
