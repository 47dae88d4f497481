"""The Models dashboard's figures, from the catalog (issue 14).

Runs, predictions and feedback are counted by the database (GROUP BY); score
distributions are numpy histograms of one column read once. Simulator runs are the
jobs `radlake simulate` records (kind "simulate", per-stage figures in counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radlake.catalog.dashboard_tables import SCORES
from radlake.catalog.feedback import queue_sizes
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.inference_models import InferenceRun, ModelVersion, Prediction
from radlake.catalog.model_registry import list_versions
from radlake.catalog.models import Job
from radlake.catalog.retrain_sets import (
    LineageStep,
    RetrainSetSummary,
    lineage,
    list_retrain_sets,
    summarize,
)

SCORE_BINS = np.linspace(0.0, 1.0, 21)
SIMULATE_KIND = "simulate"
RECENT_SIMULATIONS = 20


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """One model version's row of the page."""

    id: int
    name: str  # model:version
    trained_on: str | None
    runs: int
    predictions: int
    queue: int  # images predicted and not reviewed yet
    scores: list[int]  # counts over SCORE_BINS
    verdicts: dict[str, int]  # verdict (or "verdict (simulated)") -> feedback rows
    metrics: dict[str, float | None]  # figure name -> value
    lineage: list[LineageStep]


@dataclass(frozen=True, slots=True)
class Simulation:
    """A recorded simulator run and its stages."""

    job_id: int
    started_at: str
    parameters: dict[str, Any]
    stages: list[dict[str, Any]]
    total: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """Everything the Models page shows."""

    versions: list[VersionFigures]
    runs_per_day: dict[str, list[tuple[str, int]]]  # model:version -> (day, runs)
    simulations: list[Simulation]
    retrain_sets: list[RetrainSetSummary]


def _metrics(version: ModelVersion) -> dict[str, float | None]:
    """Training figures and every evaluation's mAP, by name."""
    metrics = version.metrics or {}
    found: dict[str, float | None] = {}
    for key in ("val_map50_95", "test_map50_95", "test_map50"):
        if key in metrics:
            found[f"training {key}"] = metrics[key]
    for where, report in sorted(metrics.get("evaluations", {}).items()):
        scores = report.get("model_scores", {})
        for key in ("map50_95", "map50"):
            found[f"{where} {key}"] = scores.get(key)
    return found


def _scores(session: Session) -> dict[int, list[int]]:
    """Per model version, its predictions' scores over SCORE_BINS."""
    found = SCORES.columns(session)
    versions, score = found["model_version_id"], np.clip(found["score"], 0.0, 1.0)
    return {
        version: np.histogram(score[versions == version], SCORE_BINS)[0].tolist()
        for version in np.unique(versions).tolist()
    }


def _simulations(session: Session) -> list[Simulation]:
    jobs = session.scalars(
        select(Job)
        .where(Job.kind == SIMULATE_KIND)
        .order_by(Job.id.desc())
        .limit(RECENT_SIMULATIONS)
    )
    return [
        Simulation(
            job.id,
            job.started_at.isoformat(timespec="seconds"),
            dict(job.parameters or {}),
            list((job.counts or {}).get("stages", [])),
            dict((job.counts or {}).get("total", {})),
        )
        for job in jobs
    ]


def model_figures(session: Session) -> ModelFigures:
    """The Models page's figures (see the module docstring)."""
    versions = list_versions(session)
    # Result has keys(), so dict(result) would read it as a mapping: unpack the rows.
    runs = {
        version_id: n
        for version_id, n in session.execute(
            select(InferenceRun.model_version_id, func.count(InferenceRun.id)).group_by(
                InferenceRun.model_version_id
            )
        )
    }
    predictions = {
        version_id: n
        for version_id, n in session.execute(
            select(InferenceRun.model_version_id, func.count(Prediction.id))
            .join(Prediction, Prediction.run_id == InferenceRun.id)
            .group_by(InferenceRun.model_version_id)
        )
    }
    verdicts: dict[int, dict[str, int]] = {}
    for version_id, verdict, simulated, n in session.execute(
        select(Feedback.model_version_id, Feedback.verdict, Feedback.simulated, func.count())
        .group_by(Feedback.model_version_id, Feedback.verdict, Feedback.simulated)
        .order_by(Feedback.verdict)
    ):
        key = f"{verdict} (simulated)" if simulated else verdict
        verdicts.setdefault(version_id, {})[key] = int(n)
    queues = queue_sizes(session)
    scores = _scores(session)
    day = func.date(InferenceRun.created_at)
    per_day: dict[str, list[tuple[str, int]]] = {}
    names = {v.id: f"{v.model.name}:{v.version}" for v in versions}
    for version_id, when, n in session.execute(
        select(InferenceRun.model_version_id, day, func.count(InferenceRun.id))
        .group_by(InferenceRun.model_version_id, day)
        .order_by(InferenceRun.model_version_id, day)
    ):
        per_day.setdefault(names.get(version_id, str(version_id)), []).append(
            (str(when)[:10], int(n))
        )
    figures = [
        VersionFigures(
            v.id,
            names[v.id],
            None if v.trained_on is None else f"{v.trained_on.dataset.name}@{v.trained_on.version}",
            int(runs.get(v.id, 0)),
            int(predictions.get(v.id, 0)),
            queues.get(v.id, 0),
            scores.get(v.id, [0] * (len(SCORE_BINS) - 1)),
            verdicts.get(v.id, {}),
            _metrics(v),
            lineage(session, version=v),
        )
        for v in versions
    ]
    return ModelFigures(
        figures,
        per_day,
        _simulations(session),
        [summarize(session, made) for made in list_retrain_sets(session)],
    )
