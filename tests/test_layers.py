"""Layering that the code relies on (DESIGN.md): ingest workers never load the catalog's
database stack, so a worker process stays small and never opens a connection; source
adapters only read layouts into records (no catalog, no store, no pipeline)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import radlake

PACKAGE = Path(radlake.__file__).parent
ADAPTER_MAY_NOT_IMPORT = (
    "radlake.pipelines",
    "radlake.catalog",
    "radlake.storage",
    "sqlalchemy",
)


def test_ingest_workers_do_not_import_sqlalchemy() -> None:
    code = (
        "import sys, radlake.pipelines.worker, radlake.pipelines.executor;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports, anywhere in it (also inside functions), with
    relative imports resolved against its package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from radlake import pipelines` imports radlake.pipelines
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_of(path: Path) -> str:
    """The dotted package a module file belongs to (radlake/sources/base.py -> radlake.sources)."""
    return ".".join(path.relative_to(PACKAGE.parent).parent.parts)


def test_imported_modules_sees_every_form(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import sqlalchemy.orm\n"
        "from radlake import storage\n"
        "from ..catalog import db\n"
        "def f():\n    import radlake.pipelines.ingest\n"
    )
    found = imported_modules(source, "radlake.sources")
    assert {"sqlalchemy.orm", "radlake.storage", "radlake.catalog", "radlake.pipelines.ingest"} <= (
        found
    )


def test_source_adapters_import_no_catalog_store_or_pipeline() -> None:
    modules = sorted((PACKAGE / "sources").rglob("*.py"))
    assert len(modules) >= 5  # base, csvfile and the three dataset layouts at least
    offences = [
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in modules
        for module in sorted(imported_modules(path, package_of(path)))
        if any(
            module == banned or module.startswith(f"{banned}.") for banned in ADAPTER_MAY_NOT_IMPORT
        )
    ]
    assert offences == []
