"""The deploy tests run only when asked for by marker (`pytest -m deploy`, `make test-deploy`)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests/deploy unless the -m expression names `deploy`: they are also marked `slow`, but
    `make test-slow` or a bare `pytest` should not start a Docker engine and build images."""
    if "deploy" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="builds images and runs a Docker engine: `make test-deploy`")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)
