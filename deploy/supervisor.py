"""`ocrmesh up`: run the mesh locally on embedded defaults and print where everything listens."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from mesh import config as mesh_config
from ocr_svc.config import OcrConfig
from ocr_svc.server import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address every service listens on")
    parser.add_argument("--ocr-port", type=int, default=50051, help="OCR service gRPC port")
    parser.add_argument(
        "--device",
        default=None,
        choices=("auto", "cpu", "cuda"),
        help="OCR execution device (default: auto)",
    )
    parser.add_argument("--workers", type=int, default=None, help="OCR worker processes")


def run(ns: argparse.Namespace) -> int:
    try:
        config = mesh_config.load(
            OcrConfig,
            {"host": ns.host, "port": ns.ocr_port, "device": ns.device, "workers": ns.workers},
        )
    except mesh_config.ConfigError as exc:
        print(f"ocrmesh up: {exc}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, instance_id=config.instance_id or "ocr-1")
    print("ocrmesh up: starting the OCR service (Ctrl-C stops it) ...", flush=True)
    print(
        f"  try: .venv/bin/ocrmesh ocr ../shared/ocr-corpus/real/rapidocr_ch_en_num.jpg "
        f"--target {config.host}:{config.port}",
        flush=True,
    )
    return asyncio.run(serve(config))
