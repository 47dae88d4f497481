"""`radlake labels import|list|agreement`: bring labels in, read them, score readers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from radlake.catalog.db import session_factory
from radlake.catalog.labels import (
    Subject,
    image_labels,
    label_row,
    reader_findings,
    source_names,
)
from radlake.catalog.queries import get_image
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, print_json
from radlake.curation.agreement import COLUMNS, MATCH_IOU, reader_agreement
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import DatasetError, selected_images
from radlake.domain import LabelOrigin
from radlake.formats.label_readers import LABEL_FORMATS, read_label_file
from radlake.lake import load_settings, open_lake
from radlake.pipelines.label_import import (
    ImportRequest,
    LabelImportError,
    default_source_name,
    import_labels,
)

app = typer.Typer(help="Labels: import, list, reader agreement.")
ORIGINS = [origin.value for origin in LabelOrigin]


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _origin(value: str | None) -> LabelOrigin | None:
    if value is None:
        return None
    try:
        return LabelOrigin(value)
    except ValueError:
        raise LabelImportError(
            f"expected an origin in {', '.join(ORIGINS)}, got {value[:40]!r}"
        ) from None


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="COCO JSON, CSV, or a YOLO label folder/file.")],
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(LABEL_FORMATS)}.")],
    source: Annotated[
        str | None, typer.Option(help="Source the labels are kept under (default: file stem).")
    ] = None,
    reader: Annotated[
        str | None, typer.Option(help="Reader (radiologist id) of every label.")
    ] = None,
    origin: Annotated[str, typer.Option(help=f"One of {', '.join(ORIGINS)}.")] = "ground_truth",
    names: Annotated[
        Path | None, typer.Option(help="YOLO class names: data.yaml or classes.txt.")
    ] = None,
    images_of: Annotated[
        str | None, typer.Option("--images-of", help="Match only this source's images.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Attach a label file's labels to catalogued images (matched by sha256 or file name).

    Boxes are kept exactly; entries without a usable box or without an image are
    reported, never written or guessed. Re-importing the same file writes nothing.
    """
    chosen = _origin(origin)
    assert chosen is not None
    if reader is not None and not 0 < len(reader) <= 64:
        raise LabelImportError(f"expected a reader id of 1 to 64 characters, got {len(reader)}")
    parsed = read_label_file(path, fmt.lower(), names=names)
    lake = open_lake(load_settings())
    request = ImportRequest(
        source=source or default_source_name(path),
        origin=chosen,
        reader=reader,
        images_of=images_of,
    )
    summary = import_labels(parsed, request, engine=lake.engine)
    if as_json:
        print_json(summary.as_dict())
        return
    console.print(summary.line(), highlight=False, markup=False)
    for kind, examples in sorted(summary.examples.items()):
        for text in examples:
            console.print(f"  {kind}: {text}", highlight=False, markup=False)


def label_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table("class", "reader", "origin", "box (x_min, y_min, x_max, y_max)", "source")
    table.title = title
    for row in rows:
        box = row["box"]
        table.add_row(
            row["class_name"],
            row["reader"] or "-",
            row["origin"],
            "image-level" if box is None else ", ".join(f"{v:.2f}" for v in box),
            row["source"] or "",
        )
    return table


def labels_of(session: Session, image_id: int, origin: LabelOrigin | None) -> list[dict[str, Any]]:
    """An image's labels as rows (used by `labels list` and `show`).

    Raises:
        ImageNotFound: no image has this id.
    """
    get_image(session, image_id=image_id)
    names = source_names(session)
    found = image_labels(
        session, image_id=image_id, origin=None if origin is None else origin.value
    )
    return [label_row(label, names) for label in found]


def origin_title(origin: LabelOrigin | None) -> str:
    return "all origins" if origin is None else f"origin {origin.value}"


@app.command("list")
def list_(
    image_id: Annotated[int, typer.Argument(help="Image id (from `radlake query`).")],
    origin: Annotated[
        str | None, typer.Option(help=f"Only this origin: {', '.join(ORIGINS)} (default all).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """An image's labels: class, reader, origin and box in stored pixels."""
    chosen = _origin(origin)
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        rows = labels_of(session, image_id, chosen)
    if as_json:
        print_json({"image_id": image_id, "origin": chosen and chosen.value, "labels": rows})
        return
    console.print(label_table(rows, f"Labels of image {image_id} ({origin_title(chosen)})"))
    console.print(f"{len(rows)} labels")


def _image_row(row: dict[str, Any], subjects: dict[int, Subject]) -> dict[str, Any]:
    subject = subjects[row["image_id"]]
    return {
        **row,
        "image_id": subject.image_id,
        "source": subject.source,
        "source_image_key": subject.source_image_key,
    }


@app.command("agreement")
def agreement(
    select_: Annotated[
        list[str] | None, typer.Option("--select", help="key=value selection, repeatable.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Only the labels of this source (images or not).")
    ] = None,
    iou: Annotated[float, typer.Option(min=0.01, max=1.0, help="Box match IoU.")] = MATCH_IOU,
    as_json: JsonOption = False,
) -> None:
    """Image-level agreement, box F1 (IoU match) and Fleiss' kappa, per class, over the
    ground-truth labels that name a reader.

    Labels of a source whose images are not catalogued (a labels-only CSV) are
    grouped by the source's image key, so they are scored all the same.
    """
    try:
        selection = ImageFilter.parse(select_ or [])
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    origin = LabelOrigin.GROUND_TRUTH
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        ids = None
        if select_:
            ids = [image_id for image_id, _, _ in selected_images(session, selection)]
        findings, subjects = reader_findings(session, image_ids=ids, source=source, origin=origin)
    if not findings:
        where = f" of source {source!r}" if source else ""
        which = " among the selected images" if select_ else ""
        raise DatasetError(f"no reader-attributed {origin.value} labels{where}{which}")
    report = reader_agreement(findings, iou_threshold=iou)
    if as_json:
        document = report.as_dict()
        document["origin"] = origin.value
        document["source"] = source
        rows = cast(list[dict[str, Any]], document["images"])
        document["images"] = [_image_row(row, subjects) for row in rows]
        print_json(document)
        return
    title = f"Reader agreement, {origin.value} labels (boxes matched at IoU >= {iou:g})"
    table = Table(*COLUMNS, title=title)
    for row in report.rows():
        table.add_row(*(_cell(value) for value in row))
    console.print(table)
    detached = sum(subject.image_id is None for subject in subjects.values())
    if detached:
        console.print(f"{detached} of {len(subjects)} label groups have no catalogued image")
    console.print(f"{report.single_reader_images} images with a single reader left out")
