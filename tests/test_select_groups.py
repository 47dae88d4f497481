"""Groups of one selection written to folders (issue 9): a base selection split by size
into a group and its exact complement, each with its files, metadata.csv and
excluded.csv; the same through `radlake select` and on the real COVID subset."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, select

from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.models import Image
from radlake.catalog.queries import apply_filter
from radlake.curation.filters import ImageFilter
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.group_files import GroupError, local_root, write_group
from radlake.pipelines.source_load import load_source
from radlake.sources.covid_cxr import read_covid_cxr
from radlake.storage.store import open_store
from tests.conftest import SECRET, run_radlake, s3_options, shared

IEEE_HEADER = "patientid,sex,age,finding,view,modality,folder,filename,license,clinical_notes,"
BASE = ["modality=DX", "view=PA,AP,AP Supine"]
BIG = "min_short_side=1024"


@dataclass(frozen=True)
class Row:
    patient: str
    finding: str
    view: str
    modality: str
    file: str
    size: tuple[int, int] | None  # (width, height); None: listed but absent

    def line(self) -> str:
        return (
            f"{self.patient},M,50,{self.finding},{self.view},{self.modality},images,"
            f'"{self.file}",CC BY 4.0,,'
        )


# The truth the test writes itself: which file belongs to which group is known here,
# not read back from radlake.
ROWS = (
    Row("p1", "COVID-19", "PA", "X-ray", "a.png", (1024, 1024)),  # A: both sides 1024
    Row("p1", "COVID-19", "AP", "X-ray", "b.png", (1200, 1100)),  # A
    Row("p2", "Pneumonia", "AP Supine", "X-ray", "c.png", (1024, 900)),  # B: one side only
    Row("p2", "No Finding", "PA", "X-ray", "d.png", (600, 500)),  # B
    Row("p3", "COVID-19", "L", "X-ray", "e.png", (2000, 2000)),  # not base: lateral view
    Row("p3", "COVID-19", "PA", "X-ray", "odd name (1).png", (1023, 2048)),  # B
    Row("p4", "COVID-19", "PA", "CT", "f.png", (1100, 1100)),  # not base: CT
    Row("p5", "COVID-19", "PA", "X-ray", "missing.png", None),  # absent: quarantined
)
GROUP_A = {"a.png", "b.png"}
GROUP_B = {"c.png", "d.png", "odd name (1).png"}


def write_source(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for n, row in enumerate(ROWS):
        if row.size is not None:
            # A gradient compresses well: a 2000x2000 PNG stays small.
            gradient = PILImage.linear_gradient("L").rotate(n * 7).resize(row.size)
            gradient.save(root / "images" / row.file, "PNG")
    lines = [IEEE_HEADER, *(row.line() for row in ROWS)]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def load(lake: Lake, root: Path) -> str:
    parsed = read_covid_cxr(root)
    load_source(
        parsed,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    return parsed.name


def selected(engine: Engine, selection: ImageFilter) -> dict[int, str]:
    """id -> file name of the images selection matches."""
    with session_factory(engine)() as session:
        rows = session.execute(apply_filter(select(Image.id, Image.source_key), selection))
        return {image_id: Path(key).name for image_id, key in rows}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    return write_source(tmp_path / "ieee-like")


# ---------------------------------------------------------------- the partition


def test_a_group_and_its_complement_partition_the_base(
    catalog: Engine, tmp_path: Path, source_root: Path
) -> None:
    lake = Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    load(lake, source_root)
    base = ImageFilter.parse(BASE)
    group_a = ImageFilter.parse([*BASE, BIG])
    group_b = ImageFilter.parse([*BASE, f"exclude.{BIG}"])
    ids_base, ids_a, ids_b = (selected(catalog, s) for s in (base, group_a, group_b))
    assert set(ids_a.values()) == GROUP_A and set(ids_b.values()) == GROUP_B
    assert set(ids_a) | set(ids_b) == set(ids_base) and not set(ids_a) & set(ids_b)
    # "one side >= 1024" is neither group of max_size/min_size: it lands in B here.
    assert "c.png" in ids_b.values()
    # The shorter/longer side bounds say the same from the other end.
    assert set(selected(catalog, ImageFilter.parse([*BASE, "max_short_side=1023"]))) == set(ids_b)
    longer = selected(catalog, ImageFilter.parse([*BASE, "min_long_side=1024"]))
    assert set(longer.values()) == GROUP_A | {"c.png", "odd name (1).png"}
    within = selected(catalog, ImageFilter.parse([*BASE, "max_long_side=1023"]))
    assert set(within.values()) == {"d.png"}
    # Several values: any of them; an exclude of several values leaves out each.
    views = selected(catalog, ImageFilter.from_dict({"view": ["AP", "ap supine"]}))
    assert set(views.values()) == {"b.png", "c.png"}
    no_pa = selected(catalog, ImageFilter.parse([*BASE, "exclude.view=PA,AP"]))
    assert set(no_pa.values()) == {"c.png"}


# -------------------------------------------------------------- the group files


def test_write_group_files_metadata_and_excluded(lake: Lake, tmp_path: Path) -> None:
    root = write_source(tmp_path / "ieee-like")
    source = load(lake, root)
    out_a, out_b = tmp_path / "out" / "big", tmp_path / "out" / "rest"
    base = [*BASE, f"source={source}"]
    summary_a = write_group(lake, ImageFilter.parse([*base, BIG]), out_a)
    summary_b = write_group(lake, ImageFilter.parse([*base, f"exclude.{BIG}"]), out_b)
    assert (summary_a.selected, summary_a.written, summary_a.missing) == (2, 2, 0)
    assert (summary_b.selected, summary_b.written, summary_b.missing) == (3, 3, 0)
    for out, group in ((out_a, GROUP_A), (out_b, GROUP_B)):
        rows = read_csv(out / "metadata.csv")
        assert {Path(row["source_key"]).name for row in rows} == group
        files = sorted(p.name for p in (out / "images").iterdir())
        assert files == sorted(Path(row["file"]).name for row in rows)
        for row in rows:
            # The bytes written are the source's file, unchanged.
            original = root / "images" / Path(row["source_key"]).name
            assert sha256(out / row["file"]) == row["sha256"] == sha256(original)
            assert row["source"] == source and row["attr.license"] == "CC BY 4.0"
            assert row["findings"] and row["view_position"] in ("PA", "AP", "AP Supine")
            assert int(row["rows"]) > 0 and row["patient_pseudonym"]
    excluded_a = {
        (r["kind"], Path(r["source_key"]).name): r["reason"]
        for r in read_csv(out_a / "excluded.csv")
    }
    assert set(excluded_a) == {
        *(("image", name) for name in GROUP_B | {"e.png", "f.png"}),
        ("quarantine", "missing.png"),
    }
    assert excluded_a[("image", "d.png")] == "not min_short_side=1024"
    assert excluded_a[("image", "e.png")] == "not view=PA,AP,AP Supine"
    assert excluded_a[("image", "f.png")] == "not modality=DX"
    assert "absent" in excluded_a[("quarantine", "missing.png")]
    excluded_b = {Path(r["source_key"]).name: r["reason"] for r in read_csv(out_b / "excluded.csv")}
    assert excluded_b["a.png"] == excluded_b["b.png"] == "matches exclude min_short_side=1024"
    assert set(excluded_b) == GROUP_A | {"e.png", "f.png", "missing.png"}


def test_rerun_is_the_same_and_removes_what_left_the_group(lake: Lake, tmp_path: Path) -> None:
    load(lake, write_source(tmp_path / "ieee-like"))
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "notes.txt").write_text("mine")  # not ours: left alone
    group_b = ImageFilter.parse([*BASE, f"exclude.{BIG}"])
    write_group(lake, group_b, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = write_group(lake, group_b, out)
    assert (again.written, again.kept, again.removed) == (0, 3, 0)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.rglob(".*")]  # no temporary left behind
    narrower = write_group(
        lake, ImageFilter.parse(["modality=DX", "view=PA", f"exclude.{BIG}"]), out
    )
    assert (narrower.written, narrower.kept, narrower.removed) == (0, 2, 1)
    names = {Path(row["source_key"]).name for row in read_csv(out / "metadata.csv")}
    assert names == {"d.png", "odd name (1).png"}
    assert len(list((out / "images").glob("*.png"))) == 2
    assert (out / "images" / "notes.txt").read_text() == "mine"


def test_links_point_into_a_local_store_and_copies_replace_them(lake: Lake, tmp_path: Path) -> None:
    load(lake, write_source(tmp_path / "ieee-like"))
    group_a = ImageFilter.parse([*BASE, BIG])
    root = local_root(lake.store)
    assert root is not None
    hard = write_group(lake, group_a, tmp_path / "hard", mode="hardlink")
    assert hard.written == 2
    for row in read_csv(tmp_path / "hard" / "metadata.csv"):
        target = tmp_path / "hard" / row["file"]
        assert os.path.samefile(target, root / row["original_key"])
    soft = write_group(lake, group_a, tmp_path / "soft", mode="symlink")
    assert soft.written == 2
    for target in (tmp_path / "soft" / "images").iterdir():
        assert target.is_symlink() and target.resolve().is_relative_to(root.resolve())
    assert write_group(lake, group_a, tmp_path / "soft", mode="symlink").kept == 2
    # --copy over an earlier --link: real copies, the store's files untouched.
    copied = write_group(lake, group_a, tmp_path / "hard", mode="copy")
    assert copied.written == 2
    for row in read_csv(tmp_path / "hard" / "metadata.csv"):
        target = tmp_path / "hard" / row["file"]
        assert not os.path.samefile(target, root / row["original_key"])
        assert sha256(target) == row["sha256"]
    only = write_group(lake, group_a, tmp_path / "meta", mode="none")
    assert (only.selected, only.written, only.kept) == (2, 0, 0)
    assert not list((tmp_path / "meta" / "images").iterdir())
    assert len(read_csv(tmp_path / "meta" / "metadata.csv")) == 2


@pytest.mark.parametrize("kind", ["s3", "memory"])
def test_a_remote_store_copies_but_refuses_links(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, source_root: Path
) -> None:
    if kind == "s3":  # a real S3-protocol server (moto) on 127.0.0.1
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        store = open_store(f"s3://{bucket}/lake", **s3_options(endpoint))
    else:
        store = open_store(f"memory://radlake-groups-{os.getpid()}-{id(tmp_path)}")
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    lake = Lake(engine, store, Pseudonymizer(SECRET))
    load(lake, source_root)
    group_a = ImageFilter.parse([*BASE, BIG])
    for mode in ("hardlink", "symlink"):
        with pytest.raises(GroupError, match="need a store in a local folder"):
            write_group(lake, group_a, tmp_path / "linked", mode=mode)  # type: ignore[arg-type]
    summary = write_group(lake, group_a, tmp_path / "copied")
    assert summary.written == 2 and summary.missing == 0
    # An original gone from the store: listed in excluded.csv, not in metadata.csv.
    with session_factory(engine)() as session:
        gone = session.scalars(apply_filter(select(Image), group_a).order_by(Image.id)).first()
        assert gone is not None
        gone_id, gone_key = gone.id, gone.original_key
    store.delete(gone_key)
    again = write_group(lake, group_a, tmp_path / "copied")
    assert (again.selected, again.kept, again.missing, again.removed) == (2, 1, 1, 1)
    kept = [int(row["id"]) for row in read_csv(tmp_path / "copied" / "metadata.csv")]
    assert len(kept) == 1 and gone_id not in kept
    assert len(list((tmp_path / "copied" / "images").iterdir())) == 1
    excluded = read_csv(tmp_path / "copied" / "excluded.csv")
    reasons = {(row["kind"], int(row["id"])): row["reason"] for row in excluded}
    assert reasons[("image", gone_id)] == "original missing from the store"
    with pytest.raises(GroupError, match="got a file"):
        (tmp_path / "a-file").write_text("x")
        write_group(lake, group_a, tmp_path / "a-file")


def test_an_out_folder_that_cannot_be_made_is_one_error_line(lake: Lake, tmp_path: Path) -> None:
    """A parent that is a file, a name too long for the file system, a path under
    /proc: a clear GroupError (one CLI error line), not an internal error."""
    load(lake, write_source(tmp_path / "ieee-like"))
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file" / "sub", tmp_path / ("y" * 300), Path("/proc/radlake-x")):
        with pytest.raises(GroupError, match="cannot create the folder"):
            write_group(lake, ImageFilter.parse(BASE), out)
    assert (tmp_path / "a-file").read_text() == "x"


# --------------------------------------------------------------------- the CLI


def test_select_command_writes_two_groups_as_the_readme_says(
    tmp_path: Path, source_root: Path
) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    loaded = run_radlake(home, "source", "covid", str(source_root))
    assert loaded.returncode == 0, loaded.stderr
    base = ["--select", "modality=DX", "--select", "view=PA,AP,AP Supine"]
    big = run_radlake(home, "select", *base, "--select", BIG, "--out", str(tmp_path / "big"))
    assert big.returncode == 0, big.stderr
    assert "2 selected" in big.stdout
    rest = run_radlake(home, "select", *base, "--not", BIG, "--out", str(tmp_path / "rest"))
    assert rest.returncode == 0, rest.stderr
    for name, group in (("big", GROUP_A), ("rest", GROUP_B)):
        rows = read_csv(tmp_path / name / "metadata.csv")
        assert {Path(row["source_key"]).name for row in rows} == group
        assert len(list((tmp_path / name / "images").iterdir())) == len(group)
    linked = run_radlake(
        home, "select", "--view", "PA,AP", "--link", "--out", str(tmp_path / "linked")
    )
    assert linked.returncode == 0, linked.stderr
    for args, reason in (
        (["--select", "modalty=DX"], "unknown filter key 'modalty'"),
        (["--select", "view="], "view has no value"),  # "view=$UNSET" selects nothing by surprise
        (["--view", "PA,,AP"], "view"),
        (["--not", "min_short_side=-1"], "min_short_side"),
        (["--copy", "--link"], "choose one of --copy, --link"),
        (["--select", "view=" + ",".join(f"V{n}" for n in range(51))], "at most 50"),
    ):
        result = run_radlake(home, "select", *args, "--out", str(tmp_path / "bad"))
        lines = result.stderr.splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and reason in lines[0], lines[0]
    (tmp_path / "file").write_text("x")
    result = run_radlake(home, "select", "--out", str(tmp_path / "file"))
    assert result.returncode == 1 and "got a file" in result.stderr, result.stderr


# --------------------------------------------------------------- the real data


def test_real_covid_subset_splits_by_size_exactly(lake: Lake, tmp_path: Path) -> None:
    root = shared("cxr_ieee8023_lung_boxes_subset", "data")
    source = load(lake, root)
    # The independent count: the collection's own metadata.csv and the files' sizes.
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        listed = [
            row
            for row in csv.DictReader(handle)
            if row["modality"] == "X-ray" and row["view"] in ("PA", "AP", "AP Supine")
        ]
    expected_a, expected_b = set(), set()
    for row in listed:
        with PILImage.open(root / row["folder"] / row["filename"]) as image:
            width, height = image.size
        (expected_a if min(width, height) >= 1024 else expected_b).add(row["filename"])
    assert expected_a and expected_b
    base = [*BASE, f"source={source}"]
    out_a, out_b = tmp_path / "big", tmp_path / "rest"
    summary_a = write_group(lake, ImageFilter.parse([*base, BIG]), out_a, mode="hardlink")
    summary_b = write_group(lake, ImageFilter.parse([*base, f"exclude.{BIG}"]), out_b)
    rows_a, rows_b = read_csv(out_a / "metadata.csv"), read_csv(out_b / "metadata.csv")
    names_a = {Path(row["source_key"]).name for row in rows_a}
    names_b = {Path(row["source_key"]).name for row in rows_b}
    assert names_a == expected_a and names_b == expected_b
    assert summary_a.selected + summary_b.selected == len(listed)
    assert not {r["id"] for r in rows_a} & {r["id"] for r in rows_b}
    # Each group's excluded.csv lists the other group and the one CT, nothing more.
    excluded_a = {row["id"] for row in read_csv(out_a / "excluded.csv")}
    assert {row["id"] for row in rows_b} < excluded_a
    assert len(excluded_a) == len(rows_b) + 1  # the CT image
    assert all(row["attr.license"] is not None for row in rows_a + rows_b)
    assert all(row["findings"] for row in rows_a + rows_b)  # every row has a finding
