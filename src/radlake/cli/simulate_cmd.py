"""`radlake simulate`: production traffic against POST /predict (issue 11).

Stages of concurrent workers (--pattern 1,2,3,5,3,2,1, --stage-seconds each) send real
HTTP requests to the API, started here on 127.0.0.1 unless --url names a running one;
with --review a simulated reviewer files feedback on every answer through the API.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated
from urllib.parse import urlsplit

import typer

from radlake.auth import Role, create_token, revoke_token
from radlake.catalog.db import transaction
from radlake.catalog.models import Job
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, err_console, print_json
from radlake.cli.serve_cmd import receipt_protocol
from radlake.config import Settings
from radlake.inference.service import served_model
from radlake.lake import Lake, load_settings, open_lake
from radlake.pipelines.predict import select_image_ids
from radlake.traffic.load import DEFAULT_TIMEOUT, Plan, Sent, run_load
from radlake.traffic.pattern import DEFAULT_PATTERN, SimulationError, parse_pattern
from radlake.traffic.report import Row, review_line, summarize, table
from radlake.traffic.reviewer import DEFAULT_ACCEPT_IOU, MATCH_IOU

EXIT_INTERRUPTED = 130


def simulate(
    model: Annotated[str, typer.Option(help="NAME, NAME@ALIAS or NAME:VERSION.")],
    dataset: Annotated[str, typer.Option(help="The dataset whose split is the traffic.")],
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    split: Annotated[str, typer.Option(help="The split whose images are sent.")] = "production",
    pattern: Annotated[
        str, typer.Option(help="Concurrent workers per stage, comma-separated.")
    ] = DEFAULT_PATTERN,
    stage_seconds: Annotated[
        float, typer.Option(min=0.1, max=86400, help="Each stage's duration.")
    ] = 60.0,
    max_requests: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many requests in all.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="A running API (default: start one here on 127.0.0.1).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="RADLAKE_TOKEN", help="The token for --url.")
    ] = None,
    review: Annotated[
        bool, typer.Option("--review", help="File simulated feedback on every answer.")
    ] = False,
    accept_iou: Annotated[
        float,
        typer.Option(min=MATCH_IOU, max=1.0, help="The reviewer accepts a box from this IoU."),
    ] = DEFAULT_ACCEPT_IOU,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds one request may take.")
    ] = DEFAULT_TIMEOUT,
    out: Annotated[
        Path | None,
        typer.Option(help="JSON-lines results (default: RADLAKE_HOME/simulations/<time>.jsonl)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Send production-like traffic to POST /predict in stages of concurrent workers
    and report each stage's throughput, latency and errors."""
    stages = parse_pattern(pattern)
    settings = load_settings()
    lake = open_lake(settings)
    image_ids = select_image_ids(lake, dataset=dataset, dataset_version=version, split=split)
    if not image_ids:
        which = "the newest version" if version is None else f"version {version}"
        raise SimulationError(
            f"split {split!r:.60} of {which} of dataset {dataset!r:.60} has no images (a "
            "retraining set's version keeps no production images: give --version of the "
            "version the traffic came from)"
        )
    served = served_model(lake, model)
    if url is not None:
        _check_url(url)
        if not token:
            raise SimulationError("--url needs a token: give --token or set RADLAKE_TOKEN")
    results = _results_path(settings, out)
    try:
        sink_file = results.open("x", encoding="utf-8")
    except OSError as exc:
        raise SimulationError(f"cannot write --out {results}: {exc.strerror or exc}") from None
    plan = Plan(
        url="",
        token=token or "",
        model=model,
        image_ids=tuple(image_ids),
        pattern=stages,
        stage_seconds=stage_seconds,
        max_requests=max_requests,
        timeout=timeout,
        review=review,
        classes=served.class_names,
        accept_iou=accept_iou,
    )
    quiet = as_json

    def announce(stage: int, workers: int) -> None:
        if not quiet:
            err_console.print(
                f"stage {stage}/{len(stages)}: {workers} worker(s) for {stage_seconds:g} s",
                highlight=False,
            )

    started = datetime.now(UTC)
    with sink_file as sink, _api(lake, settings, url, review) as api:
        base, plan_token, caller = api
        plan = replace(plan, url=base, token=plan_token or plan.token)
        result = run_load(plan, _writer(sink), announce)
    rows = summarize(result)
    run = {
        "model": model,
        "dataset": dataset,
        "split": split,
        "images": len(image_ids),
        "pattern": list(stages),
        "stage_seconds": stage_seconds,
    }
    record_simulation(
        lake,
        parameters=run | {"url": "in-process" if url is None else "external", "review": review},
        rows=rows,
        started=started,
        interrupted=result.interrupted,
    )
    if as_json:
        print_json(
            run
            | {
                "url": url or "in-process",
                "caller": caller,
                "stages": [row.as_dict() for row in rows[:-1]],
                "total": rows[-1].as_dict(),
                "interrupted": result.interrupted,
                "results": str(results),
            }
        )
    else:
        for line in table(rows):
            console.print(line, highlight=False, markup=False)
        if review:
            console.print(review_line(rows[-1]), highlight=False, markup=False)
        console.print(
            f"{len(result.sent)} requests to {url or 'the API in this process'} "
            f"({len(image_ids)} images of {dataset} {split}); results in {results}",
            highlight=False,
            markup=False,
        )
    if result.interrupted:
        err_console.print("interrupted: the report covers the requests sent until then")
        raise typer.Exit(EXIT_INTERRUPTED)
    failed = sum(rows[-1].errors.values())
    if rows[-1].requests and failed == rows[-1].requests:
        # A run that reached nothing is a failure a script must see.
        err_console.print(f"error: every one of the {failed} requests failed", highlight=False)
        raise typer.Exit(1)


def record_simulation(
    lake: Lake,
    *,
    parameters: dict[str, object],
    rows: list[Row],
    started: datetime,
    interrupted: bool,
) -> None:
    """Keep the run as a job of kind "simulate" (the dashboard's Models page lists
    them): per-stage and total figures in its counts. The URL itself is not kept: it
    may carry credentials."""
    finished = datetime.now(UTC)
    with transaction(lake.engine) as session:
        session.add(
            Job(
                kind="simulate",
                parameters=parameters,
                status="interrupted" if interrupted else "succeeded",
                host=socket.gethostname(),
                pid=os.getpid(),
                counts={
                    "stages": [row.as_dict() for row in rows[:-1]],
                    "total": rows[-1].as_dict(),
                    "requests": rows[-1].requests,
                },
                started_at=started,
                finished_at=finished,
                seconds=(finished - started).total_seconds(),
            )
        )


def _check_url(url: str) -> None:
    """An http(s) URL with a host, or one error line before any traffic."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimulationError(f"--url: expected http://HOST:PORT or https://..., got {url[:80]!r}")


def _results_path(settings: Settings, out: Path | None) -> Path:
    """--out (refused when it exists), else a new file under RADLAKE_HOME/simulations."""
    if out is not None:
        if out.exists():
            raise SimulationError(f"{out} exists: choose a new --out file")
        if not out.parent.is_dir():
            raise SimulationError(f"no folder {out.parent} for --out")
        return out
    folder = settings.home / "simulations"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = folder / f"{stamp}.jsonl", 1
    while path.exists():  # two runs in one second
        n += 1
        path = folder / f"{stamp}-{n}.jsonl"
    return path


def _writer(sink: IO[str]) -> Callable[[Sent], None]:
    def write(sent: Sent) -> None:
        # A line per request as it completes, flushed: Ctrl-C or a crash keeps them.
        sink.writelines(json.dumps(line) + "\n" for line in sent.lines())
        sink.flush()

    return write


@contextmanager
def _api(
    lake: Lake, settings: Settings, url: str | None, review: bool
) -> Iterator[tuple[str, str | None, str | None]]:
    """(base URL, a token made for the run or None, the caller the server records)."""
    if url is not None:
        yield url.rstrip("/"), None, None
        return
    from radlake.api.app import create_app
    from radlake.traffic.server import serve_in_thread

    name = f"simulate-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    role = Role.REVIEWER if review else Role.VIEWER
    with transaction(lake.engine) as session:
        secret = create_token(session, name=name, role=role)
    try:
        app = create_app(lake, web_session_lifetime=settings.web_session_lifetime())
        with serve_in_thread(
            app, http=receipt_protocol(settings), keep_alive_seconds=settings.keep_alive_seconds
        ) as base:
            yield base, secret, f"api:{name}"
    finally:
        with transaction(lake.engine) as session:
            revoke_token(session, name=name)
