"""`ocrmesh ca issuer`: the process that holds the CA key in compose and Kubernetes, issuing each
workload's identity into its folder (or Secret) and renewing it at half its lifetime."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli.ca_command import IssueSpec, parse_issue
from deploy.identity_secrets import KubernetesApi, SecretPublisher
from mesh import identity_files
from mesh.certificate_authority import CertificateAuthority
from mesh.identity_issuer import IdentityIssuer
from mesh.workload_identity import WorkloadIdentity

OCRMESH = [sys.executable, "-m", "cli.main"]


def test_issue_specs_parse() -> None:
    assert parse_issue("ocr=/identities/ocr") == IssueSpec("ocr", "ocr", "/identities/ocr")
    assert parse_issue("etcd/etcd1=/i/etcd1,host=etcd1,host=127.0.0.1,owner=65532", (10001, 10001)) == (
        IssueSpec("etcd", "etcd1", "/i/etcd1", ("etcd1", "127.0.0.1"), (65532, 65532))
    )
    assert parse_issue("bff=/i/bff", (10001, 10002)).owner == (10001, 10002)
    assert parse_issue("gateway=secret/ocrmesh-identity-gateway").secret == "ocrmesh-identity-gateway"
    for bad in ("ocr", "nobody=/x", "ocr=/x,port=1", "ocr=/x,owner=me", "ocr=secret/"):
        with pytest.raises(ValueError):
            parse_issue(bad)


def test_issuer_renews_a_short_lived_identity_and_the_folder_stays_loadable(tmp_path: Path) -> None:
    """A 4 s lifetime: the issuer (a real `ocrmesh ca issuer`) makes the CA, issues, and renews
    every 2 s; a reader polling the folder meanwhile always loads a complete, valid identity and
    sees the certificate change without anything restarting."""
    ca_dir, ocr, etcd = tmp_path / "ca", tmp_path / "ids" / "ocr", tmp_path / "ids" / "etcd1"
    proc = subprocess.Popen(
        [
            *OCRMESH, "ca", "issuer", "--dir", str(ca_dir), "--init", "--trust-domain", "issuer.test",
            "--lifetime", "4s", "--issue", f"ocr={ocr}", "--issue", f"etcd/etcd1={etcd},host=etcd1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (ocr / identity_files.CERT_FILE).exists() or not (etcd / identity_files.CERT_FILE).exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no identity issued within 30 s"
            time.sleep(0.05)
        reader = WorkloadIdentity(ocr)
        first = reader.current
        assert first.spiffe_id.uri == "spiffe://issuer.test/ocr/ocr"
        assert (ca_dir / "ca-key.pem").stat().st_mode & 0o077 == 0
        seen = {first.cert_pem}
        loads = 0
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline and len(seen) < 3:
            identity = identity_files.load(ocr)  # never half-written: raises if it were
            loads += 1
            assert identity.remaining().total_seconds() > 0, "the issuer let the identity expire"
            seen.add(identity.cert_pem)
            time.sleep(0.02)
        assert len(seen) >= 3, f"expected two renewals within 7 s of a 4 s lifetime, saw {len(seen) - 1}"
        assert reader.refresh(force=True)
        assert reader.generation >= 2
        etcd_leaf = identity_files.load(etcd)
        assert etcd_leaf.spiffe_id.uri == "spiffe://issuer.test/etcd/etcd1"
        # Old versions are pruned: the folder does not grow with each renewal.
        assert len(list(ocr.glob(".v*"))) <= identity_files.KEEP_VERSIONS + 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "issued 2 identities from spiffe://issuer.test" in out
        assert loads > 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_issuer_once_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    done = subprocess.run(
        [*OCRMESH, "ca", "issuer", "--dir", str(tmp_path / "none"), "--once", "--issue", f"ocr={tmp_path}/o"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ocrmesh ca init" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_issuer_once_hands_folders_to_their_workloads_user(tmp_path: Path) -> None:
    """As in compose: the issuer runs as root and gives each folder to the user of the one
    container that mounts it (10001 for ours, 65532 for etcd)."""
    CertificateAuthority.create("issuer.test").save(tmp_path / "ca")
    ocr, etcd = tmp_path / "ocr", tmp_path / "etcd"
    ocr.mkdir(mode=0o755)  # a fresh volume's root, as the engine makes it
    done = subprocess.run(
        [
            *OCRMESH, "ca", "issuer", "--dir", str(tmp_path / "ca"), "--once", "--owner", "10001",
            "--issue", f"ocr={ocr}", "--issue", f"etcd={etcd},owner=65532:65533",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for folder, owner in ((ocr, (10001, 10001)), (etcd, (65532, 65533))):
        st = folder.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*owner, 0o700)
        for name in (identity_files.CERT_FILE, identity_files.KEY_FILE, identity_files.CA_FILE):
            target = (folder / name).resolve()
            assert (target.stat().st_uid, target.stat().st_gid) == owner
            assert os.lstat(folder / name).st_uid == owner[0]
        assert (folder / identity_files.KEY_FILE).resolve().stat().st_mode & 0o777 == 0o600
        assert identity_files.load(folder).spiffe_id.service == folder.name


class FakeSecrets(BaseHTTPRequestHandler):
    """The part of a Kubernetes API server the issuer uses: PATCH and POST of Secrets."""

    secrets: dict[str, dict[str, Any]]
    requests: list[tuple[str, str]]

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> dict[str, Any]:
        return dict(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def do_PATCH(self) -> None:
        self.requests.append(("PATCH", self.path))
        assert self.headers["Content-Type"] == "application/merge-patch+json"
        name = self.path.rsplit("/", 1)[1]
        if name not in self.secrets:
            self._answer(404, {"kind": "Status", "code": 404})
            return
        self.secrets[name] = {**self.secrets[name], **self._body()}
        self._answer(200, self.secrets[name])

    def do_POST(self) -> None:
        self.requests.append(("POST", self.path))
        body = self._body()
        self.secrets[body["metadata"]["name"]] = body
        self._answer(201, body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[tuple[str, type[FakeSecrets]]]:
    handler = type("Handler", (FakeSecrets,), {"secrets": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_secret_targets_are_written_through_the_api_and_renewed(
    tmp_path: Path, fake_api: tuple[str, type[FakeSecrets]]
) -> None:
    """A secret/ target becomes a Secret whose three keys, written out as kubelet mounts them, are
    a loadable identity folder; a renewal patches the same Secret with a new certificate."""
    url, handler = fake_api
    api = KubernetesApi.in_cluster({"OCRMESH_K8S_API": url, "OCRMESH_K8S_NAMESPACE": "ocrmesh"})
    ca = CertificateAuthority.create("issuer.test")
    issuer = IdentityIssuer(ca)
    issuer.add(
        "ocr",
        "ocr",
        Path("secret/ocrmesh-identity-ocr"),
        publish=SecretPublisher(api, "ocrmesh-identity-ocr"),
    )
    assert handler.requests == [
        ("PATCH", "/api/v1/namespaces/ocrmesh/secrets/ocrmesh-identity-ocr"),
        ("POST", "/api/v1/namespaces/ocrmesh/secrets"),
    ]
    secret = handler.secrets["ocrmesh-identity-ocr"]
    assert secret["metadata"]["annotations"]["ocrmesh.io/spiffe-id"] == "spiffe://issuer.test/ocr/ocr"

    def mounted(secret: dict[str, Any]) -> Path:
        folder = tmp_path / f"mount{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for key, value in secret["data"].items():
            (folder / key).write_bytes(base64.b64decode(value))
        return folder

    first = identity_files.load(mounted(secret))
    assert first.spiffe_id.uri == "spiffe://issuer.test/ocr/ocr"
    assert issuer.renew_due(first.not_after) == 1
    assert handler.requests[-1] == ("PATCH", "/api/v1/namespaces/ocrmesh/secrets/ocrmesh-identity-ocr")
    second = identity_files.load(mounted(handler.secrets["ocrmesh-identity-ocr"]))
    assert second.cert_pem != first.cert_pem
    assert not Path("secret").exists()  # no folder written


def test_issuer_takes_a_ca_mounted_from_a_secret(tmp_path: Path) -> None:
    """kubelet mounts a Secret's files 0440 for the pod's fsGroup: `ca issue` refuses such a key,
    `ca issuer --mounted-secret` (the Kubernetes issuer) takes it."""
    CertificateAuthority.create("issuer.test").save(tmp_path / "ca")
    (tmp_path / "ca" / "ca-key.pem").chmod(0o440)

    def issuer(ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [*OCRMESH, "ca", "issuer", "--dir", str(ca), "--once", "--issue", f"ocr={tmp_path}/o", *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    refused = issuer(tmp_path / "ca")
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    done = issuer(tmp_path / "ca", "--mounted-secret")
    assert done.returncode == 0, done.stderr
    assert identity_files.load(tmp_path / "o").spiffe_id.uri == "spiffe://issuer.test/ocr/ocr"
    missing = issuer(tmp_path / "nothing", "--mounted-secret")
    assert missing.returncode == 2 and "kubectl create secret generic ocrmesh-mesh-ca" in missing.stderr
