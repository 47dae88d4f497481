"""`radlake model register|list|show|promote|rollback|evaluate|compare|lineage`: the model
registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import ModelVersion
from radlake.catalog.model_registry import (
    DEFAULT_ALIAS,
    aliases,
    list_versions,
    promote,
    resolve_version,
    rollback,
)
from radlake.catalog.retrain_sets import lineage as version_lineage
from radlake.cli import train_cmd
from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.curation.versions import get_version
from radlake.inference.comparison import Comparison, compare_versions, stored_comparison
from radlake.inference.errors import InferenceError
from radlake.inference.evaluation import (
    EVAL_IOU,
    EVAL_SCORE,
    EvaluationReport,
    evaluate_version,
    latest_evaluation,
)
from radlake.inference.registry import register_model
from radlake.lake import Lake, load_settings, open_lake

app = typer.Typer(help="Register, promote, roll back and evaluate detection models (ONNX).")
app.command("train")(train_cmd.train)

Decoder = Literal["yolov5", "yolov8", "boxes-scores-labels"]
AliasOption = Annotated[
    str, typer.Option("--alias", help="Alias to move: production, staging, ...")
]


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise InferenceError(
            f"expected {flag} as numbers separated by commas, got {text[:80]!r}"
        ) from None


def _dataset_version_id(lake: Lake, text: str) -> int:
    name, _, number = text.partition("@")
    if number and not number.isdigit():
        raise InferenceError(f"expected --dataset NAME@VERSION, got {text[:80]!r}")
    with session_factory(lake.engine)() as session:
        return get_version(session, name, int(number) if number else None).id


def version_row(version: ModelVersion, alias_map: dict[str, int]) -> dict[str, Any]:
    """A version as the CLI (and later the API) prints it."""
    trained = version.trained_on
    return {
        "model": version.model.name,
        "version": version.version,
        "aliases": sorted(a for a, n in alias_map.items() if n == version.version),
        "decoder": version.decoder,
        "classes": version.class_names,
        "contract": version.contract,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "store_key": version.store_key,
        "trained_on": None if trained is None else f"{trained.dataset.name}@{trained.version}",
        "metrics": version.metrics,
        "created_at": version.created_at.isoformat(),
    }


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Model name (lowercase letters, digits, _ . -).")],
    file: Annotated[Path, typer.Argument(help="The ONNX file.")],
    decoder: Annotated[
        Decoder | None, typer.Option(help="Output decoder (default: from the file).")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Square input size (default: from the file).")
    ] = None,
    letterbox: Annotated[
        bool | None,
        typer.Option("--letterbox/--stretch", help="Keep aspect with padding, or stretch."),
    ] = None,
    channels: Annotated[int | None, typer.Option(help="Input channels: 1 or 3.")] = None,
    scale: Annotated[float | None, typer.Option(help="Pixel scale (default 1/255).")] = None,
    mean: Annotated[
        str | None, typer.Option(help="Mean per channel, e.g. 0.485,0.456,0.406.")
    ] = None,
    std: Annotated[
        str | None, typer.Option(help="Std per channel, e.g. 0.229,0.224,0.225.")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names in output order: a,b,...")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset version it was trained on: NAME@VERSION.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an ONNX detector as the model's next version (the same file and settings
    again: a no-op)."""
    contract: dict[str, Any] = {}
    if size is not None:
        contract["size"] = size
    if letterbox is not None:
        contract["resize"] = "letterbox" if letterbox else "stretch"
    if channels is not None:
        contract["channels"] = channels
    if scale is not None:
        contract["scale"] = scale
    if mean is not None:
        contract["mean"] = _floats("--mean", mean)
    if std is not None:
        contract["std"] = _floats("--std", std)
    names = [part.strip() for part in classes.split(",")] if classes is not None else None
    lake = open_lake(load_settings())
    trained_on = _dataset_version_id(lake, dataset) if dataset else None
    with transaction(lake.engine) as session:
        registered = register_model(
            session,
            lake.store,
            name=name,
            onnx_bytes_or_path=file,
            contract=contract,
            decoder=decoder,
            class_names=names,
            trained_on_version_id=trained_on,
        )
    if as_json:
        print_json(
            {
                "model": registered.name,
                "version": registered.version,
                "created": registered.created,
                "sha256": registered.sha256,
                "decoder": registered.decoder,
                "classes": list(registered.class_names),
                "contract": registered.contract,
            }
        )
        return
    verb = "registered" if registered.created else "already registered as"
    size_text = registered.contract["size"][0]
    console.print(
        f"{verb} {registered.name}:{registered.version} ({registered.decoder}, "
        f"{len(registered.class_names)} classes, {registered.contract['resize']} {size_text}, "
        f"sha256 {registered.sha256[:16]})",
        highlight=False,
    )


@app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Models and their versions, with aliases and the latest evaluation."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        versions = list_versions(session, name=name)
        alias_map = aliases(session, model_ids=sorted({v.model_id for v in versions}))
        rows = [version_row(v, alias_map.get(v.model_id, {})) for v in versions]
    if as_json:
        print_json(rows)
        return
    table = Table(
        "model", "version", "aliases", "decoder", "classes", "input", "trained on", "mAP50-95"
    )
    for row in rows:
        report = latest_evaluation(row["metrics"])
        latest = None if report is None else report["model_scores"]["map50_95"]
        table.add_row(
            row["model"],
            str(row["version"]),
            ", ".join(row["aliases"]),
            row["decoder"],
            str(len(row["classes"])),
            f"{row['contract']['resize']} {row['contract']['size'][0]}",
            row["trained_on"] or "",
            "" if latest is None else f"{latest:.3f}",
        )
    console.print(table)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME:VERSION.")],
    as_json: JsonOption = False,
) -> None:
    """One version: contract, decoder, classes, lineage, file, metrics and evaluations."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        version = resolve_version(session, ref=model)
        alias_map = aliases(session, model_ids=[version.model_id]).get(version.model_id, {})
        row = version_row(version, alias_map) | {"all_aliases": alias_map}
    if as_json:
        print_json(row)
        return
    table = Table("field", "value", show_header=False)
    for key, value in row.items():
        if key != "metrics":
            table.add_row(key, str(value))
    others = {k: v for k, v in row["metrics"].items() if k != "evaluations"}
    if others:
        table.add_row("metrics", str(others))
    console.print(table)
    for report in row["metrics"].get("evaluations", {}).values():
        print_evaluation(report)


def print_evaluation(report: dict[str, Any]) -> None:
    """An evaluation report (EvaluationReport.as_dict()) as a table beside its baseline."""
    scores, baseline = report["model_scores"], report["mean_box_baseline"]
    table = Table(
        "",
        f"{report['model']}:{report['version']}",
        "mean-box baseline",
        title=(
            f"{report['dataset']}@{report['dataset_version']} {report['split']} "
            f"({report['images']} images; labels: {report['labels']})"
        ),
    )
    table.add_row("mAP50-95", _figure(scores["map50_95"]), _figure(baseline["map50_95"]))
    table.add_row("mAP50", _figure(scores["map50"]), _figure(baseline["map50"]))
    for name, figures in scores["per_class"].items():
        base = baseline["per_class"].get(name, {})
        table.add_row(
            f"AP {name} ({figures['boxes']} boxes)",
            _figure(figures["ap"]),
            _figure(base.get("ap")),
        )
    console.print(table)


@app.command("promote")
def promote_version(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    alias: AliasOption = DEFAULT_ALIAS,
) -> None:
    """Point an alias (default production) at a version."""
    lake = open_lake(load_settings())
    comparison: Comparison | None = None
    with transaction(lake.engine) as session:
        before = promote(session, name=name, version=version, alias=alias)
        if before is not None and before != version:
            old = resolve_version(session, ref=f"{name}:{before}").metrics
            new = resolve_version(session, ref=f"{name}:{version}").metrics
            comparison = stored_comparison(old, new)
    if before == version:
        console.print(f"{name}@{alias} already points at version {version}: nothing moved")
        return
    was = "" if before is None else f" (was {before})"
    console.print(f"{name}@{alias} -> version {version}{was}", highlight=False)
    if before is None:
        return
    if comparison is None:
        console.print(
            f"no evaluation of both {before} and {version} on the same split: "
            f"radlake model compare {name}:{before} {name}:{version} --dataset D",
            highlight=False,
        )
    else:
        console.print(f"delta: {comparison.line()}", highlight=False)


@app.command("rollback")
def rollback_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasOption = DEFAULT_ALIAS,
) -> None:
    """Move an alias back to the version it pointed at before its last promote."""
    lake = open_lake(load_settings())
    with transaction(lake.engine) as session:
        current, previous = rollback(session, name=name, alias=alias)
    console.print(f"{name}@{alias} -> version {previous} (was {current})", highlight=False)


@app.command("evaluate")
def evaluate(
    model: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME:VERSION.")],
    dataset: Annotated[str, typer.Option(help="Dataset to evaluate on.")],
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    score: Annotated[float, typer.Option(help="Score threshold in [0, 1].")] = EVAL_SCORE,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold in [0, 1].")] = EVAL_IOU,
    batch: Annotated[int, typer.Option(help="Images per model call.")] = 8,
    as_json: JsonOption = False,
) -> None:
    """COCO mAP50, mAP50-95, per-class AP vs ground truth, beside the mean-box baseline."""
    lake = open_lake(load_settings())
    with progress_reporter("evaluating", not as_json) as report:
        result: EvaluationReport = evaluate_version(
            lake,
            model_ref=model,
            dataset=dataset,
            dataset_version=version,
            split=split,
            score_threshold=score,
            iou_threshold=iou,
            batch_size=batch,
            progress=report,
        )
    if as_json:
        print_json(result.as_dict())
        return
    print_evaluation(result.as_dict())
    if result.unreadable:
        console.print(f"{result.unreadable} images could not be read (counted as missed)")


def print_comparison(comparison: Comparison) -> None:
    """Two versions on one split, the delta and the mean-box baseline."""
    figures = comparison.as_dict()
    table = Table(
        "",
        figures["before"],
        figures["after"],
        "delta",
        "mean-box baseline",
        title=f"{comparison.key} ({figures['images']} images)",
    )
    for name, label in (("map50_95", "mAP50-95"), ("map50", "mAP50")):
        delta = figures["delta"][name]
        table.add_row(
            label,
            _figure(figures["before_scores"][name]),
            _figure(figures["after_scores"][name]),
            "n/a" if delta is None else f"{delta:+.3f}",
            _figure(figures["mean_box_baseline"][name]),
        )
    console.print(table)


@app.command("compare")
def compare(
    before: Annotated[str, typer.Argument(help="The version to compare against: NAME:VERSION.")],
    after: Annotated[str, typer.Argument(help="The new version: NAME:VERSION.")],
    dataset: Annotated[str, typer.Option(help="Dataset whose held-out split both are scored on.")],
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    split: Annotated[str, typer.Option(help="The held-out split.")] = "test",
    as_json: JsonOption = False,
) -> None:
    """Evaluate two versions on the same split and print each figure's delta (both
    reports are kept, so `promote` shows the delta too)."""
    lake = open_lake(load_settings())
    with progress_reporter("evaluating", not as_json) as report:
        result = compare_versions(
            lake,
            before=before,
            after=after,
            dataset=dataset,
            dataset_version=version,
            split=split,
            progress=report,
        )
    if as_json:
        print_json(result.as_dict())
        return
    print_comparison(result)
    for warning in result.warnings:
        err_console.print(f"warning: {warning}", highlight=False)


@app.command("lineage")
def lineage(
    model: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME:VERSION.")],
    as_json: JsonOption = False,
) -> None:
    """What shaped a version: its training dataset version, the retrain set and the
    feedback that made it, the version whose predictions that feedback reviewed, and
    on back to a version trained on ground truth alone."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        steps = version_lineage(session, version=resolve_version(session, ref=model))
    if as_json:
        print_json([step.as_dict() for step in steps])
        return
    for step in steps:
        line = f"{step.model}:{step.version} trained on {step.trained_on or 'no recorded dataset'}"
        made = step.retrain_set
        if made is None:
            console.print(f"{line} (ground truth only)", highlight=False)
            continue
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(step.feedback.items()))
        console.print(
            f"{line}, made by retrain set {made.name} from {made.feedback_rows} feedback rows "
            f"({verdicts}) on the predictions of {step.reviewed}",
            highlight=False,
        )
