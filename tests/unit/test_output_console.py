"""Tables printed to a pipe keep every column and digit (rich alone cuts them to 80 columns)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
from rich.table import Table
from mesh.console import output_console

table = Table(title="wide")
for i in range(12):
    table.add_column(f"column_number_{i}")
table.add_row(*[f"0.{i:04d}123456" for i in range(12)])
output_console().print(table)
"""


def _printed(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    return proc.stdout


def test_a_wide_table_is_printed_whole_into_a_pipe() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = _printed(env)
    for i in range(12):
        assert f"column_number_{i}" in out and f"0.{i:04d}123456" in out, out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) > 200


def test_columns_still_sets_the_width() -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "LINES"}, "COLUMNS": "80"}
    out = _printed(env)
    assert max(len(line) for line in out.splitlines()) <= 80
