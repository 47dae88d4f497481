"""Dataset versions in the catalog: select, split, fix the label set, hash, diff.

A version is immutable: its selection, split spec, seed, label set, classes, member
images with their split, a leakage report and a manifest hash. Creating a version
again with nothing changed returns the existing one; a new version keeps the splits
of the previous version's images (stability when data are added).

Splits depend on content only (issue 9): each image is split by its sha256 and
grouped by its patient's pseudonym, so the same files, spec and seed give the same
members in any lake, whatever its secret or ingestion order. Splits that stay empty
(too few patients) are recorded as warnings in the version's `split_spec`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from radlake.catalog.db import WRITE_BATCH, batches
from radlake.catalog.models import (
    Dataset,
    DatasetMember,
    DatasetVersion,
    Image,
    Label,
    LabelClass,
    Source,
)
from radlake.catalog.queries import apply_filter, patient_pseudonyms
from radlake.curation.agreement import MATCH_IOU
from radlake.curation.consensus import FUSION_NAME, consensus_findings
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import (
    SplitItem,
    SplitSpec,
    assign_splits,
    check_leakage,
    empty_split_warnings,
)
from radlake.domain import NEW_NAME, Box, Finding, LabelOrigin
from radlake.errors import CatalogError, RadlakeError

LABEL_SETS = ("readers", "consensus")
# A retraining set's version (pipelines/retrain_set.py): reviewed images carry the
# labels their feedback made (origin feedback, the set's job), the others their
# readers' ground truth. Never asked for directly: only a retrain set makes one.
FEEDBACK_LABEL_SET = "feedback"


class DatasetError(RadlakeError, ValueError):
    """A dataset request cannot be met (no images, unknown version, bad label set)."""


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """What a new version is made of."""

    dataset: str
    selection: ImageFilter
    spec: SplitSpec = field(default_factory=SplitSpec.default)
    seed: int = 0
    label_set: str = "readers"
    consensus_iou: float = 0.4
    consensus_k: int = 2


def selected_images(session: Session, selection: ImageFilter) -> list[tuple[int, str, str | None]]:
    """(image id, sha256, patient pseudonym) of every image the selection matches."""
    chosen = list(
        session.execute(apply_filter(select(Image.id, Image.sha256), selection).order_by(Image.id))
    )
    pseudonyms = patient_pseudonyms(session, image_ids=[image_id for image_id, _ in chosen])
    return [(image_id, sha, pseudonyms.get(image_id)) for image_id, sha in chosen]


def ground_truth(session: Session, image_ids: Sequence[int]) -> dict[int, list[Finding]]:
    """Every ground-truth label of the images, as findings (boxes in stored pixels)."""
    found: dict[int, list[Finding]] = defaultdict(list)
    for chunk in batches(image_ids):
        rows = session.execute(
            select(
                Label.image_id,
                Label.class_name,
                Label.reader,
                Label.x_min,
                Label.y_min,
                Label.x_max,
                Label.y_max,
            )
            .where(Label.image_id.in_(chunk), Label.origin == LabelOrigin.GROUND_TRUTH.value)
            .order_by(Label.image_id, Label.id)
        )
        for image_id, class_name, reader, x_min, y_min, x_max, y_max in rows:
            assert image_id is not None  # selected by image id
            corners = (x_min, y_min, x_max, y_max)
            box = None if None in corners else Box(*corners)  # type: ignore[arg-type]
            found[image_id].append(
                Finding(image_id, class_name, box, reader, LabelOrigin.GROUND_TRUTH)
            )
    return found


def version_findings(
    session: Session,
    version: DatasetVersion,
    image_ids: Sequence[int],
    readers: Mapping[int, list[Finding]] | None = None,
) -> Mapping[int, list[Finding]]:
    """The findings of a version's label set: every reader's, or their consensus.

    Raises:
        AgreementError: a consensus over labels that carry no reader.
    """
    if version.label_set == FEEDBACK_LABEL_SET:
        return _retrain_findings(session, version, image_ids)
    if readers is None:
        readers = ground_truth(session, image_ids)
    if version.label_set == "readers":
        return readers
    fusion = version.fusion or {}
    fused, _ = consensus_findings(
        [finding for findings in readers.values() for finding in findings],
        iou_threshold=float(fusion.get("iou_threshold", MATCH_IOU)),
        min_readers=int(fusion.get("min_readers", 2)),
    )
    grouped: dict[int, list[Finding]] = defaultdict(list)
    for finding in fused:
        grouped[finding.image_id].append(finding)
    return grouped


def _retrain_findings(
    session: Session, version: DatasetVersion, image_ids: Sequence[int]
) -> Mapping[int, list[Finding]]:
    """A retrain set's labels: feedback-made labels on its reviewed images (none at all
    when every box was rejected: the reviewer said there is nothing), ground truth on
    the rest."""
    # Imported here: catalog.retrain_sets reads curation values (one direction only).
    from radlake.catalog.retrain_sets import retrain_labels

    reviewed, labels = retrain_labels(session, version_id=version.id, image_ids=image_ids)
    found: dict[int, list[Finding]] = defaultdict(list)
    found.update(ground_truth(session, [i for i in image_ids if i not in reviewed]))
    for image_id, findings in labels.items():
        found[image_id] = list(findings)
    return found


def _classes(session: Session, findings: Mapping[int, Sequence[Finding]]) -> list[str]:
    """Export classes: those with boxes (else all), in the source taxonomy's id order."""
    boxed = {f.class_name for fs in findings.values() for f in fs if f.box is not None}
    names = boxed or {f.class_name for fs in findings.values() for f in fs}
    ids = {
        name: class_id
        for name, class_id in session.execute(
            select(LabelClass.name, LabelClass.class_id).where(LabelClass.name.in_(sorted(names)))
        )
    }
    return sorted(names, key=lambda n: (ids.get(n) is None, ids.get(n) or 0, n))


def _manifest_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def latest_version(session: Session, dataset: str) -> DatasetVersion | None:
    """The newest version of a dataset, if any."""
    return session.scalar(
        select(DatasetVersion)
        .join(Dataset)
        .where(Dataset.name == dataset)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    )


def get_version(session: Session, dataset: str, version: int | None) -> DatasetVersion:
    """One version (the newest when version is None).

    Raises:
        DatasetError: no such dataset or version.
    """
    if version is None:
        found = latest_version(session, dataset)
    else:
        found = session.scalar(
            select(DatasetVersion)
            .join(Dataset)
            .where(Dataset.name == dataset, DatasetVersion.version == version)
        )
    if found is None:
        which = f"version {version} of " if version is not None else ""
        raise DatasetError(f"no {which}dataset {dataset!r}")
    return found


def members(session: Session, version_id: int) -> dict[int, str]:
    """Image id -> split of a version."""
    return {
        image_id: split
        for image_id, split in session.execute(
            select(DatasetMember.image_id, DatasetMember.split).where(
                DatasetMember.version_id == version_id
            )
        )
    }


def create_version(session: Session, request: VersionRequest) -> tuple[DatasetVersion, bool]:
    """Make a new version (or return the identical newest one); True when created.

    Raises:
        DatasetError: the selection matches no image, or the label set is unknown.
    """
    if request.label_set not in LABEL_SETS:
        raise DatasetError(f"expected a label set in {LABEL_SETS}, got {request.label_set!r}")
    selected = selected_images(session, request.selection)
    if not selected:
        raise DatasetError(_no_image_reason(session, request.selection))
    previous = latest_version(session, request.dataset)
    earlier = members(session, previous.id) if previous else None
    image_ids = [image_id for image_id, _, _ in selected]
    readers = ground_truth(session, image_ids)
    # The pseudonym only says which images share a patient; where they go follows
    # their sha256 (see curation/splits.py), so no lake secret or id decides it.
    items = [
        SplitItem(
            image_id,
            f"patient:{pseudonym}" if pseudonym else f"image:{sha}",
            frozenset(f.class_name for f in readers.get(image_id, ())),
            key=sha,
        )
        for image_id, sha, pseudonym in selected
    ]
    assignment = assign_splits(items, request.spec, seed=request.seed, previous=earlier)
    warnings = empty_split_warnings(assignment, items, request.spec)
    waiting, sources = _labels_waiting(session, request.selection)
    if waiting:
        where = f"source {', '.join(sources)}" if sources else "the lake"
        warnings.append(
            f"{where} has {waiting} labels whose images are not in the lake; "
            "they are not in this version"
        )
    leakage = check_leakage(assignment, items).as_dict()
    fusion = (
        {
            "name": FUSION_NAME,
            "iou_threshold": request.consensus_iou,
            "min_readers": request.consensus_k,
        }
        if request.label_set == "consensus"
        else None
    )
    draft = DatasetVersion(label_set=request.label_set, fusion=fusion)
    findings = version_findings(session, draft, image_ids, readers)
    classes = _classes(session, findings)
    sha_of = {image_id: sha for image_id, sha, _ in selected}
    document = {
        "selection": request.selection.as_dict(),
        "split_spec": str(request.spec),
        "seed": request.seed,
        "label_set": request.label_set,
        "fusion": fusion,
        "classes": classes,
        "members": sorted((sha_of[i], s) for i, s in assignment.items()),
        "labels": sorted(
            (sha_of[i], f.class_name, f.reader or "", _box_text(f.box))
            for i, fs in findings.items()
            for f in fs
        ),
    }
    manifest_hash = _manifest_hash(document)
    if previous is not None and previous.manifest_hash == manifest_hash:
        return previous, False
    dataset = session.scalar(select(Dataset).where(Dataset.name == request.dataset))
    if dataset is None:
        if not re.fullmatch(NEW_NAME, request.dataset):
            raise DatasetError(
                f"a new dataset's name is 1-100 letters, digits, '_', '.' or '-' starting with "
                f"a letter or digit, got {request.dataset[:100]!r}"
            )
        dataset = Dataset(name=request.dataset)
        session.add(dataset)
        session.flush()
    counts: dict[str, int] = defaultdict(int)
    for split in assignment.values():
        counts[split] += 1
    version = DatasetVersion(
        dataset_id=dataset.id,
        version=(previous.version + 1) if previous else 1,
        selection=request.selection.as_dict(),
        split_spec={
            "spec": str(request.spec),
            "names": list(request.spec.names),
            "warnings": warnings,
        },
        seed=request.seed,
        label_set=request.label_set,
        fusion=fusion,
        classes={"names": classes},
        counts=dict(counts),
        leakage=leakage,
        manifest_hash=manifest_hash,
    )
    session.add(version)
    session.flush()
    rows = [{"version_id": version.id, "image_id": i, "split": s} for i, s in assignment.items()]
    for batch in batches(rows, WRITE_BATCH):
        session.execute(insert(DatasetMember), batch)
    if not leakage["ok"]:
        raise CatalogError(f"leakage check failed for {request.dataset}: {leakage}")
    return version, True


def version_warnings(version: DatasetVersion) -> list[str]:
    """What a version recorded as worth a look (splits left empty); [] if nothing."""
    return [str(w) for w in (version.split_spec or {}).get("warnings", [])]


def _selected_sources(selection: ImageFilter) -> list[str]:
    value: object = selection.source  # one name, or several (a tuple) where filters allow
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, tuple | list) else []


def _labels_waiting(session: Session, selection: ImageFilter) -> tuple[int, list[str]]:
    """Labels of the selection's sources (all sources without one) whose image is
    not in the lake, and those sources' names."""
    query = select(func.count(Label.id)).where(Label.image_id.is_(None))
    sources = _selected_sources(selection)
    if sources:
        query = query.join(Source, Label.source_id == Source.id).where(Source.name.in_(sources))
    return session.scalar(query) or 0, sources


def _no_image_reason(session: Session, selection: ImageFilter) -> str:
    """Why a selection is empty, naming labels that wait for their images (issue 9:
    a labels-only load such as the NIH CSVs catalogues labels without images)."""
    waiting, sources = _labels_waiting(session, selection)
    if not waiting:
        return f"the selection matches no image: {selection.as_dict()}"
    where = f"source {', '.join(sources)}" if sources else "the lake"
    return (
        f"the selection matches no image: {where} has {waiting} labels but not their images "
        "(a labels-only load); a dataset is made of images, so load the images "
        "(radlake source ... with the image folder) and create it again"
    )


def _box_text(box: Box | None) -> str:
    if box is None:
        return ""
    return ",".join(f"{v:.6f}" for v in (box.x_min, box.y_min, box.x_max, box.y_max))


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """What changed from version a to version b."""

    added: list[int]
    removed: list[int]
    moved: list[tuple[int, str, str]]
    settings: dict[str, tuple[Any, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "removed": len(self.removed),
            "moved": len(self.moved),
            "examples": {
                "added": self.added[:20],
                "removed": self.removed[:20],
                "moved": [list(m) for m in self.moved[:20]],
            },
            "settings": {k: {"a": a, "b": b} for k, (a, b) in self.settings.items()},
        }


def diff_versions(session: Session, dataset: str, a: int, b: int) -> VersionDiff:
    """Images added, removed and moved between splits, and settings that changed.

    Raises:
        DatasetError: either version does not exist.
    """
    first, second = get_version(session, dataset, a), get_version(session, dataset, b)
    old, new = members(session, first.id), members(session, second.id)
    settings = {
        name: (getattr(first, name), getattr(second, name))
        for name in ("selection", "split_spec", "seed", "label_set", "fusion", "classes")
        if getattr(first, name) != getattr(second, name)
    }
    return VersionDiff(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        moved=sorted((i, old[i], new[i]) for i in set(old) & set(new) if old[i] != new[i]),
        settings=settings,
    )
