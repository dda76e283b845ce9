"""`ocrmesh serve auth`: open the store, load keys, serve AuthService, drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType

from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from auth_svc.accounts import Accounts
from auth_svc.config import AuthConfig
from auth_svc.jwks_publisher import JwksPublisher
from auth_svc.keys import Jwks, KeyLoadError, KeyRing, KeysChanged
from auth_svc.metrics import AuthMetrics
from auth_svc.passwords import PasswordHasher
from auth_svc.revocation_publisher import RevocationPublisher
from auth_svc.servicer import AuthServicer
from auth_svc.store import AuthStore, StoreError, StoreUnavailable
from auth_svc.throttle import LoginThrottle, ThrottlePolicy
from auth_svc.tokens import Sessions, TokenSettings
from mesh import config as mesh_config
from mesh import lifecycle, logs, mesh_transport
from mesh.instance_registration import join_registry, leave_registry
from mesh.interceptors import RequestCountInterceptor
from mesh.lease import Registration
from mesh.tasks import cancel_and_wait
from mesh.token_verify import PUBLIC_METHODS, AuthInterceptor, TokenVerifier

log = logging.getLogger(__name__)

AUTH_CALLERS = ("gateway", "bff", "cli", "admin")
"""Mesh identities that may call AuthService (with mTLS): the gateway and the BFF, which carry
people's logins, and people's commands (`ocrmesh account`). OCR, etcd and xDS never call it."""

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
REGISTRY_SERVICE = "auth"
# Every AuthService method but WhoAmI is called without an access token.
PUBLIC_AUTH_METHODS = PUBLIC_METHODS | {
    f"/{SERVICE_NAME}/{name}" for name in ("Register", "Login", "Refresh", "Logout", "GetJwks")
}
VERIFY_LEEWAY_S = 30.0
_HOUSEKEEPING_S = 3600.0
_ETCD_WAIT_S = 5.0


class AuthInstance:
    """One auth service instance; `async with` starts it ready and drains it on exit.

    `on_keys_changed(jwks)` is awaited whenever the published JWKS changes (first at start).
    With `config.etcd` set, the instance itself publishes its JWKS to etcd (`JwksPublisher`) and
    registers as service `auth` once its store and keys are ready; draining revokes the lease
    first.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_keys_changed: KeysChanged | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.instance_id = config.resolved_instance_id
        self.address = ""
        self.metrics_url = ""
        self.store = AuthStore.open(config.db_url, schema=config.db_schema)
        self.hasher = PasswordHasher(
            config.bcrypt_cost, config.bcrypt_workers, max_waiting=config.bcrypt_queue
        )
        self.keyring = KeyRing(
            self.store,
            clock=clock,
            rotate_after_s=config.key_rotation_s,
            publish_ahead_s=config.key_publish_s,
            keep_after_retire_s=config.access_ttl_s + VERIFY_LEEWAY_S + config.key_check_s,
            passphrase=config.key_passphrase(),
        )
        self.verifier = TokenVerifier(
            issuer=config.issuer, audience=config.audience, leeway_s=VERIFY_LEEWAY_S, clock=clock
        )
        self.keyring.add_listener(self._keys_changed)
        self.publisher: JwksPublisher | None = None
        if config.etcd:
            self.publisher = JwksPublisher(config.etcd)
            self.keyring.add_listener(self.publisher.publish)
        self.registration: Registration | None = None
        if on_keys_changed is not None:
            self.keyring.add_listener(on_keys_changed)
        self.throttle = LoginThrottle(
            self.store,
            _policy(config.throttle_user_failures, config, limit_parallel=True),
            _policy(config.throttle_address_failures, config, limit_parallel=False),
            ThrottlePolicy(
                free_failures=config.throttle_register_per_address,
                base_lockout_s=60.0,
                max_lockout_s=3600.0,
                limit_parallel=False,
            ),
            clock=clock,
        )
        self.throttled_keys = 0  # rows in the shared throttle table, counted by housekeeping
        self.metrics = AuthMetrics(
            lambda: (
                self.hasher.pending,
                self.throttled_keys,
                len(self.keyring.jwks()["keys"]),
            )
        )
        self.revocations: RevocationPublisher | None = None
        if config.etcd:
            # Every access token of a session revoked longer ago than this has expired.
            self.revocations = RevocationPublisher(
                config.etcd,
                self.store,
                keep_s=config.access_ttl_s + VERIFY_LEEWAY_S + 5.0,
                clock=clock,
                on_update=self.verifier.update_revoked,
            )
        settings = TokenSettings(config.issuer, config.audience, config.access_ttl_s, config.refresh_ttl_s)
        self.sessions = Sessions(
            self.store,
            self.keyring,
            settings,
            clock,
            on_revoke=self.revocations.poke if self.revocations is not None else lambda: None,
        )
        self.accounts = Accounts(self.store, self.hasher, self.throttle, self.sessions, self.metrics, clock)
        self.server = lifecycle.new_server(
            interceptors=[
                RequestCountInterceptor(SERVICE_NAME, self.metrics.count_request),
                AuthInterceptor(self.verifier, PUBLIC_AUTH_METHODS),
            ],
            callers={SERVICE_NAME: AUTH_CALLERS},
        )
        self.health = lifecycle.Health(self.server, [SERVICE_NAME])
        self.servicer = AuthServicer(self.accounts, self.keyring.jwks, config.proxy_networks)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self.servicer, self.server)
        lifecycle.enable_reflection(self.server, [SERVICE_NAME])
        self._maintenance: asyncio.Task[None] | None = None

    async def _keys_changed(self, jwks: Jwks) -> None:
        self.verifier.update_jwks(jwks)

    def jwks(self) -> Jwks:
        return self.keyring.jwks()

    async def start(self) -> None:
        """Listen (health NOT_SERVING), open and migrate the store, load keys, then SERVING."""
        c = self.config
        self.address = lifecycle.bind(self.server, c.host, c.port)
        await self.health.set(False)
        await self.server.start()
        try:
            if self.publisher is not None:
                await self.publisher.start()
            await self._open_store()
            if self.revocations is not None:
                await self.revocations.start()
            await self.hasher.start()
            await self.keyring.sync()
            if c.metrics_port >= 0:
                port = self.metrics.serve(c.host, c.metrics_port)
                self.metrics_url = f"http://{c.host}:{port}/metrics"
        except BaseException:
            await self.server.stop(0)
            await self._close_resources()
            raise
        self._maintenance = asyncio.create_task(self._maintain(), name="auth-maintenance")
        await self.health.set(True)
        if c.etcd:
            await self._join_mesh()
        lifecycle.write_ready_file(
            c.ready_file,
            {
                "address": self.address,
                "metrics": self.metrics_url,
                "instance_id": self.instance_id,
                "kid": self.keyring.signer().kid,
                "etcd": c.etcd,
            },
        )
        log.info(
            "serving",
            extra={
                "address": self.address,
                "db": self.store.backend,
                "kid": self.keyring.signer().kid,
                "bcrypt_cost": c.bcrypt_cost,
            },
        )

    async def _join_mesh(self) -> None:
        """Register under a lease and wait (bounded) for the JWKS to reach etcd.

        Neither waits for ever: if etcd is away the instance serves anyway, and registration and
        publishing go on in the background until etcd is back.
        """
        c = self.config
        self.registration, registered = await join_registry(
            c,
            service=REGISTRY_SERVICE,
            instance_id=self.instance_id,
            address=self.address,
            slots=c.bcrypt_workers,
            extra={"metrics": self.metrics_url, "db": self.store.backend},
            wait_s=_ETCD_WAIT_S,
        )
        published = self.publisher is not None and await self.publisher.wait_published(1.0)
        if not (registered and published):
            log.warning(
                "etcd not reachable yet; serving anyway, registering and publishing the JWKS when it is",
                extra={"etcd": c.etcd, "registered": registered, "jwks_published": published},
            )

    async def _open_store(self) -> None:
        """Migrate, retrying an unreachable database for up to `db_wait_s`."""
        deadline = time.monotonic() + self.config.db_wait_s
        delay = 0.2
        while True:
            try:
                await self.store.migrate(self.clock())
                return
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"{exc} (gave up after {self.config.db_wait_s:.0f}s)") from exc
                log.warning("database not reachable yet; retrying", extra={"why": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _maintain(self) -> None:
        """Reload/rotate keys every `key_check_s`; drop long-expired refresh tokens and forgotten
        throttle keys hourly."""
        last_cleanup = 0.0
        while True:
            await asyncio.sleep(self.config.key_check_s)
            try:
                await self.keyring.sync()
                now = self.clock()
                if now - last_cleanup >= _HOUSEKEEPING_S:
                    await self.store.delete_refresh_tokens_expired_before(now - 86400.0)
                    # Throttle keys forget their failures after an hour (ThrottlePolicy.forget_after_s).
                    await self.store.delete_throttle_entries_before(now - 3600.0)
                    last_cleanup = now
                self.throttled_keys = await self.store.count_throttle_entries()
            except (StoreError, KeyLoadError) as exc:
                log.error("key maintenance failed; will retry", extra={"why": str(exc)})

    async def drain(self) -> None:
        """Leave the registry (lease revoked, short linger), NOT_SERVING, let in-flight calls
        finish (grace), then close everything."""
        registration, self.registration = self.registration, None
        await leave_registry(registration, self.config.drain_linger_s)
        await self.health.set(False)
        if self._maintenance is not None:
            await cancel_and_wait(self._maintenance)
            self._maintenance = None
        await self.server.stop(self.config.grace_s)
        await self._close_resources()

    async def _close_resources(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
        if self.revocations is not None:
            await self.revocations.close()
        self.hasher.close()
        await self.store.close()
        self.metrics.close()

    async def __aenter__(self) -> AuthInstance:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain()


def _policy(free_failures: int, config: AuthConfig, limit_parallel: bool) -> ThrottlePolicy:
    return ThrottlePolicy(
        free_failures=free_failures,
        base_lockout_s=config.throttle_base_s,
        max_lockout_s=config.throttle_max_s,
        limit_parallel=limit_parallel,
    )


async def serve(config: AuthConfig) -> int:
    """Run one instance until SIGINT/SIGTERM."""
    logs.setup("auth", config.log_level)
    try:
        instance = AuthInstance(config)
        await instance.start()
    except (StoreError, KeyLoadError, mesh_config.ConfigError, OSError) as exc:
        print(f"ocrmesh serve auth: {exc}", file=sys.stderr)
        return 2
    print(
        f"auth service {instance.instance_id} listening on {instance.address} "
        f"(db {instance.store.backend}, bcrypt cost {config.bcrypt_cost}); "
        f"metrics {instance.metrics_url or 'off'}"
        + (
            f"; registry {REGISTRY_SERVICE}/{instance.instance_id} and JWKS in etcd {config.etcd}"
            if config.etcd
            else ""
        ),
        flush=True,
    )
    return await lifecycle.drain_on_stop_signal(instance.drain, config.grace_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mesh_config.add_arguments(parser, AuthConfig)
    mesh_transport.add_arguments(parser)


def run(ns: argparse.Namespace) -> int:
    return mesh_config.run_service(AuthConfig, ns, "ocrmesh serve auth", serve)
