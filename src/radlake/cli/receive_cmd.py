"""`radlake receive`: a DICOM C-STORE receiver (with C-ECHO) feeding the lake."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Annotated

import typer

from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, err_console, print_json
from radlake.errors import ConfigError
from radlake.lake import load_settings, open_lake
from radlake.network.receiver import DEFAULT_BATCH_SECONDS, DEFAULT_BATCH_SIZE, Receiver

AE_TITLE_LENGTH = 16  # PS3.5 6.2: an AE title is at most 16 characters


def _ae_title(text: str, option: str) -> str:
    title = text.strip()
    if not title or len(title) > AE_TITLE_LENGTH or not title.isascii() or "\\" in title:
        raise ConfigError(
            f"{option}: expected an AE title of 1 to {AE_TITLE_LENGTH} ASCII characters "
            f"without a backslash, got {text[:40]!r}"
        )
    return title


def _log_to_stderr() -> None:
    # Refusals and faults are logged one line each (reasons carry no patient data);
    # pynetdicom's own per-message log stays at warnings.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    network = logging.getLogger("radlake.network")
    network.addHandler(handler)
    network.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def receive(
    ae: Annotated[str, typer.Option("--ae", help="This receiver's AE title.")] = "RADLAKE",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    allow: Annotated[
        str | None,
        typer.Option(help="Calling AE titles allowed, comma-separated (default: any)."),
    ] = None,
    max_associations: Annotated[
        int, typer.Option(min=1, max=1000, help="Concurrent associations at most.")
    ] = 10,
    source: Annotated[
        str, typer.Option(help="Name of the source received instances belong to.")
    ] = "dicom-receiver",
    batch: Annotated[
        int, typer.Option(min=1, max=10_000, help="Catalog rows written per transaction.")
    ] = DEFAULT_BATCH_SIZE,
    as_json: JsonOption = False,
) -> None:
    """Receive DICOM instances over C-STORE (C-ECHO answered) into the lake, as one
    job, until Ctrl-C or SIGTERM; then print what was received."""
    title = _ae_title(ae, "--ae")
    allowed = [_ae_title(a, "--allow") for a in (allow or "").split(",") if a.strip()]
    lake = open_lake(load_settings())
    _log_to_stderr()
    receiver = Receiver(
        lake,
        ae_title=title,
        host=host,
        port=port,
        allow=allowed,
        max_associations=max_associations,
        source=source,
        batch_size=batch,
        batch_seconds=DEFAULT_BATCH_SECONDS,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        receiver.start()
        bound_host, bound_port = receiver.address
        who = ", ".join(allowed) if allowed else "any calling AE"
        err_console.print(
            f"receiving as {title} on {bound_host}:{bound_port} from {who}; Ctrl-C stops",
            highlight=False,
        )
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = receiver.stop()
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(summary.line(), highlight=False)
