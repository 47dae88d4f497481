"""The `radlake` command line as a user runs it: a subprocess with RADLAKE_HOME set."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image

from tests.conftest import pydicom_file

SUMMARY = re.compile(
    r"(\d+) inputs: (\d+) catalogued, (\d+) already present, (\d+) quarantined in "
)
PSEUDONYM = re.compile(r"^[0-9a-f]{32}$")


def radlake(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `radlake ARGS` with only RADLAKE_HOME set (no key, no other RADLAKE_* setting)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RADLAKE_") and name not in ("COLUMNS", "LINES")
    }
    env["RADLAKE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command: non-zero exit, one `error:` line on stderr, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@dataclass(frozen=True)
class BuiltLake:
    """A lake built once through the CLI; the read-only tests look at it."""

    home: Path
    inputs: Path
    work: Path
    first_init: subprocess.CompletedProcess[str]
    second_init: subprocess.CompletedProcess[str]
    key_after_first_init: str
    first_ingest: subprocess.CompletedProcess[str]
    second_ingest: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltLake:
    root = tmp_path_factory.mktemp("cli")
    home, inputs, work = root / "home", root / "inputs", root / "work"
    (inputs / "series").mkdir(parents=True)
    work.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), inputs / "CT_small.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), inputs / "MR_small.dcm")
    shutil.copy(pydicom_file("MR_small_RLE.dcm"), inputs / "series" / "MR_small_RLE.dcm")
    (inputs / "empty.dcm").write_bytes(b"")
    (inputs / "x.dcm").write_bytes(os.urandom(4096))

    first_init = radlake(home, "init")
    key = (home / "secret.key").read_text() if (home / "secret.key").exists() else ""
    second_init = radlake(home, "init")
    first_ingest = radlake(home, "ingest", str(inputs))
    second_ingest = radlake(home, "ingest", str(inputs), "--json")
    return BuiltLake(home, inputs, work, first_init, second_init, key, first_ingest, second_ingest)


def image_id(built: BuiltLake, name: str) -> int:
    """The catalogued id of one input file, looked up the way a user would."""
    images = ok_json(radlake(built.home, "query", "--json"))["images"]
    (found,) = [image["id"] for image in images if Path(image["source_key"]).name == name]
    return int(found)


# --- init ------------------------------------------------------------------------------


def test_init_creates_the_home_with_a_private_key_and_can_be_repeated(built: BuiltLake) -> None:
    first = ok(built.first_init)
    assert "lake ready" in first
    assert "secret key generated" in first
    assert (built.home / "catalog.sqlite").is_file()
    assert (built.home / "store").is_dir()
    key_file = built.home / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert key not in first  # the key itself is never printed

    second = ok(built.second_init)
    assert "lake ready" in second
    assert "secret key generated" not in second
    assert key_file.read_text() == built.key_after_first_init  # the pseudonym key is kept
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# --- ingest ----------------------------------------------------------------------------


def test_ingest_summary_adds_up(built: BuiltLake) -> None:
    match = SUMMARY.search(ok(built.first_ingest))
    assert match, built.first_ingest.stdout
    inputs, catalogued, present, quarantined = map(int, match.groups())
    assert (inputs, catalogued, present, quarantined) == (5, 3, 0, 2)


def test_ingest_again_catalogues_nothing_new_and_reports_json(built: BuiltLake) -> None:
    summary = ok_json(built.second_ingest)
    assert summary["inputs"] == 5
    assert summary["catalogued"] == 0
    assert summary["already_present"] == 3
    assert summary["quarantined"] == 2
    assert summary["catalogued"] + summary["already_present"] + summary["quarantined"] == 5
    assert built.second_ingest.stderr == ""  # no progress bar with --json
    assert ok_json(radlake(built.home, "query", "--json"))["total"] == 3


@pytest.mark.xfail(
    strict=True,
    reason="src bug: when stdout is not a terminal the summary wraps at 80 columns "
    "(console.print without soft_wrap) and the transient progress bar leaves a blank "
    "line on stderr (progress_bar is shown whenever --json is absent)",
)
def test_ingest_prints_exactly_one_summary_line_and_nothing_on_stderr(built: BuiltLake) -> None:
    assert len(built.first_ingest.stdout.splitlines()) == 1
    assert built.first_ingest.stderr == ""


def test_ingest_of_a_missing_path_fails_with_an_error_line(built: BuiltLake) -> None:
    missing = built.work / "no-such-folder"
    result = radlake(built.home, "ingest", str(missing))
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    # A stray blank line precedes it (see the xfail above); the message itself is one line.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: no such file or folder: {missing}"]
    assert ok_json(radlake(built.home, "jobs", "--json"))[0]["counts"]["inputs"] == 5


# --- query, show -----------------------------------------------------------------------


def test_query_by_modality(built: BuiltLake) -> None:
    ct = ok_json(radlake(built.home, "query", "--json", "--modality", "CT"))
    assert ct["total"] == 1
    (image,) = ct["images"]
    assert image["modality"] == "CT"
    assert image["format"] == "dicom"
    assert Path(image["source_key"]).name == "CT_small.dcm"
    assert (image["rows"], image["columns"]) == (128, 128)

    mr = ok_json(radlake(built.home, "query", "--json", "--modality", "MR"))
    assert mr["total"] == 2
    assert sorted(Path(i["source_key"]).name for i in mr["images"]) == [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
    ]


def test_query_by_manufacturer_prefix_in_any_case(built: BuiltLake) -> None:
    def names(*args: str) -> list[str]:
        found = ok_json(radlake(built.home, "query", "--json", *args))
        return sorted(Path(i["source_key"]).name for i in found["images"])

    assert names("--manufacturer", "ge") == ["CT_small.dcm"]  # GE MEDICAL SYSTEMS
    assert names("--manufacturer", "Toshiba") == ["MR_small.dcm", "MR_small_RLE.dcm"]
    assert names("--manufacturer", "MEDICAL") == []  # a prefix, not a substring
    table = ok(radlake(built.home, "query", "--manufacturer", "siemens"))
    assert "0 of 0 images" in table


def test_show_gives_identity_and_hierarchy_without_patient_identity(built: BuiltLake) -> None:
    ct_path = built.inputs / "CT_small.dcm"
    dataset = pydicom.dcmread(ct_path)
    ct_id = image_id(built, "CT_small.dcm")

    as_json = radlake(built.home, "show", str(ct_id), "--json")
    detail = ok_json(as_json)
    assert detail["sha256"] == hashlib.sha256(ct_path.read_bytes()).hexdigest()
    assert detail["series"]["series_uid"] == dataset.SeriesInstanceUID
    assert detail["series"]["modality"] == "CT"
    assert detail["study_uid"] == dataset.StudyInstanceUID
    assert PSEUDONYM.match(detail["patient_pseudonym"])

    as_table = radlake(built.home, "show", str(ct_id))
    assert detail["sha256"][:40] in ok(as_table)
    everything = as_json.stdout + as_json.stderr + as_table.stdout + as_table.stderr
    name = dataset.PatientName
    for identifier in (str(dataset.PatientID), str(name), name.family_name):
        assert identifier
        assert identifier not in everything


def test_images_of_one_patient_share_one_pseudonym(built: BuiltLake) -> None:
    pseudonyms = {
        name: ok_json(radlake(built.home, "show", str(image_id(built, name)), "--json"))[
            "patient_pseudonym"
        ]
        for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm")
    }
    # MR_small and MR_small_RLE carry the same PatientID; CT_small another.
    assert pseudonyms["MR_small.dcm"] == pseudonyms["MR_small_RLE.dcm"]
    assert pseudonyms["CT_small.dcm"] != pseudonyms["MR_small.dcm"]
    same_patient = ok_json(
        radlake(built.home, "query", "--json", "--patient", pseudonyms["MR_small.dcm"])
    )
    assert same_patient["total"] == 2


# --- render ----------------------------------------------------------------------------


def test_render_to_png_at_a_size_and_to_jpeg_with_a_window(built: BuiltLake) -> None:
    ct_id = str(image_id(built, "CT_small.dcm"))
    png = built.work / "ct.png"
    out = ok(radlake(built.home, "render", ct_id, "-o", str(png), "--size", "256"))
    assert "wrote" in out
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert max(image.size) == 256

    jpeg = built.work / "ct-window.jpg"
    args = ("render", ct_id, "-o", str(jpeg), "--window", "40,400", "--size", "64")
    out = ok(radlake(built.home, *args))
    assert "window 40,400" in out
    with Image.open(jpeg) as image:
        assert image.format == "JPEG"
        assert max(image.size) == 64


@pytest.mark.parametrize(
    ("image", "output_name", "options", "message"),
    [
        ("CT", "refused.png", ["--slice", "7"], "expected a frame in 0..0, got 7"),
        ("CT", "refused.png", ["--window", "1,0"], "expected a positive window width"),
        ("CT", "refused.png", ["--window", "forty"], "expected a window as CENTER,WIDTH"),
        ("CT", "refused.gif", [], "expected an output file ending in .png or .jpg"),
        ("999999", "refused.png", [], "no image with id 999999"),
    ],
    ids=["slice-out-of-range", "zero-width-window", "unparsable-window", "gif", "unknown-id"],
)
def test_render_refuses_bad_requests_with_one_error_line(
    built: BuiltLake, image: str, output_name: str, options: list[str], message: str
) -> None:
    if image == "CT":
        image = str(image_id(built, "CT_small.dcm"))
    output = built.work / output_name
    result = radlake(built.home, "render", image, "-o", str(output), *options)
    assert message in assert_one_error_line(result)
    assert not output.exists()


def test_show_of_an_unknown_id_is_one_error_line(built: BuiltLake) -> None:
    line = assert_one_error_line(radlake(built.home, "show", "999999", "--json"))
    assert "no image with id 999999" in line


# --- quarantine and jobs ---------------------------------------------------------------


def test_quarantine_lists_each_rejected_input_once_with_its_reason(built: BuiltLake) -> None:
    rows = ok_json(radlake(built.home, "quarantine", "--json"))
    reasons = {Path(row["source_key"]).name: row["reason"] for row in rows}
    assert len(rows) == 2  # the second ingest added no duplicate
    assert reasons["empty.dcm"].startswith("empty file")
    assert reasons["x.dcm"].startswith("not an image")
    random_file = next(row for row in rows if row["source_key"].endswith("x.dcm"))
    random_bytes = (built.inputs / "x.dcm").read_bytes()
    assert random_file["sha256"] == hashlib.sha256(random_bytes).hexdigest()
    assert random_file["size_bytes"] == len(random_bytes)
    assert "2 quarantined inputs" in ok(radlake(built.home, "quarantine"))


def test_jobs_show_both_ingests_succeeded_with_their_counts(built: BuiltLake) -> None:
    jobs = [
        job for job in ok_json(radlake(built.home, "jobs", "--json")) if job["kind"] == "ingest"
    ]
    assert len(jobs) == 2
    latest, first = jobs  # newest first
    assert first["status"] == latest["status"] == "succeeded"
    assert first["error"] is None
    assert first["counts"] == {
        "inputs": 5,
        "catalogued": 3,
        "already_present": 0,
        "quarantined": 2,
        "bytes_read": first["counts"]["bytes_read"],
    }
    assert latest["counts"]["catalogued"] == 0
    assert latest["counts"]["already_present"] == 3
    assert latest["id"] > first["id"]
    assert latest["seconds"] >= 0


# --- a home with no lake ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["query"],
        ["show", "1"],
        ["quarantine", "--json"],
        ["jobs"],
        ["render", "1", "-o", "out.png"],
        ["ingest", "."],
    ],
    ids=lambda args: args[0],
)
def test_commands_on_a_home_without_a_lake_say_to_run_init(tmp_path: Path, args: list[str]) -> None:
    result = radlake(tmp_path / "home", *args, cwd=tmp_path)
    assert "radlake init" in assert_one_error_line(result)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.xfail(
    strict=True,
    reason="src bug: make_engine() creates the home folder and an empty catalog.sqlite "
    "before check_current() finds no lake, so a read command leaves files behind",
)
def test_a_read_command_on_a_home_without_a_lake_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_one_error_line(radlake(home, "query"))
    assert not home.exists()


@pytest.mark.xfail(
    strict=True,
    reason="src bug: render does not translate an OSError writing the output file; "
    "the user gets 'internal error (FileNotFoundError)' instead of the reason",
)
def test_render_into_a_missing_folder_says_why(built: BuiltLake) -> None:
    target = built.work / "no-such-folder" / "out.png"
    result = radlake(built.home, "render", str(image_id(built, "CT_small.dcm")), "-o", str(target))
    line = assert_one_error_line(result)
    assert "internal error" not in line
    assert "no-such-folder" in line
