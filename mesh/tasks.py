"""asyncio task helpers: cancelling a background task and waiting until it has really finished."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any], poll: float = 0.1) -> None:
    """Cancel `task` and wait until it has finished.

    grpc and aetcd can turn a cancellation that lands mid-call into an ordinary error (or
    swallow it while closing a channel), so the task is cancelled again until it is done. The
    caller's own cancellation still propagates; the task's exception, if any, is left to its
    owner's logging.
    """
    rounds = 0
    while not task.done():
        task.cancel()
        rounds += 1
        await asyncio.wait({task}, timeout=poll)
    if rounds > 1 or not task.cancelled():
        log.debug("a cancellation was swallowed", extra={"task": task.get_name(), "rounds": rounds})
    if not task.cancelled():
        task.exception()  # mark it retrieved: the owner logs or re-raises it where it matters
