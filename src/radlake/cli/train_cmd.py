"""`radlake model train`: train radlake's own small detector on a dataset version."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from radlake.cli.ingest_cmd import JsonOption, progress_bar
from radlake.cli.output import console, err_console, print_json
from radlake.lake import load_settings, open_lake
from radlake.training.config import TrainConfig
from radlake.training.run import TrainRequest, train_version

if TYPE_CHECKING:
    from radlake.training.loop import EpochReport

DEFAULTS = TrainConfig()


def _figure(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def train(
    name: Annotated[str, typer.Argument(help="Model name (lowercase letters, digits, _ . -).")],
    dataset: Annotated[str, typer.Option(help="Dataset whose version to train on.")],
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    epochs: Annotated[
        int, typer.Option(help="Most epochs (early stopping may end sooner).")
    ] = DEFAULTS.epochs,
    size: Annotated[int, typer.Option(help="Square input size, a multiple of 32.")] = DEFAULTS.size,
    seed: Annotated[int, typer.Option(help="Seed: the same seed and threads, the same model.")] = 0,
    threads: Annotated[
        int, typer.Option(help="CPU threads (part of determinism).")
    ] = DEFAULTS.threads,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "training",
    val_split: Annotated[str, typer.Option(help="Split for early stopping.")] = "validation",
    test_split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Also keep model.onnx and metrics.json in this folder.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train from scratch on the training split (CPU, plain PyTorch), stop early on the
    validation split, export ONNX, register it with its lineage and evaluate on test."""
    config = replace(DEFAULTS, epochs=epochs, size=size, seed=seed, threads=threads)
    lake = open_lake(load_settings())
    request = TrainRequest(name, dataset, version, train_split, val_split, test_split, out=out)
    show = not as_json
    with progress_bar("training", show) as progress:
        task = progress.add_task("training", total=config.epochs) if progress else None

        def on_epoch(report: EpochReport, total: int) -> None:
            scored = report.val_map50_95 is not None
            text = f"epoch {report.epoch}/{total} loss {report.loss:.3f}"
            if scored:
                text += f" val mAP50-95 {report.val_map50_95:.3f} mAP50 {report.val_map50:.3f}"
            if progress is not None and task is not None:
                progress.update(task, completed=report.epoch, description=text)
            if show and scored:
                err_console.print(text, highlight=False)

        outcome = train_version(
            lake,
            request,
            config,
            on_epoch=on_epoch,
            log=(lambda line: err_console.print(line, highlight=False)) if show else None,
        )
    if as_json:
        print_json(
            {
                "model": name,
                "version": outcome.model_version,
                "metrics": outcome.metrics,
                "evaluation": outcome.evaluation,
                "comparison": None if outcome.comparison is None else outcome.comparison.as_dict(),
                "notes": outcome.notes,
            }
        )
        return
    metrics = outcome.metrics
    console.print(
        f"trained {name}:{outcome.model_version} on {metrics['dataset']}: best epoch "
        f"{metrics['best_epoch']} of {metrics['epochs_run']}, val mAP50-95 "
        f"{_figure(metrics['val_map50_95'])}, {metrics['cpu_seconds'] / 60:.1f} CPU minutes",
        highlight=False,
    )
    if outcome.evaluation is not None:
        scores = outcome.evaluation["model_scores"]
        baseline = outcome.evaluation["mean_box_baseline"]
        console.print(
            f"test ({outcome.evaluation['images']} images): mAP50-95 "
            f"{_figure(scores.get('map50_95'))}, mAP50 {_figure(scores.get('map50'))}; "
            f"mean-box baseline mAP50-95 {_figure(baseline.get('map50_95'))}, "
            f"mAP50 {_figure(baseline.get('map50'))}",
            highlight=False,
        )
        model_figure, baseline_figure = scores.get("map50_95"), baseline.get("map50_95")
        # A version that does not beat a constant box learned nothing usable.
        if None not in (model_figure, baseline_figure) and model_figure <= baseline_figure:
            err_console.print(
                "warning: this version does not beat the mean-box baseline on mAP50-95: "
                "train longer (--epochs) or on more data before promoting it",
                highlight=False,
            )
    if outcome.comparison is not None:
        before = outcome.comparison.as_dict()["before"]
        console.print(
            f"against {before}, whose reviewed predictions made this training set: "
            f"{outcome.comparison.line()}",
            highlight=False,
        )
    for note in outcome.notes:
        console.print(f"note: {note}", highlight=False)
