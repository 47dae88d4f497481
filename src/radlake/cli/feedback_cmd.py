"""`radlake feedback ...`: import and list reviewers' feedback (issue 11; being built)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Reviewers' feedback on predictions.", no_args_is_help=True)
