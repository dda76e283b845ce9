"""What every study writes: markdown tables, and its JSON and markdown reports side by side."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.stop_signals import run_stoppable


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


Measure = Callable[[argparse.Namespace, Path, Console], Coroutine[Any, Any, dict[str, Any]]]


def run_study(
    name: str, ns: argparse.Namespace, measure: Measure, markdown: Callable[[dict[str, Any]], str]
) -> dict[str, Any] | None:
    """A study command's body: `measure` in a scratch folder (progress on stderr), then its report
    printed and, with `ns.out`, written as OUT.json and OUT.md; the result, or None after saying on
    stderr why the study could not run (a RuntimeError from `measure`)."""
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-bench-") as tmp:
        try:
            result = run_stoppable(measure(ns, Path(tmp), console))
        except RuntimeError as exc:
            print(f"{name} bench: {exc}", file=sys.stderr)
            return None
    text = markdown(result)
    if ns.out is not None:
        write_report(ns.out.parent, ns.out.name, result, text)
        console.print(f"wrote {ns.out.with_suffix('.md')} and .json")
    print(text)
    return result
