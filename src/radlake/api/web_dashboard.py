"""The dashboard pages of the signed-in web app (issue 14): Overview, Dataset version,
Drift and Models, under /ui/dashboard.

Figures come from catalog/dashboard_*.py through catalog.stats_cache (recomputed only
when the catalog changed) and are drawn by plotly.js, served by this app from the
installed plotly package at PLOTLY_PATH: nothing is fetched from elsewhere and the
pages keep the web page's content security policy (the chart data rides in a JSON
script block, which browsers never run; static/dashboard.js draws it). Every
signed-in role sees the aggregates; input paths (quarantine examples) are for roles
that see paths, and sample renderings leave out images whose pixels the role may not
see, as the image page does. Each page says its server time in Server-Timing.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from radlake.api import dashboard_charts as charts
from radlake.api.deps import Caller, DbSession
from radlake.api.privacy import pixels_withheld, sees_paths
from radlake.api.web import PALETTE, _cookie_caller, _page, _to_signin
from radlake.catalog.dashboard_dataset import (
    ASPECT_BINS,
    SIZE_BINS,
    dataset_figures,
    image_attributes,
)
from radlake.catalog.dashboard_drift import DriftSideError, drift_report
from radlake.catalog.dashboard_models import SCORE_BINS, model_figures
from radlake.catalog.dashboard_overview import overview
from radlake.catalog.queries import list_dataset_versions
from radlake.catalog.stats_cache import cached
from radlake.curation.versions import DatasetError, get_version

router = APIRouter(include_in_schema=False)
log = logging.getLogger("radlake.dashboard")
PLOTLY_VERSION = importlib.metadata.version("plotly")
PLOTLY_PATH = f"/vendor/plotly-{PLOTLY_VERSION}.min.js"
PLOTLY_CSS_PATH = f"/vendor/plotly-{PLOTLY_VERSION}.css"
# plotly.js keeps its base stylesheet as a {selector: rules} object and writes it into
# an inline <style> (which the pages' CSP refuses); X and Y stand for these prefixes.
_PLOTLY_RULES_AT = '"X .main-svg"'
_PLOTLY_PREFIXES = {"X": ".js-plotly-plot .plotly", "Y": ".plotly-notifier"}
# Versioned paths: what they serve never changes.
IMMUTABLE = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}
SideText = Annotated[str | None, Query(max_length=200)]


def _plotly_file() -> Path:
    spec = importlib.util.find_spec("plotly")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise RuntimeError("the plotly package is not installed: pip install plotly")
    return Path(locations[0]) / "package_data" / "plotly.min.js"


@functools.cache
def plotly_css() -> str:
    """plotly.js's base stylesheet, read from the installed plotly.min.js (the rules
    it would inject inline), as a stylesheet the pages may load."""
    script = _plotly_file().read_text(encoding="utf-8")
    at = script.find(_PLOTLY_RULES_AT)
    if at < 0:
        log.warning("plotly.js %s: its base stylesheet was not found", PLOTLY_VERSION)
        return "/* plotly.js base rules not found in this plotly version */\n"
    start = script.rindex("{", 0, at)
    end = script.index("}", at)  # the rules hold no braces
    rules = re.findall(r'"([^"]+)":(?:"([^"]*)"|\'([^\']*)\')', script[start : end + 1])
    lines = []
    for selector, double, single in rules:
        full = re.sub("[XY]", lambda m: _PLOTLY_PREFIXES[m.group()], selector)
        lines.append(f"{full}{{{double or single}}}")
    return "\n".join(lines) + "\n"


@router.get(PLOTLY_CSS_PATH)
def plotly_stylesheet() -> Response:
    """plotly.js's base rules as a stylesheet (versioned path: cached for a year)."""
    return Response(plotly_css(), media_type="text/css", headers=IMMUTABLE)


@router.get(PLOTLY_PATH)
def plotly_js() -> Response:
    """plotly.js from the installed package (versioned path: cached for a year)."""
    return FileResponse(_plotly_file(), media_type="text/javascript", headers=IMMUTABLE)


def _dashboard(
    request: Request,
    name: str,
    caller: Caller,
    started: float,
    figures: dict[str, charts.Figure],
    status_code: int = 200,
    **context: Any,
) -> Response:
    response = _page(
        request,
        name,
        caller,
        status_code,
        figures=figures,
        plotly_path=PLOTLY_PATH,
        plotly_css_path=PLOTLY_CSS_PATH,
        **context,
    )
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@router.get("/ui/dashboard")
def overview_page(request: Request, session: DbSession) -> Response:
    """Images by modality, format, source and view and over time; jobs and their rates;
    quarantine reasons; store size."""
    started = time.perf_counter()
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    found = cached(session, ("overview",), lambda: overview(session))
    figures = {
        f"by-{key}": charts.bars(f"Images by {key}", counts) for key, counts in found.by.items()
    }
    figures["per-day"] = charts.bars("Images catalogued per day (UTC)", dict(found.per_day))
    figures["jobs"] = charts.grouped("Jobs by kind and status", found.jobs_by_kind, stacked=True)
    reasons: dict[str, int] = {}
    for row in found.reasons:  # long reasons are cut for the axis; the table has them whole
        reasons[row.reason[:80]] = reasons.get(row.reason[:80], 0) + row.count
    figures["reasons"] = charts.bars("Open quarantine rows by reason", reasons, horizontal=True)
    figures["bytes"] = charts.bars(
        "Original bytes by format", {**found.original_bytes, "quarantined": found.quarantined_bytes}
    )
    return _dashboard(
        request,
        "dashboard_overview.html",
        caller,
        started,
        figures,
        found=found,
        shows_paths=sees_paths(caller.role),
        total_bytes=sum(found.original_bytes.values()) + found.quarantined_bytes,
        section="overview",
    )


def _dataset_choices(session: Session) -> list[tuple[str, list[tuple[int, list[str]]]]]:
    """Every dataset with its versions and their splits, by name and version."""
    found: dict[str, list[tuple[int, list[str]]]] = {}
    for version in list_dataset_versions(session):
        counts, spec = version.counts or {}, version.split_spec or {}
        # The splits in the order the version's spec names them (training first).
        named = [s for s in spec.get("names", []) if s in counts]
        splits = [*named, *sorted(set(counts) - set(named))]
        found.setdefault(version.dataset.name, []).append((version.version, splits))
    return list(found.items())


@router.get("/ui/dashboard/dataset")
def dataset_page(
    request: Request,
    session: DbSession,
    dataset: Annotated[str | None, Query(max_length=100)] = None,
    version: Annotated[int | None, Query(ge=1, le=2**31)] = None,
) -> Response:
    """One dataset version: splits, classes per split, labels per image, reader
    agreement, box geometry, box-centre heatmaps and sample images."""
    started = time.perf_counter()
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    choices = _dataset_choices(session)
    if dataset is None and choices:
        dataset = choices[0][0]
    context: dict[str, Any] = {"choices": choices, "dataset": dataset, "section": "dataset"}
    if dataset is None:
        return _dashboard(
            request, "dashboard_dataset.html", caller, started, {}, data=None, **context
        )
    try:
        chosen = get_version(session, dataset, version)
    except DatasetError:
        which = f"version {version} of " if version is not None else ""
        message = f"There is no {which}dataset {dataset[:100]!r}."
        return _page(request, "error.html", caller, 404, message=message)
    names = list((chosen.split_spec or {}).get("names", []))
    data = cached(
        session, ("dataset", chosen.id), lambda: dataset_figures(session, chosen, split_order=names)
    )
    figures: dict[str, charts.Figure] = {
        "splits": charts.bars("Images per split", data.splits),
        "class-images": charts.grouped("Images with the class, per split", data.class_images),
        "class-boxes": charts.grouped("Boxes per class and split", data.class_boxes),
        "labels-per-image": charts.bars(
            "Images by number of labels", {str(k): n for k, n in enumerate(data.labels_per_image)}
        ),
        "box-size": charts.histograms(
            "Box size", SIZE_BINS.tolist(), data.size_hist, x_title="sqrt(box area / image area)"
        ),
        "box-aspect": charts.histograms(
            "Box aspect", ASPECT_BINS.tolist(), data.aspect_hist, x_title="log2(width / height)"
        ),
    }
    if data.agreement:
        figures["kappa"] = charts.bars(
            # An undefined kappa (every image alike) is left out, not drawn as 0.
            "Fleiss' kappa per class",
            {row.class_name: row.kappa for row in data.agreement if row.kappa is not None},
        )
    heat_ids = {name: f"heat-{i}" for i, name in enumerate(data.heatmaps)}
    for name, cells in data.heatmaps.items():
        figures[heat_ids[name]] = charts.heatmap(f"{name}: box centres", cells)
    withheld = {
        image_id
        for image_id, attributes in image_attributes(session, image_ids=data.sample_ids).items()
        if pixels_withheld(caller.role, attributes)
    }
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(data.classes)}
    return _dashboard(
        request,
        "dashboard_dataset.html",
        caller,
        started,
        figures,
        data=data,
        version=chosen,
        heat_ids=heat_ids,
        withheld=withheld,
        colours=colours,
        **context,
    )


def _side_options(choices: list[tuple[str, list[tuple[int, list[str]]]]]) -> list[str]:
    return [
        option
        for name, versions in choices
        for number, splits in versions
        for option in (f"{name}@{number}", *(f"{name}@{number}/{split}" for split in splits))
    ]


def _by_day(series: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, int]]:
    """Per-version (day, count) points as day -> version -> count, days in order."""
    table: dict[str, dict[str, int]] = {}
    for name, points in series.items():
        for day, count in points:
            table.setdefault(day, {})[name] = count
    return dict(sorted(table.items()))


def _printable(text: str | None) -> str | None:
    """The text without control characters (a NUL would be echoed into the form)."""
    return None if text is None else "".join(c for c in text if c.isprintable())


@router.get("/ui/dashboard/drift")
def drift_page(
    request: Request, session: DbSession, a: SideText = None, b: SideText = None
) -> Response:
    """Drift of every feature from side A to side B, with the test, statistic and verdict."""
    started = time.perf_counter()
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    a, b = _printable(a), _printable(b)
    choices = _dataset_choices(session)
    options = _side_options(choices)
    if (a is None or b is None) and choices:
        # The first dataset's newest version: its first split (training) against its last.
        name, versions = choices[0]
        number, splits = versions[-1]
        a = a or (f"{name}@{number}/{splits[0]}" if splits else f"{name}@{number}")
        b = b or (f"{name}@{number}/{splits[-1]}" if splits else f"{name}@{number}")
    context: dict[str, Any] = {"options": options, "a": a or "", "b": b or "", "section": "drift"}
    if not a or not b:
        return _dashboard(
            request, "dashboard_drift.html", caller, started, {}, report=None, **context
        )
    try:
        report = cached(session, ("drift", a, b), lambda: drift_report(session, a=a, b=b))
    except DriftSideError as exc:
        return _dashboard(
            request,
            "dashboard_drift.html",
            caller,
            started,
            {},
            422,
            report=None,
            error=str(exc),
            **context,
        )
    tested = [f for f in report.features if f.statistic is not None]
    figures = {
        "drift": charts.grouped(
            "Drift statistic per feature (p-value tests: 1 - p)",
            {
                f.feature: {
                    "drifted" if f.drifted else "not drifted": (
                        1 - f.p_value if f.p_value is not None else min(f.statistic or 0.0, 10.0)
                    )
                }
                for f in tested
            },
            stacked=True,
        )
    }
    return _dashboard(
        request, "dashboard_drift.html", caller, started, figures, report=report, **context
    )


@router.get("/ui/dashboard/models")
def models_page(request: Request, session: DbSession) -> Response:
    """Predictions over time, score distributions, feedback verdicts, review queue,
    simulator runs, retraining sets and metrics with lineage, per model version."""
    started = time.perf_counter()
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    data = cached(session, ("models",), lambda: model_figures(session))
    names = [v.name for v in data.versions]
    figures: dict[str, charts.Figure] = {
        "runs-per-day": charts.grouped("Inference runs per day (UTC)", _by_day(data.runs_per_day)),
        "scores": charts.histograms(
            "Prediction scores",
            SCORE_BINS.tolist(),
            {v.name: v.scores for v in data.versions},
            x_title="score",
        ),
        "verdicts": charts.grouped(
            "Feedback verdicts", {v.name: v.verdicts for v in data.versions}, stacked=True
        ),
        "queue": charts.bars("Images waiting for review", {v.name: v.queue for v in data.versions}),
    }
    if any(v.metrics for v in data.versions):
        figures["metrics"] = charts.grouped(
            "Metrics across versions", {v.name: v.metrics for v in data.versions if v.metrics}
        )
    if not data.versions:
        figures = {}  # the page says how to register or train one instead
    for run in data.simulations:
        figures[f"simulation-{run.job_id}"] = charts.two_axes(
            f"Simulation {run.job_id}: per stage",
            ("requests/s", [(str(s["stage"]), s.get("requests_per_second")) for s in run.stages]),
            ("p95 ms", [(str(s["stage"]), s.get("p95_ms")) for s in run.stages]),
        )
    return _dashboard(
        request,
        "dashboard_models.html",
        caller,
        started,
        figures,
        data=data,
        names=names,
        section="models",
    )
