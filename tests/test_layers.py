"""Layering that the code relies on (DESIGN.md): ingest workers never load the catalog's
database stack, so a worker process stays small and never opens a connection."""

from __future__ import annotations

import subprocess
import sys


def test_ingest_workers_do_not_import_sqlalchemy() -> None:
    code = (
        "import sys, radlake.pipelines.worker, radlake.pipelines.executor;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
