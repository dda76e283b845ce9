"""Run a benchmark's event loop so that SIGTERM stops it the way Ctrl-C does, closing what it started.

A benchmark starts a whole mesh (etcd, services, Envoy) as child processes and stops them when its
`async with` ends. Ctrl-C gets there: asyncio cancels the main task, the `async with` blocks close
on the way out. SIGTERM (`kill`, `timeout`, a CI job's limit) would end Python at once and leave the
mesh running with nobody to stop it. Hand-written: asyncio.run handles SIGINT only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, with SIGTERM cancelling `main` (so its cleanup runs) and then raising
    KeyboardInterrupt, as Ctrl-C does."""
    terminated = False

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        handled = False
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals on Windows' loop
            loop.add_signal_handler(signal.SIGTERM, on_term)
            handled = True
        try:
            return await main
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt("terminated (SIGTERM)") from None
        raise
