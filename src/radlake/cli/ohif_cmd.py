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


def _target(out: Path) -> Path:
    """The file --out names: app-config.js inside a folder, a link's target, never
    anything but a regular file (a device or pipe is refused, not replaced).

    Raises:
        ConfigError: out cannot be a config file.
    """
    try:
        if out.is_dir():
            out = out / "app-config.js"
        out = out.resolve() if out.is_symlink() else out
        if out.exists() and not out.is_file():
            raise ConfigError(f"--out: {out} exists and is not a regular file")
        if not out.parent.is_dir():
            raise ConfigError(f"--out: no folder {out.parent}")
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--out: cannot use {str(out)[:200]}: {reason[:200]}") from None
    return out


def _write_replacing(path: Path, text: str) -> None:
    """Write text to path through a temporary file beside it, so a viewer never loads a
    half-written config and a failed write leaves the old one."""
    temporary: str | None = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".app-config-", suffix=".js")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # read by the web server that serves OHIF
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"--out: cannot write {path}: {exc.strerror or exc}") from None


def _print(text: str) -> None:
    """text on standard output (as is: rich would treat some text as markup).

    Raises:
        ConfigError: standard output is closed or cannot be written.
    """
    try:
        if sys.stdout is None:
            raise OSError("closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        raise ConfigError(f"cannot write to standard output: {exc.strerror or exc}") from None


def ohif_config(
    url: Annotated[
        str, typer.Argument(help="radlake's base URL as the browser reaches it.")
    ] = "http://127.0.0.1:8000",
    out: Annotated[
        Path | None,
        typer.Option(help="Write app-config.js here: a file or folder ('-' or none: stdout)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the dicomweb token it creates.")] = "ohif",
) -> None:
    """Write an OHIF Viewer (v2) app-config.js that browses this lake's /dicomweb.

    It creates a dicomweb token for the config: it reads /dicomweb (de-identified
    objects) and nothing else. Revoke it with `radlake token revoke NAME`.
    """
    root = dicomweb_root(url)
    target = None if out is None or str(out) == "-" else _target(out)
    settings = load_settings()
    lake = open_lake(settings)
    # One transaction: if the config cannot be written, no token is left behind. The
    # token is inserted before the file is written, so a name taken meanwhile by
    # another process fails first and never leaves a config with a dead token.
    with transaction(lake.engine) as session:
        token = create_token(session, name=name, role=Role.DICOMWEB)
        text = ohif_app_config(root, token)
        if target is None:
            _print(text)
        else:
            _write_replacing(target, text)
    err_console.print(
        f"created dicomweb token {name!r} for OHIF (revoke: radlake token revoke {name})",
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
