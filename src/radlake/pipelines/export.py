"""Export a dataset version as YOLO or COCO, to a folder or to the store.

The catalog gives members, splits and the version's label set; the store gives the
originals, rendered at their stored size (the frame the boxes are in) and handed to
the format writers, which resize and transform boxes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

from PIL import Image as PILImage
from sqlalchemy import Engine, Row, select

from radlake.catalog.db import batches, session_factory, transaction
from radlake.catalog.models import Export, Image
from radlake.curation.versions import DatasetError, get_version, members, version_findings
from radlake.formats.coco import export_coco
from radlake.formats.model import ExportImage, ExportSummary
from radlake.formats.sink import Sink
from radlake.formats.yolo import export_yolo
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages
from radlake.storage.store import ObjectStore

ExportFormat = Literal["yolo", "coco"]
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
)


def _stems(images: Sequence[Row[Any]]) -> dict[int, str]:
    """Readable, unique file stems: the source's own name, with the id on a clash."""
    stems: dict[int, str] = {}
    seen: set[str] = set()
    for image in images:
        key = str(image.attributes.get("source_key") or PurePosixPath(image.source_key).name)
        stem = PurePosixPath(key).stem.replace(" ", "_") or image.sha256[:16]
        if stem in seen:
            stem = f"{stem}-{image.id}"
        seen.add(stem)
        stems[image.id] = stem
    return stems


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
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> ExportSummary:
    """Write one version (or one split of it) in a trainer's format; recorded in the catalog.

    max_decoded_bytes: the decode budget of each original (the lake's limit).

    Raises:
        DatasetError: no such dataset, version or split.
        FormatError, StorageError: the writer or the store failed.
    """
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
    stems = _stems(sorted(images, key=lambda i: i.id))
    by_id = {image.id: image for image in images}
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
        )
        for image in sorted(images, key=lambda i: i.id)
    ]

    stored = StoredImages(store, max_decoded_bytes=max_decoded_bytes)
    # The stored rows x columns, the frame the boxes are in; writers resize exactly.
    options = RenderOptions(size=None, true_aspect=False)

    def load(item: ExportImage) -> PILImage.Image:
        return stored.render(StoredImage.of(by_id[item.image_id]), options).image

    metadata = {"dataset": dataset, "version": number, "format": fmt, "size": size, "mode": mode}
    writer = export_yolo if fmt == "yolo" else export_coco
    summary = writer(
        exports,
        class_names,
        sink,
        render=None if labels_only else load,
        size=size,
        mode=mode,
        metadata=metadata,
    )
    with transaction(engine) as session:
        session.add(
            Export(
                version_id=version_id,
                format=fmt,
                location=location,
                parameters=metadata | {"split": split, "labels_only": labels_only},
                manifest_hash=summary.manifest_sha256,
            )
        )
    return summary
