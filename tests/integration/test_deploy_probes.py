"""The gateway's and the BFF's deploy probes run for real: deploy/k8s and compose commands and settings."""

# Each service is started the way its Kubernetes manifest starts it (args, ConfigMap, env with the
# downward API filled in), on loopback with free ports instead of 0.0.0.0 and the fixed ports, and
# the manifest's own probe and preStop commands (and the compose health checks) are run against it.

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aetcd
import yaml

from deploy.kustomize_render import containers, render
from etcd.launcher import EtcdProcess
from mesh.mesh_transport import IDENTITY_ENV
from mesh.processes import free_port
from mesh.registry import Instance
from mesh.xds_client_records import client_key
from tests.integration.etcd_fixtures import etcd_client_fixture, etcd_fixture, eventually
from tests.integration.ocr_fixtures import running_ocr
from tests.integration.service_process import stop

__all__ = ["etcd_client_fixture", "etcd_fixture"]  # pytest fixtures used below

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
IMAGE_HEALTHCHECK = "/opt/ocrmesh/healthcheck.py"
POD = "test-pod-0"


class Deployed:
    """One container of the base rendering, made runnable here: env resolved, ports remapped."""

    def __init__(self, name: str, etcd: str, ports: Mapping[str, int]) -> None:
        resources = render(ROOT / "deploy" / "k8s" / "base")
        (workload,) = [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == name]
        (self.container,) = containers(workload)
        configmaps = {r["metadata"]["name"]: r["data"] for r in resources if r["kind"] == "ConfigMap"}
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for item in self.container.get("env", []):
            if "value" in item:  # $(NAME) expands from variables defined before it, as kubelet does
                env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
            else:
                assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
                env[item["name"]] = f"{name}-{POD}"
        # The pod's fixed ports -> free loopback ports; commands are rewritten the same way.
        self.ports = {int(env[key]): port for key, port in ports.items()}
        env.update({key: str(port) for key, port in ports.items()})
        env.update({k: "127.0.0.1" for k in env if k.endswith("_HOST")})
        env["OCRMESH_ETCD"] = etcd
        # Run plaintext, as the etcd fixture does: the mounted identity Secret is not here. The
        # probes' mTLS path (healthcheck.py with the pod's identity) is tested in
        # test_healthcheck_mtls.py; these check ports, paths and drain timing.
        assert env.pop(IDENTITY_ENV) == "/var/run/ocrmesh/identity"
        self.env = env

    def command(self, words: list[str]) -> list[str]:
        """A probe or hook command as it would run here: local python and healthcheck, our ports."""
        out = []
        for word in words:
            word = word.replace(IMAGE_HEALTHCHECK, str(HEALTHCHECK))
            for old, new in self.ports.items():
                word = word.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
            out.append(sys.executable if word == "python" else word)
        return out

    def probe(self, name: str) -> list[str]:
        return self.command(self.container[name]["exec"]["command"])

    @contextmanager
    def running(self, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OCRMESH_")}
        log = tmp / f"{self.container['name']}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *self.container["args"]],
                cwd=ROOT,
                env={**clean, **self.env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            yield proc
        finally:
            stop(proc)


def compose_health(service: str, ports: Mapping[int, int]) -> list[str]:
    """The compose service's healthcheck command, rewritten to run here."""
    test = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"][service]["healthcheck"]
    assert test["test"][:2] == ["CMD", "python"], test
    words = [w.replace(IMAGE_HEALTHCHECK, str(HEALTHCHECK)) for w in test["test"][2:]]
    for old, new in ports.items():
        words = [w.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}") for w in words]
    return [sys.executable, *words]


async def exit_code(argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 30.0) -> int:
    done = await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, timeout=timeout, check=False
    )
    return done.returncode


async def image_health(container_env: Mapping[str, str]) -> int:
    """The image-wide HEALTHCHECK (healthcheck.py without targets) with the container's env; the
    ports the container does not set point at free ports here (others may run ocrmesh on 8080)."""
    names = ("OCRMESH_OCR_PORT", "OCRMESH_AUTH_PORT", "OCRMESH_GATEWAY_PORT", "OCRMESH_BFF_PORT")
    ports = {name: container_env.get(name) or str(free_port()) for name in names}
    return await exit_code([sys.executable, str(HEALTHCHECK)], env={**os.environ, **ports})


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"


async def test_gateway_probes_and_prestop_drain_as_deployed(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client
) -> None:
    gateway = Deployed(
        "gateway",
        etcd.endpoint,
        {
            "OCRMESH_GATEWAY_PORT": free_port(),
            "OCRMESH_GATEWAY_ADMIN_PORT": free_port(),
            "OCRMESH_GATEWAY_XDS_PORT": free_port(),
        },
    )
    listener = int(gateway.env["OCRMESH_GATEWAY_PORT"])
    log = tmp_path / "gateway.log"
    with gateway.running(tmp_path) as proc:

        async def started() -> bool:
            alive(proc, log)
            return await exit_code(gateway.probe("startupProbe")) == 0

        await eventually(started, timeout=120, interval=0.5)
        assert await exit_code(gateway.probe("readinessProbe")) == 0
        assert await exit_code(gateway.probe("livenessProbe")) == 0  # the control plane's gRPC health
        # The node id comes from the downward API: `ocrmesh status` lists this pod's Envoy by name.
        node = f"gateway-{POD}"

        async def listed() -> bool:
            got = await etcd_client.get(client_key(node).encode())
            return got is not None and json.loads(got.value).get("node") == node

        await eventually(listed, timeout=30, interval=0.2)
        # compose's check goes through the listener to an OCR instance: there is none, so unhealthy.
        assert await exit_code(compose_health("gateway", gateway.ports)) == 1
        assert await image_health(gateway.env) == 1
        # preStop, without its waits: Envoy drains its listeners and then refuses new connections,
        # while the process keeps running until SIGTERM.
        hook = gateway.command(gateway.container["lifecycle"]["preStop"]["exec"]["command"])
        hook = [re.sub(r"\bsleep \d+", "sleep 0", word) for word in hook]
        assert accepts(listener)
        assert await exit_code(hook) == 0

        async def refused() -> bool:
            return not accepts(listener)

        await eventually(refused, timeout=30, interval=0.2)
        alive(proc, log)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]


async def test_bff_probes_as_deployed(tmp_path: Path, etcd: EtcdProcess, etcd_client: aetcd.Client) -> None:
    bff = Deployed("bff", etcd.endpoint, {"OCRMESH_BFF_PORT": free_port()})
    base = f"http://127.0.0.1:{bff.env['OCRMESH_BFF_PORT']}"
    log = tmp_path / "bff.log"

    def probe_url(name: str) -> str:
        http: dict[str, Any] = bff.container[name]["httpGet"]
        assert http["port"] == "http" and bff.container["ports"][0]["name"] == "http"
        return f"{base}{http['path']}"

    with bff.running(tmp_path) as proc:

        async def started() -> bool:
            alive(proc, log)
            try:
                return await asyncio.to_thread(http_status, probe_url("startupProbe")) == 200
            except OSError:
                return False

        await eventually(started, timeout=90, interval=0.5)
        assert await asyncio.to_thread(http_status, probe_url("livenessProbe")) == 200
        # No auth or OCR registered: not ready (kubelet) and unhealthy (compose).
        assert await asyncio.to_thread(http_status, probe_url("readinessProbe")) == 503
        assert await exit_code(compose_health("bff", bff.ports)) == 1
        assert await image_health(bff.env) == 1
        for service in ("auth", "ocr"):
            instance = Instance(service=service, id=f"{service}-probe", address="127.0.0.1:9")
            await etcd_client.put(instance.key.encode(), instance.to_json().encode())

        async def ready() -> bool:
            return await asyncio.to_thread(http_status, probe_url("readinessProbe")) == 200

        await eventually(ready, timeout=30, interval=0.2)
        assert await exit_code(compose_health("bff", bff.ports)) == 0
        assert await image_health(bff.env) == 0  # the image's HEALTHCHECK finds the BFF unaided
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]


async def test_gateway_health_follows_ocr_but_readiness_does_not(tmp_path: Path, etcd: EtcdProcess) -> None:
    """compose's check (gRPC health through the listener) passes once a serving OCR instance is
    registered and fails when it is gone; the k8s readiness probe (Envoy LIVE) passes throughout."""
    gateway = Deployed(
        "gateway",
        etcd.endpoint,
        {
            "OCRMESH_GATEWAY_PORT": free_port(),
            "OCRMESH_GATEWAY_ADMIN_PORT": free_port(),
            "OCRMESH_GATEWAY_XDS_PORT": free_port(),
        },
    )
    log = tmp_path / "gateway.log"
    compose_check = compose_health("gateway", gateway.ports)
    with gateway.running(tmp_path) as proc:

        async def started() -> bool:
            alive(proc, log)
            return await exit_code(gateway.probe("startupProbe")) == 0

        await eventually(started, timeout=120, interval=0.5)
        with running_ocr(tmp_path, "--workers", "1", "--etcd", etcd.endpoint, "--require-auth"):

            async def healthy() -> bool:
                return await exit_code(compose_check) == 0

            await eventually(healthy, timeout=60, interval=0.5)
            assert await image_health(gateway.env) == 0
            assert await exit_code(gateway.probe("readinessProbe")) == 0

        async def unhealthy() -> bool:
            return await exit_code(compose_check) == 1

        await eventually(unhealthy, timeout=60, interval=0.5)
        assert await exit_code(gateway.probe("readinessProbe")) == 0, "no OCR must not unready the gateway"
        assert await exit_code(gateway.probe("livenessProbe")) == 0
