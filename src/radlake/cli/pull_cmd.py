"""`radlake pull`: fetch from a PACS (C-FIND, then C-MOVE or C-GET) or a DICOMweb
server (QIDO-RS, then WADO-RS) what a query matches and the catalog lacks."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer

from radlake.cli.ingest_cmd import JsonOption, phase_reporter
from radlake.cli.output import EXIT_USAGE, console, err_console, print_json
from radlake.cli.receive_cmd import _ae_title, _log_to_stderr
from radlake.errors import ConfigError
from radlake.lake import load_settings, open_lake
from radlake.network.dimse import PeerAddressError, parse_peer
from radlake.network.pull import pull_dimse
from radlake.network.pull_dicomweb import DEFAULT_WORKERS, pull_dicomweb
from radlake.network.query import QueryError, parse_query

EXIT_INCOMPLETE = 1


class Via(StrEnum):
    move = "move"
    get = "get"


def _usage_error(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(EXIT_USAGE)


def _log_warnings_to_stderr() -> None:
    # receive's log setup, at warnings: a quarantined instance is one line (its reason,
    # never its UID), the receiver's start and stop lines are not shown.
    _log_to_stderr()
    logging.getLogger("radlake.network").setLevel(logging.WARNING)


def pull(
    query: Annotated[
        str,
        typer.Option(
            "--query",
            help='Attributes to match, e.g. "Modality=CR StudyDate=20200101-" '
            "(DICOM keywords; dates and ranges as YYYYMMDD[-YYYYMMDD]).",
        ),
    ],
    pacs: Annotated[
        str | None,
        typer.Option("--from", help="The PACS as AE@host:port (C-FIND, then C-MOVE/C-GET)."),
    ] = None,
    dicomweb: Annotated[
        str | None, typer.Option("--dicomweb", help="A DICOMweb service root URL.")
    ] = None,
    via: Annotated[
        Via, typer.Option(help="How instances come from the PACS: C-MOVE or C-GET.")
    ] = Via.move,
    ae: Annotated[
        str,
        typer.Option("--ae", help="Our AE title: the calling AE and the C-MOVE destination."),
    ] = "RADLAKE",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port the C-MOVE destination listens on.")
    ] = 11112,
    host: Annotated[
        str,
        typer.Option(help="Address the C-MOVE destination listens on (0.0.0.0: every one)."),
    ] = "127.0.0.1",
    source: Annotated[
        str | None, typer.Option(help="Source name (default: pacs, or dicomweb).")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Parallel DICOMweb retrievals.")
    ] = DEFAULT_WORKERS,
    as_json: JsonOption = False,
) -> None:
    """Pull what --query matches and the catalog lacks; re-running fetches only what
    is still missing."""
    if (pacs is None) == (dicomweb is None):
        raise _usage_error("give exactly one of --from AE@host:port and --dicomweb URL")
    try:
        parsed = parse_query(query)
        peer = parse_peer(pacs) if pacs is not None else None
        title = _ae_title(ae, "--ae")
    except (QueryError, PeerAddressError, ConfigError) as exc:
        raise _usage_error(f"--query: {exc}" if isinstance(exc, QueryError) else str(exc)) from None
    settings = load_settings()
    lake = open_lake(settings)
    _log_warnings_to_stderr()
    with phase_reporter("querying", not as_json) as progress:
        if peer is not None:
            summary = pull_dimse(
                lake,
                peer,
                parsed,
                ae_title=title,
                host=host,
                port=port,
                via="get" if via is Via.get else "move",
                source=source or "pacs",
                progress=progress,
            )
        else:
            assert dicomweb is not None
            summary = pull_dicomweb(
                lake,
                dicomweb,
                parsed,
                source=source or "dicomweb",
                workers=workers,
                progress=progress,
                token=(
                    settings.pull_dicomweb_token.get_secret_value()
                    if settings.pull_dicomweb_token
                    else None
                ),
            )
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(summary.line(), highlight=False)
    if summary.not_retrieved:
        err_console.print(
            f"{summary.not_retrieved} instances not retrieved: run the same command again "
            "to fetch what is missing",
            highlight=False,
        )
        raise typer.Exit(EXIT_INCOMPLETE)
