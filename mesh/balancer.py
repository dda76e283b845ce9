"""Where every client channel comes from: shared options and limits (balancing builds on this)."""

from __future__ import annotations

import grpc

MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def channel_options() -> list[tuple[str, int | str]]:
    """Options every ocrmesh client channel uses."""
    return [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 0),
    ]


def direct_channel(target: str) -> grpc.aio.Channel:
    """A plaintext channel to one address (host:port), with our options."""
    return grpc.aio.insecure_channel(target, options=channel_options())
