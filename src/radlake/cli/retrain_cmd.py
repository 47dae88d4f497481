"""`radlake retrain-set ...`: feedback made into a retraining set (issue 11; being built)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Retraining sets built from feedback.", no_args_is_help=True)
