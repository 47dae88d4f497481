"""De-identify catalogued DICOM images into renditions (issue 13, PS3.15 Annex E).

For each image: read the original from the store, apply the Basic Profile and the
lake's options (imaging/deid_profile.py), write the patient's keyed pseudonym as
PatientID and PatientName (so researchers can still group by patient), check the
pixels for burned-in text where the policy asks (imaging/burned_in.py) and blank
what is found, then store the object as derived/<sha256>/deidentified.dcm and record
it in deid_instance. Images whose pixels may show burned-in text also get a
de-identified preview (rendition "deidentified"), the only picture viewers see.

Re-running is safe: images that already have a de-identified object are skipped
unless `redo` is asked. An image that cannot be de-identified (its pixels do not
decode, say) is counted with its reason and the run goes on; a store or catalog
fault is retried by the store and the catalog, then ends the run as a fault.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Row, delete, select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches, run_transaction
from radlake.catalog.deid_instances import DeidRef, deid_refs
from radlake.catalog.deid_models import (
    PIXELS_BLANKED,
    PIXELS_UNCHECKED,
    PIXELS_WITHHELD,
    DeidInstance,
)
from radlake.catalog.models import Image, Rendition
from radlake.catalog.upsert import insert_missing
from radlake.domain import ImageFormat
from radlake.errors import ImageError, ObjectNotFound
from radlake.imaging.deid_header import header_json, instance_fields, mark_clean_pixels
from radlake.imaging.deid_profile import DeidOptions, deidentify, method_values, remap_uid
from radlake.imaging.dicom_dataset import quiet
from radlake.imaging.formats import reader_for
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.storage.keys import derived_key

if TYPE_CHECKING:
    from radlake.lake import Lake

log = logging.getLogger(__name__)

DEID_RENDITION = "deidentified"  # api/privacy.DEIDENTIFIED: the viewers' picture
PixelPolicy = Literal["flagged", "all", "off"]
# Modalities whose pixels often carry burned-in text even when the header says
# nothing: ultrasound, secondary capture, other, endoscopy, photography.
_TEXT_PRONE = frozenset({"US", "SC", "OT", "ES", "XC", "GM", "SM", "DOC"})
_BATCH = 25


@dataclass(frozen=True, slots=True)
class DeidPolicy:
    """How the lake de-identifies: the PS3.15 options, where the pixel check runs, and
    whether ingest de-identifies each new DICOM image (settings deid_*)."""

    options: DeidOptions = field(default_factory=DeidOptions)
    pixel_check: PixelPolicy = "flagged"
    on_ingest: bool = False


@dataclass(slots=True)
class DeidSummary:
    """What a run did: objects written, skipped (already there), failed (with reasons)."""

    images: int = 0
    written: int = 0
    skipped: int = 0
    blanked: int = 0
    withheld: int = 0
    stale: int = 0  # skipped ones made under other options than the lake's now
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.images} DICOM images: {self.written} de-identified, {self.skipped} already "
            f"were, {self.blanked} with burned-in text blanked, {self.withheld} withheld, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s ({self.files_per_second:.1f}/s)"
        ) + (
            f"; {self.stale} were made under other options (--redo makes them again)"
            if self.stale
            else ""
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "written": self.written,
            "skipped": self.skipped,
            "blanked": self.blanked,
            "withheld": self.withheld,
            "stale": self.stale,
            "failed": {str(k): v for k, v in self.failed.items()},
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class _Made:
    image_id: int
    instance: dict[str, object]
    preview: dict[str, object] | None


def text_prone(modality: str | None, attributes: dict[str, Any] | None) -> bool:
    """Whether an image's pixels may carry burned-in text: the header says so
    (BurnedInAnnotation YES, recorded at ingest) or its modality usually does."""
    flagged = (attributes or {}).get("burned_in_annotation") == "YES"
    return flagged or (modality or "").upper() in _TEXT_PRONE


class Deidentifier:
    """De-identifies originals of one lake under one policy (one image at a time)."""

    def __init__(
        self,
        *,
        secret: bytes,
        pseudonym: Callable[[str], str],
        policy: DeidPolicy,
        max_decoded_bytes: int,
    ) -> None:
        self.secret, self.pseudonym, self.policy = secret, pseudonym, policy
        self.max_decoded_bytes = max_decoded_bytes

    def object_of(self, data: bytes, *, check_pixels: bool) -> tuple[Dataset, str, int]:
        """The de-identified dataset of one original's bytes, the pixel verdict and the
        number of text regions found.

        Raises:
            ImageError: the bytes are not DICOM.
        """
        try:
            # force: a bare dataset (no preamble) was sniffed and catalogued as DICOM.
            with quiet():  # pydicom's warnings on odd encodings, not the user's business
                original = dcmread(io.BytesIO(data), force=True)
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise ImageError(f"not a readable DICOM object ({type(exc).__name__})") from exc
        patient = str(original.get("PatientID", "") or "")
        ds = deidentify(original, secret=self.secret, options=self.policy.options).dataset
        # A keyed pseudonym, as in the catalog: stable per patient, meaningless without
        # the key (PS3.15 E.1: "replace with a dummy value ... consistent").
        alias = self.pseudonym(patient) if patient else ""
        ds.PatientID = alias
        ds.PatientName = alias
        _complete_uids(ds, hashlib.sha256(data).hexdigest(), self.secret)
        if not check_pixels or "PixelData" not in ds:
            return ds, PIXELS_UNCHECKED, 0
        from radlake.imaging.burned_in import check_and_blank

        check = check_and_blank(ds, max_decoded_bytes=self.max_decoded_bytes)
        if check.status == PIXELS_BLANKED:
            mark_clean_pixels(ds)
        return ds, check.status, len(check.regions)

    def preview(self, data: bytes) -> tuple[bytes, int, int]:
        """The de-identified object's preview PNG with its width and height."""
        pixels = reader_for(ImageFormat.DICOM).open_pixels(
            data, max_decoded_bytes=self.max_decoded_bytes
        )
        picture = render(pixels, size=PREVIEW_SIZE)
        return picture.encode("png"), picture.image.width, picture.image.height


def _complete_uids(ds: Dataset, sha256: str, secret: bytes) -> None:
    """Study, series and SOP Instance UIDs for an object that lacks them (a secondary
    capture written by hand, say): keyed on the original's bytes, so the same object
    gets the same ones every time, and DICOMweb can address it."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            setattr(ds, keyword, remap_uid(f"radlake:{keyword}:{sha256}", secret))
    if not ds.file_meta.get("MediaStorageSOPInstanceUID"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not ds.file_meta.get("MediaStorageSOPClassUID") and ds.get("SOPClassUID"):
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID


def encode(ds: Dataset) -> bytes:
    """Part 10 bytes of a dataset (preamble, file meta, the transfer syntax it has)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _todo(
    session: Session, image_ids: Sequence[int], redo: bool
) -> tuple[list[Row[Any]], dict[int, str]]:
    """The images to de-identify, and the method recorded for each one done before."""
    rows: list[Row[Any]] = []
    for chunk in batches(sorted(set(image_ids))):
        rows.extend(
            session.execute(
                select(
                    Image.id, Image.sha256, Image.original_key, Image.modality, Image.attributes
                ).where(Image.id.in_(chunk), Image.format == ImageFormat.DICOM.value)
            ).all()
        )
    if redo:
        return rows, {}
    done: dict[int, str] = {}
    for chunk in batches([row.id for row in rows]):
        query = select(DeidInstance.image_id, DeidInstance.method)
        done.update(
            (i, m) for i, m in session.execute(query.where(DeidInstance.image_id.in_(chunk)))
        )
    todo = [row for row in rows if row.id not in done]
    return todo, done


def _record(session: Session, *, made: Sequence[_Made], redo: bool) -> None:
    ids = [item.image_id for item in made]
    if redo and ids:
        session.execute(delete(DeidInstance).where(DeidInstance.image_id.in_(ids)))
        session.execute(
            delete(Rendition).where(Rendition.image_id.in_(ids), Rendition.name == DEID_RENDITION)
        )
    insert_missing(session, DeidInstance, [item.instance for item in made], key="image_id")
    previews = [item.preview for item in made if item.preview is not None]
    insert_missing(session, Rendition, previews, key="image_id")


def _chunks(rows: Sequence[Row[Any]], size: int) -> Iterator[Sequence[Row[Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def deidentify_images(
    lake: Lake,
    image_ids: Sequence[int],
    *,
    redo: bool = False,
    policy: DeidPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DeidSummary:
    """De-identify these catalogued images (non-DICOM ones are left out) into renditions.

    lake: a radlake.lake.Lake (its store, catalog, pseudonymizer, limits and policy).
    progress: called with (images done, images to do) after each one.

    Raises:
        StorageError, CatalogError: the store or catalog failed past its retries;
            every object written before is recorded.
    """
    policy = policy or lake.deid
    started = time.perf_counter()
    worker = Deidentifier(
        secret=lake.pseudonymizer.derived_key("deid"),
        pseudonym=lake.pseudonymizer,
        policy=policy,
        max_decoded_bytes=lake.limits.max_decoded_bytes,
    )
    retry = lake.limits.retry_seconds
    rows, before = run_transaction(
        lake.engine, lambda session: _todo(session, image_ids, redo), retry_seconds=retry
    )
    # Objects made under other options are kept until asked (--redo): counted, so the
    # summary says so rather than passing them off as current.
    current = "; ".join(method_values(policy.options))
    stale = sum(1 for method in before.values() if not method.startswith(current))
    summary = DeidSummary(images=len(rows) + len(before), skipped=len(before), stale=stale)
    done = 0
    for chunk in _chunks(rows, _BATCH):
        made: list[_Made] = []
        for row in chunk:
            item = _one(lake, worker, row, summary)
            if item is not None:
                made.append(item)
            done += 1
            if progress is not None:
                progress(done, len(rows))
        if made:
            run_transaction(
                lake.engine, partial(_record, made=made, redo=redo), retry_seconds=retry
            )
        summary.written += len(made)
    summary.seconds = time.perf_counter() - started
    return summary


def deidentify_job(
    lake: Lake, job_id: int, *, progress: Callable[[int, int], None] | None = None
) -> DeidSummary:
    """De-identify the DICOM images an ingest job catalogued (de-identification on
    ingest, setting deid_on_ingest).

    Raises:
        StorageError, CatalogError: as deidentify_images.
    """
    ids = run_transaction(
        lake.engine,
        lambda session: list(session.scalars(select(Image.id).where(Image.job_id == job_id))),
        retry_seconds=lake.limits.retry_seconds,
    )
    return deidentify_images(lake, ids, progress=progress)


def deidentify_digests(lake: Lake, sha256s: Sequence[str]) -> DeidSummary:
    """De-identify the catalogued images with these original digests (the receiver's
    newly written batch).

    Raises:
        StorageError, CatalogError: as deidentify_images.
    """

    def ids(session: Session) -> list[int]:
        return [
            image_id
            for chunk in batches(sorted(set(sha256s)))
            for image_id in session.scalars(select(Image.id).where(Image.sha256.in_(chunk)))
        ]

    found = run_transaction(lake.engine, ids, retry_seconds=lake.limits.retry_seconds)
    return deidentify_images(lake, found)


def ensure_deidentified(
    lake: Lake, image_ids: Sequence[int]
) -> tuple[dict[int, DeidRef], dict[int, str]]:
    """The de-identified object of each DICOM image among image_ids, made now where
    missing (what serving does on first request), and the reasons of those that failed.

    Raises:
        StorageError, CatalogError: as deidentify_images.
    """
    read = partial(deid_refs, image_ids=image_ids)
    retry = lake.limits.retry_seconds
    refs = run_transaction(lake.engine, read, retry_seconds=retry)
    missing = [image_id for image_id in image_ids if image_id not in refs]
    if not missing:
        return refs, {}
    summary = deidentify_images(lake, missing)
    return run_transaction(lake.engine, read, retry_seconds=retry), summary.failed


def read_object(lake: Lake, ref: DeidRef) -> tuple[DeidRef, bytes] | None:
    """The bytes of a de-identified object, made again first when the store lost it or
    holds other bytes than its row records (None when it cannot be made again).

    Raises:
        StorageError, CatalogError: as deidentify_images.
    """
    try:
        data = lake.store.get_bytes(ref.key)
        if len(data) == ref.size_bytes and _sha256(data) == ref.sha256:
            return ref, data
    except ObjectNotFound:
        pass
    log.warning("image %d: de-identified object lost or changed: made again", ref.image_id)
    deidentify_images(lake, [ref.image_id], redo=True)
    refs, _failed = ensure_deidentified(lake, [ref.image_id])
    again = refs.get(ref.image_id)
    return None if again is None else (again, lake.store.get_bytes(again.key))


def _one(lake: Lake, worker: Deidentifier, row: Row[Any], summary: DeidSummary) -> _Made | None:
    image_id, sha256 = int(row.id), str(row.sha256)
    prone = text_prone(row.modality, row.attributes)
    policy = worker.policy.pixel_check
    check = policy == "all" or (policy == "flagged" and prone)
    data = lake.store.get_bytes(row.original_key)
    try:
        ds, pixels, regions = worker.object_of(data, check_pixels=check)
        encoded = encode(ds)
        preview = None
        if pixels != PIXELS_WITHHELD and prone:
            preview = worker.preview(encoded)
        fields, header = instance_fields(ds), header_json(ds)
    except (ImageError, ValueError, TypeError, AttributeError, KeyError) as exc:
        # One image's trouble is its own: counted with the reason, the run goes on.
        reason = str(exc)[:200] if isinstance(exc, ImageError) else type(exc).__name__
        summary.failed[image_id] = f"cannot de-identify: {reason}"
        log.warning("image %d: cannot de-identify: %s", image_id, reason)
        return None
    key = derived_key(sha256, DEID_RENDITION, "dcm")
    lake.store.put_bytes(key, encoded)
    summary.blanked += pixels == PIXELS_BLANKED
    summary.withheld += pixels == PIXELS_WITHHELD
    instance = fields | {
        "image_id": image_id,
        "key": key,
        "sha256": _sha256(encoded),
        "size_bytes": len(encoded),
        "header": header,
        "pixels": pixels,
        "text_regions": regions,
        "method": "; ".join(str(v) for v in ds.get("DeidentificationMethod", []))[:200],
    }
    preview_row = None
    if preview is not None:
        png, width, height = preview
        preview_key = derived_key(sha256, DEID_RENDITION, "png")
        lake.store.put_bytes(preview_key, png)
        preview_row = {
            "image_id": image_id,
            "name": DEID_RENDITION,
            "key": preview_key,
            "width": width,
            "height": height,
            "window_center": None,
            "window_width": None,
        }
    return _Made(image_id, instance, preview_row)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
