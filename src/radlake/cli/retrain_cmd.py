"""`radlake retrain-set build|list|show`: reviewers' feedback made into a retraining set
(a label set, a new dataset version, YOLO and COCO under retrain/<name>/)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from radlake.catalog.db import session_factory
from radlake.catalog.model_registry import resolve_version
from radlake.catalog.retrain_sets import get_retrain_set, list_retrain_sets, summarize
from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, print_json
from radlake.cli.times import parse_time
from radlake.lake import load_settings, open_lake
from radlake.pipelines.retrain_set import RetrainError, RetrainRequest, build_retrain_set

app = typer.Typer(help="Retraining sets built from feedback.", no_args_is_help=True)


@app.command("build")
def build(
    model: Annotated[
        str,
        typer.Option(help="The model whose predictions were reviewed: NAME, NAME:V, NAME@ALIAS."),
    ],
    since: Annotated[
        str | None, typer.Option(help="Only feedback from this time on (ISO 8601; UTC if no zone).")
    ] = None,
    min_confidence: Annotated[
        float,
        typer.Option(
            help="Accepted boxes must score at least this (0.9 was the original pipeline's "
            "gate); an image with an accepted box below it is left out whole."
        ),
    ] = 0.0,
    dataset: Annotated[
        str | None,
        typer.Option(help="Base dataset whose splits to keep (default: the model's training one)."),
    ] = None,
    version: Annotated[int | None, typer.Option(help="Base dataset version.")] = None,
    simulated: Annotated[
        bool, typer.Option(help="Take the simulated reviewer's feedback too.")
    ] = True,
    split: Annotated[str, typer.Option(help="The split reviewed images join.")] = "training",
    size: Annotated[int, typer.Option(help="Longest side of exported images.")] = 1024,
    as_json: JsonOption = False,
) -> None:
    """Make accepted (and corrected, and added) boxes a label set and a new dataset
    version that keeps the base's held-out splits; export it as YOLO and COCO under
    retrain/<timestamp>/ in the store. Re-running with no new feedback changes nothing."""
    if version is not None and dataset is None:
        raise RetrainError("--version needs --dataset")
    request = RetrainRequest(
        model=model,
        since=None if since is None else parse_time(since),
        min_confidence=min_confidence,
        dataset=dataset,
        dataset_version=version,
        simulated=simulated,
        split=split,
        export_size=size,
    )
    lake = open_lake(load_settings())
    with progress_reporter("exporting", not as_json) as report:
        outcome = build_retrain_set(lake, request, progress=report)
    if as_json:
        print_json(
            outcome.summary.as_dict() | {"created": outcome.created, "exports": outcome.exports}
        )
        return
    summary = outcome.summary
    counts = summary.counts
    verb = "built" if outcome.created else "unchanged: the same feedback already made"
    console.print(
        f"{verb} retrain set {summary.name}: {counts.get('images', 0)} reviewed images "
        f"({counts.get('boxes', 0)} boxes, {counts.get('negative_images', 0)} with none) "
        f"from {summary.feedback_rows} feedback rows on {summary.model}:{summary.model_version} "
        "(per image, the verdicts on its newest reviewed run)",
        highlight=False,
    )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(counts.get("splits", {}).items()))
    console.print(
        f"dataset version {summary.dataset} (held-out splits of {summary.base}): {splits}; "
        f"reviewed images joined {request.split!r}, "
        f"{counts.get('unreviewed_production_dropped', 0)} unreviewed production images "
        "are not in it (simulate on the base version for more traffic)",
        highlight=False,
    )
    for reason, images in sorted(counts.get("left_out", {}).items()):
        console.print(f"left out: {images} images ({reason})", highlight=False)
    for fmt, location in outcome.exports.items():
        late = not outcome.created and fmt in outcome.exported_now
        console.print(
            f"{fmt}: {location}{' (written now: it was missing)' if late else ''}", highlight=False
        )
    dataset_name, number = summary.dataset.rsplit("@", 1)
    console.print(
        f"next: radlake model train NAME --dataset {dataset_name} --version {number}",
        highlight=False,
    )


@app.command("list")
def list_sets(
    model: Annotated[str | None, typer.Option(help="Of this reviewed model version.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Retraining sets, oldest first."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        version_id = None if model is None else resolve_version(session, ref=model).id
        found = [
            summarize(session, s) for s in list_retrain_sets(session, model_version_id=version_id)
        ]
    if as_json:
        print_json([s.as_dict() for s in found])
        return
    table = Table(
        "name",
        "reviewed model",
        "base",
        "dataset version",
        "images",
        "boxes",
        "feedback",
        "exported",
    )
    for s in found:
        table.add_row(
            s.name,
            f"{s.model}:{s.model_version}",
            s.base,
            s.dataset,
            str(s.counts.get("images", 0)),
            str(s.counts.get("boxes", 0)),
            str(s.feedback_rows),
            ", ".join(s.exported) or "nothing yet: build again",
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The set's name (its timestamp).")],
    as_json: JsonOption = False,
) -> None:
    """One retraining set: its model, versions, counts, parameters and store prefix."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        found = get_retrain_set(session, name=name)
        if found is None:
            raise RetrainError(f"no retrain set named {name[:60]!r} (see radlake retrain-set list)")
        summary = summarize(session, found)
    if as_json:
        print_json(summary.as_dict())
        return
    for key, value in summary.as_dict().items():
        console.print(f"{key}: {value}", highlight=False)
