"""`radlake quickstart`: a lake built from real images that ship with installed packages."""

from __future__ import annotations

from pathlib import Path

import nibabel.testing
import pydicom.data
from rich.table import Table

from radlake.catalog.db import session_factory
from radlake.catalog.queries import list_quarantine, summary_by_modality_format
from radlake.cli.ingest_cmd import ingest_with_progress
from radlake.cli.output import console, human_bytes
from radlake.lake import init_lake, load_settings


def sample_files() -> list[Path]:
    """pydicom's bundled test DICOMs (some deliberately broken) and nibabel's NIfTI files."""
    # The folder itself, not get_testdata_files(): that one tries to download extras.
    dicom = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    nifti_dir = Path(nibabel.testing.data_path)
    nifti = sorted(p for p in nifti_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    return dicom + nifti


def quickstart() -> None:
    """Build a lake from pydicom's and nibabel's sample files and summarise it."""
    settings = load_settings()
    lake, _ = init_lake(settings)
    files = sample_files()
    console.print(f"lake in {settings.home.resolve()}: ingesting {len(files)} sample files")
    summary = ingest_with_progress(lake, files, workers=None, source="samples", show=True)
    console.print(summary.line(), highlight=False)
    table = Table("format", "modality", "images", "series", "bytes", title="What the lake holds")
    with session_factory(lake.engine)() as session:
        for modality, fmt, images, series, size in summary_by_modality_format(session):
            table.add_row(fmt, modality or "-", str(images), str(series), human_bytes(size))
        quarantined = list_quarantine(session)
    console.print(table)
    console.print(f"{len(quarantined)} inputs quarantined, each with a reason (radlake quarantine)")
    console.print(
        "next: radlake query --modality MR | radlake show ID | radlake render ID -o x.png"
    )
