"""The sweep's cells (OCR x auth instances x path x concurrency), their rounds and order, resume and ETA."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PATHS = ("direct", "gateway", "bff")
CELL_SUFFIX = ".json"


class PlanError(ValueError):
    """A sweep flag that cannot be planned; the message names the flag and a valid example."""


def parse_counts(text: str, flag: str, *, minimum: int = 1) -> tuple[int, ...]:
    """ "1,2,4" as (1, 2, 4): distinct, ascending, each at least `minimum`."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PlanError(f"{flag} {text!r}: expected comma-separated whole numbers, like 1,2,4") from None
    if not values:
        raise PlanError(f"{flag} is empty: give at least one number, like {flag} 1,2")
    low = [v for v in values if v < minimum]
    if low:
        raise PlanError(f"{flag}: {low[0]} is below {minimum}")
    return tuple(sorted(set(values)))


def counts_type(flag: str) -> Callable[[str], list[int]]:
    """`parse_counts` as an argparse `type` for `flag` (its error becomes argparse's message)."""

    def parse(text: str) -> list[int]:
        try:
            return list(parse_counts(text, flag))
        except PlanError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def parse_paths(text: str) -> tuple[str, ...]:
    """ "direct,gateway" as a tuple in the canonical order direct, gateway, bff."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(PATHS))
    if unknown or not wanted:
        raise PlanError(f"--path {text!r}: choose from {','.join(PATHS)}")
    return tuple(p for p in PATHS if p in wanted)


def parse_mix(text: str) -> dict[str, int]:
    """ "login=1,ocr=9" as {"login": 1, "ocr": 9}; only login and ocr are known call kinds."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in ("login", "ocr"):
            raise PlanError(f"--mix {text!r}: expected login=N,ocr=M (for example login=1,ocr=9)")
        try:
            mix[name] = int(weight)
        except ValueError:
            raise PlanError(f"--mix {text!r}: {weight!r} is not a whole number") from None
        if mix[name] < 0:
            raise PlanError(f"--mix {text!r}: weights cannot be negative")
    if mix.get("ocr", 0) + mix.get("login", 0) == 0:
        raise PlanError(f"--mix {text!r}: at least one weight must be above 0")
    return mix


@dataclass(frozen=True, order=True)
class Cell:
    """One measurement: this many instances, this path, this many closed-loop clients."""

    ocr: int
    auth: int
    path: str
    concurrency: int

    @property
    def key(self) -> str:
        """A file-name-safe id, e.g. "ocr2-auth1-gateway-c16"."""
        return f"ocr{self.ocr}-auth{self.auth}-{self.path}-c{self.concurrency}"

    @property
    def mesh(self) -> tuple[int, int]:
        """The mesh this cell runs on: (OCR instances, auth instances)."""
        return self.ocr, self.auth


def plan(
    ocr: Sequence[int], auth: Sequence[int], paths: Sequence[str], concurrency: Sequence[int]
) -> list[Cell]:
    """Every combination, grouped so each mesh (OCR x auth) starts once, then by path, then by
    rising concurrency (a cell's leftovers then never queue in front of a lighter cell)."""
    order = {p: i for i, p in enumerate(PATHS)}
    cells = [Cell(o, a, p, c) for o in ocr for a in auth for p in paths for c in concurrency]
    return sorted(cells, key=lambda cell: (cell.ocr, cell.auth, order[cell.path], cell.concurrency))


@dataclass(frozen=True)
class Settings:
    """What makes two runs of one cell comparable; a recorded cell with other settings is redone."""

    image_sha256: str
    duration_s: float
    warmup_s: float
    workers: int
    mix: tuple[tuple[str, int], ...] = ()

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CellRound:
    """One measurement to make: a cell in one round (rounds count from 1)."""

    cell: Cell
    round: int = 1

    @property
    def key(self) -> str:
        """The cell's key, with ".r2" etc. after it from round 2 on (round 1 is the cell's own key)."""
        return self.cell.key if self.round == 1 else f"{self.cell.key}.r{self.round}"

    @property
    def mesh(self) -> tuple[int, int]:
        return self.cell.mesh


def schedule(cells: Sequence[Cell], rounds: int) -> list[CellRound]:
    """Each mesh's cells round by round: odd rounds in plan order, even rounds reversed, so a cell's
    place in its round (and load that drifts during a round) weighs on every cell alike. Meshes stay
    contiguous, so each mesh still starts once."""
    out: list[CellRound] = []
    for mesh in dict.fromkeys(cell.mesh for cell in cells):
        mine = [cell for cell in cells if cell.mesh == mesh]
        for r in range(1, rounds + 1):
            out += [CellRound(cell, r) for cell in (mine if r % 2 else mine[::-1])]
    return out


def cell_file(folder: Path, cell: Cell, round_: int = 1) -> Path:
    """cells/KEY.json for round 1 (as before rounds existed), cells/KEY.rN.json for round N."""
    return folder / "cells" / f"{CellRound(cell, round_).key}{CELL_SUFFIX}"


def record_round(record: Mapping[str, Any]) -> int:
    """The round a recorded cell was measured in (records from before rounds are round 1)."""
    return int(record.get("round") or 1)


def recorded(folder: Path, settings: Settings) -> dict[tuple[str, int], dict[str, Any]]:
    """Cells already measured in `folder` with these settings, by (cell key, round); unreadable files
    are redone."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted((folder / "cells").glob(f"*{CELL_SUFFIX}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("settings") == settings.fingerprint():
            key = str(record.get("cell", {}).get("key", path.stem.split(".")[0]))
            found[key, record_round(record)] = record
    return found


def pending(units: Iterable[CellRound], done: Mapping[tuple[str, int], Any]) -> list[CellRound]:
    """The (cell, round) measurements still to make, in schedule order."""
    return [unit for unit in units if (unit.cell.key, unit.round) not in done]


def estimate_remaining_s(
    todo: Sequence[CellRound], cell_s: float, mesh_start_s: float, running_mesh: tuple[int, int] | None
) -> float:
    """Seconds left: each (cell, round)'s warm-up + load + overhead, and one start per mesh not yet up."""
    meshes = {unit.mesh for unit in todo} - ({running_mesh} if running_mesh else set())
    return len(todo) * cell_s + len(meshes) * mesh_start_s
