"""The IP of a gRPC peer, from the string grpc gives for it."""

from __future__ import annotations


def peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5"); other peers whole."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    return peer  # unix sockets and the like: the whole peer string
