"""Offline checks of deploy/: Dockerfiles, compose, Kubernetes manifests and the settings they name."""

# No Docker engine and no cluster are needed. What this cannot check offline: that the images
# build (base images and wheels are fetched by `docker build`), that the containers start, that
# the CUDA image finds a GPU, and that a real cluster admits the manifests (admission webhooks,
# storage classes, the NVIDIA device plugin, the CNI enforcing NetworkPolicies).

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from kubernetes_validate.utils import latest_version
from yamllint import linter
from yamllint.config import YamlLintConfig

from cli import main as cli
from cli.ca_command import IssueSpec, parse_issue, parse_owner
from cli.main import SERVE
from deploy.kustomize_render import containers, pod_specs, render, resource_id, split_image
from mesh import config as mesh_config
from mesh.mesh_transport import IDENTITY_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
OVERLAYS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
SECRET_TEMPLATE = K8S / "base" / "postgres-secret.example.yaml"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))

# Oldest Kubernetes minor the manifests promise to work on (grpc probes, autoscaling/v2,
# policy/v1), and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", latest_version())
# Third-party images the deploy files may use; everything else must be built by our Dockerfiles.
THIRD_PARTY = {"quay.io/coreos/etcd", "registry.k8s.io/etcd", "postgres"}
# onnxruntime-gpu release (major.minor) -> CUDA major its PyPI wheels link (checked with readelf
# on the wheel: 1.31.1 needs libcudart.so.13 and cuDNN 9). Add a row when bumping ORT_GPU_VERSION.
ORT_GPU_CUDA_MAJOR = {"1.31": 13}
WORKER_PEAK_MIB = 900  # a worker after a large image (~800 MiB measured) plus headroom
PARENT_MIB = 200  # the OCR server process: gRPC, admission queue, metrics
SHUTDOWN_MARGIN_S = 5  # after the drain: worker pool and metrics shutdown

KNOWN_INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}
SECRET_NAME = re.compile(r"(?i)(password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key)")
PLACEHOLDER = re.compile(r"(?i)placeholder|change-me|replace")
SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![{$\w])([A-Z0-9_.-]*(?:password|passwd|passphrase|secret|token|api[_-]?key))\s*[:=][ \t]*"
    r"[\"']?([^\s\"']*)"
)
# Names that look secret but are not: an etcd cluster's identifier, a Kubernetes switch.
NOT_SECRETS = {"ETCD_INITIAL_CLUSTER_TOKEN", "automountServiceAccountToken"}
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s]+)@")


# ---------------------------------------------------------------- the services' own settings


@dataclass(frozen=True)
class ServiceSettings:
    """What `ocrmesh serve NAME` reads: its config class, parser and gRPC service name."""

    name: str
    configs: tuple[type, ...]
    parser: argparse.ArgumentParser
    grpc_service: str | None

    @property
    def config(self) -> type:
        assert len(self.configs) == 1, f"serve {self.name}: one config dataclass, not {self.configs}"
        return self.configs[0]

    def load(self, args: list[str], env: Mapping[str, str]) -> Any:
        """The config the service would run with: flags (as `serve` parses them), then env."""
        try:
            ns = self.parser.parse_args(args)
        except (SystemExit, argparse.ArgumentError):
            pytest.fail(f"`ocrmesh serve {self.name}` does not accept {args}")
        return mesh_config.load(self.config, ns, environ=env)

    @property
    def env_names(self) -> set[str]:
        return set().union(*(mesh_config.env_names(c) for c in self.configs))


def _is_config(value: Any) -> bool:
    return (
        isinstance(value, type)
        and dataclasses.is_dataclass(value)
        and bool(dataclasses.fields(value))
        and all("help" in f.metadata for f in dataclasses.fields(value))
    )


def _config_classes(module: Any) -> tuple[type, ...]:
    """Config dataclasses (fields built with mesh.config.setting) a serve module uses."""
    names = dict(vars(module))
    for value in list(names.values()):  # `from x import config` style: one level down
        if isinstance(value, type(module)) and value.__name__.split(".")[0] != "mesh":
            names.update(vars(value))
    return tuple(sorted({v for v in names.values() if _is_config(v)}, key=lambda c: c.__name__))


def _services() -> dict[str, ServiceSettings]:
    services = {}
    for command in SERVE:
        module = importlib.import_module(command.module)
        add, _ = command.load()
        parser = argparse.ArgumentParser(
            prog=f"ocrmesh serve {command.name}", exit_on_error=False, allow_abbrev=False
        )
        add(parser)
        services[command.name] = ServiceSettings(
            command.name, _config_classes(module), parser, getattr(module, "SERVICE_NAME", None)
        )
    return services


SERVICES = _services()
# OCRMESH_IDENTITY_DIR: every serve command's mesh identity, read by mesh/mesh_transport.py
ALL_ENV_NAMES = set().union(*(s.env_names for s in SERVICES.values())) | {IDENTITY_ENV}
ENTRY_POINTS = {"gateway", "bff"}  # what clients reach from outside: they publish ports
HEALTHCHECK = "/opt/ocrmesh/healthcheck.py"  # where the Dockerfiles put deploy/docker/healthcheck.py


def health_target(service: str, config: Any) -> str:
    """What a container health check asks: the BFF's /healthz, else gRPC health on the service port
    (through Envoy's listener for the gateway: SERVING once it routes to a serving OCR instance)."""
    if service == "bff":
        return f"http://127.0.0.1:{config.port}/healthz"
    return f"127.0.0.1:{config.port}"


def shutdown_s(service: str, config: Any) -> float:
    """Seconds `ocrmesh serve NAME` may take from SIGTERM to exit, read from its config or code."""
    if hasattr(config, "grace_s"):
        return float(config.grace_s + getattr(config, "drain_linger_s", 0.0))
    if service == "bff":  # uvicorn's graceful shutdown for requests in flight
        return float(importlib.import_module("web_bff.server").SHUTDOWN_GRACE_S)
    if service == "gateway":  # Envoy gets SIGTERM, then SIGKILL after this grace
        stop = importlib.import_module("gateway.envoy_process").EnvoyProcess.stop
        return float(inspect.signature(stop).parameters["grace"].default)
    raise AssertionError(f"how long does `ocrmesh serve {service}` take to stop? Add it here")


def serve_command(argv: list[str]) -> tuple[ServiceSettings, list[str]]:
    """(service, its flags) from an `ocrmesh` argument list such as ["serve", "ocr", "--x", "1"]."""
    assert len(argv) >= 2 and argv[0] == "serve", f"not an `ocrmesh serve` command: {argv}"
    assert argv[1] in SERVICES, f"`ocrmesh serve {argv[1]}` does not exist"
    return SERVICES[argv[1]], list(argv[2:])


# ---------------------------------------------------------------- Dockerfile parsing and lint


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    flags: tuple[str, ...]
    args: str

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no heredocs)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, rest = joined.partition(" ")
        flags: list[str] = []
        rest = rest.strip()
        run_flags = ("--mount", "--network", "--security")
        while rest.startswith("--") and (keyword.upper() != "RUN" or rest.startswith(run_flags)):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        instructions.append(Instruction(start, keyword.upper(), tuple(flags), rest))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped per build stage (each starts with its FROM)."""
    grouped: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            grouped.append([])
        if grouped:
            grouped[-1].append(ins)
    return grouped


def substitute(text: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM lines)."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            values[name.strip()] = default.strip()
    return values


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The ENV a stage sets (key=value form)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, sep, value = item.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value"
                env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_dirs() -> list[str]:
    """Source folders of the packages pyproject.toml lists (what `pip install .` needs)."""
    tool = _pyproject()["tool"]["setuptools"]
    mapping = tool.get("package-dir", {})
    dirs = []
    for package in tool["packages"]:
        top, _, rest = package.partition(".")
        base = mapping.get(top, top)
        dirs.append("/".join([base, *rest.split(".")]) if rest else base)
    return dirs


def dockerfile_problems(text: str, *, check_context: bool = True) -> list[str]:
    """Hadolint-style findings for one Dockerfile (empty when it is fine)."""
    problems: list[str] = []
    instructions = parse_dockerfile(text)
    args = global_args(instructions)
    stage_names: set[str] = set()
    all_stages = stages(instructions)
    if not all_stages:
        return ["no FROM"]
    for ins in instructions:
        if ins.keyword not in KNOWN_INSTRUCTIONS:
            problems.append(f"line {ins.line}: unknown or deprecated instruction {ins.keyword}")
        if ins.keyword == "ADD":
            problems.append(f"line {ins.line}: ADD (use COPY; never fetch URLs at build time)")
        if ins.keyword in ("ENV", "ARG"):
            for item in shlex.split(ins.args):
                if SECRET_NAME.search(item.partition("=")[0]):
                    problems.append(f"line {ins.line}: secret-looking {ins.keyword} {item!r}")
        if ins.keyword == "WORKDIR" and not ins.args.startswith("/"):
            problems.append(f"line {ins.line}: WORKDIR must be absolute")
        if ins.keyword == "RUN":
            problems.extend(_run_problems(ins))
    for stage in all_stages:
        head = stage[0]
        words = substitute(head.args, args).split()
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
        if image in stage_names - {words[2] if len(words) >= 3 else ""}:
            continue
        _, tag, digest = split_image(image)
        if not digest and (not tag or tag == "latest"):
            problems.append(f"line {head.line}: base image {image!r} is not pinned to a tag")
        for ins in stage:
            if ins.keyword == "COPY":
                problems.extend(_copy_problems(ins, stage_names, check_context))
    final = all_stages[-1]
    keywords = [ins.keyword for ins in final]
    users = [ins for ins in final if ins.keyword == "USER"]
    if not users:
        problems.append("final stage: no USER (the image would run as root)")
    else:
        user = users[-1].args.split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"final stage: USER {users[-1].args!r} must be a numeric non-root uid")
        for keyword in ("ENTRYPOINT", "CMD"):
            if keyword in keywords and keywords.index(keyword) < keywords.index("USER"):
                problems.append(f"final stage: {keyword} comes before USER")
    health = [ins for ins in final if ins.keyword == "HEALTHCHECK"]
    if not health:
        problems.append("final stage: no HEALTHCHECK")
    elif not health[-1].args.startswith("CMD [") or "--interval" not in " ".join(health[-1].flags):
        problems.append("final stage: HEALTHCHECK needs --interval and an exec-form CMD")
    entry = [ins for ins in final if ins.keyword == "ENTRYPOINT"]
    if not entry or entry[-1].exec_form() != ["ocrmesh"]:
        problems.append('final stage: ENTRYPOINT must be ["ocrmesh"] (exec form)')
    cmd = [ins for ins in final if ins.keyword == "CMD"]
    if not cmd or not (cmd[-1].exec_form() or [""])[0] == "serve":
        problems.append("final stage: CMD must be an exec-form `serve ...`")
    return problems


def _run_problems(ins: Instruction) -> list[str]:
    problems = []
    script = ins.args
    if re.search(r"\b(curl|wget)\b[^|;&]*\|\s*(ba)?sh", script):
        problems.append(f"line {ins.line}: piping a download into a shell")
    if re.search(r"(^|&&|;)\s*cd\s", script):
        problems.append(f"line {ins.line}: use WORKDIR instead of cd")
    if re.search(r"\bsudo\b", script):
        problems.append(f"line {ins.line}: sudo")
    if "apt-get install" in script:
        if "--no-install-recommends" not in script or " -y" not in script:
            problems.append(f"line {ins.line}: apt-get install needs -y --no-install-recommends")
        if "rm -rf /var/lib/apt/lists/*" not in script:
            problems.append(f"line {ins.line}: remove /var/lib/apt/lists in the same RUN")
    if "apt-get update" in script and "apt-get install" not in script:
        problems.append(f"line {ins.line}: apt-get update without install in the same RUN")
    if (
        re.search(r"\bpip3? install\b", script)
        and "--no-cache-dir" not in script
        and not any("type=cache" in flag for flag in ins.flags)
    ):
        problems.append(f"line {ins.line}: pip install without --no-cache-dir or a cache mount")
    return problems


def _copy_problems(ins: Instruction, stage_names: set[str], check_context: bool) -> list[str]:
    problems = []
    from_stage = [f.split("=", 1)[1] for f in ins.flags if f.startswith("--from=")]
    if from_stage:
        if from_stage[0] not in stage_names:
            problems.append(f"line {ins.line}: COPY --from={from_stage[0]} is no earlier stage")
        return problems
    sources = (ins.exec_form() or ins.args.split())[:-1]
    if not check_context:
        return problems
    patterns = dockerignore_patterns()
    for source in sources:
        if not (ROOT / source).exists():
            problems.append(f"line {ins.line}: COPY source {source!r} does not exist")
        elif dockerignored(source, patterns):
            problems.append(f"line {ins.line}: COPY source {source!r} is excluded by .dockerignore")
    return problems


def copied_sources(text: str) -> set[str]:
    """Local paths the Dockerfile COPYs from the build context."""
    found: set[str] = set()
    for ins in parse_dockerfile(text):
        if ins.keyword == "COPY" and not any(f.startswith("--from=") for f in ins.flags):
            found.update(s.strip("/") for s in (ins.exec_form() or ins.args.split())[:-1])
    return found


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV of the image's final stage."""
    return env_of(stages(parse_dockerfile(dockerfile.read_text(encoding="utf-8")))[-1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(dockerfile: Path) -> None:
    assert dockerfile_problems(dockerfile.read_text(encoding="utf-8")) == []


def test_dockerfile_lint_catches_bad_files() -> None:
    bad = "\n".join(
        [
            "FROM python AS build",
            "ADD https://example.invalid/x.tar.gz /x",
            "RUN cd /x && apt-get install curl",
            "ENV DB_PASSWORD=hunter2",
            "MAINTAINER someone",
            "FROM debian:latest",
            "COPY --from=nowhere /a /b",
            'CMD ["serve", "ocr"]',
            "USER root",
            'ENTRYPOINT ["ocrmesh"]',
        ]
    )
    problems = "\n".join(dockerfile_problems(bad, check_context=False))
    for expected in (
        "not pinned",
        "ADD",
        "cd",
        "no-install-recommends",
        "/var/lib/apt/lists",
        "secret-looking",
        "MAINTAINER",
        "no earlier stage",
        "non-root uid",
        "CMD comes before USER",
        "no HEALTHCHECK",
    ):
        assert expected in problems, f"{expected!r} not reported:\n{problems}"


def test_dockerignore_matcher() -> None:
    patterns = ["**/__pycache__", "tests", "deploy/k8s", "*.egg-info", "!keep/me"]
    assert dockerignored("__pycache__", patterns) and dockerignored("mesh/__pycache__/x", patterns)
    assert dockerignored("tests/unit/test_x.py", patterns) and dockerignored("ocrmesh.egg-info", patterns)
    assert not dockerignored("deploy/docker/healthcheck.py", patterns)
    assert not dockerignored("mesh/config.py", patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_pip_install_needs(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    copied = copied_sources(text)
    readme = _pyproject()["project"].get("readme")
    needed = ["pyproject.toml", *([readme] if isinstance(readme, str) else []), *package_dirs()]
    patterns = dockerignore_patterns()
    for path in needed:
        covered = any(path == src or path.startswith(src + "/") for src in copied)
        assert covered, f"{dockerfile.name} does not COPY {path} (pip install . needs it)"
        init = ROOT / path / "__init__.py"
        if init.exists():
            assert not dockerignored(f"{path}/__init__.py", patterns), f".dockerignore drops {path}"
    extra = "gpu" if dockerfile.name.endswith(".cuda") else "cpu"
    assert f'".[{extra}]"' in text, f"{dockerfile.name} must install the `{extra}` extra"


def test_cuda_base_matches_onnxruntime_gpu() -> None:
    text = (DOCKER / "Dockerfile.cuda").read_text(encoding="utf-8")
    instructions = parse_dockerfile(text)
    version = global_args(instructions).get("ORT_GPU_VERSION", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin onnxruntime-gpu with ARG ORT_GPU_VERSION"
    assert '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in text
    major_minor = ".".join(version.split(".")[:2])
    assert major_minor in ORT_GPU_CUDA_MAJOR, (
        f"onnxruntime-gpu {version}: check which CUDA/cuDNN its wheel links, then add it here"
    )
    base = substitute(stages(instructions)[-1][0].args, global_args(instructions)).split()[0]
    name, tag, _ = split_image(base)
    assert name == "nvidia/cuda" and "cudnn-runtime" in tag, f"runtime base must be CUDA+cuDNN: {base}"
    assert int(tag.split(".")[0]) == ORT_GPU_CUDA_MAJOR[major_minor], f"{base} vs ORT {version}"


# ---------------------------------------------------------------- YAML, secrets


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), ROOT / ".yamllint"])


def test_yamllint_clean() -> None:
    conf = YamlLintConfig(file=str(ROOT / ".yamllint"))
    found = []
    for path in yaml_files():
        for problem in linter.run(path.read_text(encoding="utf-8"), conf, str(path)):
            found.append(f"{path.relative_to(ROOT)}:{problem.line}:{problem.column} {problem}")
    assert found == []


def deploy_text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in (".pyc", ".json")]
    return sorted([*files, ROOT / ".dockerignore"])


def test_no_secrets_committed() -> None:
    found = []
    for path in deploy_text_files():
        text = path.read_text(encoding="utf-8")
        if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}", text):
            found.append(f"{path}: key material")
        for match in URL_CREDENTIALS.finditer(text):
            if not match[1].startswith("${") and not PLACEHOLDER.search(match[1]):
                found.append(f"{path}: password in a URL: {match[0]}")
        for match in SECRET_ASSIGNMENT.finditer(text):
            value = match[2]
            if match[1] in NOT_SECRETS or not value or value.startswith(("${", "$(", "/")):
                continue
            if not PLACEHOLDER.search(value):
                found.append(f"{path}: {match[1]} has a literal value")
    assert found == []


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def interpolate(text: str) -> str:
    """Compose interpolation with deploy/.env unset: `${X:-default}` gives the default, any other
    variable "dummy"; `$$` is a literal `$`."""
    text = re.sub(r"\$\{[A-Za-z_]\w*:?-([^}]*)\}", lambda m: m[1], text)
    text = re.sub(r"\$\{[A-Za-z_]\w*(?::?[?+][^}]*)?\}", "dummy", text)
    return text.replace("$$", "$")


def service_image(svc: Mapping[str, Any]) -> str:
    """A compose service's image with the defaults of its variables (`${ETCD_IMAGE:-quay.io/...}`)."""
    return interpolate(str(svc["image"]))


def built_images() -> dict[str, Path]:
    """Image name -> the Dockerfile that builds it, from the compose `build` sections."""
    images: dict[str, Path] = {}
    for name, svc in compose()["services"].items():
        if "build" in svc:
            repo = split_image(service_image(svc))[0]
            dockerfile = (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            assert images.setdefault(repo, dockerfile) == dockerfile, f"{repo} built two ways"
    names = sorted(images)
    assert len(set(images.values())) == len(names), f"one image name per Dockerfile: {names}"
    return images


def compose_env(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def compose_argv(svc: Mapping[str, Any]) -> list[str] | None:
    """The `ocrmesh` arguments a compose service runs (through `sh -c 'exec ocrmesh ...'` too)."""
    entry = svc.get("entrypoint")
    command = [interpolate(str(c)) for c in svc.get("command") or []]
    if entry in (None, ["ocrmesh"]):
        return command
    assert entry == ["/bin/sh", "-c"] and len(command) == 1, f"unexpected entrypoint {entry}"
    words = shlex.split(command[0])
    assert words[:2] == ["exec", "ocrmesh"], "a shell entrypoint must `exec ocrmesh ...`"
    return words[2:]


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def test_compose_matches_the_compose_spec_schema() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    broken = compose()
    broken["services"]["ocr"]["replicas"] = 2  # belongs under deploy:
    assert list(validator.iter_errors(broken)), "the schema must reject unknown service keys"


def test_compose_services_and_images() -> None:
    services = compose()["services"]
    images = built_images()
    assert {p.name for p in images.values()} == {p.name for p in DOCKERFILES}, "build every Dockerfile"
    etcd = [n for n, s in services.items() if split_image(service_image(s))[0].endswith("/etcd")]
    assert len(etcd) == 3, "a 3-node etcd cluster"
    for name, svc in services.items():
        repo, tag, _ = split_image(service_image(svc))
        assert repo in images or repo in THIRD_PARTY, f"{name}: image {svc['image']} is not ours or allowed"
        if repo in THIRD_PARTY:
            assert tag and tag != "latest", f"{name}: pin {svc['image']}"
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        if name in ENTRY_POINTS:
            assert len(svc["ports"]) == 1 and svc.get("deploy", {}).get("replicas", 1) == 1, (
                f"{name}: one published port, so one replica"
            )
        else:
            assert not svc.get("ports"), f"{name}: fixed host ports stop it from scaling"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services and cond.get("condition") == "service_healthy", f"{name} -> {dep}"
    for svc in ("auth", "ocr"):
        assert services[svc]["deploy"]["replicas"] >= 2
    assert ENTRY_POINTS <= set(services), "the gateway and the BFF are the entry points"
    pg = services["postgres"]
    assert compose_env(pg).get("POSTGRES_PASSWORD") == "dummy", "the password comes from deploy/.env"
    assert compose()["volumes"].keys() >= {"postgres-data"}


def test_compose_ocrmesh_services_read_their_settings() -> None:
    services = compose()["services"]
    images = built_images()
    seen = set()
    for name, svc in services.items():
        repo = split_image(service_image(svc))[0]
        if repo not in images or (compose_argv(svc) or ["serve"])[0] != "serve":
            continue  # the identity issuer and the tools (test_compose_identities)
        service, flags = serve_command(compose_argv(svc) or ["serve", "ocr"])
        seen.add(service.name)
        # the image's ENV serves every service (OCR and auth hosts); the service's own must fit it
        named = {k for k in compose_env(svc) if k.startswith("OCRMESH_")}
        env = {**image_env(images[repo]), **compose_env(svc)}
        unread = named - service.env_names - {IDENTITY_ENV}
        assert not unread, f"{name}: not read by `ocrmesh serve {service.name}`: {sorted(unread)}"
        config = service.load(flags, env)
        assert config.host in ("0.0.0.0", "::"), f"{name}: listens on {config.host} only"
        assert str(config.port) in [str(p) for p in svc.get("expose", [])], f"{name}: port not exposed"
        health = svc["healthcheck"]["test"]
        assert health[:3] == ["CMD", "python", HEALTHCHECK], f"{name}: {health}"
        assert health[3:] == [health_target(service.name, config)], f"{name}: healthcheck asks the wrong port"
        grace = shutdown_s(service.name, config) + SHUTDOWN_MARGIN_S
        assert duration_s(svc.get("stop_grace_period", "10s")) >= grace, f"{name}: stop_grace_period"
        if getattr(config, "etcd", ""):
            hosts = {h.split(":")[0] for h in config.etcd.split(",")}
            assert hosts <= set(services) and len(hosts) == 3, f"{name}: etcd endpoints {hosts}"
        if name == "auth":
            assert config.db_url.startswith("postgresql+asyncpg://") and "@postgres:" in config.db_url
        if service.name == "ocr":
            assert config.require_auth, f"{name}: OCR checks tokens itself (the BFF calls it directly)"
    assert seen >= {"ocr", "auth", "gateway", "bff"}


def test_compose_entry_points() -> None:
    """The gateway and the BFF publish their own port (loopback by default) and start after the mesh."""
    services = compose()["services"]
    etcd = {n for n, s in services.items() if split_image(service_image(s))[0].endswith("/etcd")}
    configs = {}
    for name in sorted(ENTRY_POINTS):
        svc = services[name]
        service, flags = serve_command(compose_argv(svc) or [])
        assert service.name == name, f"compose service {name} runs `ocrmesh serve {service.name}`"
        config = service.load(flags, {**image_env(built_images()["ocrmesh"]), **compose_env(svc)})
        (port,) = svc["ports"]
        assert isinstance(port, dict), f"{name}: use the long port syntax (named, host_ip)"
        assert port["target"] == config.port and int(interpolate(port["published"])) == config.port, name
        assert interpolate(port["host_ip"]) == "127.0.0.1", f"{name}: publish on loopback unless told"
        assert set(svc["depends_on"]) >= etcd | {"auth", "ocr"}, f"{name}: {sorted(svc['depends_on'])}"
        assert set(str(p) for p in svc["expose"]) == {str(config.port)}, f"{name}: only its own port"
        configs[name] = config
    gateway = configs["gateway"]
    # Envoy's admin and the control plane stay on the container's loopback: never exposed.
    assert gateway.xds == "" and gateway.tls_cert is None, "the control plane runs in the container"
    exposed = {str(p) for s in services.values() for p in s.get("expose", [])}
    assert not {str(gateway.admin_port), str(gateway.xds_port)} & exposed


# ---------------------------------------------------------------- Kubernetes


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def patch_files() -> set[Path]:
    found = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kfile.read_text(encoding="utf-8")).get("patches") or []:
            if "path" in patch:
                found.add((kfile.parent / patch["path"]).resolve())
    return found


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every complete resource in deploy/k8s (kustomizations and patch files excluded)."""
    patches = patch_files()
    for path in k8s_files():
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path, doc


def validate_k8s(resource: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return str(exc.message)
    return None


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    errors = []
    count = 0
    for path, doc in manifests():
        count += 1
        error = validate_k8s(doc, version)
        if error:
            errors.append(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {error}")
    assert count >= 15 and errors == []


RENDERED = {name: render(path) for name, path in OVERLAYS.items()}


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def workloads(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in resources if pod_specs(r)]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    match = selector.get("matchLabels", selector) if selector else {}
    assert not selector.get("matchExpressions"), "matchExpressions are not checked here"
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels") or {})


def container_env(container: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    """Env a container gets: envFrom ConfigMaps, then env (secret values from the template)."""
    configmaps = by_kind(resources, "ConfigMap")
    secrets = by_kind(template_secrets(), "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or {}
        assert ref.get("name") in configmaps, f"ConfigMap {ref} is not in the rendering"
        env.update(configmaps[ref["name"]]["data"])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"Secret {ref['name']} is not in the template"
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
        else:
            env[item["name"]] = "from-the-downward-api"
    return env


def template_secrets() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(SECRET_TEMPLATE.read_text(encoding="utf-8")) if d]


def ocrmesh_containers(
    resources: list[dict[str, Any]], services_only: bool = True
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for each container running one of our images: its services
    (`ocrmesh serve`), and with `services_only` False the identity issuer too."""
    for workload in workloads(resources):
        for container in containers(workload):
            if split_image(container["image"])[0] in built_images():
                if not services_only or container["args"][:1] == ["serve"]:
                    yield workload, container


def quantity(value: Any) -> float:
    """A Kubernetes quantity in base units (cores, bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_every_base_resource(overlay: str) -> None:
    base = {resource_id(r)[:2] + resource_id(r)[3:] for r in render(K8S / "base")}
    rendered = RENDERED[overlay]
    assert {resource_id(r)[:2] + resource_id(r)[3:] for r in rendered} == base
    namespaces = {r["metadata"].get("namespace") for r in rendered}
    assert namespaces == {"ocrmesh"}
    for version in K8S_VERSIONS:
        results = [(r, validate_k8s(r, version)) for r in rendered]
        errors = [f"{r['kind']}/{r['metadata']['name']}: {error}" for r, error in results if error]
        assert errors == [], version


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_renderer_agrees_with_kustomize_when_present(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"kubectl kustomize did not run: {result.stderr.strip()[:200]}")
    real = {resource_id(r): r for r in yaml.safe_load_all(result.stdout) if r}
    assert {resource_id(r): r for r in RENDERED[overlay]} == real


def test_gpu_overlay_requests_a_gpu_and_the_cuda_image() -> None:
    gpu = by_kind(RENDERED["gpu"], "Deployment")["ocr"]
    (container,) = containers(gpu)
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert split_image(container["image"])[0] == "ocrmesh-cuda"
    service, flags = serve_command(container["args"])
    assert service.load(flags, container_env(container, RENDERED["gpu"])).device == "cuda"
    assert by_kind(RENDERED["gpu"], "Deployment")["auth"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].startswith("ocrmesh:")
    cpu_text = yaml.safe_dump_all(RENDERED["cpu"])
    assert "nvidia.com/gpu" not in cpu_text and "ocrmesh-cuda" not in cpu_text


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_images_are_built_or_allowed(overlay: str) -> None:
    images = built_images()
    for workload in workloads(RENDERED[overlay]):
        for container in containers(workload):
            repo, tag, _ = split_image(container["image"])
            assert repo in images or repo in THIRD_PARTY, f"{container['image']} is not ours or allowed"
            assert tag and tag != "latest", f"pin {container['image']}"
            if "etcd" in repo:
                major, minor, patch = (int(x) for x in tag.lstrip("v").split(".")[:3])
                assert (major, minor) > (3, 5) or (minor == 5 and patch >= 17), "etcd 3.5.x needs x >= 17"


def pre_stop_s(container: dict[str, Any]) -> float:
    """The longest a container's preStop hook can take: its sleeps plus its calls' timeouts."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        return float(command[1])
    script = " ".join(command[2:]) if command[:2] == ["/bin/sh", "-c"] else ""
    found = re.findall(r"\bsleep (\d+(?:\.\d+)?)|timeout=(\d+(?:\.\d+)?)", script)
    return sum(float(sleep or timeout) for sleep, timeout in found)


def check_env_references(where: str, container: dict[str, Any]) -> None:
    """$(NAME) in an env value expands only when NAME is defined earlier in the same list."""
    defined: set[str] = set()
    for item in container.get("env") or []:
        for name in re.findall(r"\$\((\w+)\)", str(item.get("value", ""))):
            assert name in defined, f"{where}: {item['name']} uses $({name}) before it is defined"
        defined.add(item["name"])


def check_grpc_service(
    where: str,
    overlay: str,
    service: ServiceSettings,
    config: Any,
    workload: dict[str, Any],
    container: dict[str, Any],
) -> None:
    """OCR and auth: gRPC port and metrics; exec probes asking gRPC health on their port with the
    pod's identity (kubelet's own gRPC probe speaks plaintext, which an mTLS port refuses)."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}, where
    template = workload["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command == ["python", HEALTHCHECK, f"127.0.0.1:{config.port}"], f"{where}: {probe}"
        assert container[probe]["timeoutSeconds"] >= 5 if probe != "startupProbe" else True, (
            f"{where}: {probe}: a Python probe needs time to start"
        )
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    if service.name == "ocr":
        assert "startupProbe" in container, f"{where}: OCR warm-up needs a startupProbe"
        assert config.require_auth, f"{where}: OCR checks tokens itself (the BFF calls pods directly)"
        assert quantity(requests["cpu"]) == config.worker_count * config.threads_per_worker, (
            f"{where}: set OCRMESH_OCR_WORKERS to the CPU request (cpu_count sees the node)"
        )
        peak = max(WORKER_PEAK_MIB, config.max_worker_rss_mb) * 2**20
        assert quantity(limits["memory"]) >= PARENT_MIB * 2**20 + config.worker_count * peak, where
        assert config.max_worker_rss_mb * 2**20 < quantity(limits["memory"]), where
        if overlay == "cpu":
            assert config.device == "cpu"


def check_gateway(
    where: str,
    overlay: str,
    service: ServiceSettings,
    config: Any,
    workload: dict[str, Any],
    container: dict[str, Any],
) -> None:
    """Envoy + in-process control plane: probes reach Envoy admin and the control plane on loopback."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port}, f"{where}: only the listener; admin and xDS stay in the pod"
    assert config.xds == "" and config.tls_cert is None, f"{where}: the control plane runs in the pod"
    assert config.admin_port != config.port != config.xds_port != config.admin_port, where
    ready = ["python", HEALTHCHECK, f"http://127.0.0.1:{config.admin_port}/ready"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ready, f"{where}: {probe} asks Envoy's /ready"
    live = ["python", HEALTHCHECK, f"127.0.0.1:{config.xds_port}"]
    assert container["livenessProbe"]["exec"]["command"] == live, f"{where}: liveness = control plane health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > config.ready_timeout_s, where
    script = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert f"http://127.0.0.1:{config.admin_port}/drain_listeners?graceful" in script, where
    env = {e["name"]: e for e in container["env"]}
    assert env["OCRMESH_GATEWAY_NODE_ID"]["value"] == "$(POD_NAME)", f"{where}: one xDS node per pod"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def check_bff(
    where: str,
    overlay: str,
    service: ServiceSettings,
    config: Any,
    workload: dict[str, Any],
    container: dict[str, Any],
) -> None:
    """The BFF: one HTTP port, probes on routes the app really serves."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.port}, where
    app_module = importlib.import_module("web_bff.app")
    backends = importlib.import_module("web_bff.backends").Backends(config.etcd, 1.0, 1.0)
    app = app_module.create_app(config, backends)
    # Without `with`, the client does not run the app's lifespan: nothing connects to etcd, and
    # /healthz answers 503 (no endpoints known) — a route that exists, unlike a 404.
    client = TestClient(app)
    expected = {"startupProbe": "/", "readinessProbe": "/healthz", "livenessProbe": "/"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http == {"path": path, "port": "http"}, f"{where}: {probe} {http}"
        assert client.get(path).status_code in (200, 503), f"{where}: {probe} {path} is not served"
    assert config.cookie_secure in ("always", "auto"), where


CONTAINER_CHECKS = {
    "ocr": check_grpc_service,
    "auth": check_grpc_service,
    "gateway": check_gateway,
    "bff": check_bff,
}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_ocrmesh_containers_read_their_settings(overlay: str) -> None:
    """Env names, flags, ports, probes, drain timing and sizing all agree with the configs."""
    resources = RENDERED[overlay]
    seen = set()
    for workload, container in ocrmesh_containers(resources):
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        service, flags = serve_command(container["args"])
        seen.add(service.name)
        check_env_references(where, container)
        env = container_env(container, resources)
        named = {k for k in env if k.startswith("OCRMESH_")}
        unread = named - service.env_names - {IDENTITY_ENV}
        assert not unread, f"{where}: not read: {sorted(unread)}"
        config = service.load(flags, env)
        assert config.host in ("0.0.0.0", "::"), f"{where}: listens on {config.host} only"
        pod = workload["spec"]["template"]["spec"]
        drain = pre_stop_s(container) + shutdown_s(service.name, config) + SHUTDOWN_MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= drain, f"{where}: grace period < {drain} s"
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > pod["terminationGracePeriodSeconds"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and "memory" in limits, f"{where}: resources"
        assert service.name in CONTAINER_CHECKS, f"{where}: add checks for `ocrmesh serve {service.name}`"
        CONTAINER_CHECKS[service.name](where, overlay, service, config, workload, container)
    assert seen >= {"ocr", "auth", "gateway", "bff"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_security_contexts(overlay: str) -> None:
    uid = {
        name: int(p)
        for name, p in (
            (
                repo,
                [i for i in parse_dockerfile(path.read_text(encoding="utf-8")) if i.keyword == "USER"][
                    -1
                ].args.split(":")[0],
            )
            for repo, path in built_images().items()
        )
    }
    for workload in workloads(RENDERED[overlay]):
        where = f"{overlay}: {workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        # Only the identity issuer calls the Kubernetes API (test_k8s_identities checks its Role).
        token = workload["metadata"]["name"] == ISSUER
        assert pod.get("automountServiceAccountToken") is token, where
        mounts_needed = {"/tmp"}
        for container in containers(workload):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            repo = split_image(container["image"])[0]
            if repo in uid:
                assert pod["securityContext"]["runAsUser"] == uid[repo], f"{where}: uid != image USER"
                mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert mounts_needed <= mounted, f"{where}: a writable /tmp (emptyDir) is needed"


def test_k8s_references_resolve() -> None:
    """Services, PDBs, HPAs and policies select real pods; ports and names exist."""
    resources = RENDERED["cpu"]
    pods = workloads(resources)
    deployments = by_kind(resources, "Deployment")
    for service in by_kind(resources, "Service").values():
        (target,) = [w for w in pods if selects(service["spec"]["selector"], pod_labels(w))]
        names = {p["name"] for c in containers(target) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {service['metadata']['name']}: {port}"
    for pdb in by_kind(resources, "PodDisruptionBudget").values():
        assert [w for w in pods if selects(pdb["spec"]["selector"], pod_labels(w))], pdb["metadata"]
    for hpa in by_kind(resources, "HorizontalPodAutoscaler").values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "an autoscaled Deployment must not pin replicas"
        assert hpa["spec"]["minReplicas"] >= 2
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    hpas = by_kind(resources, "HorizontalPodAutoscaler").values()
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in hpas}
    rendered_secrets = by_kind(resources, "Secret")
    for workload in pods:
        name = workload["metadata"]["name"]
        if name == ISSUER:  # one writer of the identity Secrets, never two at once
            assert workload["spec"]["replicas"] == 1 and workload["spec"]["strategy"]["type"] == "Recreate"
        elif workload["kind"] == "Deployment" and name not in autoscaled:
            assert workload["spec"]["replicas"] >= 2, name
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" not in volume:
                continue
            secret_name = volume["secret"]["secretName"]
            if secret_name == CA_SECRET:  # made by `kubectl create secret generic` (README)
                assert {i["key"] for i in volume["secret"]["items"]} == {"ca.pem", "ca-key.pem"}
            elif secret_name in rendered_secrets:  # an identity Secret, filled by the issuer
                assert "items" not in volume["secret"], f"{name}: mount all of {secret_name}"
            else:
                secret = by_kind(template_secrets(), "Secret")[secret_name]
                assert {i["key"] for i in volume["secret"]["items"]} <= set(secret["stringData"])


def test_k8s_etcd_cluster() -> None:
    resources = RENDERED["cpu"]
    etcd = by_kind(resources, "StatefulSet")["etcd"]
    assert etcd["spec"]["replicas"] == 3
    headless = by_kind(resources, "Service")[etcd["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    (container,) = containers(etcd)
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    members = [f"etcd-{i}=https://etcd-{i}.{headless['metadata']['name']}:2380" for i in range(3)]
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(members)
    ocr = by_kind(resources, "ConfigMap")["ocrmesh-ocr"]["data"]["OCRMESH_ETCD"]
    assert ocr == ",".join(f"etcd-{i}.{headless['metadata']['name']}:2379" for i in range(3))


def egress_ports(
    policies: list[dict[str, Any]], labels: Mapping[str, str], peer: Mapping[str, str]
) -> set[int]:
    """Ports pods with `labels` may open to pods with `peer` labels (same namespace)."""
    allowed = set()
    for policy in policies:
        if policy["spec"]["podSelector"] and selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("egress", []):
                if any(selects(to.get("podSelector", {}), peer) for to in rule.get("to", [])):
                    allowed |= {port["port"] for port in rule["ports"]}
    return allowed


def ingress_ports(
    policies: list[dict[str, Any]], labels: Mapping[str, str], peer: Mapping[str, str] | None
) -> set[int]:
    """Ports pods with `labels` accept from pods with `peer` labels; peer None: from anywhere."""
    allowed = set()
    for policy in policies:
        if policy["spec"]["podSelector"] and selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                if sources is None or (
                    peer is not None
                    and any(
                        set(src) == {"podSelector"} and selects(src["podSelector"], peer) for src in sources
                    )
                ):
                    allowed |= {port["port"] for port in rule["ports"]}
    return allowed


def test_k8s_network_policies() -> None:
    resources = RENDERED["cpu"]
    policies = list(by_kind(resources, "NetworkPolicy").values())
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "default deny"
    dns = [p for p in policies if p["spec"]["podSelector"] == {} and p["spec"].get("egress")]
    assert dns and {port["port"] for r in dns[0]["spec"]["egress"] for port in r["ports"]} == {53}
    pods = workloads(resources)
    for policy in policies:
        if policy["spec"]["podSelector"]:
            assert [w for w in pods if selects(policy["spec"]["podSelector"], pod_labels(w))], (
                f"NetworkPolicy {policy['metadata']['name']} selects no pod"
            )
    labels = {w["metadata"]["name"]: pod_labels(w) for w in pods}
    for workload, container in ocrmesh_containers(resources):
        name = workload["metadata"]["name"]
        if container_env(container, resources).get("OCRMESH_ETCD"):
            assert 2379 in egress_ports(policies, labels[name], labels["etcd"]), f"{name} -> etcd"
            assert 2379 in ingress_ports(policies, labels["etcd"], labels[name]), f"etcd <- {name}"
    assert 2380 in egress_ports(policies, labels["etcd"], labels["etcd"]), "etcd peers"
    assert 2380 in ingress_ports(policies, labels["etcd"], labels["etcd"]), "etcd peers"
    # The gateway (Envoy) and the BFF call OCR and auth pods directly and read etcd: both ends allow it.
    for client in sorted(ENTRY_POINTS):
        for server, port in (("ocr", 50051), ("auth", 50050), ("etcd", 2379)):
            assert port in egress_ports(policies, labels[client], labels[server]), f"{client} -> {server}"
            assert port in ingress_ports(policies, labels[server], labels[client]), f"{server} <- {client}"
    # Only the entry points accept connections from anywhere, and only on the port they serve.
    for workload in pods:
        name = workload["metadata"]["name"]
        served = {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        open_ports = ingress_ports(policies, labels[name], None)
        assert open_ports == (served if name in ENTRY_POINTS else set()), (
            f"{name} open to all on {open_ports}"
        )


def container_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, `ocrmesh` arguments) of every container running our image, in compose and k8s."""
    images = built_images()
    for name, svc in compose()["services"].items():
        if split_image(service_image(svc))[0] in images:
            yield f"compose {name}", compose_argv(svc) or []
    for overlay, resources in RENDERED.items():
        for workload, container in ocrmesh_containers(resources, services_only=False):
            yield f"{overlay} {workload['metadata']['name']}", list(container["args"])


def test_container_commands_parse_with_the_ocrmesh_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Each container's command is a real `ocrmesh serve NAME` (or, for the identity issuer and the
    tools, another `ocrmesh` command), and the parser `ocrmesh` itself builds for it (cli/main.py's
    Command registry) accepts its flags; the gateway and the BFF are among them."""
    by_name = {command.name: command for command in cli.SERVE}
    top = {command.name: command for command in cli.TOP}
    seen = set()
    for where, argv in container_commands():
        if argv[:1] != ["serve"] and argv[:1] and argv[0] in top:
            parser, _ = cli._parser_for(top[argv[0]], f"ocrmesh {argv[0]}")
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{where}: `ocrmesh {' '.join(argv)}` is refused: {capsys.readouterr().err}")
            continue
        assert argv[:1] == ["serve"] and argv[1] in by_name, f"{where}: {argv} is no `ocrmesh serve` command"
        parser, _ = cli._parser_for(by_name[argv[1]], f"ocrmesh serve {argv[1]}")
        try:
            parser.parse_args(argv[2:])
        except SystemExit:
            pytest.fail(f"{where}: `ocrmesh {' '.join(argv)}` is refused: {capsys.readouterr().err}")
        seen.add(argv[1])
    assert seen >= {"ocr", "auth", "gateway", "bff"}
    for name in sorted(ENTRY_POINTS):
        with pytest.raises(SystemExit) as exited:
            cli.main(["serve", name, "--help"])
        assert exited.value.code == 0 and f"ocrmesh serve {name}" in capsys.readouterr().out


def test_secret_template_is_a_placeholder_outside_the_kustomization() -> None:
    (secret,) = template_secrets()
    assert kubernetes_validate.validate(secret, K8S_VERSIONS[0], strict=True)
    assert all(PLACEHOLDER.search(v) for v in secret["stringData"].values())
    for overlay in RENDERED.values():
        # The only Secrets applied are the empty identity Secrets the issuer fills: with no data in
        # the kustomization, `apply -k` again never overwrites what the issuer wrote.
        for secret in by_kind(overlay, "Secret").values():
            assert not {"data", "stringData"} & set(secret), "apply -k must never overwrite credentials"
            assert secret["metadata"]["name"].startswith("ocrmesh-identity-"), secret["metadata"]["name"]


def test_every_ocrmesh_env_name_in_deploy_files_is_read_by_a_config() -> None:
    """The acceptance check: every OCRMESH_* named in compose, k8s or the Dockerfiles is real."""
    unknown = {}
    for path in [COMPOSE, *k8s_files(), *DOCKERFILES]:
        names = set(re.findall(r"\bOCRMESH_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
        if names - ALL_ENV_NAMES:
            unknown[str(path.relative_to(ROOT))] = sorted(names - ALL_ENV_NAMES)
    assert unknown == {}, "named in deploy files but read by no config dataclass"


# ---------------------------------------------------------------- mesh identities (issue 16)

IDENTITY_MOUNT = "/var/run/ocrmesh/identity"  # where every workload finds its identity folder
OUR_USER = (10001, 10001)  # the Dockerfiles' USER
ETCD_USER = (65532, 65532)  # the etcd images' (and the StatefulSet's) user


def issuer_specs(argv: list[str]) -> tuple[argparse.Namespace, list[IssueSpec]]:
    """`ocrmesh ca issuer` arguments, parsed by its own parser, and its --issue specs."""
    parser, _ = cli._parser_for({c.name: c for c in cli.TOP}["ca"], "ocrmesh ca")
    ns = parser.parse_args(argv[1:])
    assert ns.ca_command == "issuer", argv
    default_owner = parse_owner(ns.owner) if ns.owner else None
    return ns, [parse_issue(text, default_owner) for text in ns.issue]


def compose_mounts(svc: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """A compose service's named-volume mounts: volume -> (path in the container, read-only)."""
    mounts = {}
    for entry in svc.get("volumes") or []:
        assert isinstance(entry, str), f"use the short volume syntax: {entry}"
        source, target, *mode = entry.split(":")
        mounts[source] = (target, mode == ["ro"])
    return mounts


def test_compose_identities() -> None:
    """Every service has its own identity, issued for its service name by the one issuer, mounted
    read-only from a volume no other service mounts and readable by the container's user; only the
    issuer mounts the CA; etcd serves TLS with client-cert auth from its identity and gets RBAC."""
    services = compose()["services"]
    (issuer_name,) = [n for n, s in services.items() if (compose_argv(s) or [""])[:2] == ["ca", "issuer"]]
    issuer = services[issuer_name]
    ns, specs = issuer_specs(compose_argv(issuer) or [])
    issuer_mounts = compose_mounts(issuer)
    by_path = {target: volume for volume, (target, _ro) in issuer_mounts.items()}
    ca_volume = by_path[str(ns.dir)]
    assert ns.init, "the issuer makes the CA in its own volume on first start"
    issued = {by_path[spec.target]: spec for spec in specs}
    assert len(issued) == len(specs), "one volume per identity"
    etcd = sorted(n for n, s in services.items() if split_image(service_image(s))[0].endswith("/etcd"))
    consumers: dict[str, str] = {}
    for name, svc in services.items():
        mounts = compose_mounts(svc)
        if name != issuer_name:
            assert ca_volume not in mounts, f"{name} mounts the CA key"
        if name in (issuer_name, "postgres"):
            continue
        identity_volumes = [v for v in mounts if v in issued]
        assert len(identity_volumes) == 1, f"{name}: one identity volume, not {identity_volumes}"
        (volume,) = identity_volumes
        assert mounts[volume] == (IDENTITY_MOUNT, True), (
            f"{name}: mount {volume} read-only at {IDENTITY_MOUNT}"
        )
        consumers.setdefault(volume, name)
        assert consumers[volume] == name or {name, consumers[volume]} == {"ocr", "ocr-gpu"}, (
            f"{volume} mounted by {consumers[volume]} and {name}"
        )
        spec = issued[volume]
        env = compose_env(svc)
        if name in etcd:
            assert spec.service == "etcd" and name in spec.hosts and "127.0.0.1" in spec.hosts, spec
            assert spec.owner == ETCD_USER, f"{name}: its identity must belong to etcd's user"
            for key in ("ETCD_CERT_FILE", "ETCD_PEER_CERT_FILE", "ETCDCTL_CERT"):
                assert env[key] == f"{IDENTITY_MOUNT}/cert.pem", f"{name}: {key}"
            for key in ("ETCD_KEY_FILE", "ETCD_PEER_KEY_FILE", "ETCDCTL_KEY"):
                assert env[key] == f"{IDENTITY_MOUNT}/key.pem", f"{name}: {key}"
            for key in ("ETCD_TRUSTED_CA_FILE", "ETCD_PEER_TRUSTED_CA_FILE", "ETCDCTL_CACERT"):
                assert env[key] == f"{IDENTITY_MOUNT}/ca.pem", f"{name}: {key}"
            assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true", name
            assert env["ETCD_PEER_CERT_ALLOWED_CN"] == "etcd"
            for key in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS"):
                assert env[key].startswith("https://"), f"{name}: {key} is not TLS"
            assert "http://" not in env["ETCD_INITIAL_CLUSTER"]
        else:
            argv = compose_argv(svc) or []
            service = argv[1] if argv[:1] == ["serve"] else "cli"  # people's commands: `cli`
            assert spec.service == service, f"{name} runs {service} with a {spec.service} identity"
            assert spec.owner == OUR_USER and "user" not in svc, f"{name}: its identity must be its user's"
            assert env[IDENTITY_ENV] == IDENTITY_MOUNT, f"{name}: no {IDENTITY_ENV}"
            assert issuer_name in (svc.get("depends_on") or {}), f"{name} may start before its identity"
    assert set(consumers) == set(issued), f"issued but mounted by no one: {set(issued) - set(consumers)}"
    assert {issued[v].service for v in consumers} >= {"ocr", "auth", "gateway", "bff", "etcd", "cli"}
    assert ns.etcd_access == ",".join(f"{n}:2379" for n in etcd), "the issuer sets up etcd's RBAC"
    assert issuer.get("user") == "0:0" and set(issuer["cap_add"]) == {"CHOWN", "DAC_OVERRIDE"}
    assert issuer["cap_drop"] == ["ALL"] and issuer["read_only"] and not issuer.get("ports")


ISSUER = "identity-issuer"  # the Deployment running `ocrmesh ca issuer`
CA_SECRET = "ocrmesh-mesh-ca"  # the mesh CA, made by the operator, mounted into the issuer only


def volume_secrets(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Secret name -> (mount path, read-only) for the Secret volumes `container` mounts."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    mounted = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})  # absent: a StatefulSet's volumeClaimTemplates
        if "secret" in volume:
            mounted[volume["secret"]["secretName"]] = (mount["mountPath"], bool(mount.get("readOnly")))
    return mounted


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_k8s_identities(overlay: str) -> None:
    """Every service's pods mount their own identity Secret read-only, issued for that service by
    the one issuer; only the issuer mounts the CA, and its ServiceAccount may patch only the
    identity Secrets; etcd serves TLS with client-cert auth from its identity and gets RBAC."""
    resources = RENDERED[overlay]
    issuer = by_kind(resources, "Deployment")[ISSUER]
    (issuer_container,) = containers(issuer)
    ns, specs = issuer_specs(issuer_container["args"])
    assert ns.mounted_secret and not ns.init, "the CA comes from the operator's Secret"
    issued = {spec.secret: spec for spec in specs}
    assert None not in issued, "in a cluster every identity goes to a Secret"
    identity_secrets = set(by_kind(resources, "Secret"))
    assert set(issued) == identity_secrets, "the issuer fills exactly the Secrets the kustomization makes"
    mounts = volume_secrets(issuer, issuer_container)
    assert mounts[CA_SECRET] == (str(ns.dir), True)
    # Its ServiceAccount: get/patch on the identity Secrets, nothing else.
    pod = issuer["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    bindings = [
        binding
        for binding in by_kind(resources, "RoleBinding").values()
        if any(sub["kind"] == "ServiceAccount" and sub["name"] == account for sub in binding["subjects"])
    ]
    assert len(bindings) == 1 and bindings[0]["roleRef"]["kind"] == "Role"
    role = by_kind(resources, "Role")[bindings[0]["roleRef"]["name"]]
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"], rule
        assert set(rule["verbs"]) <= {"get", "patch"} and set(rule["resourceNames"]) == identity_secrets, rule
    assert not [r for r in resources if r["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    # Every other pod: no token, no CA, exactly its own identity, read-only, where it looks for it.
    used = set()
    for workload in workloads(resources):
        name = workload["metadata"]["name"]
        if name == ISSUER:
            continue
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] != account, name
        (container,) = containers(workload)
        secrets = volume_secrets(workload, container)
        assert CA_SECRET not in secrets, f"{name} mounts the CA key"
        own = [s for s in secrets if s in identity_secrets]
        assert len(own) == 1 and secrets[own[0]] == (IDENTITY_MOUNT, True), f"{name}: {secrets}"
        spec = issued[own[0]]
        used.add(own[0])
        env = container_env(container, resources)
        if container.get("args", [""])[:1] == ["serve"]:
            assert spec.service == container["args"][1], (
                f"{name} runs {container['args'][1]} as {spec.service}"
            )
            assert env[IDENTITY_ENV] == IDENTITY_MOUNT, f"{name}: no {IDENTITY_ENV}"
        else:
            assert name == "etcd" and spec.service == "etcd", name
            replicas = workload["spec"]["replicas"]
            assert set(spec.hosts) >= {f"etcd-{i}.etcd" for i in range(replicas)}, spec.hosts
            for key in ("ETCD_CERT_FILE", "ETCD_PEER_CERT_FILE"):
                assert env[key] == f"{IDENTITY_MOUNT}/cert.pem", key
            for key in ("ETCD_KEY_FILE", "ETCD_PEER_KEY_FILE"):
                assert env[key] == f"{IDENTITY_MOUNT}/key.pem", key
            for key in ("ETCD_TRUSTED_CA_FILE", "ETCD_PEER_TRUSTED_CA_FILE"):
                assert env[key] == f"{IDENTITY_MOUNT}/ca.pem", key
            assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
            assert env["ETCD_PEER_CERT_ALLOWED_CN"] == "etcd"
            for key in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS"):
                assert env[key].startswith("https://"), key
            assert ns.etcd_access == ",".join(f"etcd-{i}.etcd:2379" for i in range(replicas))
    assert used | {"ocrmesh-identity-cli"} == identity_secrets, "an identity Secret nobody mounts"
    # The issuer reaches etcd (to set up RBAC) and the API server; nothing reaches it.
    policies = list(by_kind(resources, "NetworkPolicy").values())
    labels = {w["metadata"]["name"]: pod_labels(w) for w in workloads(resources)}
    assert 2379 in egress_ports(policies, labels[ISSUER], labels["etcd"])
    assert 2379 in ingress_ports(policies, labels["etcd"], labels[ISSUER])
    assert ingress_ports(policies, labels[ISSUER], None) == set()
