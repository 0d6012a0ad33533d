"""Markdown tables: the one writer behind the grid report, the dry-run plan and the demo's tables."""

from __future__ import annotations

from typing import Any, Sequence


def fmt(value: Any) -> str:
    """A cell: '-' for None, 4 significant digits for floats, thousands separators for big ints."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], cols: Sequence[str], headers: Sequence[str] | None = None,
                   align: Sequence[str] | None = None) -> list[str]:
    """Lines of a markdown table: one row per dict, cells formatted by `fmt` (strings pass as they are).

    Args:
        rows: the table's rows, keyed by column.
        cols: the keys to show, in order.
        headers: the header cells (default: the keys).
        align: per column "l" or "r" (default: all left).
    """
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in (align or ["l"] * len(cols)))
    lines = ["| " + " | ".join(headers or cols) + " |", rule]
    return lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
