"""`radlake retrain-set build`: reviewers' feedback on one model version made into a
label set and a new dataset version, exported as YOLO and COCO under
retrain/<timestamp>/ in the store (issue 11, "Retraining set").

What an image contributes: per image, the newest run of the model version that has
feedback is the reviewed one; each of its boxes takes its latest verdict (accept and
correct give a label, reject none) and boxes reviewers added join them. An image goes
in only when its label set is complete, because a box left out teaches the model that
the object is background:
- every box of the reviewed run has a verdict (else: "unreviewed boxes");
- no accepted box scores below --min-confidence (else: "accepted box below the
  confidence threshold"); the threshold is the original pipeline's gate (0.9) for
  feedback nobody looked at, such as imported files.
Where images go: the new version keeps the base version's splits (so the held-out
splits, and any evaluation on them, stay the same) and moves the reviewed images into
the training split. An image in a held-out split of the base (anything but training
and the production splits) is never moved, and an image from outside the base joins
only when its patient is in no held-out split: reviewing must not leak test patients
into training. Unreviewed production images are not in the new version.

Lineage: the retrain set row names the model version reviewed, the base and the new
dataset version, the job its label rows carry, and every feedback row it took.
Building again with nothing new returns the same set (same manifest), so re-running
is safe; two builds at once make one set.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radlake.catalog.db import WRITE_BATCH, batches, run_transaction, session_factory
from radlake.catalog.feedback_models import Feedback, RetrainSet, RetrainSetFeedback
from radlake.catalog.inference_models import ModelVersion, Prediction
from radlake.catalog.model_registry import resolve_version
from radlake.catalog.models import (
    DatasetMember,
    DatasetVersion,
    Image,
    Job,
    Label,
    utcnow,
)
from radlake.catalog.queries import patient_pseudonyms
from radlake.catalog.retrain_sets import RetrainSetSummary, summarize
from radlake.curation.agreement import iou
from radlake.curation.splits import SplitItem, check_leakage
from radlake.curation.versions import FEEDBACK_LABEL_SET, get_version, members
from radlake.domain import Box, Finding, LabelOrigin
from radlake.errors import RadlakeError
from radlake.formats.sink import StoreSink
from radlake.lake import Lake
from radlake.pipelines.export import ExportFormat, export_version
from radlake.storage.keys import retrain_prefix

RETRAIN_FORMATS: tuple[ExportFormat, ...] = ("yolo", "coco")
PRODUCTION_SPLITS = ("production",)
SAME_BOX_IOU = 0.5  # two reviewers' added boxes of one class this close are one object


class RetrainError(RadlakeError, ValueError):
    """A retraining set cannot be built as asked (no base dataset, no usable feedback)."""


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    model: str  # the model version whose predictions were reviewed (a model reference)
    since: datetime | None = None
    min_confidence: float = 0.0
    dataset: str | None = None  # the base (default: the version the model trained on)
    dataset_version: int | None = None
    simulated: bool = True  # take the simulated reviewer's feedback too
    split: str = "training"  # where reviewed images go
    production_splits: tuple[str, ...] = PRODUCTION_SPLITS
    export: bool = True
    export_size: int | None = 1024

    def parameters(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": None if self.since is None else self.since.isoformat(),
            "min_confidence": self.min_confidence,
            "simulated": self.simulated,
            "split": self.split,
            "production_splits": list(self.production_splits),
        }


@dataclass
class RetrainOutcome:
    summary: RetrainSetSummary
    created: bool
    exports: dict[str, str] = field(default_factory=dict)  # format -> store location
    exported_now: list[str] = field(default_factory=list)  # formats written by this call


@dataclass(frozen=True, slots=True)
class _ImageLabels:
    image_id: int
    findings: tuple[Finding, ...]
    feedback_ids: tuple[int, ...]


def _reviewed_rows(
    session: Session, *, version_id: int, request: RetrainRequest
) -> dict[int, list[Feedback]]:
    """Per image, the feedback rows on its newest reviewed run, oldest first. --since
    picks runs, not rows: a run counts when any of its feedback is that recent, and
    then with all its feedback (a box reviewed a minute earlier is still reviewed)."""
    recent = select(Feedback.run_id).where(Feedback.model_version_id == version_id)
    if request.since is not None:
        recent = recent.where(Feedback.created_at >= request.since)
    if not request.simulated:
        recent = recent.where(Feedback.simulated.is_(False))
    newest = dict(
        session.execute(
            select(Feedback.image_id, func.max(Feedback.run_id))
            .where(Feedback.run_id.in_(recent.distinct()))
            .group_by(Feedback.image_id)
        ).all()
    )
    statement = select(Feedback).where(Feedback.run_id.in_(recent.distinct()))
    if not request.simulated:
        statement = statement.where(Feedback.simulated.is_(False))
    by_image: dict[int, list[Feedback]] = defaultdict(list)
    for row in session.scalars(statement.order_by(Feedback.created_at, Feedback.id)):
        if row.run_id == newest[row.image_id]:
            by_image[row.image_id].append(row)
    return dict(by_image)


def _run_boxes(session: Session, run_ids: Sequence[int]) -> dict[int, set[int]]:
    """Run id -> the ids of its predicted boxes."""
    boxes: dict[int, set[int]] = {run_id: set() for run_id in run_ids}
    for chunk in batches(list(run_ids)):
        for prediction_id, run_id in session.execute(
            select(Prediction.id, Prediction.run_id).where(Prediction.run_id.in_(chunk))
        ):
            boxes[run_id].add(prediction_id)
    return boxes


def _image_labels(
    image_id: int, rows: Sequence[Feedback], boxes: set[int], min_confidence: float
) -> _ImageLabels | str:
    """The image's labels, or why it is left out."""
    verdicts: dict[int, Feedback] = {}
    added: list[Feedback] = []
    for row in rows:  # oldest first: a later verdict on a box replaces an earlier one
        if row.prediction_id is None:
            added.append(row)
        else:
            verdicts[row.prediction_id] = row
    if not boxes <= set(verdicts):
        return "unreviewed boxes"
    findings: list[Finding] = []
    seen: set[tuple[str, Box]] = set()
    for row in [*verdicts.values(), *added]:
        if row.verdict in ("reject", "none") or row.class_name is None or row.x_min is None:
            continue
        if row.verdict == "accept" and (row.confidence or 0.0) < min_confidence:
            return "accepted box below the confidence threshold"
        box = Box(row.x_min, row.y_min, row.x_max, row.y_max)  # type: ignore[arg-type]
        if (row.class_name, box) in seen:
            continue  # the same box twice (an imported file may list it twice): one label
        if row.prediction_id is None and any(
            f.class_name == row.class_name and f.box is not None and iou(f.box, box) >= SAME_BOX_IOU
            for f in findings
        ):
            continue  # two reviewers added the same missed box
        seen.add((row.class_name, box))
        findings.append(
            Finding(image_id, row.class_name, box, row.reviewer[:64], LabelOrigin.FEEDBACK)
        )
    return _ImageLabels(image_id, tuple(findings), tuple(row.id for row in rows))


def _manifest_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _set_name(session: Session, now: datetime) -> str:
    """The set's UTC timestamp, with a suffix when one is taken that second."""
    base = now.strftime("%Y%m%dt%H%M%Sz")
    name, n = base, 1
    while session.scalar(select(RetrainSet.id).where(RetrainSet.name == name)) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def _build(
    session: Session, request: RetrainRequest, left_out: defaultdict[str, int], version_id: int
) -> tuple[int, bool]:
    """The catalog half, in one transaction: (retrain set id, created)."""
    left_out.clear()
    # Builds of one model version take turns on its row. The lock is the transaction's
    # first statement: MariaDB's REPEATABLE READ fixes its snapshot at the first plain
    # read, which must come after the lock so it sees the set a build before made.
    session.execute(select(ModelVersion.id).where(ModelVersion.id == version_id).with_for_update())
    version = session.get_one(ModelVersion, version_id)
    if request.dataset is not None:
        base = get_version(session, request.dataset, request.dataset_version)
    elif version.trained_on_id is not None:
        base = session.get_one(DatasetVersion, version.trained_on_id)
    else:
        raise RetrainError(
            f"model {request.model} records no training dataset: name the base with --dataset"
        )
    reviewed = _reviewed_rows(session, version_id=version.id, request=request)
    if not reviewed:
        raise RetrainError(
            f"no feedback on {request.model} to build from (see radlake feedback list)"
        )
    boxes = _run_boxes(session, sorted({rows[0].run_id for rows in reviewed.values()}))
    split_of = members(session, base.id)
    movable = {request.split, *request.production_splits}
    held_out_ids = [i for i, s in split_of.items() if s not in movable]
    candidates = sorted(reviewed)
    pseudonyms = patient_pseudonyms(session, image_ids=[*candidates, *held_out_ids])
    held_out_patients = {pseudonyms[i] for i in held_out_ids if i in pseudonyms}
    # Ground truth in training stays: readers' labels outrank a review of predictions
    # (an imported file's pseudo-labels above all).
    truth = {
        image_id
        for chunk in batches([i for i in candidates if split_of.get(i) == request.split])
        for image_id in session.scalars(
            select(Label.image_id).where(
                Label.image_id.in_(chunk), Label.origin == LabelOrigin.GROUND_TRUTH.value
            )
        )
    }
    taken: list[_ImageLabels] = []
    for image_id in candidates:
        where = split_of.get(image_id)
        if where is not None and where not in movable:
            left_out[f"in held-out split {where!r}"] += 1
            continue
        if image_id in truth:
            left_out[f"already in {request.split!r} with ground truth"] += 1
            continue
        if where is None and pseudonyms.get(image_id) in held_out_patients:
            left_out["patient in a held-out split"] += 1
            continue
        rows = reviewed[image_id]
        labels = _image_labels(image_id, rows, boxes[rows[0].run_id], request.min_confidence)
        if isinstance(labels, str):
            left_out[labels] += 1
        else:
            taken.append(labels)
    if not taken:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(left_out.items()))
        raise RetrainError(f"no reviewed image could be used ({reasons})")
    taken_ids = {item.image_id for item in taken}
    assignment = {
        image_id: split
        for image_id, split in split_of.items()
        if split not in request.production_splits and image_id not in taken_ids
    } | dict.fromkeys(taken_ids, request.split)
    ids = sorted(assignment)
    sha_of = dict(
        row
        for chunk in batches(ids)
        for row in session.execute(select(Image.id, Image.sha256).where(Image.id.in_(chunk)))
    )
    groups = patient_pseudonyms(session, image_ids=ids)
    items = [
        SplitItem(i, f"patient:{groups[i]}" if i in groups else f"image:{sha_of[i]}", key=sha_of[i])
        for i in ids
    ]
    leakage = check_leakage(assignment, items).as_dict()
    names = list(base.classes.get("names", []))
    names += [
        n
        for n in version.class_names
        if n not in names and any(f.class_name == n for item in taken for f in item.findings)
    ]
    label_keys = sorted(
        (sha_of[item.image_id], f.class_name, f.reader or "", repr(f.box))
        for item in taken
        for f in item.findings
    )
    manifest = _manifest_hash(
        {
            "base": base.manifest_hash,
            "model_version": version.id,
            "label_set": FEEDBACK_LABEL_SET,
            "classes": names,
            "members": sorted((sha_of[i], s) for i, s in assignment.items()),
            "labels": label_keys,
            "reviewed_negatives": sorted(sha_of[i.image_id] for i in taken if not i.findings),
        }
    )
    same = session.scalar(
        select(RetrainSet.id)
        .join(DatasetVersion, RetrainSet.dataset_version_id == DatasetVersion.id)
        .where(
            DatasetVersion.dataset_id == base.dataset_id, DatasetVersion.manifest_hash == manifest
        )
    )
    if same is not None:
        return same, False
    if not leakage["ok"]:
        raise RetrainError(f"the retraining version would leak patients across splits: {leakage}")
    now = utcnow()
    counts: dict[str, int] = defaultdict(int)
    for split in assignment.values():
        counts[split] += 1
    newest = session.scalar(
        select(DatasetVersion.version)
        .where(DatasetVersion.dataset_id == base.dataset_id)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    )
    name = _set_name(session, now)
    job = Job(
        kind="retrain_set",
        status="done",
        parameters=request.parameters() | {"base_version_id": base.id},
        host=socket.gethostname(),
        pid=os.getpid(),
        finished_at=now,
    )
    made = DatasetVersion(
        dataset_id=base.dataset_id,
        version=(newest or 0) + 1,
        selection=base.selection,
        split_spec=dict(base.split_spec) | {"retrain_set": name, "base_version": base.version},
        seed=base.seed,
        label_set=FEEDBACK_LABEL_SET,
        fusion=None,
        classes={"names": names},
        counts=dict(counts),
        leakage=leakage,
        manifest_hash=manifest,
    )
    session.add_all([job, made])
    session.flush()
    member_rows = [
        {"version_id": made.id, "image_id": i, "split": s} for i, s in assignment.items()
    ]
    for member_batch in batches(member_rows, WRITE_BATCH):
        session.execute(insert(DatasetMember), member_batch)
    sources = dict(
        row
        for chunk in batches(sorted(taken_ids))
        for row in session.execute(select(Image.id, Image.source_id).where(Image.id.in_(chunk)))
    )
    label_rows = [
        {
            "source_id": sources[item.image_id],
            "source_image_key": f"sha256:{sha_of[item.image_id]}",
            "image_id": item.image_id,
            "class_name": f.class_name,
            "class_id": names.index(f.class_name) if f.class_name in names else None,
            "reader": f.reader,
            "origin": LabelOrigin.FEEDBACK.value,
            "x_min": f.box.x_min if f.box else None,
            "y_min": f.box.y_min if f.box else None,
            "x_max": f.box.x_max if f.box else None,
            "y_max": f.box.y_max if f.box else None,
            "job_id": job.id,
        }
        for item in taken
        for f in item.findings
    ]
    for label_batch in batches(label_rows, WRITE_BATCH):
        session.execute(insert(Label), label_batch)
    feedback_counts: dict[str, int] = defaultdict(int)
    retrain = RetrainSet(
        name=name,
        model_version_id=version.id,
        base_version_id=base.id,
        dataset_version_id=made.id,
        job_id=job.id,
        parameters=request.parameters(),
        counts={},
        store_prefix=f"retrain/{name}/",
        created_at=now,
    )
    session.add(retrain)
    session.flush()
    links = [
        {"retrain_set_id": retrain.id, "feedback_id": feedback_id}
        for item in taken
        for feedback_id in item.feedback_ids
    ]
    for link_batch in batches(links, WRITE_BATCH):
        session.execute(insert(RetrainSetFeedback), link_batch)
    for item in taken:
        feedback_counts["boxes"] += len(item.findings)
        feedback_counts["negative_images" if not item.findings else "images_with_boxes"] += 1
    dropped = sum(
        1
        for image_id, split in split_of.items()
        if split in request.production_splits and image_id not in taken_ids
    )
    retrain.counts = {
        "images": len(taken),
        "unreviewed_production_dropped": dropped,
        **feedback_counts,
        "feedback_rows": len(links),
        "left_out": dict(left_out),
        "splits": dict(counts),
    }
    job.counts = retrain.counts
    return retrain.id, True


def build_retrain_set(
    lake: Lake,
    request: RetrainRequest,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> RetrainOutcome:
    """Build (or find, when nothing changed) the retraining set of a model version's
    feedback and export it as YOLO and COCO under retrain/<name>/.

    Raises:
        RetrainError: no base dataset, no feedback, no usable reviewed image, or the
            new version would leak patients.
        ModelNotFound, InferenceError: the model reference.
        DatasetError: the base dataset or version (curation.versions).
        CatalogUnavailable, StorageError: faults of the catalog or the store.
    """
    if not 0.0 <= request.min_confidence <= 1.0:
        raise RetrainError(f"expected a confidence in [0, 1], got {request.min_confidence}")
    left_out: defaultdict[str, int] = defaultdict(int)
    version_id = run_transaction(
        lake.engine, lambda session: resolve_version(session, ref=request.model).id
    )
    for attempt in range(3):
        try:
            set_id, created = run_transaction(
                lake.engine, lambda session: _build(session, request, left_out, version_id)
            )
            break
        except IntegrityError:
            # Another build took the version number or the name first: look again
            # (it finds that build's set when the feedback was the same).
            if attempt == 2:
                raise
    with session_factory(lake.engine)() as session:
        summary = summarize(session, session.get_one(RetrainSet, set_id))
    dataset_name, number = summary.dataset.rsplit("@", 1)
    done = set(summary.exported)
    outcome = RetrainOutcome(summary, created)
    if not request.export:
        return outcome
    for index, fmt in enumerate(RETRAIN_FORMATS, 1):
        prefix = retrain_prefix(summary.name, fmt)
        location = f"{lake.store.url}/{prefix}"
        outcome.exports[fmt] = location
        if fmt in done:
            continue
        outcome.exported_now.append(fmt)
        export_version(
            engine=lake.engine,
            store=lake.store,
            dataset=dataset_name,
            version=int(number),
            fmt=fmt,
            sink=StoreSink(lake.store, prefix),
            location=location,
            size=request.export_size,
            max_decoded_bytes=lake.limits.max_decoded_bytes,
        )
        if progress is not None:
            progress(index, len(RETRAIN_FORMATS))
    if outcome.exported_now:
        with session_factory(lake.engine)() as session:
            outcome.summary = summarize(session, session.get_one(RetrainSet, set_id))
    return outcome
