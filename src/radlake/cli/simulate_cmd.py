"""`radlake simulate`: production traffic against /predict (issue 11; being built)."""

from __future__ import annotations

import typer


def simulate() -> None:
    """Send production-like traffic to /predict (not built yet)."""
    raise typer.Exit(2)
