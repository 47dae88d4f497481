"""The de-identified object of a DICOM image (issue 13, PS3.15 Annex E).

deid_instance: one row per catalogued DICOM image that has been de-identified. The
object itself is a rendition in the store (derived/<sha256>/deidentified.dcm); the row
keeps what serving it needs without reading it: the remapped UIDs (keyed hashes of the
original ones, so the same study always maps to the same UID), the few attributes that
DICOMweb searches match on, as they read after de-identification (shifted dates, the
patient's pseudonym), the object's DICOM JSON header without bulk data (WADO-RS
metadata), and what the pixel check found.

Nothing here is an original identifier: QIDO-RS and WADO-RS answer from this table and
from the de-identified objects only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from radlake.catalog.models import SHA256, UID, Base, Id, utcnow

# The pixel check's verdicts (imaging/burned_in.py): no text found, text found and
# blanked, or text suspected and the pixels withheld from everyone but admins.
PIXELS_CLEAN = "clean"
PIXELS_BLANKED = "blanked"
PIXELS_WITHHELD = "withheld"
PIXELS_UNCHECKED = "unchecked"  # the image is not flagged and the check is not asked for


class DeidInstance(Base):
    """One image's de-identified object and the attributes DICOMweb serves from it."""

    __tablename__ = "deid_instance"
    __table_args__ = (
        Index("ix_deid_instance_study_series", "study_uid", "series_uid"),
        Index("ix_deid_instance_study_date", "study_date"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), unique=True)
    key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(SHA256)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    transfer_syntax: Mapped[str | None] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)
    # The de-identified header as DICOM JSON (PS3.18 F.2), bulk data left out.
    header: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pixels: Mapped[str] = mapped_column(String(16))
    text_regions: Mapped[int] = mapped_column(Integer, default=0)
    # The profile and options applied (DeidentificationMethod as written in the object).
    method: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
