"""Datasets, versions with split counts, and exports in a trainer's format."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from radlake.api import audit, schemas
from radlake.api.deps import Curator, DbSession, LakeDep, Viewer
from radlake.api.zipstream import ZipEntry, stream_zip
from radlake.catalog.db import transaction
from radlake.catalog.queries import list_dataset_versions
from radlake.catalog.serialize import version_row
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import DatasetError, VersionRequest, create_version, get_version
from radlake.domain import NEW_NAME
from radlake.formats.sink import FolderSink
from radlake.lake import Lake
from radlake.pipelines.export import export_version

router = APIRouter(tags=["datasets"], responses=schemas.errors(401, 422))
Name = Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
NewName = Annotated[str, Path(max_length=100, pattern=NEW_NAME)]
Version = Annotated[int, Path(ge=1, le=1_000_000)]


@router.get("/datasets", response_model=list[schemas.DatasetItem])
def datasets(caller: Viewer, session: DbSession) -> list[dict[str, Any]]:
    """Every dataset with its versions' split counts."""
    found: dict[str, list[dict[str, Any]]] = {}
    for version in list_dataset_versions(session):
        found.setdefault(version.dataset.name, []).append(version_row(version))
    return [{"name": name, "versions": versions} for name, versions in found.items()]


class VersionIn(BaseModel):
    # An unknown key is reported: {"selecton": ...} made a version of the whole lake.
    model_config = ConfigDict(extra="forbid")

    selection: ImageFilter = Field(default_factory=ImageFilter)
    splits: str | None = Field(default=None, max_length=500, examples=["training=0.8,test=0.2"])
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    labels: Literal["readers", "consensus"] = "readers"


def _create_once_more_on_a_clash(lake: Lake, request: VersionRequest, name: str) -> dict[str, Any]:
    """create_version in its own transaction. Concurrent requests for a new dataset
    all insert its row and all but one hit the unique name (8 at once gave six 500s);
    the second try finds the row and goes on (the version itself is race-safe)."""
    for attempt in (1, 2):
        try:
            with transaction(lake.engine) as session:
                try:
                    version, created = create_version(session, request)
                except DatasetError as exc:
                    raise HTTPException(422, detail=str(exc)) from None
                return {"name": name, "created": created} | version_row(version)
        except IntegrityError:
            if attempt == 2:
                detail = "another request changed this dataset at the same moment: try again"
                raise HTTPException(409, detail=detail) from None
    raise AssertionError("unreachable")


@router.post(
    "/datasets/{name}/versions",
    status_code=201,
    response_model=schemas.CreatedVersion,
    responses=schemas.errors(400, 403),
)
def create(name: NewName, body: VersionIn, caller: Curator, lake: LakeDep) -> dict[str, Any]:
    """Create a version (curators); the newest one is returned unchanged if nothing changed."""
    try:
        request = VersionRequest(
            dataset=name,
            selection=body.selection,
            spec=SplitSpec.parse(body.splits) if body.splits else SplitSpec.default(),
            seed=body.seed,
            label_set=body.labels,
        )
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, detail=str(exc)) from None
    answer = _create_once_more_on_a_clash(lake, request, name)
    audit.record(lake, caller, "dataset.create", f"dataset/{name}/{answer['version']}")
    return answer


@router.get(
    "/datasets/{name}/versions/{version}",
    response_model=schemas.DatasetVersion,
    responses=schemas.errors(404),
)
def dataset_version(
    name: Name, version: Version, caller: Viewer, session: DbSession
) -> dict[str, Any]:
    """One version: selection, split spec, seed, label set, split counts, leakage, hash."""
    return {"name": name} | version_row(get_version(session, name, version))


@router.get(
    "/datasets/{name}/versions/{version}/export",
    response_class=StreamingResponse,
    responses=schemas.ZIP | schemas.errors(404),
)
def export(
    name: Name,
    version: Version,
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    format: Literal["coco", "yolo", "classification"] = "coco",
    split: Annotated[str | None, Query(max_length=40)] = None,
    attribute: Annotated[
        list[str] | None,
        Query(max_length=64, description="classification: source fields as labels.csv columns"),
    ] = None,
) -> StreamingResponse:
    """The version's labels (no images) as a zip with its manifest: COCO, YOLO, or
    classification (a labels.csv per split: one 0/1 column per class)."""
    get_version(session, name, version)
    folder = FilePath(tempfile.mkdtemp(prefix="radlake-export-"))
    try:
        export_version(
            engine=lake.engine,
            store=lake.store,
            dataset=name,
            version=version,
            fmt=format,
            sink=FolderSink(folder),
            location=f"api:{caller.name}",
            split=split,
            labels_only=True,
            attributes=attribute or (),
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a failed request leaves nothing behind
        raise
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    audit.record(lake, caller, "download.export", f"dataset/{name}/{version}", format=format)
    entries = [ZipEntry(str(p.relative_to(folder)), p.read_bytes) for p in files]
    return StreamingResponse(
        _then_clean(stream_zip(entries), folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{version}-{format}.zip"'},
    )


def _then_clean(chunks: Iterator[bytes], folder: FilePath) -> Iterator[bytes]:
    """Stream, then remove the temporary export folder (also when the client leaves)."""
    try:
        yield from chunks
    finally:
        shutil.rmtree(folder, ignore_errors=True)
