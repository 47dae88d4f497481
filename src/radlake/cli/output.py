"""Consoles and small output helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

# Results go to stdout (pipe-able, --json); progress and errors go to stderr.
# soft_wrap: a message stays one line when piped, whatever the terminal width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
EXIT_USAGE = 2  # what Typer answers for a bad argument


def print_json(value: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, sort_keys=True) + "\n")


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KB' (decimal units, as disks and networks count)."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def whole_number(text: str | None, option: str, minimum: int) -> int | None:
    """An option's value as an int, or one error line and exit 2 (Typer's own
    message for a bad value is a multi-line panel)."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        err_console.print(
            f"error: {option} expects a whole number of at least {minimum}, got {text!r}",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE)
    return value
