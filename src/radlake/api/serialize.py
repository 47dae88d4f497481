"""JSON shapes of API answers (images, labels), shared by routes and the web page."""

from __future__ import annotations

from typing import Any

from radlake.catalog.models import Image, Label
from radlake.catalog.serialize import image_detail, image_summary


def image_item(image: Image) -> dict[str, Any]:
    """An image in a listing, with links to its pixels."""
    return image_summary(image) | {
        "view_position": image.view_position,
        "preview": f"/images/{image.id}/render",
    }


def image_full(image: Image) -> dict[str, Any]:
    """Every catalogued field (store keys are internal and left out)."""
    detail = image_detail(image)
    detail.pop("original_key", None)
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
