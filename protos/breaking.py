"""`buf breaking` for `make test`: the contracts may not break what the last release tag (v*) or,
until there is one, the previous commit of main published.

The working tree is compared, so an uncommitted breaking change fails too. OCRMESH_BUF_AGAINST
names another baseline: a git ref (`v0.2.0`, `origin/main`) or a buf image file (`buf build -o
old.binpb`). A `--against` image alone fails on this two-module workspace ("input contained 2
images, whereas against contained 1"), so an image baseline is compared with an image of the
working tree. Without git history (a tarball, a depth-1 clone) the check is skipped, loudly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """The output of `git ARGS` in the repository, or None when git fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def baseline() -> str | None:
    """The last release tag (v*) before HEAD, else HEAD's parent, else None (no history)."""
    parent = _git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
    tag = _git("describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD")
    if tag and _git("rev-parse", f"{tag}^{{commit}}") != _git("rev-parse", "HEAD"):
        return tag
    return "HEAD~1" if parent else None


def _buf() -> str:
    return shutil.which("buf") or str(Path(sys.executable).parent / "buf")


def check(against: str) -> int:
    """Run buf breaking against `against` (a git ref or an image file); buf's exit status."""
    env = {**os.environ}
    env.setdefault("BUF_CACHE_DIR", str(ROOT / ".buf-cache"))
    if Path(against).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            current = str(Path(tmp) / "current.binpb")
            subprocess.run([_buf(), "build", "-o", current], cwd=ROOT, env=env, check=True)
            return subprocess.run(
                [_buf(), "breaking", current, "--against", against], cwd=ROOT, env=env
            ).returncode
    return subprocess.run(
        [_buf(), "breaking", "--against", f".git#ref={against}"], cwd=ROOT, env=env
    ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--against",
        default=os.environ.get("OCRMESH_BUF_AGAINST", ""),
        help="git ref or buf image to compare with (default: last v* tag, else HEAD~1)",
    )
    ns = parser.parse_args(argv)
    against = ns.against or baseline()
    if against is None:
        print("!!! buf breaking SKIPPED: no git history to compare the contracts with (a depth-1 clone?)")
        return 0
    status = check(against)
    if status == 0:
        print(f"buf breaking: no breaking change against {against}")
    else:
        print(f"buf breaking: the contracts break what {against} published (see above)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
