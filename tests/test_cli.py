"""The `radlake` command line as a user runs it: a subprocess with RADLAKE_HOME set.

Each command costs a Python start-up (about 1-2 s), so one lake is built per module
and the read-only checks share it; commands that change nothing run against it.
"""

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

Result = subprocess.CompletedProcess[str]

SUMMARY = re.compile(r"(\d+) inputs: (\d+) catalogued, (\d+) already present, (\d+) quarantined")
PSEUDONYM = re.compile(r"^[0-9a-f]{32}$")


def radlake(home: Path, *args: str, cwd: Path | None = None) -> Result:
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


def ok(result: Result) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(ok(result))


def assert_one_error_line(result: Result) -> str:
    """A failed command: non-zero exit, one `error:` line on stderr, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def names(query_result: dict[str, Any]) -> list[str]:
    """File names of the images a `query --json` returned, sorted."""
    return sorted(Path(image["source_key"]).name for image in query_result["images"])


@dataclass(frozen=True)
class BuiltLake:
    """A lake built once through the CLI, with what each step printed."""

    home: Path
    inputs: Path
    work: Path
    first_init: Result
    second_init: Result
    key_after_first_init: str
    first_ingest: Result
    second_ingest: Result
    missing_path: Path
    missing_ingest: Result
    images: dict[str, Any]

    def id_of(self, name: str) -> str:
        """The image id of one input file, as `radlake query` lists it."""
        images = self.images["images"]
        (found,) = [i["id"] for i in images if Path(i["source_key"]).name == name]
        return str(found)


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
    key_file = home / "secret.key"
    key = key_file.read_text() if key_file.exists() else ""
    second_init = radlake(home, "init")
    first_ingest = radlake(home, "ingest", str(inputs))
    second_ingest = radlake(home, "ingest", str(inputs), "--json")
    missing = work / "no-such-folder"
    missing_ingest = radlake(home, "ingest", str(missing))
    images = ok_json(radlake(home, "query", "--json"))
    return BuiltLake(
        home=home,
        inputs=inputs,
        work=work,
        first_init=first_init,
        second_init=second_init,
        key_after_first_init=key,
        first_ingest=first_ingest,
        second_ingest=second_ingest,
        missing_path=missing,
        missing_ingest=missing_ingest,
        images=images,
    )


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
    counts = tuple(map(int, match.groups()))
    # Three DICOMs (one in a subfolder), a zero-byte file and random bytes named .dcm.
    assert counts == (5, 3, 0, 2)
    assert built.images["total"] == 3


def test_ingest_again_catalogues_nothing_new_and_reports_json(built: BuiltLake) -> None:
    summary = ok_json(built.second_ingest)
    assert summary["inputs"] == 5
    assert summary["catalogued"] == 0
    assert summary["already_present"] == 3
    assert summary["quarantined"] == 2
    assert summary["bytes_read"] > 0
    assert built.second_ingest.stderr == ""  # no progress bar with --json
    assert built.images["total"] == 3  # no duplicates


def test_ingest_of_a_missing_path_fails_with_an_error_line(built: BuiltLake) -> None:
    result = built.missing_ingest
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert "no such file or folder" in assert_one_error_line(result)
    assert built.missing_path.name in result.stderr


def test_summary_and_error_lines_stay_single_lines_in_a_pipe(built: BuiltLake) -> None:
    # Whatever the terminal width: a log or `| grep` gets whole lines.
    assert len(built.first_ingest.stdout.splitlines()) == 1
    assert built.missing_ingest.stderr.splitlines() == [
        f"error: no such file or folder: {built.missing_path}"
    ]


def test_ingest_in_a_pipe_shows_no_progress_bar(built: BuiltLake) -> None:
    assert built.first_ingest.stderr == ""


# --- query, show -----------------------------------------------------------------------


def test_query_by_modality(built: BuiltLake) -> None:
    ct = ok_json(radlake(built.home, "query", "--json", "--modality", "CT"))
    assert ct["total"] == 1
    (image,) = ct["images"]
    assert image["modality"] == "CT"
    assert image["format"] == "dicom"
    assert Path(image["source_key"]).name == "CT_small.dcm"
    assert (image["rows"], image["columns"]) == (128, 128)
    by_modality = {Path(i["source_key"]).name: i["modality"] for i in built.images["images"]}
    assert by_modality == {"CT_small.dcm": "CT", "MR_small.dcm": "MR", "MR_small_RLE.dcm": "MR"}


def test_query_by_manufacturer_prefix_in_any_case(built: BuiltLake) -> None:
    def query(prefix: str) -> list[str]:
        return names(ok_json(radlake(built.home, "query", "--json", "--manufacturer", prefix)))

    assert query("ge") == ["CT_small.dcm"]  # GE MEDICAL SYSTEMS
    assert query("Toshiba") == ["MR_small.dcm", "MR_small_RLE.dcm"]  # TOSHIBA_MEC
    assert query("MEDICAL") == []  # a prefix, not a substring


def test_show_gives_identity_and_hierarchy_without_patient_identity(built: BuiltLake) -> None:
    ct_path = built.inputs / "CT_small.dcm"
    dataset = pydicom.dcmread(ct_path)
    ct_id = built.id_of("CT_small.dcm")

    as_json = radlake(built.home, "show", ct_id, "--json")
    detail = ok_json(as_json)
    assert detail["id"] == int(ct_id)
    assert detail["sha256"] == hashlib.sha256(ct_path.read_bytes()).hexdigest()
    assert detail["series"]["series_uid"] == dataset.SeriesInstanceUID
    assert detail["series"]["modality"] == "CT"
    assert detail["study_uid"] == dataset.StudyInstanceUID
    assert PSEUDONYM.match(detail["patient_pseudonym"])

    as_table = radlake(built.home, "show", ct_id)
    assert "patient_pseudonym" in ok(as_table)
    assert detail["patient_pseudonym"] in as_table.stdout
    everything = as_json.stdout + as_json.stderr + as_table.stdout + as_table.stderr
    name = dataset.PatientName
    for identifier in (str(dataset.PatientID), str(name), name.family_name):
        assert identifier
        assert identifier not in everything


def test_a_patients_images_share_one_pseudonym(built: BuiltLake) -> None:
    # MR_small and MR_small_RLE carry the same PatientID; CT_small another.
    mr = ok_json(radlake(built.home, "show", built.id_of("MR_small.dcm"), "--json"))
    pseudonym = mr["patient_pseudonym"]
    assert PSEUDONYM.match(pseudonym)
    same_patient = ok_json(radlake(built.home, "query", "--json", "--patient", pseudonym))
    assert names(same_patient) == ["MR_small.dcm", "MR_small_RLE.dcm"]


def test_show_of_an_unknown_id_is_one_error_line(built: BuiltLake) -> None:
    line = assert_one_error_line(radlake(built.home, "show", "999999", "--json"))
    assert "no image with id 999999" in line


# --- render ----------------------------------------------------------------------------


def test_render_to_png_at_a_size_and_to_jpeg_with_a_window(built: BuiltLake) -> None:
    ct_id = built.id_of("CT_small.dcm")
    out = ok(radlake(built.home, "render", ct_id, "-o", "ct.png", "--size", "256", cwd=built.work))
    assert "wrote ct.png" in out
    with Image.open(built.work / "ct.png") as image:
        assert image.format == "PNG"
        assert max(image.size) == 256

    args = ("render", ct_id, "-o", "ct.jpg", "--window", "40,400", "--size", "64")
    out = ok(radlake(built.home, *args, cwd=built.work))
    assert "window 40,400" in out
    with Image.open(built.work / "ct.jpg") as image:
        assert image.format == "JPEG"
        assert max(image.size) == 64


@pytest.mark.parametrize(
    ("image", "output", "options", "message"),
    [
        ("CT", "refused.png", ["--slice", "7"], "expected a frame in 0..0, got 7"),
        ("CT", "refused.png", ["--window", "1,0"], "expected a finite centre and a width"),
        ("CT", "refused.gif", [], "expected an output file ending in .png or .jpg"),
        ("999999", "refused.png", [], "no image with id 999999"),
    ],
    ids=["slice-out-of-range", "zero-width-window", "gif", "unknown-id"],
)
def test_render_refuses_bad_requests_with_one_error_line(
    built: BuiltLake, image: str, output: str, options: list[str], message: str
) -> None:
    image = built.id_of("CT_small.dcm") if image == "CT" else image
    result = radlake(built.home, "render", image, "-o", output, *options, cwd=built.work)
    assert message in assert_one_error_line(result)
    assert not (built.work / output).exists()


def test_render_into_a_missing_folder_says_why(built: BuiltLake) -> None:
    args = ("render", built.id_of("CT_small.dcm"), "-o", "no-such-folder/out.png")
    line = assert_one_error_line(radlake(built.home, *args, cwd=built.work))
    assert "internal error" not in line
    assert "no-such-folder" in line


# --- quarantine and jobs ---------------------------------------------------------------


def test_quarantine_lists_each_rejected_input_once_with_its_reason(built: BuiltLake) -> None:
    rows = ok_json(radlake(built.home, "quarantine", "--json"))
    assert len(rows) == 2  # the second ingest added no duplicate
    by_name = {Path(row["source_key"]).name: row for row in rows}
    assert by_name["empty.dcm"]["reason"].startswith("empty file")
    assert by_name["x.dcm"]["reason"].startswith("not an image")
    random_bytes = (built.inputs / "x.dcm").read_bytes()
    assert by_name["x.dcm"]["sha256"] == hashlib.sha256(random_bytes).hexdigest()
    assert by_name["x.dcm"]["size_bytes"] == len(random_bytes)


def test_jobs_show_both_ingests_succeeded_with_their_counts(built: BuiltLake) -> None:
    jobs = ok_json(radlake(built.home, "jobs", "--json"))
    # The ingest of a missing path failed before starting a job.
    assert [job["kind"] for job in jobs] == ["ingest", "ingest"]
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
    # Nothing is left behind: no home folder, no empty catalog, no output file.
    assert sorted(path.name for path in tmp_path.iterdir()) == []
