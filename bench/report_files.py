"""What every study writes: markdown tables, and its JSON and markdown reports side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def table_head(columns: Sequence[str], align: str = "") -> list[str]:
    """A markdown table's header and rule; `align` has one letter per column, "r" right-aligns it."""
    rule = "".join("---:|" if align[i : i + 1] == "r" else "---|" for i in range(len(columns)))
    return ["| " + " | ".join(columns) + " |", "|" + rule]


def table_row(cells: Sequence[object]) -> str:
    """One markdown table row; a `|` inside a cell is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A whole markdown table."""
    return "\n".join([*table_head(columns, align), *(table_row(row) for row in rows)])


def write_report(
    out: Path, stem: str, data: Mapping[str, Any], markdown: str, *, indent: int = 2
) -> tuple[Path, Path]:
    """Write OUT/STEM.json and OUT/STEM.md (making OUT); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n", encoding="utf-8")
    return json_path, md_path
