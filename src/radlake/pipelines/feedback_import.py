"""Import the original production pipeline's feedback files (issue 11).

    folder ──► formats.feedback_files (read, check) ──► match the image (label import's
    ImageMatcher: file stem = image id) ──► box on the image? ──► per file, one
    transaction: an inference run of the model with its boxes as predictions, and an
    "accept" feedback row per box (channel "import", the file's time and confidence)

The files are what the original pipeline kept as feedback; which of them become
retraining data is the retrain set's choice (--min-confidence), not the import's.

Re-running is a no-op: each box's feedback row is fingerprinted by (image, sha256 of
the file's bytes, box index, model version), and a file whose fingerprints
are there is skipped before its run is created. One transaction per file, so an
import stopped half-way is finished by running it again. Every entry of the folder
ends imported, already imported, or rejected with a reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from radlake.catalog.db import DEFAULT_RETRY_SECONDS, run_transaction, session_factory
from radlake.catalog.feedback import Reviewer, feedback_row, save_feedback
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.labels import ImageRef, image_refs, source_kind
from radlake.catalog.model_registry import PredictedBox, RunRecord, record_runs, resolve_version
from radlake.domain import Box
from radlake.errors import RadlakeError
from radlake.formats.feedback_files import FeedbackFile, Rejection, read_feedback_folder
from radlake.formats.label_readers import LabelEntry
from radlake.pipelines.label_import import ImageMatcher

DEFAULT_REVIEWER = "import"
Progress = Callable[[int, int], None]


class FeedbackImportError(RadlakeError, ValueError):
    """An import that cannot start: no such folder, source or reviewer name."""


@dataclass(frozen=True, slots=True)
class FeedbackImportRequest:
    """What to import and as whose feedback."""

    folder: Path
    model: str  # NAME, NAME:VERSION or NAME@ALIAS
    source: str | None = None  # match only this source's images
    reviewer: str = DEFAULT_REVIEWER


@dataclass(slots=True)
class FeedbackImportSummary:
    """What an import read, wrote, found already there and rejected (every file)."""

    folder: str
    model: str
    version: int
    files: int = 0
    imported_files: int = 0
    imported_boxes: int = 0
    runs: int = 0
    already_files: int = 0
    already_boxes: int = 0
    rejected: list[tuple[str, Rejection]] = field(default_factory=list)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(rejection.reason for _, rejection in self.rejected).items()))

    def line(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.by_reason().items())
        return (
            f"{_count(self.files, 'file')}: {_count(self.imported_boxes, 'box')} imported from "
            f"{_count(self.imported_files, 'file')} as feedback on {self.model}:{self.version}, "
            f"{_count(self.already_boxes, 'box')} ({_count(self.already_files, 'file')}) "
            f"already imported, {_count(len(self.rejected), 'file')} rejected"
            + (f" ({reasons})" if reasons else "")
        )

    @property
    def nothing_usable(self) -> bool:
        """Files were given and every one was rejected."""
        return self.files > 0 and len(self.rejected) == self.files

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "model": self.model,
            "version": self.version,
            "files": self.files,
            "imported_files": self.imported_files,
            "imported_boxes": self.imported_boxes,
            "runs": self.runs,
            "already_imported_files": self.already_files,
            "already_imported_boxes": self.already_boxes,
            "rejected_by_reason": self.by_reason(),
            "rejected": [
                {"file": name, "reason": rejection.reason, "message": rejection.message}
                for name, rejection in self.rejected
            ],
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("x") else f"{n} {noun}s"


@dataclass(frozen=True, slots=True)
class _Model:
    version_id: int
    name: str
    version: int
    class_names: tuple[str, ...]


class _AlreadyThere(Exception):
    """Another import stored this file's boxes first (rolls this one back)."""


def fingerprint(image_id: int, file_sha256: str, index: int, *, version_id: int) -> str:
    """An imported box's feedback fingerprint: (image, file bytes, box index, model
    version): the same folder imports once per model version (whatever --reviewer
    calls it: another name for the same files would double them)."""
    parts = ("import", image_id, file_sha256, index, version_id)
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _prepare(session: Session, request: FeedbackImportRequest) -> tuple[_Model, ImageMatcher]:
    version = resolve_version(session, ref=request.model)
    if request.source is not None and source_kind(session, name=request.source) is None:
        raise FeedbackImportError(f"--source: no source named {request.source[:100]!r}")
    model = _Model(version.id, version.model.name, version.version, tuple(version.class_names))
    return model, ImageMatcher(image_refs(session, source=request.source))


def _match(matcher: ImageMatcher, read: FeedbackFile, source: str | None) -> ImageRef | Rejection:
    # The label import's matching: a file named <stem>.json names the image of that stem.
    entry = LabelEntry(read.name, read.file_name, None, "", None, None)
    found = matcher.match(entry)
    key = Path(read.name).stem
    if not found:
        where = f" of source {source!r}" if source else ""
        return Rejection("unknown_image", f"no catalogued image{where} has the id '{key}'")
    if len(found) > 1:
        return Rejection(
            "ambiguous_image",
            f"{len(found)} catalogued images have the id '{key}': name their source with --source",
        )
    return found[0]


def _outside(read: FeedbackFile, image: ImageRef) -> Rejection | None:
    if not (image.columns and image.rows):
        return None  # a size the catalog does not know cannot be checked
    for index, box in enumerate(read.boxes):
        _, _, x_max, y_max = box.corners
        if x_max > image.columns or y_max > image.rows:
            where = "" if len(read.boxes) == 1 else f"box {index}: "
            corners = ", ".join(f"{v:g}" for v in box.corners)
            return Rejection(
                "outside_image",
                f"{where}bbox [{corners}] leaves the {image.columns} x {image.rows} image",
            )
    return None


def _write(
    session: Session,
    read: FeedbackFile,
    image: ImageRef,
    model: _Model,
    request: FeedbackImportRequest,
) -> bool:
    """Store the file's run and feedback rows; False when they are already there."""
    prints = [
        fingerprint(image.id, read.sha256, index, version_id=model.version_id)
        for index in range(len(read.boxes))
    ]
    stored = session.scalars(select(Feedback.id).where(Feedback.fingerprint.in_(prints))).all()
    if stored:
        return False
    boxes = [
        PredictedBox(b.class_id, model.class_names[b.class_id], b.confidence, Box(*b.corners))
        for b in read.boxes
    ]
    caller = f"import:{request.folder.name or request.folder.resolve().name}"
    (run,) = record_runs(
        session,
        runs=[RunRecord(model.version_id, image.id, 0.0, 0.0, 0.0, caller, boxes)],
    )
    for index, (box, prediction_id) in enumerate(zip(read.boxes, run.prediction_ids, strict=True)):
        reviewer = Reviewer(request.reviewer, "import", simulated=False, at=box.timestamp)
        row = feedback_row(
            image_id=image.id,
            run_id=run.run_id,
            prediction_id=prediction_id,
            version_id=model.version_id,
            verdict="accept",
            class_name=model.class_names[box.class_id],
            box=Box(*box.corners),
            confidence=box.confidence,
            reviewer=reviewer,
            fingerprint=prints[index],
        )
        _, created = save_feedback(session, row)
        if not created:
            raise _AlreadyThere  # a concurrent import won: undo this run
    return True


def import_feedback(
    request: FeedbackImportRequest,
    *,
    engine: Engine,
    progress: Progress | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> FeedbackImportSummary:
    """Import every feedback file of the folder; re-runnable.

    Raises:
        FeedbackImportError: the folder cannot be listed, no such --source, a bad
            reviewer name.
        InferenceError: a malformed model reference (ModelNotFound: no such model).
        CatalogError: the catalog kept failing.
    """
    if not 0 < len(request.reviewer.strip()) <= 100:
        raise FeedbackImportError(
            f"expected a reviewer name of 1 to 100 characters, got {len(request.reviewer)}"
        )
    if not request.folder.is_dir():
        raise FeedbackImportError(f"{request.folder}: expected a folder of <image_id>.json files")
    with session_factory(engine)() as session:
        model, matcher = _prepare(session, request)
    try:
        files = list(read_feedback_folder(request.folder, class_names=model.class_names))
    except OSError as exc:
        raise FeedbackImportError(f"{request.folder}: cannot list it ({exc.strerror})") from None
    summary = FeedbackImportSummary(str(request.folder), model.name, model.version)
    summary.files = len(files)
    for done, read in enumerate(files, start=1):
        _import_one(read, model, matcher, request, summary, engine, retry_seconds)
        if progress is not None:
            progress(done, len(files))
    return summary


def _import_one(
    read: FeedbackFile,
    model: _Model,
    matcher: ImageMatcher,
    request: FeedbackImportRequest,
    summary: FeedbackImportSummary,
    engine: Engine,
    retry_seconds: float,
) -> None:
    if read.rejection is not None:
        summary.rejected.append((read.name, read.rejection))
        return
    matched = _match(matcher, read, request.source)
    rejection = matched if isinstance(matched, Rejection) else _outside(read, matched)
    if rejection is not None:
        summary.rejected.append((read.name, rejection))
        return
    assert not isinstance(matched, Rejection)
    try:
        created = run_transaction(
            engine,
            lambda session: _write(session, read, matched, model, request),
            retry_seconds=retry_seconds,
        )
    except _AlreadyThere:
        created = False
    if created:
        summary.imported_files += 1
        summary.imported_boxes += len(read.boxes)
        summary.runs += 1
    else:
        summary.already_files += 1
        summary.already_boxes += len(read.boxes)
