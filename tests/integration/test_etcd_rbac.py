"""etcd locked down: TLS with mesh client certificates, and each service's identity limited to the
keys mesh/etcd_access.POLICY gives it, on a real etcd set up by the launcher as `admin`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aetcd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from etcd.launcher import EtcdError, EtcdProcess
from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.etcd_access import may
from mesh.etcd_client import ETCD_ERRORS, ClientFactory, close_quietly
from mesh.jwks_source import JWKS_KEY
from mesh.live_config import config_key
from mesh.load_board import load_prefix
from mesh.registry import instance_key
from mesh.session_revocations import REVOKED_SESSIONS_KEY
from mesh.workload_identity import WorkloadIdentity
from mesh.xds_client_records import client_key
from tests.integration.auth_fixtures import start_auth
from tests.integration.etcd_fixtures import eventually
from tests.integration.ocr_fixtures import start_ocr
from tests.integration.service_process import stop

SERVICES = ("ocr", "auth", "gateway", "bff", "cli", "admin")


@dataclass
class LockedEtcd:
    """A TLS etcd with auth on, and an identity folder per service from the mesh CA."""

    etcd: EtcdProcess
    ca: CertificateAuthority
    identities: Path

    def folder(self, service: str) -> Path:
        return self.identities / service

    def client(self, service: str) -> aetcd.Client:
        """A client presenting `service`'s certificate."""
        identity = WorkloadIdentity(self.folder(service))
        return ClientFactory(self.etcd.endpoint, 2.0, identity=identity).new()


@pytest.fixture(name="locked")
async def locked_fixture(tmp_path: Path) -> AsyncIterator[LockedEtcd]:
    ca = CertificateAuthority.create("test.local")
    identities = tmp_path / "identity"
    identity_files.write(identities / "etcd", ca.issue("etcd", "etcd-1", hosts=["127.0.0.1"]), ca.cert_pem)
    for service in SERVICES:
        identity_files.write(identities / service, ca.issue(service, f"{service}-1"), ca.cert_pem)
    etcd = EtcdProcess(
        tmp_path / "etcd",
        heartbeat_ms=10,
        election_timeout_ms=100,
        start_timeout=15.0,
        stop_grace=5.0,
        identity_dir=identities / "etcd",
        admin_identity_dir=identities / "admin",
    )
    try:
        await etcd.start()
        yield LockedEtcd(etcd, ca, identities)
    finally:
        await etcd.stop()


@contextlib.asynccontextmanager
async def connected(client: aetcd.Client) -> AsyncIterator[aetcd.Client]:
    try:
        yield client
    finally:
        await close_quietly(client, 2.0)


async def denied(call: object) -> None:
    assert asyncio.iscoroutine(call)
    with pytest.raises(aetcd.ClientError, match="permission denied"):
        await asyncio.wait_for(call, 5)


async def test_plaintext_and_other_cas_certificates_are_refused(locked: LockedEtcd, tmp_path: Path) -> None:
    plain = aetcd.Client(host=locked.etcd.host, port=locked.etcd.client_port, timeout=1)
    async with connected(plain):
        with pytest.raises(ETCD_ERRORS):
            await asyncio.wait_for(plain.get(b"/ocrmesh/v1/jwks"), 5)
    other = CertificateAuthority.create("test.local")  # same trust domain, another key
    identity_files.write(tmp_path / "forged", other.issue("admin", "admin-1"), other.cert_pem)
    forged = ClientFactory(locked.etcd.endpoint, 1.0, identity=WorkloadIdentity(tmp_path / "forged")).new()
    async with connected(forged):
        with pytest.raises(ETCD_ERRORS):
            await asyncio.wait_for(forged.get(b"/ocrmesh/v1/jwks"), 5)


async def test_ocr_registers_and_reports_load_but_cannot_touch_keys_or_config(locked: LockedEtcd) -> None:
    async with connected(locked.client("ocr")) as ocr:
        lease = await ocr.lease(5)
        key = instance_key("ocr", "ocr-1").encode()
        await ocr.put(key, b"{}", lease=lease.id)
        await lease.refresh()
        await ocr.put((load_prefix("ocr") + "ocr-1").encode(), b"{}", lease=lease.id)
        assert [kv.key for kv in await ocr.get_prefix(load_prefix("ocr").encode())]
        assert await ocr.get(config_key("ocr").encode()) is None  # its live settings: readable
        assert await ocr.get(JWKS_KEY.encode()) is None  # the token keys: readable
        await denied(ocr.put(JWKS_KEY.encode(), b'{"keys": []}'))
        await denied(ocr.put(config_key("ocr").encode(), b"{}"))
        await denied(ocr.put(REVOKED_SESSIONS_KEY.encode(), b"{}"))
        await denied(ocr.put(instance_key("auth", "forged").encode(), b"{}"))
        await denied(ocr.get_prefix(b"/ocrmesh/v1/services/"))  # other services' entries
        await denied(ocr.get(config_key("auth").encode()))
        await lease.revoke()  # revoking needs write on every key attached
        assert await ocr.get(key) is None


async def test_auth_publishes_the_token_keys_and_revocations(locked: LockedEtcd) -> None:
    async with connected(locked.client("auth")) as auth:
        await auth.put(JWKS_KEY.encode(), b'{"keys": []}')
        await auth.put(REVOKED_SESSIONS_KEY.encode(), b'{"sessions": {}}')
        assert (await auth.get(JWKS_KEY.encode())).value == b'{"keys": []}'
        lease = await auth.lease(5)
        await auth.put(instance_key("auth", "auth-1").encode(), b"{}", lease=lease.id)
        await denied(auth.put(instance_key("ocr", "forged").encode(), b"{}"))
        await denied(auth.put(config_key("auth").encode(), b"{}"))
        await denied(auth.put(client_key("node").encode(), b"{}"))


async def test_gateway_and_bff_read_the_registry_but_do_not_write_it(locked: LockedEtcd) -> None:
    async with connected(locked.client("ocr")) as ocr:
        await ocr.put(instance_key("ocr", "ocr-1").encode(), b"{}")
    for service in ("gateway", "bff", "cli"):
        async with connected(locked.client(service)) as reader:
            found = await reader.get_prefix(b"/ocrmesh/v1/services/")
            assert [kv.key for kv in found] == [instance_key("ocr", "ocr-1").encode()]
            assert await reader.get(JWKS_KEY.encode()) is None
            assert await reader.get(REVOKED_SESSIONS_KEY.encode()) is None
            await denied(reader.put(instance_key("ocr", "forged").encode(), b"{}"))
            await denied(reader.put(JWKS_KEY.encode(), b"{}"))
            await denied(reader.put(config_key("ocr").encode(), b"{}"))
    async with connected(locked.client("gateway")) as gateway:
        await gateway.put(client_key("envoy-1").encode(), b"{}")  # its xDS clients' state
    async with connected(locked.client("bff")) as bff:
        await denied(bff.put(client_key("envoy-1").encode(), b"{}"))
        await denied(bff.get_prefix(load_prefix("ocr").encode()))


async def test_admin_sets_live_config(locked: LockedEtcd) -> None:
    async with connected(locked.client("admin")) as admin:
        await admin.put(config_key("ocr").encode(), b'{"max_queue_wait_s": 30.0}')
        assert (await admin.get(config_key("ocr").encode())).value == b'{"max_queue_wait_s": 30.0}'
        await admin.delete(config_key("ocr").encode())


async def test_setup_is_idempotent_and_undoes_drift(locked: LockedEtcd) -> None:
    assert await locked.etcd.apply_access_policy() == []
    async with connected(locked.client("admin")) as admin:
        await admin.connect()
        # Someone widened ocr's role by hand: the next setup takes it back.
        await asyncio.wait_for(
            admin.auth_stub.RoleGrantPermission(
                aetcd.rpc.AuthRoleGrantPermissionRequest(
                    name="ocr",
                    perm=aetcd.rpc.Permission(permType=aetcd.rpc.Permission.WRITE, key=JWKS_KEY.encode()),
                )
            ),
            5,
        )
    async with connected(locked.client("ocr")) as ocr:
        await ocr.put(JWKS_KEY.encode(), b"{}")
    assert await locked.etcd.apply_access_policy() == [
        f"role ocr: revoked {JWKS_KEY} (WRITE)",  # etcd replaced the read grant on the same key
        f"role ocr: granted {JWKS_KEY} (READ)",
    ]
    await locked.etcd.restart()  # auth already on: set up again as admin, nothing to change
    async with connected(locked.client("ocr")) as ocr:
        await denied(ocr.put(JWKS_KEY.encode(), b"{}"))
    assert not may("ocr", JWKS_KEY, write=True)


async def test_a_rotated_identity_is_used_by_the_next_connection(locked: LockedEtcd, tmp_path: Path) -> None:
    folder = tmp_path / "rotating"
    identity_files.write(folder, locked.ca.issue("ocr", "x"), locked.ca.cert_pem)
    identity = WorkloadIdentity(folder)
    factory = ClientFactory(locked.etcd.endpoint, 2.0, identity=identity)
    async with connected(factory.new()) as first:
        await denied(first.put(JWKS_KEY.encode(), b"{}"))
    # The folder now holds another certificate (a different service, to tell them apart).
    identity_files.write(folder, locked.ca.issue("auth", "x"), locked.ca.cert_pem)
    assert identity.refresh(force=True)
    async with connected(factory.new()) as second:
        await second.put(JWKS_KEY.encode(), b"{}")


async def test_real_auth_and_ocr_services_work_within_their_roles(locked: LockedEtcd, tmp_path: Path) -> None:
    """`ocrmesh serve auth` and `ocrmesh serve ocr --require-auth` with identities register, publish
    the JWKS, read it and report load through the locked etcd, and leave cleanly (lease revoked)."""
    endpoint = locked.etcd.endpoint
    db = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    auth = await asyncio.to_thread(
        start_auth,
        tmp_path / "auth",
        "--etcd",
        endpoint,
        "--db",
        db,
        "--identity-dir",
        str(locked.folder("auth")),
    )
    try:
        ocr = await asyncio.to_thread(
            start_ocr,
            tmp_path / "ocr",
            *("--workers", "1", "--etcd", endpoint, "--require-auth"),
            *("--identity-dir", str(locked.folder("ocr"))),
        )
        try:
            async with connected(locked.client("cli")) as cli:

                async def everything_there() -> bool:
                    services = {kv.key.decode() for kv in await cli.get_prefix(b"/ocrmesh/v1/services/")}
                    load = await cli.get_prefix(load_prefix("ocr").encode())
                    jwks = await cli.get(JWKS_KEY.encode())
                    return len(services) == 2 and len(list(load)) == 1 and jwks is not None

                await eventually(everything_there, timeout=20)
        finally:
            await asyncio.to_thread(stop, ocr.proc)
    finally:
        await asyncio.to_thread(stop, auth.proc)
    async with connected(locked.client("cli")) as cli:
        assert list(await cli.get_prefix(b"/ocrmesh/v1/services/")) == []  # both leases revoked
    for log_text in (auth.log_text(), ocr.log_text()):
        assert "permission denied" not in log_text


def served_certificate(etcd: EtcdProcess, client_folder: Path) -> bytes:
    """The DER certificate etcd presents in a fresh handshake (as `client_folder`'s identity)."""
    context = ssl.create_default_context(cafile=str(client_folder / identity_files.CA_FILE))
    context.load_cert_chain(client_folder / identity_files.CERT_FILE, client_folder / identity_files.KEY_FILE)
    with (
        socket.create_connection((etcd.host, etcd.client_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="etcd.test.local") as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


async def test_etcd_serves_its_renewed_certificate_without_a_restart(locked: LockedEtcd) -> None:
    leaf = locked.ca.issue("etcd", "etcd-1", hosts=["127.0.0.1"])
    identity_files.write(locked.folder("etcd"), leaf, locked.ca.cert_pem)
    renewed = x509.load_pem_x509_certificate(leaf.cert_pem).public_bytes(serialization.Encoding.DER)
    assert await asyncio.to_thread(served_certificate, locked.etcd, locked.folder("cli")) == renewed
    async with connected(locked.client("auth")) as auth:
        await auth.put(JWKS_KEY.encode(), b"{}")  # clients still get through


async def test_ocrmesh_config_sets_live_settings_as_admin_only(locked: LockedEtcd) -> None:
    def config(identity: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli", "config", "--etcd", locked.etcd.endpoint]
        command += ["--identity-dir", str(locked.folder(identity)), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    done = await asyncio.to_thread(config, "admin", "set", "ocr", "max_queue_wait_s=30")
    assert done.returncode == 0, done.stderr
    refused = await asyncio.to_thread(config, "cli", "set", "ocr", "max_queue_wait_s=1")
    assert refused.returncode == 1
    assert "refused the 'cli' identity" in refused.stderr
    shown = await asyncio.to_thread(config, "cli", "get", "ocr")  # people may look
    assert shown.returncode == 0 and '"max_queue_wait_s": 30.0' in shown.stdout


async def test_a_locked_data_dir_is_refused_plaintext_with_a_reason(locked: LockedEtcd) -> None:
    await locked.etcd.stop()
    plain = EtcdProcess(locked.etcd.data_dir, start_timeout=15.0, stop_grace=5.0)
    with pytest.raises(EtcdError, match="has auth on"):
        await plain.start()
    assert not plain.running
