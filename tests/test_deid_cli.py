"""`radlake deid check PATH` as a user runs it: real DICOM files before and after
de-identification, a folder with other files, a path that is not a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom

from radlake.imaging.deid_profile import deidentify
from tests.conftest import pydicom_file, run_radlake

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")


def test_check_finds_identifying_attributes_and_passes_deidentified_files(
    tmp_path: Path,
) -> None:
    raw, clean = tmp_path / "raw", tmp_path / "clean"
    raw.mkdir()
    clean.mkdir()
    names = []
    for name in FILES:
        shutil.copy(pydicom_file(name), raw / name)
        ds = pydicom.dcmread(pydicom_file(name))
        names.append(str(ds.get("PatientName", "")))
        deidentify(ds, secret=b"test-secret").dataset.save_as(clean / name)
    (raw / "notes.txt").write_text("not DICOM")

    found = run_radlake(tmp_path / "home", "deid", "check", str(raw), "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert (report["checked"], report["skipped"], report["clean"]) == (3, 1, False)
    assert set(report["findings"]) == set(FILES)
    tags = {f["tag"] for f in report["findings"]["CT_small.dcm"]}
    assert {"(0010,0010)", "(0008,0018)"} <= tags  # PatientName, SOPInstanceUID
    assert all(name not in found.stdout for name in names if name)  # never values

    passed = run_radlake(tmp_path / "home", "deid", "check", str(clean))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "3 DICOM files checked, 0 other files skipped: clean" in passed.stdout


def test_check_refuses_a_path_that_is_not_a_folder_in_one_line(tmp_path: Path) -> None:
    missing = run_radlake(tmp_path / "home", "deid", "check", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "expected a folder" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_check_takes_one_file(tmp_path: Path) -> None:
    original = run_radlake(tmp_path / "home", "deid", "check", str(pydicom_file("CT_small.dcm")))
    assert original.returncode == 1 and "1 DICOM files checked" in original.stdout
    assert "PatientName" in original.stdout
