"""Workload identities as Kubernetes Secrets: the issuer writes each leaf through the API server.

A Secret holding cert.pem, key.pem and ca.pem, mounted as a volume, is the identity folder layout
(mesh/identity_files.py): kubelet swaps its files together behind a `..data` link when the Secret
changes, and our services (and etcd, and Envoy through the control plane) re-read them, so a
renewal reaches running pods within kubelet's sync period without a restart. Only the standard
library is used (the API is three HTTP calls); the issuer's ServiceAccount may get and update
only the Secrets it names (deploy/k8s/base/identity-issuer.yaml).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh.certificate_authority import Leaf
from mesh.identity_files import CA_FILE, CERT_FILE, KEY_FILE

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_S = 10.0


class KubernetesApiError(OSError):
    """The API server refused or could not be reached; an OSError so the issuer retries it."""


def secret_body(name: str, namespace: str, leaf: Leaf, ca_pem: bytes) -> dict[str, object]:
    """The Secret (type Opaque) that holds `leaf` as an identity folder's three files."""
    files = {CERT_FILE: leaf.cert_pem, KEY_FILE: leaf.key_pem, CA_FILE: ca_pem}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "ocrmesh", "ocrmesh.io/identity": leaf.identity.service},
            "annotations": {
                "ocrmesh.io/spiffe-id": leaf.identity.uri,
                "ocrmesh.io/not-after": leaf.not_after.isoformat(timespec="seconds"),
            },
        },
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in files.items()},
    }


@dataclass(frozen=True)
class KubernetesApi:
    """The API server as this pod's ServiceAccount sees it."""

    base_url: str
    namespace: str
    bearer: str  # the ServiceAccount's
    tls: ssl.SSLContext | None

    @classmethod
    def in_cluster(
        cls, environ: Mapping[str, str] | None = None, account: Path = SERVICE_ACCOUNT
    ) -> KubernetesApi:
        """From the mounted ServiceAccount token and KUBERNETES_SERVICE_HOST/PORT (or
        OCRMESH_K8S_API, a plain http:// URL for tests, with no token needed)."""
        environ = os.environ if environ is None else environ
        override = environ.get("OCRMESH_K8S_API")
        namespace = environ.get("OCRMESH_K8S_NAMESPACE")
        if override:
            return cls(
                override.rstrip("/"), namespace or "default", environ.get("OCRMESH_K8S_TOKEN", ""), None
            )
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubernetesApiError(
                "not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST): Secret targets need the API server"
            )
        try:
            bearer = (account / "token").read_text().strip()
            namespace = namespace or (account / "namespace").read_text().strip()
        except OSError as exc:
            raise KubernetesApiError(
                f"no ServiceAccount token in {account} (is the token mounted into the issuer's pod?): {exc}"
            ) from exc
        tls = ssl.create_default_context(cafile=str(account / "ca.crt"))
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", namespace, bearer, tls)

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> int:
        """Send one request; its HTTP status (404 and 409 are answers, other errors raise)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
            request.add_header("Content-Type", kind)
        if self.bearer:
            request.add_header("Authorization", f"Bearer {self.bearer}")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.tls)
        )
        try:
            with opener.open(request, timeout=TIMEOUT_S) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 409):
                return int(exc.code)
            detail = exc.read(500).decode(errors="replace")
            raise KubernetesApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise KubernetesApiError(f"{method} {path}: {exc}") from exc

    def put_secret(self, body: dict[str, object]) -> None:
        """Merge `body` into the Secret it names (its data, labels and annotations; what `kubectl
        apply` recorded stays), creating the Secret when it does not exist yet."""
        metadata = body["metadata"]
        assert isinstance(metadata, dict)
        name = metadata["name"]
        collection = f"/api/v1/namespaces/{self.namespace}/secrets"
        status = self._call("PATCH", f"{collection}/{name}", body)
        if status == 404:
            status = self._call("POST", collection, body)
            if status == 409:  # made meanwhile
                status = self._call("PATCH", f"{collection}/{name}", body)
        if status >= 300:
            raise KubernetesApiError(f"writing Secret {name}: HTTP {status}")


@dataclass(frozen=True)
class SecretPublisher:
    """Publishes leaves into one Secret (the issuer's `publish` hook for a secret/NAME target)."""

    api: KubernetesApi
    name: str

    def __call__(self, leaf: Leaf, ca_pem: bytes) -> None:
        self.api.put_secret(secret_body(self.name, self.api.namespace, leaf, ca_pem))
