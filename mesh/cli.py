"""The `ocrmesh` console script: wires subcommands to the services, client and benchmarks."""

from __future__ import annotations

import argparse
import sys

from mesh import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocrmesh", description="An OCR service mesh.")
    parser.add_argument("--version", action="version", version=f"ocrmesh {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
