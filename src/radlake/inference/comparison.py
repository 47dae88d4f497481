"""Two model versions on the same held-out split, and the difference (issue 11,
"Retrain and compare").

A delta means something only on the same images with the same labels: both versions
are evaluated on one dataset version's split (evaluate_version keeps each report in
its version's metrics under "<dataset>@<version>/<split>"), and a stored comparison
takes only a key both versions were evaluated on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from radlake.catalog.db import session_factory
from radlake.catalog.model_registry import resolve_version
from radlake.curation.versions import get_version, members
from radlake.inference.errors import InferenceError
from radlake.inference.evaluation import evaluate_version
from radlake.lake import Lake

FIGURES = ("map50_95", "map50")
# The splits a version learns from (training) or stops on (validation).
TRAINED_ON = ("training", "validation")


@dataclass(frozen=True, slots=True)
class Comparison:
    """Reports (EvaluationReport.as_dict()) of two versions on one split."""

    key: str  # <dataset>@<version>/<split>
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    warnings: tuple[str, ...] = ()  # why the delta may not mean what it seems

    def delta(self) -> dict[str, float | None]:
        """after - before of each figure (None where either is missing)."""
        found: dict[str, float | None] = {}
        for name in FIGURES:
            a = self.before["model_scores"].get(name)
            b = self.after["model_scores"].get(name)
            found[name] = None if a is None or b is None else b - a
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.key,
            "before": f"{self.before['model']}:{self.before['version']}",
            "after": f"{self.after['model']}:{self.after['version']}",
            "images": self.after["images"],
            "before_scores": {n: self.before["model_scores"].get(n) for n in FIGURES},
            "after_scores": {n: self.after["model_scores"].get(n) for n in FIGURES},
            "delta": self.delta(),
            "mean_box_baseline": {n: self.after["mean_box_baseline"].get(n) for n in FIGURES},
            "warnings": list(self.warnings),
        }

    def line(self) -> str:
        """'mAP50-95 0.512 -> 0.561 (+0.049), mAP50 ... on lungs@2/test (15 images)'."""
        parts = []
        for name, label in zip(FIGURES, ("mAP50-95", "mAP50"), strict=True):
            a = self.before["model_scores"].get(name)
            b = self.after["model_scores"].get(name)
            if a is None or b is None:
                parts.append(f"{label} n/a")
            else:
                parts.append(f"{label} {a:.3f} -> {b:.3f} ({b - a:+.3f})")
        return f"{', '.join(parts)} on {self.key} ({self.after['images']} images)"


def compare_versions(
    lake: Lake,
    *,
    before: str,
    after: str,
    dataset: str,
    dataset_version: int | None = None,
    split: str = "test",
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Evaluate both versions on the same split of one dataset version, with warnings
    where the delta would mislead: versions of two models, or a version that trained
    on images of that split.

    Raises:
        InferenceError: the same version twice.
        as evaluate_version().
    """
    with session_factory(lake.engine)() as session:
        versions = [resolve_version(session, ref=ref) for ref in (before, after)]
        if versions[0].id == versions[1].id:
            raise InferenceError(f"{before} and {after} are the same version: name two")
        scored = get_version(session, dataset, dataset_version)
        wanted = {i for i, s in members(session, scored.id).items() if s == split}
        warnings = []
        if versions[0].model_id != versions[1].model_id:
            warnings.append(f"{before} and {after} are versions of different models")
        for ref, version in zip((before, after), versions, strict=True):
            if version.trained_on_id is None:
                continue
            seen = {
                i
                for i, s in members(session, version.trained_on_id).items()
                if s in TRAINED_ON and i in wanted
            }
            if seen:
                warnings.append(
                    f"{ref} trained on {len(seen)} of the {len(wanted)} images of {split!r}: "
                    "not a held-out comparison"
                )
    reports = [
        evaluate_version(
            lake,
            model_ref=ref,
            dataset=dataset,
            dataset_version=dataset_version,
            split=split,
            progress=progress,
        )
        for ref in (before, after)
    ]
    return Comparison(reports[1].key, reports[0].as_dict(), reports[1].as_dict(), tuple(warnings))


def stored_comparison(before: Mapping[str, Any], after: Mapping[str, Any]) -> Comparison | None:
    """The newest held-out split both versions' metrics hold an evaluation of,
    compared; None when they share none. A test split wins over any other: a score
    on training or validation images says little about the next model."""
    ours = after.get("evaluations", {})
    theirs = before.get("evaluations", {})
    shared = [key for key in ours if key in theirs]
    if not shared:
        return None
    key = max(
        shared,
        key=lambda k: (k.endswith("/test"), str(ours[k].get("evaluated_at", ""))),
    )
    return Comparison(key, theirs[key], ours[key])
