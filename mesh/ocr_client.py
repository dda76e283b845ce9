"""A thin OCR client: one image per call, unary when small, chunked stream when large."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

CHUNK_BYTES = 1024 * 1024
# Above this, use RecognizeStream so no server or proxy needs a bigger message limit.
UNARY_LIMIT_BYTES = 3 * 1024 * 1024

Metadata = Sequence[tuple[str, str]]


def _chunks(
    data: bytes, filename: str, options: ocr_pb2.RecognizeOptions | None
) -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
    async def gen() -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
        yield ocr_pb2.RecognizeStreamRequest(
            header=ocr_pb2.RecognizeStreamHeader(
                filename=filename, options=options, total_bytes=len(data)
            )
        )
        for start in range(0, len(data), CHUNK_BYTES):
            yield ocr_pb2.RecognizeStreamRequest(chunk=data[start : start + CHUNK_BYTES])

    return gen()


class OcrClient:
    """Calls one OcrService over a given channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = ocr_pb2_grpc.OcrServiceStub(channel)

    async def recognize(
        self,
        data: bytes,
        filename: str = "",
        options: ocr_pb2.RecognizeOptions | None = None,
        timeout: float | None = 60.0,
        metadata: Metadata = (),
    ) -> ocr_pb2.OcrResult:
        if len(data) <= UNARY_LIMIT_BYTES:
            reply = await self.stub.Recognize(
                ocr_pb2.RecognizeRequest(image=data, filename=filename, options=options),
                timeout=timeout,
                metadata=metadata,
            )
            return reply.result
        streamed = await self.stub.RecognizeStream(
            _chunks(data, filename, options), timeout=timeout, metadata=metadata
        )
        return streamed.result

    async def info(self, timeout: float = 10.0, metadata: Metadata = ()) -> ocr_pb2.GetInfoResponse:
        return await self.stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=timeout, metadata=metadata)
