"""`ocrmesh config get|set|unset|list`: read and change the live settings kept in etcd."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly, describe_failure
from mesh.live_config import CONFIG_PREFIX, LiveSetting, config_key, parse_assignments

TABLES = {"ocr": "ocr_svc.live_settings"}


def table_for(service: str) -> Mapping[str, LiveSetting]:
    if service not in TABLES:
        raise ValueError(
            f"no live settings for {service!r} (services with live settings: {', '.join(TABLES)})"
        )
    return importlib.import_module(TABLES[service]).TABLE  # type: ignore[no-any-return]


async def _read(client: Any, service: str, timeout: float) -> dict[str, Any]:
    got = await bounded(client.get(config_key(service).encode()), timeout)
    return json.loads(got.value) if got is not None else {}


async def _main(ns: argparse.Namespace) -> int:
    client = ClientFactory(ns.etcd, ns.timeout).new()
    try:
        if ns.action == "list":
            got = await bounded(client.get_prefix(CONFIG_PREFIX.encode()), ns.timeout)
            stored = {kv.key.decode().removeprefix(CONFIG_PREFIX): json.loads(kv.value) for kv in got}
            for service in TABLES:
                print(f"{service}: overrides {json.dumps(stored.get(service, {}))}")
                for s in table_for(service).values():
                    print(f"  {s.name:<20} {s.kind.__name__:<5} {s.help}")
            return 0
        table = table_for(ns.service)
        current = await _read(client, ns.service, ns.timeout)
        if ns.action == "get":
            print(json.dumps(current, indent=2))
            return 0
        if ns.action == "set":
            updated = {**current, **parse_assignments(table, ns.assignments)}
        else:
            unknown = [n for n in ns.names if n not in table]
            if unknown:
                raise ValueError(f"not live settings: {', '.join(unknown)}")
            updated = {k: v for k, v in current.items() if k not in ns.names}
        await bounded(client.put(config_key(ns.service).encode(), json.dumps(updated).encode()), ns.timeout)
        print(f"{config_key(ns.service)} = {json.dumps(updated)} (instances apply it within a second)")
        return 0
    except ValueError as exc:
        print(f"ocrmesh config: {exc}", file=sys.stderr)
        return 2
    except ETCD_ERRORS as exc:
        print(f"ocrmesh config: {describe_failure(exc, ns.etcd)}", file=sys.stderr)
        return 1
    finally:
        await close_quietly(client, ns.timeout)


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--etcd and --timeout; on the actions without defaults, so they only override when given."""
    parser.add_argument(
        "--etcd",
        default="127.0.0.1:2379" if defaults else argparse.SUPPRESS,
        help="etcd endpoints (host:port,...)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0 if defaults else argparse.SUPPRESS,
        help="seconds per etcd call",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_options(parser, defaults=True)
    # The same options after the action too: `ocrmesh config set ocr queue_depth=8 --etcd HOST:PORT`.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="list services' live settings and their overrides", parents=[common])
    get = sub.add_parser("get", help="show a service's overrides", parents=[common])
    get.add_argument("service")
    put = sub.add_parser(
        "set", help="set overrides, e.g. `ocrmesh config set ocr queue_depth=8`", parents=[common]
    )
    put.add_argument("service")
    put.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    unset = sub.add_parser(
        "unset", help="remove overrides (back to each instance's own value)", parents=[common]
    )
    unset.add_argument("service")
    unset.add_argument("names", nargs="+", metavar="NAME")


def run(ns: argparse.Namespace) -> int:
    return asyncio.run(_main(ns))
