"""Where xDS control planes publish each client's ACK/NACK state in etcd, and how to read it back."""

from __future__ import annotations

import json
from typing import Any

from mesh.etcd_client import ETCD_ERRORS, ClientFactory, bounded, close_quietly

PREFIX = "/ocrmesh/v1/xds/clients/"
"""One key per node: PREFIX + node id ('/' replaced), JSON from NodeStatus.summary() + control_plane."""


def client_key(node_id: str) -> str:
    return PREFIX + node_id.replace("/", "_")


async def read_clients(etcd: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every published xDS client status (empty when etcd has none or cannot be read)."""
    client = ClientFactory(etcd, timeout).new()
    try:
        got = await bounded(client.get_prefix(PREFIX.encode()), timeout)
    except ETCD_ERRORS:
        return []
    finally:
        await close_quietly(client, timeout)
    found = []
    for kv in got:
        try:
            value = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return sorted(found, key=lambda v: str(v.get("node", "")))
