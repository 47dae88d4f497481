"""`radlake deid export`: a dataset version's de-identified DICOM objects, for researchers.

Every DICOM member is de-identified first if it is not yet (pipelines/deidentify.py),
then its object is copied to the destination as
<dataset>/v<version>/<split>/<study uid>/<series uid>/<sop uid>.dcm: remapped UIDs
only, so nothing in a path or a file names the patient. Objects whose pixels were
withheld (burned-in text that could not be blanked) are left out and counted.
Re-running copies only what the destination lacks or holds different bytes of.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from radlake.catalog.db import batches, session_factory
from radlake.catalog.deid_models import PIXELS_WITHHELD, DeidInstance
from radlake.catalog.models import Image
from radlake.curation.versions import DatasetError, get_version, members
from radlake.domain import ImageFormat
from radlake.errors import ObjectNotFound
from radlake.lake import Lake
from radlake.pipelines.deidentify import DeidSummary, deidentify_images
from radlake.storage.store import ObjectStore


@dataclass(slots=True)
class DeidExportSummary:
    """What an export wrote: objects copied, already there, withheld, not DICOM."""

    dataset: str
    version: int
    copied: int = 0
    unchanged: int = 0
    withheld: int = 0
    not_dicom: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    deid: DeidSummary | None = None
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.dataset}@{self.version}: {self.copied} de-identified objects copied, "
            f"{self.unchanged} already there, {self.withheld} withheld (burned-in text), "
            f"{self.not_dicom} not DICOM, {len(self.failed)} failed in {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "copied": self.copied,
            "unchanged": self.unchanged,
            "withheld": self.withheld,
            "not_dicom": self.not_dicom,
            "failed": {str(k): v for k, v in self.failed.items()},
            "deidentified": self.deid.as_dict() if self.deid else None,
            "seconds": round(self.seconds, 3),
        }


def export_deidentified(
    lake: Lake,
    *,
    dataset: str,
    version: int | None,
    destination: ObjectStore,
    split: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DeidExportSummary:
    """Copy a version's de-identified objects to destination (making missing ones).

    Raises:
        DatasetError: no such dataset, version or split.
        StorageError, CatalogError: a store or the catalog failed past retries.
    """
    started = time.perf_counter()
    with session_factory(lake.engine)() as session:
        chosen = get_version(session, dataset, version)
        assignment = members(session, chosen.id)
        number = chosen.version
    if split is not None:
        splits = sorted(set(assignment.values()))
        assignment = {i: s for i, s in assignment.items() if s == split}
        if not assignment:
            raise DatasetError(
                f"version {number} of {dataset!r} has no split {split[:60]!r} "
                f"(its splits: {', '.join(splits) or 'none'})"
            )
    summary = DeidExportSummary(dataset=dataset, version=number)
    ids = sorted(assignment)
    with session_factory(lake.engine)() as session:
        dicom = {
            image_id
            for chunk in batches(ids)
            for image_id in session.scalars(
                select(Image.id).where(Image.id.in_(chunk), Image.format == ImageFormat.DICOM.value)
            )
        }
    summary.not_dicom = len(ids) - len(dicom)
    summary.deid = deidentify_images(lake, sorted(dicom))
    summary.failed.update(summary.deid.failed)
    with session_factory(lake.engine)() as session:
        rows = [
            row
            for chunk in batches(sorted(dicom))
            for row in session.execute(
                select(DeidInstance).where(DeidInstance.image_id.in_(chunk))
            ).scalars()
        ]
    prefix = f"{dataset}/v{number}"
    # One SOP Instance UID may name two objects (one instance in two transfer syntaxes):
    # every one after the first gets its image id in its name, never overwriting.
    seen: set[tuple[str, str]] = set()
    for done, row in enumerate(sorted(rows, key=lambda r: r.image_id), 1):
        if row.pixels == PIXELS_WITHHELD:
            summary.withheld += 1
        else:
            split = assignment[row.image_id]
            name = f"{prefix}/{split}/{row.study_uid}/{row.series_uid}/{row.sop_uid}"
            if (split, row.sop_uid) in seen:
                name += f"_{row.image_id}"
            seen.add((split, row.sop_uid))
            _copy(lake.store, destination, row.key, f"{name}.dcm", summary, row)
        if progress is not None:
            progress(done, len(rows))
    summary.seconds = time.perf_counter() - started
    return summary


def _copy(
    source: ObjectStore,
    destination: ObjectStore,
    key: str,
    target: str,
    summary: DeidExportSummary,
    row: DeidInstance,
) -> None:
    try:
        if (
            destination.size(target) == row.size_bytes
            and destination.digest(target)[0] == row.sha256
        ):
            summary.unchanged += 1
            return
    except ObjectNotFound:
        pass
    destination.put_bytes(target, source.get_bytes(key))
    summary.copied += 1
