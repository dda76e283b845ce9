"""The `ocrmesh` console script: wires subcommands to the services, client and benchmarks."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mesh import __version__, mesh_transport


@dataclass(frozen=True)
class Command:
    """A subcommand implemented by `module`'s `add`/`run` functions, imported only when used."""

    name: str
    help: str
    module: str
    add: str = "add_arguments"
    run: str = "run"

    def load(self) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.add), getattr(mod, self.run)


SERVE = [
    Command("ocr", "run an OCR service instance", "ocr_svc.server"),
    Command("auth", "run an auth service instance", "auth_svc.server"),
    Command("etcd", "run the embedded single-node etcd", "etcd.launcher"),
    Command("gateway", "run Envoy configured live by the xDS control plane", "gateway.gateway_server"),
    Command("xds", "run the xDS control plane alone (for `serve gateway --xds`)", "gateway.xds_command"),
    Command("bff", "run the web backend-for-frontend and browser UI", "web_bff.server"),
]
TOP = [
    Command("ocr", "recognise text in images", "cli.ocr_commands", "add_ocr_arguments", "run_ocr"),
    Command("info", "describe an OCR instance", "cli.ocr_commands", "add_info_arguments", "run_info"),
    Command("status", "services, instances and their health, from etcd", "cli.status_command"),
    Command("config", "get or set live settings kept in etcd", "cli.config_command"),
    Command("eval", "measure OCR accuracy (CER) on a labelled manifest", "bench.studies.eval"),
    Command("up", "run the whole mesh locally and print its URLs", "deploy.supervisor"),
    Command("account", "register, log in (print an access token) or check a token", "cli.account_commands"),
    Command("ca", "the mesh CA: init, issue workload certificates, show one", "cli.ca_command"),
]
CLIENT_COMMANDS = frozenset({"ocr", "info", "status", "config", "account", "eval"})
"""Commands that call mesh services or etcd directly, so take --identity-dir (mTLS) when given."""
BENCH = [
    Command("engine", "measure the raw in-process engine ceiling", "bench.studies.engine_ceiling"),
    Command("foundation", "engine vs service, overload and large-image runs", "bench.studies.foundation"),
    Command("auth", "logins/s vs raw bcrypt, token verifications/s", "bench.studies.auth_bench"),
    Command(
        "balancer", "MeshClient overhead per call vs a direct channel", "bench.studies.balancer_overhead"
    ),
    Command(
        "layout", "2 OCR instances x 1 worker vs 1 x 2 workers, side by side", "bench.studies.instance_layout"
    ),
    Command(
        "gateway", "Envoy gateway vs direct: GetInfo p50/p95, OCR throughput", "bench.studies.gateway_bench"
    ),
    Command("sweep", "instances x concurrency x path matrix on a local mesh, with report", "bench.sweep"),
    Command("peers", "rapidocr-api vs ocrmesh (gRPC, BFF): same load, side by side", "bench.studies.peers"),
    Command("bff", "OCR through the web BFF vs direct gRPC, alternating rounds", "bench.studies.bff_bench"),
    Command(
        "admission",
        "one OCR instance: well-behaved vs retry-at-once clients, RSS",
        "bench.studies.admission_bench",
    ),
    Command(
        "lone-request",
        "--lone-request-threads auto vs off: OK/s and p50 at -c 1..8, alternating",
        "bench.studies.lone_request_bench",
    ),
    Command(
        "mtls", "mutual TLS vs plaintext: GetInfo p50 per hop, Recognize OK/s", "bench.studies.mtls_bench"
    ),
    Command(
        "hardening",
        "issue 17's protections on vs off: Recognize OK/s ratio per sweep cell, alternating",
        "bench.studies.hardening_bench",
    ),
    Command(
        "chaos",
        "kill -9 one of two OCR instances mid-load, direct and via the gateway",
        "bench.studies.chaos_bench",
    ),
    Command(
        "pdf",
        "a 20-page PDF: pages/s, peak RSS, an image caller's p95 beside it, refusals",
        "bench.studies.pdf_bench",
    ),
    Command(
        "quantize",
        "int8 detector/recogniser vs fp32: CER on the corpus and engine throughput",
        "bench.studies.quantize_bench",
    ),
    Command(
        "control-plane",
        "etcd, watchers, xDS and Envoy cost at 10..2,000 endpoints and up to 500 watchers",
        "bench.studies.control_plane_bench",
    ),
]
BENCH_LOAD = Command("bench", "ghz-compatible load test of one gRPC method", "bench.load_cli")

EPILOG = """examples:
  ocrmesh serve ocr --port 50051            run an OCR instance
  ocrmesh ocr photo.jpg --target 127.0.0.1:50051
  ocrmesh bench --call ocrmesh.ocr.v1.OcrService.Recognize --image photo.jpg -c 4 -z 30s 127.0.0.1:50051
  ocrmesh bench engine photo.jpg            the engine's own ceiling, same worker layout
  ocrmesh <command> --help                  details of one command
"""


def _parser_for(command: Command, prog: str) -> tuple[argparse.ArgumentParser, Callable[..., int]]:
    add, run = command.load()
    parser = argparse.ArgumentParser(prog=prog, description=command.help)
    add(parser)
    return parser, run


def _overview() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocrmesh",
        description="ocrmesh: an OCR service mesh (gRPC OCR workers, etcd registry, Envoy gateway).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocrmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run one service: " + ", ".join(c.name for c in SERVE))
    serve.add_argument("service", choices=[c.name for c in SERVE])
    for command in TOP:
        sub.add_parser(command.name, help=command.help, add_help=False)
    sub.add_parser(
        "bench",
        help="load tests: `ocrmesh bench [ghz flags] HOST:PORT`, or "
        + ", ".join(f"`bench {c.name}`" for c in BENCH),
        add_help=False,
    )
    return parser


def _run(command: Command, prog: str, argv: list[str], client: bool = False) -> int:
    """Parse `argv` for `command` and run it; a `client` command also takes --identity-dir and
    calls mesh services over mTLS with that identity when given."""
    try:
        parser, run = _parser_for(command, prog)
    except ModuleNotFoundError as exc:
        print(f"{prog}: not available in this build ({exc.name} is missing)", file=sys.stderr)
        return 2
    if client:
        mesh_transport.add_client_arguments(parser)
    ns = parser.parse_args(argv)
    if client:
        try:
            mesh_transport.configure_client(ns)
        except mesh_transport.TransportError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
    return run(ns)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overview = _overview()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        overview.parse_args(argv or ["--help"])
        return 0
    head, rest = argv[0], argv[1:]
    try:
        if head == "serve":
            by_name = {c.name: c for c in SERVE}
            if not rest or rest[0] not in by_name:
                overview.parse_args(["serve", *rest[:1]] if rest else ["serve", "--help"])
                return 2
            return _run(by_name[rest[0]], f"ocrmesh serve {rest[0]}", rest[1:])
        if head == "bench":
            by_name = {c.name: c for c in BENCH}
            if rest and rest[0] in by_name:
                return _run(by_name[rest[0]], f"ocrmesh bench {rest[0]}", rest[1:])
            return _run(BENCH_LOAD, "ocrmesh bench", rest, client=True)
        for command in TOP:
            if head == command.name:
                return _run(command, f"ocrmesh {head}", rest, client=head in CLIENT_COMMANDS)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    overview.parse_args(argv)  # prints the usage error for an unknown command
    return 2


if __name__ == "__main__":
    sys.exit(main())
