"""Rich consoles for command output: tables at full width when the output is not a terminal.

Rich falls back to 80 columns when it writes to a pipe or a file, so saved outputs lost the
numbers of any wider table ("pad…", "0.…"). A console made here is as wide as its content needs
there (unless COLUMNS says otherwise), and as wide as the terminal on a terminal.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNBOUNDED_COLUMNS = 10_000


def output_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that never cuts a table when redirected."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED_COLUMNS)
