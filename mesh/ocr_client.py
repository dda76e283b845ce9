"""A thin OCR client: one image per call, unary when small, chunked stream when large."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from ocrmesh.ocr.v1 import ocr_pb2

from mesh.balancer import multicallable
from mesh.kept_status import KeptStatusCall

CHUNK_BYTES = 1024 * 1024
# Above this, use RecognizeStream so no server or proxy needs a bigger message limit.
UNARY_LIMIT_BYTES = 3 * 1024 * 1024

SERVICE = "/ocrmesh.ocr.v1.OcrService/"
RECOGNIZE = SERVICE + "Recognize"
RECOGNIZE_STREAM = SERVICE + "RecognizeStream"
RECOGNIZE_PAGES = SERVICE + "RecognizePages"
GET_INFO = SERVICE + "GetInfo"

Metadata = Sequence[tuple[str, str]]
M = TypeVar("M", bound=Message)


class Caller(Protocol):
    """What OcrClient sends calls through: one channel (`ChannelCaller`) or a balancer (`MeshClient`)."""

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> M: ...

    async def stream_unary(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> M: ...

    async def stream_stream(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        on_reply: Callable[[M], Awaitable[None]],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None: ...


def _serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class ChannelCaller:
    """Calls over one grpc.aio channel (the callables are cached per method)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._callables: dict[tuple[str, str], Any] = {}

    def _callable(self, kind: str, method: str, response_type: type[Message]) -> Any:
        found = self._callables.get((kind, method))
        if found is None:
            found = multicallable(self.channel, kind, method, _serialize, response_type.FromString)
            self._callables[(kind, method)] = found
        return found

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> M:
        callable_ = self._callable("unary_unary", method, response_type)
        reply: M = await callable_(request, timeout=timeout, metadata=metadata)
        return reply

    async def stream_unary(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> M:
        # KeptStatusCall: a refusal before the upload ends reaches the caller as the server sent it,
        # not as grpcio's INTERNAL "Failed execute_batch" (grpc/grpc#36066; see mesh/kept_status.py).
        callable_ = self._callable("stream_unary", method, response_type)
        reply: M = await KeptStatusCall(callable_(iter(requests), timeout=timeout, metadata=metadata))
        return reply

    async def stream_stream(
        self,
        method: str,
        requests: Sequence[Message],
        response_type: type[M],
        on_reply: Callable[[M], Awaitable[None]],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> None:
        callable_ = self._callable("stream_stream", method, response_type)
        await KeptStatusCall(callable_(iter(requests), timeout=timeout, metadata=metadata)).each_reply(
            on_reply
        )


def chunks(
    data: bytes, filename: str, options: ocr_pb2.RecognizeOptions | None
) -> list[ocr_pb2.RecognizeStreamRequest]:
    """A chunked upload: the header, then the bytes in CHUNK_BYTES pieces (a list: it can be resent)."""
    header = ocr_pb2.RecognizeStreamRequest(
        header=ocr_pb2.RecognizeStreamHeader(filename=filename, options=options, total_bytes=len(data))
    )
    return [header] + [
        ocr_pb2.RecognizeStreamRequest(chunk=data[start : start + CHUNK_BYTES])
        for start in range(0, len(data), CHUNK_BYTES)
    ]


class OcrClient:
    """Calls OcrService over a channel, or through any `Caller` such as a balancing MeshClient."""

    def __init__(self, channel: grpc.aio.Channel | Caller) -> None:
        self.caller: Caller = ChannelCaller(channel) if isinstance(channel, grpc.aio.Channel) else channel

    async def recognize(
        self,
        data: bytes,
        filename: str = "",
        options: ocr_pb2.RecognizeOptions | None = None,
        timeout: float | None = 60.0,
        metadata: Metadata = (),
    ) -> ocr_pb2.OcrResult:
        if len(data) <= UNARY_LIMIT_BYTES:
            reply = await self.caller.unary(
                RECOGNIZE,
                ocr_pb2.RecognizeRequest(image=data, filename=filename, options=options),
                ocr_pb2.RecognizeResponse,
                timeout=timeout,
                metadata=metadata,
            )
            return reply.result
        streamed = await self.caller.stream_unary(
            RECOGNIZE_STREAM,
            chunks(data, filename, options),
            ocr_pb2.RecognizeStreamResponse,
            timeout=timeout,
            metadata=metadata,
        )
        return streamed.result

    async def recognize_pages(
        self,
        data: bytes,
        on_event: Callable[[ocr_pb2.RecognizePagesResponse], Awaitable[None]],
        filename: str = "",
        options: ocr_pb2.RecognizeOptions | None = None,
        timeout: float | None = 60.0,
        metadata: Metadata = (),
    ) -> ocr_pb2.OcrResult:
        """RecognizePages: `on_event` hears `accepted`, each page as it is read, then the result
        (which is also returned). After a retry it hears `accepted` again and the pages from the first."""
        final: list[ocr_pb2.OcrResult] = []

        async def hear(reply: ocr_pb2.RecognizePagesResponse) -> None:
            if reply.WhichOneof("event") == "result":
                final.append(reply.result)
            await on_event(reply)

        parts = [
            ocr_pb2.RecognizePagesRequest(header=m.header)
            if m.HasField("header")
            else ocr_pb2.RecognizePagesRequest(chunk=m.chunk)
            for m in chunks(data, filename, options)
        ]
        await self.caller.stream_stream(
            RECOGNIZE_PAGES, parts, ocr_pb2.RecognizePagesResponse, hear, timeout=timeout, metadata=metadata
        )
        if not final:
            raise RuntimeError("RecognizePages ended without a result")
        return final[-1]

    async def info(self, timeout: float = 10.0, metadata: Metadata = ()) -> ocr_pb2.GetInfoResponse:
        return await self.caller.unary(
            GET_INFO, ocr_pb2.GetInfoRequest(), ocr_pb2.GetInfoResponse, timeout=timeout, metadata=metadata
        )
