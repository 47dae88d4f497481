"""`radlake dataset create|list|show|diff|export`: versioned, leakage-free datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import DatasetVersion
from radlake.catalog.queries import list_dataset_versions
from radlake.catalog.serialize import version_row
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, err_console, print_json
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import (
    DatasetError,
    VersionRequest,
    create_version,
    diff_versions,
    get_version,
    version_warnings,
)
from radlake.formats.sink import FolderSink, StoreSink, export_prefix
from radlake.lake import load_settings, open_lake
from radlake.pipelines.export import ExportFormat, export_version

app = typer.Typer(help="Curate versioned, leakage-free datasets and export them.")


def _selection(pairs: list[str]) -> ImageFilter:
    try:
        return ImageFilter.parse(pairs)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def _version_dict(version: DatasetVersion) -> dict[str, Any]:
    return (
        {"dataset": version.dataset.name}
        | version_row(version)
        | {"warnings": version_warnings(version)}
    )


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    select_: Annotated[
        list[str] | None,
        typer.Option(
            "--select",
            help="key=value, repeatable: modality=DX, finding=Nodule/Mass, "
            "min_size=1024, source=vinbigdata, attr.license=CC BY 4.0, ...",
        ),
    ] = None,
    splits: Annotated[
        str | None, typer.Option(help="training=0.8,validation=0.1,test=0.1 or counts.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    labels: Annotated[
        str, typer.Option(help="Label set: readers (every reader) or consensus.")
    ] = "readers",
    consensus_k: Annotated[int, typer.Option(min=1, help="Readers that must agree.")] = 2,
    consensus_iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="Box overlap.")] = 0.4,
    as_json: JsonOption = False,
) -> None:
    """Create a new immutable version (a no-op when nothing changed)."""
    lake = open_lake(load_settings())
    request = VersionRequest(
        dataset=name,
        selection=_selection(select_ or []),
        spec=SplitSpec.parse(splits) if splits else SplitSpec.default(),
        seed=seed,
        label_set=labels,
        consensus_iou=consensus_iou,
        consensus_k=consensus_k,
    )
    with transaction(lake.engine) as session:
        version, created = create_version(session, request)
        warnings = version_warnings(version)
        summary = _version_dict(version) | {"created": created, "warnings": warnings}
    _warn(warnings)
    if as_json:
        print_json(summary)
        return
    verb = "created" if created else "unchanged, still"
    counts = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    console.print(f"{name} {verb} version {summary['version']}: {counts}", highlight=False)
    console.print(
        f"leakage check: {'ok' if version.leakage.get('ok') else 'FAILED'}; "
        f"manifest {version.manifest_hash[:16]}",
        highlight=False,
    )


def _warn(lines: list[str] | tuple[str, ...]) -> None:
    for line in lines:
        err_console.print(f"warning: {line}", highlight=False, markup=False)


@app.command("list")
def list_datasets(as_json: JsonOption = False) -> None:
    """Datasets and their newest versions."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        rows = [_version_dict(v) for v in list_dataset_versions(session)]
    if as_json:
        print_json(rows)
        return
    table = Table("dataset", "version", "label set", "splits", "leakage")
    for row in rows:
        counts = ", ".join(f"{k} {v}" for k, v in row["splits"].items())
        ok = row["leakage"].get("ok")
        table.add_row(
            str(row["dataset"]),
            str(row["version"]),
            str(row["label_set"]),
            counts,
            "ok" if ok else "FAILED",
        )
    console.print(table)


@app.command("show")
def show(
    name: str,
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
    as_json: JsonOption = False,
) -> None:
    """One version: selection, split spec, seed, label set, counts, leakage, hash."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        row = _version_dict(get_version(session, name, version))
    if as_json:
        print_json(row)
        return
    table = Table("field", "value", show_header=False)
    for key, value in row.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("diff")
def diff(name: str, a: int, b: int, as_json: JsonOption = False) -> None:
    """What changed from version A to version B."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        result = diff_versions(session, name, a, b).as_dict()
    if as_json:
        print_json(result)
        return
    console.print(
        f"{name} v{a} -> v{b}: {result['added']} added, {result['removed']} removed, "
        f"{result['moved']} moved between splits",
        highlight=False,
    )
    for key, change in result["settings"].items():
        console.print(f"  {key}: {change['a']} -> {change['b']}", highlight=False)


@app.command("export")
def export(
    name: str,
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="yolo or coco (boxes), classification (labels.csv per split) or "
            "imagefolder (<split>/<class>/<file>, single-label).",
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Folder to write (default: the store).")] = None,
    version: Annotated[int | None, typer.Option(help="Version (default: newest).")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    size: Annotated[int, typer.Option(min=0, help="Image size; 0 keeps stored sizes.")] = 1024,
    mode: Annotated[
        Literal["pad", "stretch"], typer.Option(help="Keep aspect with padding, or stretch.")
    ] = "pad",
    labels_only: Annotated[bool, typer.Option(help="Write labels, not images.")] = False,
    attribute: Annotated[
        list[str] | None,
        typer.Option(
            "--attribute",
            help="classification: a source field (or view, modality, ...) as a labels.csv "
            "column, repeatable: --attribute license --attribute view.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Export a version as YOLO, COCO, classification CSV or ImageFolder, with a manifest."""
    if attribute and fmt != "classification":
        raise DatasetError("--attribute goes with --format classification")
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        number = get_version(session, name, version).version
    if out is not None:
        sink: FolderSink | StoreSink = FolderSink(out)
        location = str(out)
    else:
        prefix = export_prefix(name, str(number), fmt)
        sink, location = StoreSink(lake.store, prefix), f"{lake.store.url}/{prefix}"
    summary = export_version(
        engine=lake.engine,
        store=lake.store,
        dataset=name,
        version=number,
        fmt=fmt,
        sink=sink,
        location=location,
        size=size or None,
        max_decoded_bytes=lake.limits.max_decoded_bytes,
        mode=mode,
        split=split,
        labels_only=labels_only,
        attributes=attribute or (),
    )
    _warn(summary.notes)
    result = {
        "location": location,
        "images": summary.images_written,
        "boxes": summary.boxes_written,
        "files": summary.files_written,
        "per_split": dict(summary.images_per_split),
        "skipped": summary.images_skipped,
        "notes": list(summary.notes),
    }
    if as_json:
        print_json(result)
    else:
        console.print(
            f"{fmt} export of {name} v{number} -> {location}: {summary.images_written} images, "
            f"{summary.boxes_written} boxes, {summary.files_written} files",
            highlight=False,
        )
