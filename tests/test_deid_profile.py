"""PS3.15 Annex E de-identification: the table as data, the profile, the verification.

Real files only: pydicom's bundled test files and the heudiconv Siemens MR set under
../shared/data (skipped when absent). Every attribute of the original that Table
E.1-1 lists is checked against the action its CSV row gives.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from radlake.imaging.deid_check import check, check_path
from radlake.imaging.deid_profile import (
    DUMMY_BY_VR,
    DeidOptions,
    DeidResult,
    date_shift_days,
    deidentify,
    remap_uid,
    resolve_action,
)
from radlake.imaging.deid_table import OPTION_COLUMNS, load_table
from tests.conftest import SECRET, shared

PYDICOM_NAMES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
HEUDICONV = ("dicom_heudiconv_testdata_siemens_mr", "data", "heudiconv", "tests", "data")
ALL_OPTIONS = DeidOptions(
    retain_longitudinal_modified_dates=True,
    retain_patient_characteristics=True,
    clean_descriptors=True,
)
OPTION_SETS = (DeidOptions(), ALL_OPTIONS)
MARKING = frozenset(
    {0x00120062, 0x00120063, 0x00120064, 0x00280303}
)  # PatientIdentityRemoved, DeidentificationMethod(CodeSequence), LongitudinalTemporal...
UID_PATTERN = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def read(path: str | Path | io.BytesIO, *, stop_before_pixels: bool = False) -> Dataset:
    with warnings.catch_warnings():  # vendor files carry non-conformant values
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        for _ in ds.iterall():  # convert every raw element now, while warnings are off
            pass
        return ds


def round_trip(ds: Dataset) -> Dataset:
    """Written as a DICOM file and read back (vendor values may warn; kept as they were)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return read(io.BytesIO(buffer.getvalue()))


def pydicom_ds(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return read(path)


def real_files() -> Iterator[tuple[str, Dataset]]:
    for name in PYDICOM_NAMES:
        yield name, pydicom_ds(name)


def b0_series() -> list[Dataset]:
    """Three files of one Siemens DWI series (one patient, one study)."""
    folder = shared(*HEUDICONV, "b0dwiForFmap")
    return [read(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def values(elem: DataElement) -> list[str]:
    value = elem.value
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(v) for v in items if v is not None and str(v) != ""]


def shifted(text: str, days: int) -> str:
    day = dt.datetime.strptime(text[:8], "%Y%m%d") + dt.timedelta(days=days)
    return day.strftime("%Y%m%d") + text[8:]


def assert_action(orig: DataElement, new: Dataset, action: str, result: DeidResult) -> None:
    """The de-identified element agrees with the table's action for the original."""
    tag = orig.tag
    if action == "shift" and orig.VR not in ("DA", "DT", "TM", "SH", "SQ"):
        row = load_table().lookup(int(tag))
        assert row is not None
        action = resolve_action(row, DeidOptions())[0]
    if action == "X":
        assert tag not in new, orig.keyword
        return
    assert tag in new, orig.keyword
    elem = new[tag]
    if action == "Z":
        assert (len(elem.value) == 0) if elem.VR == "SQ" else not values(elem), orig.keyword
    elif orig.VR == "UI" and action in ("U", "U*", "D"):
        assert values(elem) == [remap_uid(v, SECRET) for v in values(orig)], orig.keyword
    elif action == "D" and orig.VR != "SQ":
        assert elem.value == DUMMY_BY_VR[orig.VR], orig.keyword
    elif action == "shift" and orig.VR in ("DA", "DT"):
        assert result.date_shift_days is not None
        expected = [shifted(v, result.date_shift_days) for v in values(orig)]
        assert values(elem) == expected, orig.keyword
    elif orig.VR != "SQ":  # K, keep, and times under the dates option
        assert elem.value == orig.value, orig.keyword


def walk(orig: Dataset, new: Dataset, result: DeidResult, seen: set[str]) -> None:
    table = load_table()
    for elem in orig:
        if int(elem.tag) in MARKING:  # set by the marking, whatever the original said
            continue
        if elem.tag.is_private:
            assert elem.tag not in new
            continue
        row = table.lookup(int(elem.tag))
        action = "K" if row is None else resolve_action(row, result.options)[0]
        if row is not None:
            seen.add(row.tag)
        assert_action(elem, new, action, result)
        if elem.VR == "SQ" and elem.tag in new and action not in ("X", "Z"):
            items = new[elem.tag].value
            assert len(items) == len(elem.value)
            for before, after in zip(elem.value, items, strict=True):
                walk(before, after, result, seen)


# ---- the table ------------------------------------------------------------


def test_table_rows_and_known_actions() -> None:
    table = load_table()
    assert len(table) == 657  # PS3.15 2026d Table E.1-1, the private-attributes row included
    name = table.lookup(0x00100010)
    assert name is not None and name.keyword == "PatientName" and name.basic_profile == "Z"
    sop = table.lookup(0x00080018)
    assert sop is not None and sop.basic_profile == "U" and sop.retain_uids == "K"
    age = table.by_keyword("PatientAge")
    assert age.basic_profile == "X" and age.option("retain_patient_characteristics") == "K"
    assert table.by_keyword("PatientID").basic_profile == "Z/D"
    assert table.by_keyword("PatientBirthDate").basic_profile == "Z"
    assert table.by_keyword("StudyDate").retain_long_modified_dates == "C"
    assert table.by_keyword("StudyDescription").clean_descriptors == "C"
    assert table.by_keyword("ReferencedImageSequence").basic_profile == "X/Z/U*"
    assert table.private_row.basic_profile == "X"
    assert table.private_row.retain_safe_private == "C"
    with pytest.raises(KeyError):
        age.option("retain_everything")


def test_table_patterns_and_unlisted_tags() -> None:
    table = load_table()
    for group in (0x6000, 0x6002, 0x601E):
        overlay = table.lookup((group << 16) | 0x3000)
        assert overlay is not None and overlay.name == "Overlay Data"
    curve = table.lookup(0x50020010)
    assert curve is not None and curve.tag == "50xx,xxxx"
    assert table.lookup(0x00280010) is None  # Rows: not listed, so the profile keeps it
    assert table.lookup(0x60000010) is None  # Overlay Rows: not listed either
    assert load_table() is table  # parsed once
    for row in table.rows:
        assert all(row.option(c) in ("", "K", "C", "X") for c in OPTION_COLUMNS)


# ---- the profile, attribute by attribute ----------------------------------


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "all-options"])
def test_every_listed_attribute_follows_the_table(options: DeidOptions) -> None:
    seen: set[str] = set()
    for _, original in real_files():
        result = deidentify(original, secret=SECRET, options=options)
        walk(original, result.dataset, result, seen)
    assert len(seen) > 40  # the files exercise many rows, across actions


def test_heudiconv_file_follows_the_table() -> None:
    original = read(shared(*HEUDICONV, "phantom.dcm"))
    for options in OPTION_SETS:
        result = deidentify(original, secret=SECRET, options=options)
        walk(original, result.dataset, result, set())
        assert check(result.dataset) == []
        assert result.dataset.PixelData == original.PixelData


def test_direct_identifiers_are_gone_and_input_is_untouched() -> None:
    for _, original in real_files():
        name_before = str(original.get("PatientName", ""))
        result = deidentify(original, secret=SECRET, options=ALL_OPTIONS)
        out = result.dataset
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            assert not str(out.get(keyword, "") or ""), keyword
        assert "OtherPatientIDsSequence" not in out
        assert str(original.get("PatientName", "")) == name_before
        assert not any(e.tag.is_private for e in out.iterall())


def test_private_tags_are_removed_recursively() -> None:
    original = pydicom_ds("CT_small.dcm")
    assert any(e.tag.is_private for e in original.iterall())
    result = deidentify(original, secret=SECRET)
    assert not any(e.tag.is_private for e in result.dataset.iterall())
    assert result.action_counts["private"] == sum(1 for e in original if e.tag.is_private)


def test_patient_characteristics_and_descriptors_options() -> None:
    original = pydicom_ds("MR_small.dcm")
    basic = deidentify(original, secret=SECRET).dataset
    assert "PatientWeight" not in basic and not basic.PatientSex
    kept = deidentify(
        original, secret=SECRET, options=DeidOptions(retain_patient_characteristics=True)
    ).dataset
    assert kept.PatientWeight == original.PatientWeight and kept.PatientSex == "F"
    ct = pydicom_ds("CT_small.dcm")
    assert "StudyDescription" not in deidentify(ct, secret=SECRET).dataset
    described = deidentify(ct, secret=SECRET, options=DeidOptions(clean_descriptors=True))
    assert described.dataset.StudyDescription == ct.StudyDescription


# ---- UIDs -----------------------------------------------------------------


def test_uids_are_keyed_valid_and_consistent() -> None:
    original = pydicom_ds("MR_small.dcm")
    first = deidentify(original, secret=SECRET)
    again = deidentify(original, secret=SECRET)
    other = deidentify(original, secret=b"another-lake")
    study = first.dataset.StudyInstanceUID
    assert study == again.dataset.StudyInstanceUID != other.dataset.StudyInstanceUID
    assert first.uid_map[original.StudyInstanceUID] == study
    for uid in first.uid_map.values():
        assert UID_PATTERN.fullmatch(uid) and len(uid) <= 64
    meta = first.dataset.file_meta
    assert meta.MediaStorageSOPInstanceUID == first.dataset.SOPInstanceUID
    assert first.dataset.SOPClassUID == original.SOPClassUID  # not identifying: kept


def test_uids_of_one_series_map_together() -> None:
    files = b0_series()
    assert len(files) >= 2 and files[0].SeriesInstanceUID == files[1].SeriesInstanceUID
    a, b = (deidentify(ds, secret=SECRET).dataset for ds in files[:2])
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    c = deidentify(files[0], secret=b"another-lake").dataset
    assert c.StudyInstanceUID != a.StudyInstanceUID


def test_references_inside_sequences_are_remapped_like_their_targets() -> None:
    original = read(shared(*HEUDICONV, "01-fmap_acq-3mm").glob("*.dcm").__next__())
    result = deidentify(original, secret=SECRET)
    ref = original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    new_ref = result.dataset.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert new_ref == result.uid_map[ref] == remap_uid(ref, SECRET)


# ---- dates ----------------------------------------------------------------


def test_date_shift_is_per_patient_and_keeps_intervals() -> None:
    ct = pydicom_ds("CT_small.dcm")
    later = pydicom_ds("CT_small.dcm")  # a second file of the same patient, a week on
    later.StudyDate = shifted(ct.StudyDate, 7)
    later.SOPInstanceUID = ct.SOPInstanceUID + ".7"
    a = deidentify(ct, secret=SECRET, options=ALL_OPTIONS)
    b = deidentify(later, secret=SECRET, options=ALL_OPTIONS)
    assert a.date_shift_days == b.date_shift_days == date_shift_days(ct.PatientID, SECRET)
    assert a.date_shift_days is not None and a.date_shift_days < 0
    assert a.dataset.StudyDate != ct.StudyDate
    assert b.dataset.StudyDate == shifted(a.dataset.StudyDate, 7)
    assert a.dataset.StudyTime == ct.StudyTime  # whole days: times unchanged
    assert a.dataset.LongitudinalTemporalInformationModified == "MODIFIED"
    other = deidentify(pydicom_ds("MR_small.dcm"), secret=SECRET, options=ALL_OPTIONS)
    assert other.date_shift_days != a.date_shift_days  # another patient, another shift
    assert deidentify(ct, secret=SECRET).date_shift_days is None
    assert not deidentify(ct, secret=SECRET).dataset.StudyDate  # Z without the option


def test_date_shift_is_shared_by_files_of_one_patient() -> None:
    originals = b0_series()[:2]
    first, second = (deidentify(ds, secret=SECRET, options=ALL_OPTIONS) for ds in originals)
    assert first.date_shift_days == second.date_shift_days
    days = first.date_shift_days or 0
    for original, result in zip(originals, (first, second), strict=True):
        moved = 0
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            if original.get(keyword):  # every date moves by one offset: intervals kept
                assert result.dataset[keyword].value == shifted(original[keyword].value, days)
                moved += 1
        assert moved >= 2


# ---- marking, writing, verification ---------------------------------------


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "all-options"])
def test_marking(options: DeidOptions) -> None:
    out = deidentify(pydicom_ds("rtplan.dcm"), secret=SECRET, options=options).dataset
    assert out.PatientIdentityRemoved == "YES"
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
    ]
    expected = ["113100"] + (["113107", "113108", "113105"] if options == ALL_OPTIONS else [])
    assert codes == [(c, "DCM") for c in expected]
    methods = out.DeidentificationMethod
    methods = list(methods) if isinstance(methods, MultiValue) else [methods]
    assert all(len(m) <= 64 for m in methods) and "PS3.15" in methods[0]


def test_deidentified_objects_write_and_read_back() -> None:
    for _, original in real_files():
        for options in OPTION_SETS:
            out = deidentify(original, secret=SECRET, options=options).dataset
            back = round_trip(out)
            assert back.SOPInstanceUID == out.SOPInstanceUID
            assert back.PatientIdentityRemoved == "YES"
            if "PixelData" in original:
                assert back.PixelData == original.PixelData
            assert check(back) == []


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "all-options"])
def test_check_is_empty_after_and_lists_identifiers_before(options: DeidOptions) -> None:
    for name, original in real_files():
        before = {f.tag for f in check(original)}
        assert "(0010,0010)" in before or "(0020,000D)" in before, name
        assert "(0012,0062)" in before  # not marked
        assert check(deidentify(original, secret=SECRET, options=options).dataset) == [], name
    ct_findings = check(pydicom_ds("CT_small.dcm"))
    assert any(f.reason == "private attribute" for f in ct_findings)
    assert any(f.path == "SOPInstanceUID" for f in ct_findings)


def test_check_reads_the_declared_options() -> None:
    out = deidentify(pydicom_ds("CT_small.dcm"), secret=SECRET, options=ALL_OPTIONS).dataset
    assert check(out) == []
    del out.DeidentificationMethodCodeSequence  # the kept dates are no longer declared
    assert {f.path for f in check(out)} >= {"StudyDate", "StudyDescription", "PatientAge"}


def test_check_path_counts_files(tmp_path: Path) -> None:
    original = pydicom_ds("MR_small.dcm")
    pydicom.dcmwrite(tmp_path / "original.dcm", original)
    (tmp_path / "sub").mkdir()
    clean = deidentify(original, secret=SECRET).dataset
    pydicom.dcmwrite(tmp_path / "sub" / "clean.dcm", clean)
    (tmp_path / "notes.txt").write_text("not DICOM")
    report = check_path(tmp_path)
    assert (report.checked, report.skipped) == (2, 1)
    assert list(report.findings) == ["original.dcm"]
    assert not report.clean
    one = check_path(tmp_path / "original.dcm")  # one file is checked on its own
    assert (one.checked, one.skipped, list(one.findings)) == (1, 0, ["original.dcm"])
    assert (
        check_path(tmp_path / "notes.txt").skipped,
        check_path(tmp_path / "notes.txt").checked,
    ) == (1, 0)
    with pytest.raises(NotADirectoryError):
        check_path(tmp_path / "nothing")


def test_check_path_on_the_heudiconv_folder() -> None:
    folder = shared("dicom_heudiconv_testdata_siemens_mr")
    report = check_path(folder)
    assert report.checked == 12 and report.skipped == 3  # LICENSE, MANIFEST.csv, PROVENANCE.md
    assert len(report.findings) == 12  # every original header identifies


def test_every_heudiconv_header_deidentifies_clean() -> None:
    """Enhanced multi-frame MR, mosaics, an SR protocol: all pass check() and round-trip."""
    folder = shared(*HEUDICONV)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(files) == 12
    for path in files:
        original = read(path, stop_before_pixels=True)
        for options in OPTION_SETS:
            result = deidentify(original, secret=SECRET, options=options)
            walk(original, result.dataset, result, set())
            assert check(result.dataset) == [], path.name
            assert check(round_trip(result.dataset)) == [], path.name


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        deidentify(pydicom_ds("MR_small.dcm"), secret=b"")
