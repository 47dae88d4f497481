"""`radlake model train` as a library call: load the version, train, export,
register with lineage and metrics, evaluate on the test split.

The model is named for what it finds: the version's classes (for the lung subset,
anatomy, not abnormalities).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.model_registry import check_model_name
from radlake.curation.versions import get_version
from radlake.lake import Lake
from radlake.pipelines.stored_images import StoredImages
from radlake.training import TrainingError, require_torch
from radlake.training.config import TrainConfig

if TYPE_CHECKING:
    from radlake.inference.comparison import Comparison
    from radlake.inference.evaluation import EvaluationReport


@dataclass(frozen=True, slots=True)
class TrainRequest:
    name: str
    dataset: str
    dataset_version: int | None = None
    train_split: str = "training"
    val_split: str = "validation"
    test_split: str = "test"
    out: Path | None = None  # also keep model.onnx and metrics.json here
    register: bool = True


@dataclass
class TrainOutcome:
    """What a run made: figures, the file, and the registered version (if any)."""

    metrics: dict[str, Any]
    onnx_path: Path | None
    model_version: int | None = None
    evaluation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Trained on a retrain set: the reviewed version on the same test split, and the delta.
    comparison: Comparison | None = None


Log = Callable[[str], None]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_version(
    lake: Lake,
    request: TrainRequest,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[Any, int], None] | None = None,
    log: Log | None = None,
) -> TrainOutcome:
    """Train on the version's training split, stop early on its validation split,
    export ONNX, register it (lineage: the dataset version) and evaluate on test.

    config: the run's settings (the defaults when None).

    Raises:
        TrainingError: torch is missing, the version has no training boxes, or the
            export does not match the trained model.
        DatasetError: no such dataset or version.
        InferenceError, ModelFileError: the registry refuses the file.
    """
    settings = config or TrainConfig()
    if request.register:
        check_model_name(request.name)  # refused now, not after minutes of training
    say = log or (lambda _: None)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    images = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    with session_factory(lake.engine)() as session:
        version = get_version(session, request.dataset, request.dataset_version)
        class_names = [str(n) for n in (version.classes or {}).get("names", [])]
        if not class_names:
            raise TrainingError(f"{request.dataset} v{version.version} has no classes with boxes")
        # torch only once the request is known to be good (it takes seconds to import).
        require_torch()
        from radlake.training.data import load_split
        from radlake.training.export import contract, export_onnx
        from radlake.training.loop import train_detector
        from radlake.training.metrics import coco_map, predict

        splits = {
            role: load_split(
                session,
                images,
                version,
                name,
                class_names,
                size=settings.size,
                channels=settings.channels,
            )
            for role, name in (
                ("train", request.train_split),
                ("val", request.val_split),
                ("test", request.test_split),
            )
        }
        version_id, version_number = version.id, version.version
    train, val, test = (splits[r].samples for r in ("train", "val", "test"))
    if not train:
        raise TrainingError(
            f"{request.dataset} v{version_number} has no readable images in split "
            f"{request.train_split!r}"
        )
    notes = [
        f"{splits[r].unreadable} unreadable images in split {n!r} were left out"
        for r, n in (
            ("train", request.train_split),
            ("val", request.val_split),
            ("test", request.test_split),
        )
        if splits[r].unreadable
    ]
    if not val:
        notes.append(f"no validation images ({request.val_split!r}): the last epoch is kept")
    say(
        f"training on {len(train)} images, validating on {len(val)}, testing on {len(test)} "
        f"({', '.join(class_names)}), {settings.size} px, seed {settings.seed}"
    )
    result = train_detector(train, val, len(class_names), settings, on_epoch, class_names)
    with _folder(request.out) as folder:
        exported = export_onnx(result.model, folder / "model.onnx", class_names)
        own_test = coco_map(test, predict(result.model, test), len(class_names)) if test else None
        metrics: dict[str, Any] = {
            "trainer": "radlake.training (anchor-free, plain PyTorch)",
            "dataset": f"{request.dataset}@{version_number}",
            "splits": {
                "training": len(train),
                "validation": len(val),
                "test": len(test),
            },
            "config": settings.as_dict(),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "val_map50_95": result.best_val_map50_95,
            "test_map50_95": None if own_test is None else own_test.map50_95,
            "test_map50": None if own_test is None else own_test.map50,
            "onnx_max_difference": exported.max_difference,
            "cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "contract": contract(settings.size, settings.channels),
        }
        outcome = TrainOutcome(metrics, exported.path if request.out else None, notes=notes)
        if request.register:
            from radlake.inference.registry import register_version

            with transaction(lake.engine) as session:
                _, number = register_version(
                    session,
                    lake.store,
                    name=request.name,
                    onnx_bytes_or_path=exported.path,
                    class_names=class_names,
                    metrics=metrics,
                    trained_on_version_id=version_id,
                )
            outcome.model_version = number
            if test:
                from radlake.inference.evaluation import evaluate_version

                report = evaluate_version(
                    lake,
                    model_ref=f"{request.name}:{number}",
                    dataset=request.dataset,
                    dataset_version=version_number,
                    split=request.test_split,
                    baseline_split=request.train_split,
                )
                outcome.evaluation = report.as_dict()
                outcome.comparison = _against_reviewed(lake, version_id, report)
            else:
                notes.append(f"no test images ({request.test_split!r}): not evaluated")
        if request.out is not None:
            document = {
                "metrics": metrics,
                "evaluation": outcome.evaluation,
                "comparison": None if outcome.comparison is None else outcome.comparison.as_dict(),
                "notes": notes,
            }
            (folder / "metrics.json").write_text(json.dumps(document, indent=2, default=str))
        return outcome


def _against_reviewed(
    lake: Lake, dataset_version_id: int, report: EvaluationReport
) -> Comparison | None:
    """When a retrain set made the training version: the version whose predictions
    its feedback reviewed, evaluated on the same split, beside the new one."""
    from radlake.catalog.inference_models import Model, ModelVersion
    from radlake.catalog.retrain_sets import retrain_set_of_version
    from radlake.inference.comparison import Comparison
    from radlake.inference.evaluation import evaluate_version

    with session_factory(lake.engine)() as session:
        made = retrain_set_of_version(session, version_id=dataset_version_id)
        if made is None:
            return None
        reviewed = session.get_one(ModelVersion, made.model_version_id)
        name = session.get_one(Model, reviewed.model_id).name
    before = evaluate_version(
        lake,
        model_ref=f"{name}:{reviewed.version}",
        dataset=report.dataset,
        dataset_version=report.dataset_version,
        split=report.split,
    )
    return Comparison(report.key, before.as_dict(), report.as_dict())


@contextmanager
def _folder(out: Path | None) -> Iterator[Path]:
    """out, or a scratch folder removed afterwards (also when registration fails)."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="radlake-train-") as scratch:
        yield Path(scratch)
