"""`radlake predict`: run a model over a selection or a dataset split (resumable)."""

from __future__ import annotations

from typing import Annotated

import typer

from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.curation.filters import ImageFilter
from radlake.inference.runner import DEFAULT_BATCH, DEFAULT_IOU, DEFAULT_SCORE
from radlake.lake import load_settings, open_lake
from radlake.pipelines.predict import predict_batch, select_image_ids


def predict(
    model: Annotated[str, typer.Option("--model", help="NAME, NAME@ALIAS or NAME:VERSION.")],
    select_: Annotated[
        list[str] | None,
        typer.Option("--select", metavar="KEY=VALUE", help="Images to predict (repeatable)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Predict a dataset's images.")] = None,
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split of the dataset.")] = None,
    score: Annotated[float, typer.Option(help="Score threshold in [0, 1].")] = DEFAULT_SCORE,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold in [0, 1].")] = DEFAULT_IOU,
    batch: Annotated[int, typer.Option(help="Images per model call (1..256).")] = DEFAULT_BATCH,
    workers: Annotated[
        int, typer.Option(help="Worker processes (1: this process, all cores to the model).")
    ] = 1,
    as_json: JsonOption = False,
) -> None:
    """Predict boxes and record them as inference runs; images this model version
    already predicted with the same thresholds are skipped."""
    lake = open_lake(load_settings())
    selection = ImageFilter.parse(select_) if select_ else None
    image_ids = select_image_ids(
        lake, selection=selection, dataset=dataset, dataset_version=version, split=split
    )
    with progress_reporter("predicting", not as_json) as report:
        summary = predict_batch(
            lake,
            model_ref=model,
            image_ids=image_ids,
            score_threshold=score,
            iou_threshold=iou,
            batch_size=batch,
            workers=workers,
            caller="cli",
            progress=report,
        )
    if as_json:
        print_json(summary.as_dict())
        return
    console.print(summary.line(), highlight=False)
    for image_id, reason in sorted(summary.unreadable.items())[:10]:
        err_console.print(f"  image {image_id}: {reason}", markup=False, highlight=False)
