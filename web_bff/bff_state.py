"""What every BFF route shares (config, mesh clients, refresh coalescing, the status snapshot)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from mesh.ocr_limits import accepted_by_all
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

    def upload_limits(self) -> tuple[int, list[str]]:
        """The largest upload every OCR instance takes (and this BFF allows), and the formats all
        of them take, from their registry records; the BFF's own limit and no formats while no
        instance is known."""
        limits = accepted_by_all(self.backends.ocr.instances())
        if limits is None:
            return self.config.max_upload_bytes, []
        return min(self.config.max_upload_bytes, limits.max_image_bytes), list(limits.formats)


def bff_state(request: Request) -> BffState:
    """The route's app state (a FastAPI dependency)."""
    state: BffState = request.app.state.bff
    return state


State = Annotated[BffState, Depends(bff_state)]
"""A route parameter typed `State` receives the app's BffState."""
