"""One xDS stream's events in arrival order: each client request, and each new snapshot in the cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from gateway.cache import SnapshotCache
from mesh.tasks import cancel_and_wait

Request = TypeVar("Request")


async def requests_and_changes(
    request_iterator: AsyncIterator[Request], cache: SnapshotCache
) -> AsyncGenerator[Request | None, None]:
    """Yield each request from the client, and None whenever the cache has a new generation.

    A change that arrives together with a request is yielded first. Ends when the client closes its
    side. Use it under `contextlib.aclosing` so the reader task stops with the stream.
    """
    requests: asyncio.Queue[Request | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in request_iterator:
                await requests.put(request)
        finally:
            await requests.put(None)

    reader = asyncio.create_task(read(), name="xds stream reader")
    seen = cache.generation
    try:
        while True:
            got_request = asyncio.create_task(requests.get())
            got_change = asyncio.create_task(cache.changed(seen))
            done, _ = await asyncio.wait({got_request, got_change}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (got_request, got_change):
                if waiter not in done:
                    await cancel_and_wait(waiter)
            if got_change in done:
                seen = got_change.result()
                yield None
            if got_request in done:
                request = got_request.result()
                if request is None:
                    return
                yield request
    finally:
        await cancel_and_wait(reader)
