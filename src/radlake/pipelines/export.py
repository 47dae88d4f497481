"""Export a dataset version as YOLO, COCO, classification CSV or ImageFolder.

The catalog gives members, splits, patients' pseudonyms and the version's label set;
the store gives the originals, rendered at their stored size (the frame the boxes
are in) and handed to the format writers, which resize and transform boxes exactly.
Classification formats take every class of the version's findings (image-level or
boxed), the version's classes first, and the source attributes a user names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from PIL import Image as PILImage
from sqlalchemy import Engine, Row, select

from radlake.catalog.db import batches, session_factory, transaction
from radlake.catalog.deid_instances import deid_refs
from radlake.catalog.models import Export, Image
from radlake.catalog.queries import patient_pseudonyms
from radlake.curation.versions import DatasetError, get_version, members, version_findings
from radlake.domain import Finding, ImageFormat
from radlake.formats.classification import export_classification, export_imagefolder
from radlake.formats.coco import export_coco
from radlake.formats.manifest import canonical_json
from radlake.formats.model import ExportImage, ExportSummary, safe_stem
from radlake.formats.sink import Sink
from radlake.formats.yolo import export_yolo
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.pipelines.deidentify import text_prone
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages
from radlake.storage.store import ObjectStore

ExportFormat = Literal["yolo", "coco", "classification", "imagefolder"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
_EXTRA_KEYS = ("doi", "url", "dataset")
_IMAGE_COLUMNS = (
    Image.id,
    Image.sha256,
    Image.source_key,
    Image.format,
    Image.original_key,
    Image.columns,
    Image.rows,
    Image.attributes,
    Image.view_position,
    Image.modality,
    Image.body_part,
    Image.manufacturer,
    Image.manufacturer_model,
)
# Attributes a user may name that live in catalog columns rather than in the
# source's own fields; and the spelling of the source field for another spelling.
_COLUMN_ATTRIBUTES = {
    "view": "view_position",
    "view_position": "view_position",
    "modality": "modality",
    "body_part": "body_part",
    "manufacturer": "manufacturer",
    "manufacturer_model": "manufacturer_model",
    "format": "format",
    "rows": "rows",
    "columns": "columns",
    "sha256": "sha256",
}
_SPELLINGS = {"licence": "license"}


def _stems(images: Sequence[Row[Any]]) -> dict[int, str]:
    """Readable, unique file stems: the source's own name, with the id on a clash."""
    stems: dict[int, str] = {}
    seen: set[str] = set()
    for image in images:
        key = str(image.attributes.get("source_key") or PurePosixPath(image.source_key).name)
        stem = safe_stem(key) or image.sha256[:16]
        if stem in seen:
            stem = f"{stem}-{image.id}"
        seen.add(stem)
        stems[image.id] = stem
    return stems


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else canonical_json(value)


def attribute_values(images: Sequence[Row[Any]], names: Sequence[str]) -> dict[int, dict[str, str]]:
    """Image id -> {asked name: value as text} from source fields or catalog columns.

    Raises:
        DatasetError: a name that no image has (a typo, most likely); the message
            lists the names there are.
    """
    values: dict[int, dict[str, str]] = {image.id: {} for image in images}
    for name in names:
        key = _SPELLINGS.get(name, name)
        column = _COLUMN_ATTRIBUTES.get(name)
        found = False
        for image in images:
            fields = image.attributes or {}
            if key in fields or name in fields:
                value = fields.get(name, fields.get(key))
            elif column is not None:
                value = getattr(image, column)
            else:
                continue
            found = found or value is not None
            values[image.id][name] = _text(value)
        if not found and images:
            known = sorted({k for image in images for k in (image.attributes or {})})
            raise DatasetError(
                f"attribute {name[:80]!r} is on none of the {len(images)} images; "
                f"known: {', '.join([*known, *_COLUMN_ATTRIBUTES])}"
            )
    return values


def classification_classes(
    class_names: Sequence[str], findings: Mapping[int, Sequence[Finding]]
) -> list[str]:
    """The version's classes, then any other class of its findings (by name): a
    version lists only boxed classes when it has some, a classifier wants all."""
    present = {f.class_name for fs in findings.values() for f in fs}
    return [*class_names, *sorted(present - set(class_names))]


def _pixel_sources(
    engine: Engine, images: Sequence[Row[Any]], dataset: str
) -> dict[int, StoredImage]:
    """What each image's pixels are exported from: the original, or for a DICOM image
    whose pixels may show burned-in text, its de-identified object (text blanked).

    Raises:
        DatasetError: such an image has no de-identified object yet, or its pixels were
            withheld (text that could not be blanked).
    """
    prone = [
        i.id
        for i in images
        if i.format == ImageFormat.DICOM.value and text_prone(i.modality, i.attributes)
    ]
    with session_factory(engine)() as session:
        refs = deid_refs(session, image_ids=prone)
    missing = [i for i in prone if i not in refs]
    withheld = [i for i in prone if i in refs and refs[i].withheld]
    if missing or withheld:
        problem = (
            f"images {_ids(missing)} may show burned-in text and are not de-identified yet: "
            f"run `radlake deid run --dataset {dataset}` first"
            if missing
            else f"images {_ids(withheld)} show burned-in text that could not be blanked: "
            "leave them out of the version"
        )
        raise DatasetError(problem)
    sources = {image.id: StoredImage.of(image) for image in images}
    for image_id, ref in refs.items():
        sources[image_id] = StoredImage(sources[image_id].sha256, ImageFormat.DICOM, ref.key)
    return sources


def _ids(image_ids: Sequence[int]) -> str:
    more = f" and {len(image_ids) - 10} more" if len(image_ids) > 10 else ""
    return ", ".join(str(i) for i in image_ids[:10]) + more


def export_version(
    *,
    engine: Engine,
    store: ObjectStore,
    dataset: str,
    version: int | None,
    fmt: ExportFormat,
    sink: Sink,
    location: str,
    size: int | None = 1024,
    mode: Literal["pad", "stretch"] = "pad",
    split: str | None = None,
    labels_only: bool = False,
    attributes: Sequence[str] = (),
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> ExportSummary:
    """Write one version (or one split of it) in a trainer's format; recorded in the catalog.

    max_decoded_bytes: the decode budget of each original (the lake's limit).
    attributes: source fields (or view, modality, ...) for classification's labels.csv.

    Raises:
        DatasetError: no such dataset, version or split, an unknown format, or an
            attribute no image has.
        FormatError, StorageError: the writer or the store failed.
    """
    if fmt not in EXPORT_FORMATS:
        raise DatasetError(f"expected a format in {EXPORT_FORMATS}, got {fmt!r}")
    with session_factory(engine)() as session:
        chosen = get_version(session, dataset, version)
        assignment = members(session, chosen.id)
        if split is not None:
            assignment = {i: s for i, s in assignment.items() if s == split}
            if not assignment:
                raise DatasetError(
                    f"version {chosen.version} of {dataset!r} has no split {split!r}"
                )
        ids = sorted(assignment)
        # Plain rows, not ORM objects: versions hold tens of thousands of images.
        images = [
            image
            for chunk in batches(ids)
            for image in session.execute(select(*_IMAGE_COLUMNS).where(Image.id.in_(chunk)))
        ]
        findings = version_findings(session, chosen, ids)
        class_names = list(chosen.classes.get("names", []))
        number, version_id = chosen.version, chosen.id
        classify = fmt in ("classification", "imagefolder")
        patients = patient_pseudonyms(session, image_ids=ids) if classify else {}
    if classify:
        class_names = classification_classes(class_names, findings)
    asked = attribute_values(images, attributes) if fmt == "classification" else {}
    stems = _stems(sorted(images, key=lambda i: i.id))
    exports = [
        ExportImage(
            image_id=image.id,
            stem=stems[image.id],
            split=assignment[image.id],
            width=image.columns,
            height=image.rows,
            findings=tuple(
                f
                for f in findings.get(image.id, ())
                if f.class_name in class_names or f.box is None
            ),
            license=image.attributes.get("license"),
            extra={k: image.attributes[k] for k in _EXTRA_KEYS if k in image.attributes},
            patient=patients.get(image.id),
            attributes=asked.get(image.id, {}),
        )
        for image in sorted(images, key=lambda i: i.id)
    ]

    stored = StoredImages(store, max_decoded_bytes=max_decoded_bytes)
    # The stored rows x columns, the frame the boxes are in; writers resize exactly.
    options = RenderOptions(size=None, true_aspect=False)
    sources = {} if labels_only else _pixel_sources(engine, images, dataset)

    def load(item: ExportImage) -> PILImage.Image:
        return stored.render(sources[item.image_id], options).image

    metadata = {"dataset": dataset, "version": number, "format": fmt, "size": size, "mode": mode}
    render = None if labels_only else load
    if fmt == "classification":
        summary = export_classification(
            exports, class_names, sink, attributes=attributes, render=render,
            size=size, mode=mode, metadata=metadata | {"attributes": list(attributes)},
        )  # fmt: skip
    else:
        writer = {"yolo": export_yolo, "coco": export_coco, "imagefolder": export_imagefolder}
        summary = writer[fmt](
            exports, class_names, sink, render=render, size=size, mode=mode, metadata=metadata
        )
    with transaction(engine) as session:
        session.add(
            Export(
                version_id=version_id,
                format=fmt,
                location=location,
                parameters=metadata
                | {"split": split, "labels_only": labels_only, "attributes": list(attributes)}
                | ({"notes": list(summary.notes)} if summary.notes else {}),
                manifest_hash=summary.manifest_sha256,
            )
        )
    return summary
