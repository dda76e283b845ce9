"""Child processes that get SIGTERM when their parent dies, so none is ever orphaned."""

from __future__ import annotations

import shutil
import sys


def die_with_parent(argv: list[str]) -> list[str]:
    """`argv` wrapped so the child gets SIGTERM if this process dies (Linux, util-linux setpriv).

    setpriv sets the parent-death signal in the child itself. A Python `preexec_fn` calling prctl
    cannot be used instead: forking a process that runs gRPC threads and then running Python code
    in the child crashes now and then. Where setpriv is missing the command runs as it is.
    """
    if not sys.platform.startswith("linux"):
        return argv
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGTERM", *argv] if setpriv else argv
