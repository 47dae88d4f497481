"""The dashboard benchmark's lake: a catalog shaped like 90 days of chest X-ray work.

`build_lake(home, images=100_000)` makes a fresh lake at home (SQLite catalog,
migrations applied, local store left empty: the dashboard reads only the catalog) and
fills it with SQLAlchemy Core bulk inserts, as benchmarks/api.py grows its catalog:

- three sources: `vinbigdata` (DICOM and PNG), `hospital-pacs` (DICOM), `covid-cxr`
  (JPEG and PNG); CR/DX, views PA/AP/LL, 2048-3000 px films, a few manufacturers;
  attributes as ingest writes them (patient sex and age, DICOM in its "045Y" form, the
  preview's intensity statistics); patient -> study -> series -> image, a preview
  rendition per image;
- twelve ingest jobs spread over 90 days (the images arrive in those bursts), one of
  them interrupted, one failed ingest, and about 500 quarantined inputs with 7 reasons;
- about 1.5 ground-truth labels per image from three readers (VinBigData's 14 classes
  and "No finding"): most images read once, 15 % by all three readers (agreement);
- dataset `cxr` v1 (label set "readers"): every image, train/val/test 70/15/15 by
  patient;
- models `cxr-detector` and `cxr-nodule`, two versions each, with metrics and
  aliases; inference runs on 30 % of the images, 1-3 boxes each; about 5 % of them
  reviewed (accept/reject/correct/add, a third by the simulator), ~5,000 feedback rows;
- two retraining sets (cxr-detector v1 and v2's feedback: `cxr` v2 and v3), three
  simulate jobs with per-stage figures, three predict jobs, a verify job.

Everything is drawn from one seeded generator, so the same arguments give the same
catalog (times are relative to the moment of the build).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, insert, update

from radlake.catalog.feedback_models import Feedback, RetrainSet, RetrainSetFeedback
from radlake.catalog.inference_models import (
    InferenceRun,
    Model,
    ModelAlias,
    ModelAliasEvent,
    ModelVersion,
    Prediction,
)
from radlake.catalog.models import (
    Base,
    Dataset,
    DatasetMember,
    DatasetVersion,
    Image,
    Job,
    Label,
    LabelClass,
    Patient,
    Quarantine,
    Rendition,
    Series,
    Source,
    Study,
)
from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.domain import LabelOrigin
from radlake.lake import init_lake

_Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in stored pixels
# A model version: (id, model name, number, class names, registered at).
_Version = tuple[int, str, int, list[str], datetime]

INSERT_BATCH = 5000
DATASET = "cxr"
SPLITS = (("train", 0.70), ("val", 0.15), ("test", 0.15))
SPLIT_SPEC = {
    "spec": ",".join(f"{name}={share!r}" for name, share in SPLITS),
    "names": [name for name, _ in SPLITS],
    "warnings": [],
}
READERS = ("R8", "R9", "R10")
NO_FINDING = "No finding"
# VinBigData's taxonomy, with each class's share of boxes in its train.csv (roughly)
# and where its boxes sit: centre x, centre y, width, height as fractions of the film
# (x of a left/right class mirrored at random).
CLASSES: tuple[tuple[str, float, _Box], ...] = (
    ("Aortic enlargement", 0.20, (0.55, 0.35, 0.12, 0.12)),
    ("Atelectasis", 0.01, (0.30, 0.60, 0.15, 0.10)),
    ("Calcification", 0.03, (0.35, 0.35, 0.06, 0.06)),
    ("Cardiomegaly", 0.15, (0.52, 0.62, 0.45, 0.22)),
    ("Consolidation", 0.02, (0.30, 0.55, 0.18, 0.18)),
    ("ILD", 0.03, (0.30, 0.55, 0.22, 0.35)),
    ("Infiltration", 0.03, (0.30, 0.50, 0.18, 0.20)),
    ("Lung Opacity", 0.07, (0.30, 0.50, 0.15, 0.18)),
    ("Nodule/Mass", 0.07, (0.30, 0.45, 0.05, 0.05)),
    ("Other lesion", 0.06, (0.40, 0.55, 0.10, 0.12)),
    ("Pleural effusion", 0.06, (0.22, 0.80, 0.20, 0.14)),
    ("Pleural thickening", 0.13, (0.28, 0.20, 0.14, 0.06)),
    ("Pneumothorax", 0.005, (0.28, 0.30, 0.20, 0.35)),
    ("Pulmonary fibrosis", 0.10, (0.30, 0.35, 0.16, 0.16)),
)
CLASS_NAMES = tuple(name for name, _, _ in CLASSES)
CLASS_WEIGHTS = tuple(weight for _, weight, _ in CLASSES)
PRIOR = {name: where for name, _, where in CLASSES}
ALL_CLASSES = (*CLASS_NAMES, NO_FINDING)
NODULE_CLASSES = ("Nodule/Mass", "Lung Opacity", "Pleural effusion")


@dataclass(frozen=True, slots=True)
class SourcePlan:
    name: str
    kind: str
    formats: tuple[tuple[str, float], ...]
    modalities: tuple[tuple[str, float], ...]
    manufacturers: tuple[tuple[str, str], ...]  # (manufacturer, model)
    ap_share: float  # of first views; the rest PA


SOURCE_PLANS = (
    SourcePlan(
        "hospital-pacs",
        "folder",
        (("dicom", 1.0),),
        (("DX", 0.7), ("CR", 0.3)),
        (("GE Healthcare", "Definium 8000"), ("Siemens", "Ysio Max"), ("Carestream", "DRX-1")),
        0.25,
    ),
    SourcePlan(
        "vinbigdata",
        "vinbigdata",
        (("dicom", 0.5), ("png", 0.5)),
        (("DX", 0.6), ("CR", 0.4)),
        (("Philips", "DigitalDiagnost"), ("Siemens", "Multix Fusion"), ("GE Healthcare", "Optima")),
        0.15,
    ),
    SourcePlan(
        "covid-cxr",
        "covid_cxr",
        (("jpeg", 0.7), ("png", 0.3)),
        (("CR", 0.8), ("DX", 0.2)),
        (("Fujifilm", "FCR Capsula"), ("Agfa", "DX-D 300")),
        0.6,
    ),
)
EXTENSIONS = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}
FOLDERS = {"folder": "incoming", "vinbigdata": "train", "covid_cxr": "images"}
BYTES_PER_PIXEL = {"dicom": (2.0, 2.01), "png": (1.0, 1.5), "jpeg": (0.08, 0.2)}
SOP_CLASS = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}
UID_ROOT = "1.2.826.0.1.3680043.10.543"
QUARANTINE_REASONS = (
    ("not an image: content matches no supported format (DICOM, NIfTI, PNG, JPEG)", 0.35),
    ("empty file (0 bytes)", 0.10),
    ("unreadable DICOM: the file ends before its pixel data", 0.20),
    ("internal reader error (ValueError)", 0.05),
    (
        "ran out of memory decoding it: lower the number of workers or RADLAKE_MAX_DECODED_MB",
        0.05,
    ),
    ("no pixel data: the DICOM object holds a structured report, not an image", 0.20),
    ("too large to ingest: the input limit is RADLAKE_MAX_INPUT_MB", 0.05),
)
INGEST_JOBS = 12
DAYS = 90


@dataclass
class LakeFacts:
    """What the built lake holds (for the report), and the tables' row counts."""

    home: Path
    dataset: str
    version: int
    first_day: datetime
    last_day: datetime
    seconds: float = 0.0
    rows: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        order = (
            "image",
            "label",
            "dataset_member",
            "inference_run",
            "prediction",
            "feedback",
            "job",
            "quarantine",
        )
        parts = ", ".join(f"{self.rows[name]:,} {name}" for name in order)
        return f"{parts} ({sum(self.rows.values()):,} rows in all)"


@dataclass
class _Ids:
    """The next free id of each table (ids are given, not left to the database, so
    rows can point at each other before they are inserted)."""

    next: Counter[str] = field(default_factory=Counter)

    def take(self, table: str) -> int:
        self.next[table] += 1
        return self.next[table]


class _Writer:
    """Buffers rows per table and inserts them in batches. A full batch flushes every
    table's rows, parents first: a row is only ever added after the rows it points at,
    so the foreign keys (enforced on SQLite) always hold."""

    def __init__(self, connection: Connection, facts: LakeFacts) -> None:
        self.connection, self.facts = connection, facts
        self.pending: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, table: Table, row: dict[str, Any]) -> None:
        rows = self.pending[table.name]
        rows.append(row)
        if len(rows) >= INSERT_BATCH:
            self.flush()

    def add_all(self, table: Table, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(table, row)

    def flush(self) -> None:
        for table in Base.metadata.sorted_tables:
            rows = self.pending.pop(table.name, [])
            if rows:
                self.connection.execute(insert(table), rows)
                self.facts.rows[table.name] += len(rows)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _sha(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    return rng.choices([value for value, _ in weighted], [w for _, w in weighted])[0]


def _box(
    rng: random.Random, class_name: str, width: int, height: int, jitter: float = 0.25
) -> _Box:
    """A plausible box of the class on a width x height film, inside it."""
    cx, cy, bw, bh = PRIOR.get(class_name, (0.5, 0.5, 0.1, 0.1))
    if class_name not in ("Aortic enlargement", "Cardiomegaly") and rng.random() < 0.5:
        cx = 1.0 - cx  # the other lung
    cx = (cx + rng.gauss(0, 0.05)) * width
    cy = (cy + rng.gauss(0, 0.05)) * height
    box_w = max(8.0, bw * width * math.exp(rng.gauss(0, jitter)))
    box_h = max(8.0, bh * height * math.exp(rng.gauss(0, jitter)))
    x_min = min(max(0.0, cx - box_w / 2), width - 8.0)
    y_min = min(max(0.0, cy - box_h / 2), height - 8.0)
    x_max = min(float(width), x_min + box_w)
    y_max = min(float(height), y_min + box_h)
    return round(x_min, 1), round(y_min, 1), round(x_max, 1), round(y_max, 1)


def _moved(rng: random.Random, box: _Box, width: int, height: int) -> _Box:
    """The same object as another reader (or the model) draws it: a few % off."""
    x_min, y_min, x_max, y_max = box
    w, h = x_max - x_min, y_max - y_min
    dx, dy = rng.gauss(0, 0.06) * w, rng.gauss(0, 0.06) * h
    sx, sy = math.exp(rng.gauss(0, 0.08)), math.exp(rng.gauss(0, 0.08))
    cx, cy = (x_min + x_max) / 2 + dx, (y_min + y_max) / 2 + dy
    nw, nh = max(8.0, w * sx), max(8.0, h * sy)
    nx = min(max(0.0, cx - nw / 2), width - 8.0)
    ny = min(max(0.0, cy - nh / 2), height - 8.0)
    return (
        round(nx, 1),
        round(ny, 1),
        round(min(float(width), nx + nw), 1),
        round(min(float(height), ny + nh), 1),
    )


# -- images -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Patient:
    id: int
    sex: str
    age: int


@dataclass(frozen=True, slots=True)
class _Series:
    id: int
    patient: _Patient
    format: str
    modality: str
    manufacturer: str
    model: str


@dataclass(frozen=True, slots=True)
class _ImageInfo:
    id: int
    source_id: int
    source_key: str
    width: int
    height: int
    created_at: datetime
    job_id: int
    patient_id: int


def _ingest_plan(
    rng: random.Random, total: int, start: datetime
) -> list[tuple[int, SourcePlan, datetime, float]]:
    """(images, source, start, images per second) of each ingest job, oldest first."""
    order = (0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2)  # the PACS every other time
    weights = [rng.uniform(0.5, 1.5) for _ in range(INGEST_JOBS)]
    sizes = [int(total * w / sum(weights)) for w in weights]
    sizes[-1] += total - sum(sizes)
    plan = []
    for number, size in enumerate(sizes):
        day = (number + rng.uniform(0.1, 0.9)) * DAYS / INGEST_JOBS
        begins = start + timedelta(days=day, hours=rng.uniform(-6, 6))
        plan.append((size, SOURCE_PLANS[order[number % len(order)]], begins, rng.uniform(8, 25)))
    return plan


def _attributes(
    rng: random.Random, fmt: str, plan: SourcePlan, patient: _Patient
) -> dict[str, Any]:
    """What ingest keeps: DICOM's technique and patient characteristics (age in its
    "045Y" form), a CSV's columns for the others; the preview's intensity figures."""
    sex, age = patient.sex, patient.age
    mean = rng.gauss(120 if fmt == "dicom" else 135, 18)
    std = abs(rng.gauss(55, 8))
    p05 = max(0.0, mean - 1.6 * std + rng.gauss(0, 5))
    p95 = min(255.0, mean + 1.6 * std + rng.gauss(0, 5))
    intensity = {
        "mean": round(min(max(mean, 1.0), 254.0), 3),
        "std": round(std, 3),
        "p05": round(p05, 3),
        "p50": round(min(max(mean + rng.gauss(0, 6), p05), p95), 3),
        "p95": round(max(p95, p05 + 1), 3),
    }
    if fmt == "dicom":
        return {
            "sop_class_name": "Digital X-Ray Image Storage - For Presentation",
            "KVP": round(rng.uniform(100, 125), 1),
            "PatientPosition": "",
            "PixelRepresentation": 0,
            "patient_sex": sex,
            "patient_age": f"{age:03d}Y",
            "burned_in_annotation": "NO",
            "intensity": intensity,
        }
    if plan.kind == "covid_cxr":  # the collection's own clinical columns
        return {"dataset": plan.name, "sex": sex, "age": age, "intensity": intensity}
    return {"dataset": plan.name, "patient_sex": sex, "patient_age": age, "intensity": intensity}


def _labels_of(rng: random.Random, info: _ImageInfo) -> list[tuple[str, str, _Box | None]]:
    """(reader, class, box) of an image: 55 % read once as normal, 30 % read once with
    findings, 15 % read by all three readers (who agree on most, not all, boxes)."""
    w, h = info.width, info.height
    draw = rng.random()
    if draw < 0.55:
        return [(rng.choice(READERS), NO_FINDING, None)]
    if draw < 0.85:
        reader = rng.choice(READERS)
        count = 1 if rng.random() < 0.65 else 2
        names = rng.choices(CLASS_NAMES, CLASS_WEIGHTS, k=count)
        return [(reader, name, _box(rng, name, w, h)) for name in names]
    truth = (
        []
        if rng.random() < 0.4
        else [
            (name, _box(rng, name, w, h))
            for name in rng.choices(CLASS_NAMES, CLASS_WEIGHTS, k=rng.choice((1, 1, 2)))
        ]
    )
    found: list[tuple[str, str, _Box | None]] = []
    for reader in READERS:
        own = [(name, _moved(rng, box, w, h)) for name, box in truth if rng.random() < 0.75]
        if rng.random() < 0.12:  # a finding the others did not see
            name = rng.choices(CLASS_NAMES, CLASS_WEIGHTS)[0]
            own.append((name, _box(rng, name, w, h)))
        if own:
            found.extend((reader, name, box) for name, box in own)
        else:
            found.append((reader, NO_FINDING, None))
    return found


def _split_of(patient_id: int) -> str:
    draw = int(_sha("split", patient_id)[:8], 16) / 0xFFFFFFFF
    total = 0.0
    for name, share in SPLITS:
        total += share
        if draw < total:
            return name
    return SPLITS[-1][0]


# -- the build ----------------------------------------------------------------------


class _Builder:
    def __init__(self, connection: Connection, facts: LakeFacts, seed: int) -> None:
        self.rng = random.Random(seed)
        self.out = _Writer(connection, facts)
        self.ids = _Ids()
        self.facts = facts
        self.now = facts.last_day
        self.start = facts.first_day
        self.images: list[_ImageInfo] = []
        self.boxes: dict[int, list[tuple[str, _Box]]] = {}
        self.source_ids: dict[str, int] = {}
        # feedback id -> the label it yields (class, box, reviewer); not for rejects.
        self.feedback_labels: dict[int, tuple[str, _Box, str]] = {}

    def job(
        self,
        kind: str,
        status: str,
        started: datetime,
        seconds: float | None,
        parameters: dict[str, Any],
        counts: dict[str, Any],
        error: str | None = None,
    ) -> int:
        job_id = self.ids.take("job")
        self.out.add(
            _table(Job),
            {
                "id": job_id,
                "kind": kind,
                "parameters": parameters,
                "status": status,
                "host": "ward-ws-03",
                "pid": self.rng.randint(2000, 60000),
                "counts": counts,
                "started_at": started,
                "finished_at": None if seconds is None else started + timedelta(seconds=seconds),
                "seconds": None if seconds is None else round(seconds, 3),
                "error": error,
            },
        )
        return job_id

    def sources(self) -> None:
        for plan in SOURCE_PLANS:
            source_id = self.ids.take("source")
            self.source_ids[plan.name] = source_id
            self.out.add(
                _table(Source),
                {"id": source_id, "name": plan.name, "kind": plan.kind, "created_at": self.start},
            )
            for class_id, name in enumerate(ALL_CLASSES):
                self.out.add(
                    _table(LabelClass),
                    {
                        "id": self.ids.take("label_class"),
                        "source_id": source_id,
                        "class_id": class_id,
                        "name": name,
                    },
                )

    def ingest(self, total: int) -> None:
        """Every ingest job with its images, their hierarchy, previews and labels, and
        the inputs it quarantined."""
        plan = _ingest_plan(self.rng, total, self.start)
        interrupted = 6  # the seventh job was stopped part way (Ctrl-C); a rerun resumed
        quarantine_left = max(1, round(500 * total / 100_000))
        for number, (size, source, begins, rate) in enumerate(plan):
            rejects = (
                quarantine_left
                if number == len(plan) - 1
                else min(quarantine_left, int(self.rng.uniform(0.4, 1.6) * 500 * size / 100_000))
            )
            quarantine_left -= rejects
            self._ingest_job(number == interrupted, size, source, begins, rate, rejects)
            if number == 8:
                # A run pointed at a folder that was not mounted: no input at all.
                self.job(
                    "ingest",
                    "failed",
                    begins + timedelta(days=2),
                    0.4,
                    {"source": source.name, "paths": ["/mnt/pacs-export/2025"], "workers": 2},
                    {"catalogued": 0, "already_present": 0, "quarantined": 0, "bytes_read": 0},
                    "IngestError: no such folder: /mnt/pacs-export/2025",
                )

    def _ingest_job(
        self,
        interrupted: bool,
        size: int,
        source: SourcePlan,
        begins: datetime,
        rate: float,
        rejects: int,
    ) -> None:
        rng = self.rng
        seconds = size / rate
        parameters: dict[str, Any] = {
            "source": source.name,
            "source_kind": source.kind,
            "paths": [f"/data/{source.name}"],
            "workers": 2,
        }
        status = "interrupted" if interrupted else "succeeded"
        job_id = self.job("ingest", status, begins, seconds, parameters, {})
        made: list[tuple[_ImageInfo, str, int]] = []  # (image, format, bytes)
        while len(made) < size:
            created = begins + timedelta(seconds=len(made) / rate)
            patient = _Patient(
                self.ids.take("patient"), rng.choice("FM"), min(99, max(1, int(rng.gauss(55, 17))))
            )
            self.out.add(
                _table(Patient),
                {"id": patient.id, "pseudonym": _sha("patient", patient.id), "created_at": created},
            )
            for _ in range(1 if rng.random() < 0.8 else 2):  # a follow-up visit now and then
                views = ["AP" if rng.random() < source.ap_share else "PA"]
                if rng.random() < 0.25:
                    views.append("LL")
                views = views[: size - len(made)]
                if not views:
                    break
                series = self._series(source, patient, views, created)
                for instance, view in enumerate(views, 1):
                    created = begins + timedelta(seconds=len(made) / rate)
                    made.append(self._image(source, series, instance, view, job_id, created))
        self._quarantine(job_id, self.source_ids[source.name], rejects, begins, seconds)
        already = rng.randint(0, size // 50)
        counts = {
            "catalogued": len(made),
            "already_present": already,
            "quarantined": rejects,
            "bytes_read": sum(size_bytes for _, _, size_bytes in made),
            "inputs": len(made) + already + rejects,
        }
        formats = Counter(fmt for _, fmt, _ in made)
        # The counts are known only now: write the job's row (and all before it), then
        # fill them in.
        self.out.flush()
        self.out.connection.execute(
            update(_table(Job))
            .where(_table(Job).c.id == job_id)
            .values(counts=counts, parameters=parameters | {"formats": dict(formats)})
        )
        self.images.extend(info for info, _, _ in made)

    def _series(
        self, source: SourcePlan, patient: _Patient, views: list[str], created: datetime
    ) -> _Series:
        """A study with one series of the views, on one device."""
        study_id, series_id = self.ids.take("study"), self.ids.take("series")
        manufacturer, model = self.rng.choice(source.manufacturers)
        series = _Series(
            series_id,
            patient,
            _pick(self.rng, source.formats),
            _pick(self.rng, source.modalities),
            manufacturer,
            model,
        )
        self.out.add(
            _table(Study),
            {
                "id": study_id,
                "study_uid": f"{UID_ROOT}.1.{study_id}",
                "patient_id": patient.id,
                "created_at": created,
            },
        )
        self.out.add(
            _table(Series),
            {
                "id": series_id,
                "series_uid": f"{UID_ROOT}.2.{series_id}",
                "study_id": study_id,
                "modality": series.modality,
                "series_number": 1,
                "description": f"Chest {'/'.join(views)}",
                "created_at": created,
            },
        )
        return series

    def _image(
        self,
        source: SourcePlan,
        series: _Series,
        instance: int,
        view: str,
        job_id: int,
        created: datetime,
    ) -> tuple[_ImageInfo, str, int]:
        """An image of the series with its preview and labels: (image, format, bytes)."""
        rng, fmt, dicom = self.rng, series.format, series.format == "dicom"
        image_id = self.ids.take("image")
        rows, columns = rng.randint(2048, 3000), rng.randint(2048, 3000)
        if view == "LL":
            rows, columns = max(rows, columns), min(rows, columns)
        sha = _sha("image", image_id)
        size_bytes = int(rows * columns * rng.uniform(*BYTES_PER_PIXEL[fmt]))
        if source.kind == "folder":  # a PACS export names files by SOP instance UID
            stem, extension = f"{UID_ROOT}.3.{image_id}", "dcm"
        else:
            stem, extension = sha[:16], "dicom" if dicom else EXTENSIONS[fmt]
        spacing = round(rng.uniform(0.139, 0.2), 4) if dicom else None
        self.out.add(
            _table(Image),
            {
                "id": image_id,
                "sha256": sha,
                "size_bytes": size_bytes,
                "format": fmt,
                "source_id": self.source_ids[source.name],
                "source_key": f"{FOLDERS[source.kind]}/{stem}.{extension}",
                "original_key": f"raw/{sha[:2]}/{sha}.{EXTENSIONS[fmt]}",
                "series_id": series.id,
                "sop_instance_uid": f"{UID_ROOT}.3.{image_id}" if dicom else None,
                "sop_class_uid": SOP_CLASS[series.modality] if dicom else None,
                "instance_number": instance,
                "modality": series.modality,
                "body_part": "CHEST",
                "view_position": view,
                "manufacturer": series.manufacturer if dicom else None,
                "manufacturer_model": series.model if dicom else None,
                "rows": rows,
                "columns": columns,
                "frames": 1,
                "slices": 1,
                "volumes": 1,
                "pixel_spacing_row": spacing,
                "pixel_spacing_col": spacing,
                "photometric": "YBR_FULL_422" if fmt == "jpeg" else "MONOCHROME2",
                "bits_allocated": 16 if dicom else 8,
                "bits_stored": 12 if dicom else 8,
                "transfer_syntax": "1.2.840.10008.1.2.1" if dicom else None,
                "dtype": "uint16" if dicom else "uint8",
                "attributes": _attributes(rng, fmt, source, series.patient),
                "job_id": job_id,
                "created_at": created,
            },
        )
        scale = 512 / max(rows, columns)
        self.out.add(
            _table(Rendition),
            {
                "id": self.ids.take("rendition"),
                "image_id": image_id,
                "name": "preview",
                "key": f"derived/{sha}/preview.png",
                "width": round(columns * scale),
                "height": round(rows * scale),
                "window_center": 2048.0 if dicom else None,
                "window_width": 4096.0 if dicom else None,
                "created_at": created,
            },
        )
        info = _ImageInfo(
            image_id,
            self.source_ids[source.name],
            stem,
            columns,
            rows,
            created,
            job_id,
            series.patient.id,
        )
        self._labels(info)
        return info, fmt, size_bytes

    def _quarantine(
        self, job_id: int, source_id: int, rejects: int, begins: datetime, seconds: float
    ) -> None:
        for number in range(rejects):
            reason = _pick(self.rng, QUARANTINE_REASONS)
            empty = reason.startswith("empty")
            sha = None if empty else _sha("rejected", job_id, number)
            when = begins + timedelta(seconds=self.rng.uniform(0, seconds))
            self.out.add(
                _table(Quarantine),
                {
                    "id": self.ids.take("quarantine"),
                    "fingerprint": _sha("fingerprint", job_id, number),
                    "source_id": source_id,
                    "source_key": f"incoming/rejected-{job_id}-{number:04d}.dcm",
                    "sha256": sha,
                    "size_bytes": 0 if empty else self.rng.randint(100, 30_000_000),
                    "reason": reason,
                    "stored_key": None if sha is None else f"quarantine/{sha[:2]}/{sha}",
                    "job_id": job_id,
                    "created_at": when,
                    # Fixed and ingested again a few days later: history, not a to-do.
                    "resolved_at": when + timedelta(days=3) if self.rng.random() < 0.08 else None,
                },
            )

    def _labels(self, info: _ImageInfo) -> None:
        boxed = []
        for reader, name, box in _labels_of(self.rng, info):
            if box is not None:
                boxed.append((name, box))
            self._label(
                info.source_id,
                info.source_key,
                info.id,
                (reader, name, box),
                LabelOrigin.GROUND_TRUTH,
                info.job_id,
                info.created_at,
            )
        if boxed:
            self.boxes[info.id] = boxed

    def _label(
        self,
        source_id: int,
        source_key: str,
        image_id: int,
        finding: tuple[str, str, _Box | None],
        origin: LabelOrigin,
        job_id: int,
        created: datetime,
    ) -> None:
        reader, name, box = finding
        x_min, y_min, x_max, y_max = box or (None, None, None, None)
        self.out.add(
            _table(Label),
            {
                "id": self.ids.take("label"),
                "source_id": source_id,
                "source_image_key": source_key,
                "image_id": image_id,
                "class_name": name,
                "class_id": ALL_CLASSES.index(name),
                "reader": reader,
                "origin": origin.value,
                "confidence": None,
                "x_min": x_min,
                "y_min": y_min,
                "x_max": x_max,
                "y_max": y_max,
                "job_id": job_id,
                "created_at": created,
            },
        )

    # -- datasets ---------------------------------------------------------------------

    def dataset(self) -> tuple[int, int, dict[int, str]]:
        """Dataset cxr v1 over every image: (dataset id, version id, image -> split)."""
        dataset_id = self.ids.take("dataset")
        created = self.start + timedelta(days=12)
        self.out.add(_table(Dataset), {"id": dataset_id, "name": DATASET, "created_at": created})
        split_of = {info.id: _split_of(info.patient_id) for info in self.images}
        version_id = self._version(
            dataset_id,
            1,
            split_of,
            "readers",
            SPLIT_SPEC,
            created,
        )
        return dataset_id, version_id, split_of

    def _version(
        self,
        dataset_id: int,
        number: int,
        split_of: dict[int, str],
        label_set: str,
        split_spec: dict[str, Any],
        created: datetime,
    ) -> int:
        version_id = self.ids.take("dataset_version")
        self.out.add(
            _table(DatasetVersion),
            {
                "id": version_id,
                "dataset_id": dataset_id,
                "version": number,
                "selection": ImageFilter().as_dict(),
                "split_spec": split_spec,
                "seed": 0,
                "label_set": label_set,
                "fusion": None,
                "classes": {"names": list(CLASS_NAMES)},
                "counts": dict(Counter(split_of.values())),
                "leakage": {
                    "ok": True,
                    "groups_in_several_splits": [],
                    "leaked_groups": 0,
                    "images_unassigned": 0,
                    "duplicate_image_ids": [],
                },
                "manifest_hash": _sha("manifest", dataset_id, number),
                "created_at": created,
            },
        )
        self.out.add_all(
            _table(DatasetMember),
            ({"version_id": version_id, "image_id": i, "split": s} for i, s in split_of.items()),
        )
        return version_id

    # -- models, predictions, feedback ------------------------------------------------

    def models(self, version_id: int) -> list[_Version]:
        """Two models with two versions each: (version id, model, number, classes, made)."""
        made = []
        for name, decoder, classes, quality in (
            ("cxr-detector", "yolov8", list(CLASS_NAMES), 0.0),
            ("cxr-nodule", "boxes-scores-labels", list(NODULE_CLASSES), -0.05),
        ):
            model_id = self.ids.take("model")
            first = self.now - timedelta(days=75)
            self.out.add(_table(Model), {"id": model_id, "name": name, "created_at": first})
            for number, when in ((1, first), (2, self.now - timedelta(days=35))):
                mv_id = self.ids.take("model_version")
                test50 = round(0.31 + 0.05 * number + quality + self.rng.uniform(-0.01, 0.01), 4)
                evaluated = when + timedelta(hours=3)
                per_class = {
                    c: round(max(0.0, test50 + self.rng.gauss(0, 0.1)), 4) for c in classes
                }
                metrics = {
                    "trainer": "radlake.training (anchor-free, plain PyTorch)",
                    "dataset": f"{DATASET}@{number}",
                    "best_epoch": 40 + 7 * number,
                    "epochs_run": 60,
                    "val_map50_95": round(test50 * 0.45, 4),
                    "test_map50": test50,
                    "test_map50_95": round(test50 * 0.43, 4),
                    "cpu_seconds": 14400.0 * number,
                    "evaluations": {
                        f"{DATASET}@1/test": {
                            "model": name,
                            "version": number,
                            "dataset": DATASET,
                            "dataset_version": 1,
                            "split": "test",
                            "model_scores": {
                                "map50": test50,
                                "map50_95": round(test50 * 0.43, 4),
                                "per_class": per_class,
                                "predictions": 12000,
                            },
                            "evaluated_at": evaluated.isoformat(),
                        }
                    },
                }
                self.out.add(
                    _table(ModelVersion),
                    {
                        "id": mv_id,
                        "model_id": model_id,
                        "version": number,
                        "store_key": f"models/{name}/{number}/model.onnx",
                        "sha256": _sha("onnx", name, number),
                        "size_bytes": 12_400_000 + 10_000 * number,
                        "contract": {
                            "size": [640, 640],
                            "resize": "letterbox",
                            "channels": 1,
                            "scale": 1 / 255,
                            "mean": [0.0],
                            "std": [1.0],
                            "pad_value": 0.0,
                        },
                        "decoder": decoder,
                        "class_names": classes,
                        "metrics": metrics,
                        "trained_on_id": version_id if name == "cxr-detector" else None,
                        "created_at": when,
                    },
                )
                made.append((mv_id, name, number, classes, when))
            v1, v2 = made[-2][0], made[-1][0]
            alias_rows = (
                [("production", v2)]
                if name == "cxr-detector"
                else [("production", v1), ("staging", v2)]
            )
            for alias, target in alias_rows:
                self.out.add(
                    _table(ModelAlias),
                    {
                        "id": self.ids.take("model_alias"),
                        "model_id": model_id,
                        "alias": alias,
                        "version_id": target,
                        "updated_at": self.now - timedelta(days=30),
                    },
                )
            for action, target, days in (("promote", v1, 70), ("promote", v2, 30)):
                self.out.add(
                    _table(ModelAliasEvent),
                    {
                        "id": self.ids.take("model_alias_event"),
                        "model_id": model_id,
                        "alias": "production",
                        "action": action,
                        "version_id": target,
                        "created_at": self.now - timedelta(days=days),
                    },
                )
        return made

    def predictions(
        self, versions: list[_Version]
    ) -> list[tuple[int, int, int, datetime, list[tuple[int, str, float, _Box]]]]:
        """Runs on 30 % of the images (10 % of those twice): (run, version, image, when,
        [(prediction id, class, score, box)])."""
        rng = self.rng
        chosen = rng.sample(self.images, k=round(0.3 * len(self.images)))
        shares = (0.30, 0.40, 0.10, 0.20)
        runs = []
        callers = ("api:radiology-ui", "cli", "flow", "api:pacs-router")
        for info in chosen:
            picks = [rng.choices(range(4), shares)[0]]
            if rng.random() < 0.1:
                picks.append(rng.choice([i for i in range(4) if i != picks[0]]))
            for index in picks:
                mv_id, _, number, classes, made = versions[index]
                earliest = max(info.created_at, made)
                latest = self.now if number == 2 else versions[index + 1][4] + timedelta(days=5)
                if earliest >= latest and number == 1:  # arrived after v1's time: v2
                    mv_id, _, number, classes, made = versions[index + 1]
                    earliest, latest = max(info.created_at, made), self.now
                if earliest >= latest:
                    continue
                when = earliest + (latest - earliest) * rng.random()
                run_id = self.ids.take("inference_run")
                self.out.add(
                    _table(InferenceRun),
                    {
                        "id": run_id,
                        "model_version_id": mv_id,
                        "image_id": info.id,
                        "score_threshold": 0.25,
                        "iou_threshold": 0.45,
                        "latency_ms": round(rng.lognormvariate(math.log(90), 0.4), 2),
                        "caller": rng.choice(callers),
                        "created_at": when,
                    },
                )
                truth = [b for b in self.boxes.get(info.id, []) if b[0] in classes]
                found = []
                for _ in range(rng.choice((1, 1, 2, 3))):
                    if truth and rng.random() < 0.7:
                        name, box = rng.choice(truth)
                        box = _moved(rng, box, info.width, info.height)
                        score = rng.betavariate(5 + number, 2)
                    else:
                        name = rng.choices(
                            classes, [CLASS_WEIGHTS[CLASS_NAMES.index(c)] for c in classes]
                        )[0]
                        box = _box(rng, name, info.width, info.height)
                        score = 0.25 + 0.75 * rng.betavariate(1.2, 3 + number)
                    prediction_id = self.ids.take("prediction")
                    self.out.add(
                        _table(Prediction),
                        {
                            "id": prediction_id,
                            "run_id": run_id,
                            "class_id": classes.index(name),
                            "class_name": name,
                            "score": round(score, 4),
                            "x_min": box[0],
                            "y_min": box[1],
                            "x_max": box[2],
                            "y_max": box[3],
                        },
                    )
                    found.append((prediction_id, name, score, box))
                runs.append((run_id, mv_id, info.id, when, found))
        return runs

    def feedback(
        self,
        runs: Sequence[tuple[int, int, int, datetime, list[tuple[int, str, float, _Box]]]],
        versions: list[_Version],
        target: int,
    ) -> dict[int, list[tuple[int, int, datetime]]]:
        """About `target` verdicts on reviewed runs; returns model version -> [(feedback
        id, image id, when)] for the retraining sets."""
        rng = self.rng
        classes_of = {mv_id: classes for mv_id, _, _, classes, _ in versions}
        info_of = {info.id: info for info in self.images}
        order = list(runs)
        rng.shuffle(order)
        taken: dict[int, list[tuple[int, int, datetime]]] = defaultdict(list)
        written = 0
        for run_id, mv_id, image_id, when, found in order:
            if written >= target:
                break
            simulated = rng.random() < 0.33
            reviewer = "simulator" if simulated else rng.choice(("dr-okafor", "dr-lind", "dr-sato"))
            channel = "simulator" if simulated else rng.choice(("web", "web", "api"))
            at = min(when + timedelta(minutes=rng.uniform(1, 60 * 72)), self.now)
            info = info_of[image_id]
            # (prediction id, verdict, the label's class and box, the model's score)
            rows: list[tuple[int | None, str, str | None, _Box | None, float | None]] = []
            for prediction_id, name, score, box in found:
                verdict = rng.choices(("accept", "reject", "correct"), (0.6, 0.22, 0.18))[0]
                label_name: str | None = name
                label_box: _Box | None = box
                if verdict == "reject":
                    label_name, label_box = None, None
                elif verdict == "correct":
                    label_box = _moved(rng, box, info.width, info.height)
                    if rng.random() < 0.3:
                        label_name = rng.choice(classes_of[mv_id])
                rows.append((prediction_id, verdict, label_name, label_box, score))
            if rng.random() < 0.12:
                name = rng.choice(classes_of[mv_id])
                rows.append((None, "add", name, _box(rng, name, info.width, info.height), None))
            for reviewed_id, verdict, label_name, label_box, confidence in rows:
                feedback_id = self.ids.take("feedback")
                self.out.add(
                    _table(Feedback),
                    {
                        "id": feedback_id,
                        "image_id": image_id,
                        "run_id": run_id,
                        "prediction_id": reviewed_id,
                        "model_version_id": mv_id,
                        "verdict": verdict,
                        "class_name": label_name,
                        "x_min": None if label_box is None else label_box[0],
                        "y_min": None if label_box is None else label_box[1],
                        "x_max": None if label_box is None else label_box[2],
                        "y_max": None if label_box is None else label_box[3],
                        "confidence": None if confidence is None else round(confidence, 4),
                        "reviewer": reviewer,
                        "simulated": simulated,
                        "channel": channel,
                        "fingerprint": _sha("feedback", feedback_id),
                        "created_at": at,
                    },
                )
                taken[mv_id].append((feedback_id, image_id, at))
                if label_name is not None and label_box is not None:
                    self.feedback_labels[feedback_id] = (label_name, label_box, reviewer)
                written += 1
        return taken

    def retrain_sets(
        self,
        dataset_id: int,
        base_version_id: int,
        split_of: dict[int, str],
        versions: list[_Version],
        reviewed: dict[int, list[tuple[int, int, datetime]]],
    ) -> None:
        """One retraining set per cxr-detector version: a new version of cxr that keeps
        v1's splits, with the labels of the feedback on images in train (feedback on
        held-out images is left out, as the pipeline does)."""
        number = 1
        for mv_id, name, model_number, _, _ in versions:
            if name != "cxr-detector":
                continue
            cutoff = self.now - timedelta(days=2 if model_number == 2 else 38)
            recent = [row for row in reviewed.get(mv_id, []) if row[2] <= cutoff]
            rows = [row for row in recent if split_of[row[1]] == "train"]
            if not rows:
                continue
            number += 1
            set_name = cutoff.strftime("%Y%m%dt%H%M%Sz")
            labelled = [(fid, image_id) for fid, image_id, _ in rows if fid in self.feedback_labels]
            held_out = Counter(split_of[image_id] for _, image_id, _ in recent)
            counts = {
                "images": len({image_id for _, image_id, _ in rows}),
                "unreviewed_production_dropped": 0,
                "boxes": len(labelled),
                "images_with_boxes": len({image_id for _, image_id in labelled}),
                "feedback_rows": len(rows),
                "left_out": {
                    f"in held-out split {s!r}": n for s, n in held_out.items() if s != "train"
                },
                "splits": dict(Counter(split_of.values())),
            }
            parameters = {
                "model": f"{name}:{model_number}",
                "since": None,
                "min_confidence": 0.0,
                "simulated": True,
                "split": "train",
                "production_splits": ["production"],
            }
            seconds = self.rng.uniform(40, 120)
            extra = {"base_version_id": base_version_id}
            job_id = self.job(
                "retrain_set", "succeeded", cutoff, seconds, parameters | extra, counts
            )
            spec = SPLIT_SPEC | {"retrain_set": set_name, "base_version": 1}
            version_id = self._version(dataset_id, number, split_of, "feedback", spec, cutoff)
            source_of = {info.id: info.source_id for info in self.images}
            for fid, image_id in labelled:
                class_name, box, reviewer = self.feedback_labels[fid]
                self._label(
                    source_of[image_id],
                    f"sha256:{_sha('image', image_id)}",
                    image_id,
                    (reviewer[:64], class_name, box),
                    LabelOrigin.FEEDBACK,
                    job_id,
                    cutoff,
                )
            set_id = self.ids.take("retrain_set")
            self.out.add(
                _table(RetrainSet),
                {
                    "id": set_id,
                    "name": set_name,
                    "model_version_id": mv_id,
                    "base_version_id": base_version_id,
                    "dataset_version_id": version_id,
                    "job_id": job_id,
                    "parameters": parameters,
                    "counts": counts,
                    "store_prefix": f"retrain/{set_name}/",
                    "created_at": cutoff,
                },
            )
            self.out.add_all(
                _table(RetrainSetFeedback),
                ({"retrain_set_id": set_id, "feedback_id": fid} for fid, _, _ in rows),
            )

    # -- other jobs -------------------------------------------------------------------

    def other_jobs(self, versions: list[_Version]) -> None:
        """Predict jobs, three simulator runs (job counts as `radlake simulate` keeps
        them), and yesterday's verify."""
        rng, images = self.rng, len(self.images)
        for _, name, number, _, made in versions[:3]:
            selected = round(0.1 * images)
            seconds = selected / rng.uniform(6, 12)
            counts = {
                "model": name,
                "version": number,
                "selected": selected,
                "skipped_already_predicted": 0,
                "predicted": selected - 3,
                "boxes": int(selected * 1.8),
                "unreadable": 3,
                "unreadable_reasons": {},
                "seconds": round(seconds, 3),
                "images_per_second": round((selected - 3) / seconds, 2),
            }
            asked = {"model": f"{name}:{number}", "dataset": DATASET, "split": "test"}
            self.job("predict", "succeeded", made + timedelta(days=2), seconds, asked, counts)
        test_images = sum(1 for info in self.images if _split_of(info.patient_id) == "test")
        for run, pattern in enumerate(((1, 2, 4), (1, 2, 4, 8), (2, 4, 8, 16))):
            review = run == 1
            stages = [
                _stage(rng, stage, workers, review) for stage, workers in enumerate(pattern, 1)
            ]
            total = _stage(rng, None, max(pattern), review, stages)
            parameters: dict[str, Any] = {
                "model": "cxr-detector:2",
                "dataset": DATASET,
                "split": "test",
                "images": test_images,
                "pattern": list(pattern),
                "stage_seconds": 30.0,
                "url": "in-process",
                "review": review,
            }
            counts = {"stages": stages, "total": total, "requests": total["requests"]}
            started = self.now - timedelta(days=20 - 8 * run, hours=rng.uniform(0, 8))
            self.job("simulate", "succeeded", started, total["seconds"] + 2, parameters, counts)
        counts = {"images": images, "renditions": images, "problems": 0, "missing": 0}
        started = self.now - timedelta(days=1, hours=4)
        self.job("verify", "succeeded", started, images / 400, {"deep": False}, counts)


def _stage(
    rng: random.Random,
    stage: int | None,
    workers: int,
    review: bool,
    stages: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """One simulator stage's figures (traffic.report.Row.as_dict), or the total of
    stages (stage None): the server saturates at about 6 workers, ~10 requests/s each."""
    if stages:
        requests = sum(s["requests"] for s in stages)
        seconds = sum(s["seconds"] for s in stages)
        p50 = sorted(s["p50_ms"] for s in stages)[len(stages) // 2]
        tail = max(s["p50_ms"] for s in stages)
        errors = sum(s["errors"].get("503", 0) for s in stages)
    else:
        seconds = 30.0
        requests = int(min(workers, 6) * rng.uniform(9, 11) * seconds)
        p50 = tail = 90 * max(1.0, workers / 6) * rng.uniform(0.9, 1.1)
        errors = rng.randint(1, 9) if workers >= 16 else 0
    return {
        "stage": stage,
        "workers": workers,
        "requests": requests,
        "errors": {"503": errors} if errors else {},
        "seconds": seconds,
        "requests_per_second": round(requests / seconds, 3),
        "p50_ms": round(p50, 2),
        "p95_ms": round(tail * 1.9, 2),
        "p99_ms": round(tail * 2.8, 2),
        "server_mean_ms": round(p50 * 0.8, 2),
        "reviews": {"accept": requests // 3} if review else {},
        "review_errors": {},
        "label_reads": requests // 3 if review else 0,
    }


def build_lake(home: Path, *, images: int, seed: int = 14, feedback: int = 5000) -> LakeFacts:
    """A fresh lake at home holding `images` images and all the rest (module docstring).

    Raises:
        ValueError: fewer than 100 images asked for.
        CatalogError, StorageError: the lake cannot be made at home.
    """
    if images < 100:
        raise ValueError(f"expected at least 100 images, got {images}")
    started = time.perf_counter()
    lake, _ = init_lake(Settings(home=home, catalog_url=None, store_url=None, secret_key=None))
    now = datetime.now(UTC).replace(microsecond=0)
    facts = LakeFacts(home, DATASET, 1, now - timedelta(days=DAYS), now)
    try:
        with lake.engine.begin() as connection:
            builder = _Builder(connection, facts, seed)
            builder.sources()
            builder.ingest(images)
            dataset_id, version_id, split_of = builder.dataset()
            versions = builder.models(version_id)
            runs = builder.predictions(versions)
            reviewed = builder.feedback(runs, versions, round(feedback * images / 100_000))
            builder.retrain_sets(dataset_id, version_id, split_of, versions, reviewed)
            builder.other_jobs(versions)
            builder.out.flush()
    finally:
        lake.engine.dispose()
    facts.seconds = time.perf_counter() - started
    return facts
