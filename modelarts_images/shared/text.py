"""How sizes and long texts are shown: one format everywhere (terminal, reports, error messages)."""

from __future__ import annotations


def size(count: float, *, precision: int = 1) -> str:
    """Decimal units, as docker prints image sizes: 1.5 KB is 1500 bytes."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":  # a difference of sizes may be negative
            return f"{count:.{precision}f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    raise AssertionError("unreachable")


def one_line(text: str, width: int = 300) -> str:
    """The text on one line (runs of whitespace, newlines included, become one space), cut at `width` with '…'."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
