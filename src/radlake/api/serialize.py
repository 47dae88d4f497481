"""JSON shapes of API answers (images, labels), shared by routes and the web page;
api/schemas.py describes them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from radlake.api.privacy import (
    BURNED_IN_REASON,
    DEIDENTIFIED,
    pixels_withheld,
    sees_paths,
    shown_key,
)
from radlake.auth import Role
from radlake.catalog.image_reads import ImagePage
from radlake.catalog.model_registry import predictions_for_image, runs_for_image
from radlake.catalog.models import Image, Label
from radlake.catalog.serialize import image_detail, image_summary


def withheld_reason(image: Image, role: Role) -> str | None:
    """Why role may not see this image's pixels, or None (a de-identified rendition
    stands in for a flagged image's own)."""
    if pixels_withheld(role, image.attributes) and not any(
        r.name == DEIDENTIFIED for r in image.renditions
    ):
        return BURNED_IN_REASON
    return None


def image_item(image: Image, role: Role) -> dict[str, Any]:
    """An image in a listing, with links to its pixels (none where they are withheld)."""
    reason = withheld_reason(image, role)
    return image_summary(image) | {
        "source_key": shown_key(image.source_key, role),
        "view_position": image.view_position,
        "preview": None if reason else f"/images/{image.id}/render",
        "withheld": reason,
    }


def image_listing(page: ImagePage, role: Role) -> dict[str, Any]:
    """A page of a listing: total, whether it is exact, the images, the next cursor."""
    return {
        "total": page.total,
        "total_exact": page.total_exact,
        "images": [image_item(image, role) for image in page.images],
        "next_cursor": page.next_cursor,
    }


def image_full(image: Image, role: Role) -> dict[str, Any]:
    """Every catalogued field (store keys are internal and left out; the source key
    as role may see it)."""
    detail = image_detail(image)
    detail.pop("original_key", None)
    detail["source_key"] = shown_key(image.source_key, role)
    attributes = dict(detail.get("attributes") or {})
    if "client_file_name" in attributes:  # an upload's raw name may carry folders
        attributes["client_file_name"] = shown_key(str(attributes["client_file_name"]), role)
        detail["attributes"] = attributes
    detail["withheld"] = withheld_reason(image, role)
    for rendition in detail.get("renditions", []):
        rendition.pop("key", None)
    return detail


def label_item(label: Label) -> dict[str, Any]:
    """One label: class, reader, origin, confidence and its box (pixels) if any."""
    box = (
        None
        if label.x_min is None
        else {
            "x_min": label.x_min,
            "y_min": label.y_min,
            "x_max": label.x_max,
            "y_max": label.y_max,
        }
    )
    return {
        "id": label.id,
        "class_name": label.class_name,
        "reader": label.reader,
        "origin": label.origin,
        "confidence": label.confidence,
        "box": box,
    }


def box_fields(box: Any) -> dict[str, float]:
    """A box as the API answers it (the labels route's shape)."""
    return {"x_min": box.x_min, "y_min": box.y_min, "x_max": box.x_max, "y_max": box.y_max}


def prediction_runs(
    session: Session, *, image_id: int, role: Role, model_version_id: int | None = None
) -> list[dict[str, Any]]:
    """Each model version's latest run on the image with its boxes (of one version when
    given), as role may see it: the caller's name only for curators and admins (token
    names are people's names). The caller checks first that role may see the pixels."""
    boxes: dict[int, list[dict[str, Any]]] = {}
    for found in predictions_for_image(
        session, image_id=image_id, model_version_id=model_version_id
    ):
        boxes.setdefault(found.run_id, []).append(
            {
                "prediction_id": found.prediction_id,
                "class_name": found.class_name,
                "score": found.score,
                "box": box_fields(found.box),
            }
        )
    runs = [
        run.as_dict() | {"predictions": boxes.get(run.run_id, [])}
        for run in runs_for_image(session, image_id=image_id)
        if model_version_id is None or run.model_version_id == model_version_id
    ]
    if not sees_paths(role):
        runs = [run | {"caller": None} for run in runs]
    return runs
