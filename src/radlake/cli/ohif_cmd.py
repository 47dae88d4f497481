"""`radlake ohif-config`: an OHIF Viewer configuration for this lake's DICOMweb."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from radlake.api.ohif_config import dicomweb_root, ohif_app_config
from radlake.auth import Role, create_token
from radlake.catalog.db import transaction
from radlake.cli.output import err_console
from radlake.errors import ConfigError
from radlake.lake import load_settings, open_lake


def _write_replacing(path: Path, text: str) -> None:
    """Write text to path through a temporary file beside it, so a viewer never loads a
    half-written config and a failed write leaves the old one."""
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"--out: no folder {directory}")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".app-config-", suffix=".js")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # read by the web server that serves OHIF
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"--out: cannot write {path}: {exc.strerror or exc}") from None


def ohif_config(
    url: Annotated[
        str, typer.Argument(help="radlake's base URL as the browser reaches it.")
    ] = "http://127.0.0.1:8000",
    out: Annotated[
        Path | None,
        typer.Option(help="Write app-config.js here (default: standard output)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the viewer token it creates.")] = "ohif",
) -> None:
    """Write an OHIF Viewer (v2) app-config.js that browses this lake's /dicomweb.

    It creates a viewer token (read-only) for the config; revoke it with
    `radlake token revoke NAME`.
    """
    root = dicomweb_root(url)
    if out is not None and out.is_dir():
        out = out / "app-config.js"
    settings = load_settings()
    lake = open_lake(settings)
    # One transaction: if the config cannot be written, no token is left behind.
    with transaction(lake.engine) as session:
        token = create_token(session, name=name, role=Role.VIEWER)
        text = ohif_app_config(root, token)
        if out is None:
            sys.stdout.write(text)  # as is: rich would treat some text as markup
        else:
            _write_replacing(out, text)
    err_console.print(
        f"created viewer token {name!r} for OHIF (revoke: radlake token revoke {name})",
        markup=False,
        highlight=False,
    )
    if not settings.dicomweb_cors_origins:
        err_console.print(
            "note: OHIF on another origin also needs "
            "RADLAKE_DICOMWEB_CORS_ORIGINS='[\"http://host:port\"]' when `radlake serve` runs",
            markup=False,
            highlight=False,
        )
