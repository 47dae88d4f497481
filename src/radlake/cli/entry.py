"""The `radlake` console script: Ctrl-C while the CLI is still importing its modules
(a few seconds on a busy machine) ends with one line, like Ctrl-C during a command."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def run() -> None:
    """Console-script entry point: import the CLI, then run it."""
    try:
        from radlake.cli.main import run as run_cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    run_cli()
