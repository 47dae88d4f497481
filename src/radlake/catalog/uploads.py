"""What the catalog keeps of an API upload beyond the ingest: who, when, and the
client's own file name (kept as data, never used as a path)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from radlake.catalog.models import Image

CLIENT_NAME_CHARACTERS = 1000


def record_upload(
    session: Session,
    *,
    image_id: int,
    uploaded_by: str,
    uploaded_at: datetime,
    client_file_name: str | None,
) -> bool:
    """Add the upload's facts to the image's attributes; False when the image is gone."""
    image = session.get(Image, image_id)
    if image is None:
        return False
    image.attributes = dict(image.attributes or {}) | {
        "uploaded_by": uploaded_by,
        "uploaded_at": uploaded_at.isoformat(),
        "client_file_name": (client_file_name or "")[:CLIENT_NAME_CHARACTERS],
    }
    return True
