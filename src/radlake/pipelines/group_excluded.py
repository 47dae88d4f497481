"""Why an image of the same source(s) is not in a group: the rows of excluded.csv.

A group is compared with the sources it names, else those its images come from (the
whole lake would list every unrelated image). Each left-out image gets the conditions
it fails, each on its own (`not view=PA,AP`, `not min_short_side=1024`, `matches
exclude min_short_side=1024`); the inputs of those sources still quarantined (a file
listed but absent, unreadable bytes) come with their quarantine reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from radlake.catalog.db import batches
from radlake.catalog.models import Image, Quarantine, Source
from radlake.catalog.queries import apply_filter
from radlake.curation.filters import ImageFilter

EXCLUDED_FIELDS = ("kind", "id", "source", "source_key", "reason")


def excluded_image(image: Image, reason: str) -> dict[str, Any]:
    """One row of excluded.csv for an image (its source must be loaded)."""
    return {
        "kind": "image",
        "id": image.id,
        "source": image.source.name,
        "source_key": image.source_key,
        "reason": reason,
    }


def _conditions(selection: ImageFilter) -> Iterator[tuple[str, ImageFilter]]:
    """Each condition of selection on its own: (its text, a filter of just it).

    A dataset, its version and split are one condition (split needs its dataset).
    """
    values = selection.as_dict()
    values.pop("exclude", None)
    scope: dict[str, Any] = {
        key: values.pop(key) for key in ("dataset", "version", "split") if key in values
    }
    parts = [ImageFilter.from_dict(scope)] if scope else []
    parts += [ImageFilter(attributes=(tuple(pair),)) for pair in values.pop("attributes", [])]
    parts += [ImageFilter.from_dict({key: value}) for key, value in values.items()]
    for one in parts:
        yield _described(one), one


def _described(selection: ImageFilter) -> str:
    """A filter as the text a user wrote: `view=PA,AP, attr.sex=F`."""
    return ", ".join(f"{k}={v}" for k, v in selection.as_pairs())


def excluded_rows(
    session: Session, selection: ImageFilter, selected: Sequence[int]
) -> list[dict[str, Any]]:
    """excluded.csv's rows for a selection whose matching ids are selected: the images
    of the same source(s) it left out, then those sources' quarantined inputs."""
    source_ids = _scope_sources(session, selection, selected)
    if not source_ids:
        return []
    scoped = select(Image.id).where(Image.source_id.in_(source_ids))
    chosen = set(selected)
    left_out = [i for i in session.scalars(scoped.order_by(Image.id)) if i not in chosen]
    rows: list[dict[str, Any]] = []
    if left_out:
        matched = [(text, _ids(session, scoped, one)) for text, one in _conditions(selection)]
        excluded_by = (
            None if selection.exclude is None else _ids(session, scoped, selection.exclude)
        )
        exclude_text = "" if selection.exclude is None else _described(selection.exclude)
        for chunk in batches(left_out):
            images = session.scalars(
                select(Image)
                .where(Image.id.in_(chunk))
                .options(selectinload(Image.source))
                .order_by(Image.id)
            )
            for image in images:
                reasons = [f"not {text}" for text, ids in matched if image.id not in ids]
                if excluded_by is not None and image.id in excluded_by:
                    reasons.append(f"matches exclude {exclude_text}")
                rows.append(excluded_image(image, "; ".join(reasons)))
    quarantined = session.scalars(
        select(Quarantine)
        .where(Quarantine.source_id.in_(source_ids), Quarantine.resolved_at.is_(None))
        .options(selectinload(Quarantine.source))
        .order_by(Quarantine.id)
    )
    for entry in quarantined:
        rows.append(
            {
                "kind": "quarantine",
                "id": entry.id,
                "source": entry.source.name,
                "source_key": entry.source_key,
                "reason": entry.reason,
            }
        )
    return rows


def _scope_sources(session: Session, selection: ImageFilter, selected: Sequence[int]) -> list[int]:
    """The sources a group is compared with: those it names, else those its images
    come from (comparing with the whole lake would list every unrelated image)."""
    if selection.source:
        found = session.scalars(select(Source.id).where(Source.name.in_(selection.source)))
        return sorted(found)
    sources: set[int] = set()
    for chunk in batches(selected):
        sources.update(
            session.scalars(select(Image.source_id).where(Image.id.in_(chunk)).distinct())
        )
    return sorted(sources)


def _ids(session: Session, scoped: Select[int], condition: ImageFilter) -> set[int]:
    return set(session.scalars(apply_filter(scoped, condition)))
