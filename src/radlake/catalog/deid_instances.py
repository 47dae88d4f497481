"""Reads of deid_instance: where each image's de-identified object is, and its verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches
from radlake.catalog.deid_models import PIXELS_WITHHELD, DeidInstance


@dataclass(frozen=True, slots=True)
class DeidRef:
    """One de-identified object: its store key, bytes' digest and size, remapped SOP
    Instance UID and the pixel check's verdict."""

    image_id: int
    key: str
    sha256: str
    size_bytes: int
    sop_uid: str
    pixels: str

    @property
    def withheld(self) -> bool:
        """Burned-in text was suspected and not removed: served to no one."""
        return self.pixels == PIXELS_WITHHELD


def deid_refs(session: Session, *, image_ids: Sequence[int]) -> dict[int, DeidRef]:
    """The de-identified object of each image that has one."""
    found: dict[int, DeidRef] = {}
    columns = (
        DeidInstance.image_id,
        DeidInstance.key,
        DeidInstance.sha256,
        DeidInstance.size_bytes,
        DeidInstance.sop_uid,
        DeidInstance.pixels,
    )
    for chunk in batches(sorted(set(image_ids))):
        for row in session.execute(select(*columns).where(DeidInstance.image_id.in_(chunk))):
            found[row.image_id] = DeidRef(*row)
    return found
