"""What every BFF route shares (config, mesh clients, refresh coalescing, the status snapshot)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from web_bff.backends import Backends
from web_bff.config import BffConfig
from web_bff.session import RefreshCoalescer
from web_bff.status_view import SharedSnapshot


@dataclass
class BffState:
    """One app's shared state, kept on `app.state.bff` (no globals: two apps can run in one test)."""

    config: BffConfig
    backends: Backends
    coalescer: RefreshCoalescer = field(default_factory=RefreshCoalescer)
    registry_view: SharedSnapshot = field(default_factory=SharedSnapshot)


def bff_state(request: Request) -> BffState:
    """The route's app state (a FastAPI dependency)."""
    state: BffState = request.app.state.bff
    return state


State = Annotated[BffState, Depends(bff_state)]
"""A route parameter typed `State` receives the app's BffState."""
