"""The warehouse (issue 12): per-image documents under warehouse/ in the store, built
incrementally by a watermark, and `radlake sql` (DuckDB) over them, local and S3.

The lake: a VinBigData-layout source of films with a Left and a Right Lung box each
(tests/test_predict_batch.py), dataset lungs v1, model lungs v1 and its predictions
on the test split, plus pydicom's CT_small.dcm (a real patient ID and name to keep
out of the documents).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pydicom
import pytest
from sqlalchemy import Engine, select, text

from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.feedback import Review, Reviewer, review_prediction
from radlake.catalog.model_registry import predictions_for_image
from radlake.catalog.models import Image, Label
from radlake.curation.versions import members
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.ingest import ingest_bytes
from radlake.storage.store import ObjectStore, open_store
from radlake.warehouse.build import build_warehouse
from radlake.warehouse.sql import query_warehouse
from radlake.warehouse.state import WarehouseError, load_state, parts_prefix, state_key
from tests.conftest import SECRET, pydicom_file, s3_options
from tests.test_predict_batch import load_films

pytest.importorskip("onnxruntime", reason="predictions need the [inference] extra")

FILMS = 8
DICOM = "CT_small.dcm"
QUESTION = (
    "SELECT m.split, l.class_name, count(*) AS boxes FROM memberships m "
    "JOIN labels l USING (image_id) WHERE m.dataset = 'lungs' AND m.version = 1 "
    "AND l.x_min IS NOT NULL AND l.origin = 'ground_truth' GROUP BY ALL ORDER BY 1, 2"
)
CATALOG_QUESTION = text(
    "SELECT dm.split, l.class_name, count(*) FROM dataset_member dm "
    "JOIN dataset_version v ON v.id = dm.version_id JOIN dataset d ON d.id = v.dataset_id "
    "JOIN label l ON l.image_id = dm.image_id WHERE d.name = 'lungs' AND v.version = 1 "
    "AND l.x_min IS NOT NULL AND l.origin = 'ground_truth' "
    "GROUP BY dm.split, l.class_name ORDER BY 1, 2"
)


def make_lake(engine: Engine, store: ObjectStore, root: Path) -> tuple[Lake, dict[str, list[int]]]:
    """Films, dataset lungs v1 (half training, half test), predictions on the test
    half, and CT_small.dcm; returns the lake and the version's image ids by split."""
    lake = Lake(engine, store, Pseudonymizer(SECRET))
    version_id = load_films(lake, root, count=FILMS)
    with session_factory(engine)() as session:
        split_of = members(session, version_id)
    by_split: dict[str, list[int]] = {}
    for image_id, split in sorted(split_of.items()):
        by_split.setdefault(split, []).append(image_id)
    from radlake.inference.service import predict_images

    predict_images(lake, model_ref="lungs", image_ids=by_split["test"], caller="test")
    ingest_bytes(
        pydicom_file(DICOM).read_bytes(),
        engine=engine,
        store=store,
        pseudonymizer=lake.pseudonymizer,
        source="upload",
        source_kind="upload",
        source_key=DICOM,
    )
    return lake, by_split


@pytest.fixture
def films(catalog: Engine, tmp_path: Path) -> tuple[Lake, dict[str, list[int]]]:
    """The lake on each catalog backend, with a local store."""
    return make_lake(catalog, open_store((tmp_path / "store").as_uri()), tmp_path / "src")


def add_label(lake: Lake, image_id: int, *, label_id: int | None = None) -> None:
    with transaction(lake.engine) as session:
        source_id = session.scalar(select(Image.source_id).where(Image.id == image_id))
        assert source_id is not None
        session.add(
            Label(
                id=label_id,
                source_id=source_id,
                source_image_key=f"added-{image_id}",
                image_id=image_id,
                class_name="Nodule",
                reader="R9",
                origin="ground_truth",
                x_min=5.0,
                y_min=6.0,
                x_max=25.0,
                y_max=36.0,
            )
        )


def sql(lake: Lake, query: str, *values: object) -> list[tuple[Any, ...]]:
    """The rows of query over the lake's warehouse; values fill its {} (ints, paths)."""
    return query_warehouse(lake.store, query.format(*values)).rows


def review(lake: Lake, image_id: int, verdict: str) -> None:
    with session_factory(lake.engine)() as session:
        first = predictions_for_image(session, image_id=image_id)[0]
    with transaction(lake.engine) as session:
        review_prediction(
            session,
            prediction_id=first.prediction_id,
            review=Review(verdict),  # type: ignore[arg-type]
            reviewer=Reviewer("alice", "api"),
        )


def test_a_build_writes_only_the_images_that_changed(
    films: tuple[Lake, dict[str, list[int]]],
) -> None:
    lake, by_split = films
    images = FILMS + 1
    first = build_warehouse(lake)
    assert (first.reason, first.images_written, first.parts_written) == ("first build", images, 1)
    assert sql(lake, "SELECT count(*), count(DISTINCT id) FROM images") == [(images, images)]

    state_before = lake.store.get_bytes(state_key("parquet"))
    again = build_warehouse(lake)
    assert (again.images_written, again.parts_written, again.build) == (0, 0, 1)
    assert lake.store.get_bytes(state_key("parquet")) == state_before  # nothing written

    # A new label on one image: only its document is written again.
    changed = by_split["training"][0]
    add_label(lake, changed)
    third = build_warehouse(lake)
    assert (third.images_written, third.parts_written, third.build) == (1, 1, 2)
    assert (third.images, third.documents, third.superseded) == (images, images + 1, 1)
    assert sql(lake, "SELECT count(*) FROM images") == [(images,)]
    assert sql(lake, "SELECT count(*) FROM documents") == [(images + 1,)]
    assert sql(
        lake, "SELECT class_name, x_min, y_max FROM labels WHERE image_id = {} ORDER BY id", changed
    ) == [("Left Lung", 40.0, 140.0), ("Right Lung", 140.0, 172.0), ("Nodule", 5.0, 36.0)]
    assert sql(lake, "SELECT count(*) FROM labels WHERE class_name = 'Nodule'") == [(1,)]

    # A verdict on a prediction, then a change of mind (an in-place update the audit
    # log records): each rewrites that one image, and the newest verdict is the one.
    reviewed = by_split["test"][0]
    review(lake, reviewed, "accept")
    assert build_warehouse(lake).images_written == 1
    review(lake, reviewed, "reject")
    fifth = build_warehouse(lake)
    assert (fifth.images_written, fifth.build) == (1, 4)
    assert sql(lake, "SELECT image_id, verdict, reviewer, simulated FROM feedback") == [
        (reviewed, "reject", "alice", False)
    ]
    assert sql(lake, "SELECT model, model_version, count(*) FROM predictions GROUP BY ALL") == [
        ("lungs", 1, 2 * len(by_split["test"]))
    ]

    full = build_warehouse(lake, full=True)
    assert (full.reason, full.images_written, full.parts, full.parts_removed) == (
        "--full",
        images,
        1,
        4,
    )
    assert (full.documents, full.superseded) == (images, 0)
    assert len(list(lake.store.list(parts_prefix("parquet")))) == 1
    assert sql(lake, "SELECT count(*) FROM labels WHERE class_name = 'Nodule'") == [(1,)]


def test_a_late_commit_below_the_watermark_is_not_lost(
    films: tuple[Lake, dict[str, list[int]]],
) -> None:
    """An id taken before the build but committed after it (a long transaction on a
    server) is looked for again in later builds."""
    lake, by_split = films
    build_warehouse(lake)
    with session_factory(lake.engine)() as session:
        top = session.scalar(select(Label.id).order_by(Label.id.desc()).limit(1))
    assert top is not None
    first, late = by_split["training"][:2]
    add_label(lake, first, label_id=top + 10)  # ids top+1..top+9 not (yet) seen
    assert build_warehouse(lake).images_written == 1
    state = load_state(lake.store, "parquet")
    assert state is not None and state.watermark["label"]["pending"][0][:2] == [top + 1, top + 9]
    add_label(lake, late, label_id=top + 3)  # commits now, below the watermark
    assert build_warehouse(lake).images_written == 1
    assert sql(lake, "SELECT count(*) FROM labels WHERE image_id = {}", late) == [(3,)]


def document_text(store: ObjectStore, fmt: str) -> tuple[bytes, str]:
    """Every part's bytes, and its decoded documents as JSON text."""
    keys = list(store.list(parts_prefix(fmt)))  # type: ignore[arg-type]
    raw = b"".join(store.get_bytes(key) for key in keys)
    if fmt == "jsonl":
        return raw, raw.decode()
    rows = [
        row for key in keys for row in pq.read_table(io.BytesIO(store.get_bytes(key))).to_pylist()
    ]
    return raw, json.dumps(rows, default=str)


def test_documents_carry_no_patient_identifiers_and_jsonl_matches_parquet(
    lake: Lake, tmp_path: Path
) -> None:
    lake, _ = make_lake(lake.engine, lake.store, tmp_path / "src")
    assert build_warehouse(lake).images_written == FILMS + 1
    jsonl = build_warehouse(lake, fmt="jsonl")
    assert (jsonl.format, jsonl.images_written) == ("jsonl", FILMS + 1)
    header = pydicom.dcmread(pydicom_file(DICOM), stop_before_pixels=True)
    for fmt in ("parquet", "jsonl"):
        raw, decoded = document_text(lake.store, fmt)
        for identifier in (str(header.PatientID), str(header.PatientName), "CompressedSamples"):
            assert identifier.encode() not in raw and identifier not in decoded, (fmt, identifier)
        assert DICOM not in decoded  # the input path stays out; the pseudonym is there
    # VinBigData names no patients; the DICOM file's patient is its keyed pseudonym.
    assert sql(lake, "SELECT format FROM images WHERE patient.pseudonym IS NOT NULL") == [
        ("dicom",)
    ]

    parquet = [
        row
        for key in lake.store.list(parts_prefix("parquet"))
        for row in pq.read_table(io.BytesIO(lake.store.get_bytes(key))).to_pylist()
    ]
    lines = [
        json.loads(line)
        for key in lake.store.list(parts_prefix("jsonl"))
        for line in lake.store.get_bytes(key).decode().splitlines()
    ]
    as_json = json.loads(json.dumps(parquet, default=lambda t: t.isoformat()))
    # One build each: the same documents but for the build's own number and time.
    for document in (*as_json, *lines):
        del document["built_at"], document["build"]
    assert sorted(lines, key=lambda d: d["id"]) == sorted(as_json, key=lambda d: d["id"])
    dicom = next(d for d in lines if d["format"] == "dicom")
    assert dicom["series"]["modality"] == "CT" and len(dicom["patient"]["pseudonym"]) == 32
    film = next(d for d in lines if d["memberships"])
    assert {label["class_name"] for label in film["labels"]} == {"Left Lung", "Right Lung"}
    assert film["memberships"][0]["dataset"] == "lungs" and film["renditions"][0]["key"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(params=["file", "s3"])
def cli_lake(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Lake, dict[str, str]]]:
    """A SQLite lake on a local folder or an S3 bucket, and the environment that
    points the `radlake` command at it."""
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    engine = make_engine(catalog_url)
    upgrade(engine)
    env = {
        "RADLAKE_HOME": str(tmp_path / "home"),
        "RADLAKE_CATALOG_URL": catalog_url,
        "RADLAKE_SECRET_KEY": SECRET.decode(),
    }
    if request.param == "file":
        store = open_store((tmp_path / "store").as_uri())
        env["RADLAKE_STORE_URL"] = store.url
    else:
        bucket, endpoint = (
            request.getfixturevalue("s3_bucket"),
            request.getfixturevalue("s3_endpoint"),
        )
        store = open_store(f"s3://{bucket}/lake", **s3_options(endpoint))
        env |= {
            "RADLAKE_STORE_URL": store.url,
            "RADLAKE_S3_ENDPOINT_URL": endpoint,
            "RADLAKE_S3_ACCESS_KEY_ID": "testing",
            "RADLAKE_S3_SECRET_ACCESS_KEY": "testing",
            "RADLAKE_S3_REGION": "us-east-1",
        }
    lake, _ = make_lake(engine, store, tmp_path / "src")
    yield lake, env
    engine.dispose()


def test_radlake_sql_answers_as_the_catalog_does(cli_lake: tuple[Lake, dict[str, str]]) -> None:
    lake, env = cli_lake
    local = not lake.store.url.startswith("s3://")
    if local:  # each command costs a process start: the error paths run once
        never = cli(env, "sql", "SELECT 1")
        assert never.returncode == 1 and never.stderr.strip().splitlines() == [
            "error: no warehouse yet: run `radlake warehouse build` first"
        ]
    built = cli(env, "warehouse", "build")
    assert built.returncode == 0, built.stderr
    assert f"{FILMS + 1} images written in 1 part" in built.stdout

    def both() -> tuple[list[list[Any]], list[list[Any]]]:
        answered = cli(env, "sql", QUESTION, "--format", "json")
        assert answered.returncode == 0, answered.stderr
        warehouse = [[r["split"], r["class_name"], r["boxes"]] for r in json.loads(answered.stdout)]
        with lake.engine.connect() as connection:
            catalog = [list(row) for row in connection.execute(CATALOG_QUESTION)]
        return warehouse, catalog

    warehouse, catalog = both()
    assert warehouse == catalog and {row[0] for row in warehouse} == {"training", "test"}
    assert sum(row[2] for row in warehouse) == 2 * FILMS

    # A new box on a member: the incremental build writes that image only, and the
    # answer counts the box once.
    with session_factory(lake.engine)() as session:
        member = session.scalar(select(Image.id).where(Image.format == "png").limit(1))
    assert member is not None
    add_label(lake, member)
    again = cli(env, "warehouse", "build", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["images_written"], summary["superseded"]) == (1, 1)
    warehouse, catalog = both()
    assert warehouse == catalog and sum(row[2] for row in warehouse) == 2 * FILMS + 1
    if not local:
        return

    csv_out = cli(
        env, "sql", "SELECT id, format FROM images ORDER BY id LIMIT 2", "--format", "csv"
    )
    assert csv_out.stdout.splitlines()[0] == "id,format" and len(csv_out.stdout.splitlines()) == 3
    table = cli(env, "sql", "SELECT count(*) AS n FROM images")
    assert table.returncode == 0 and str(FILMS + 1) in table.stdout
    # Ten million rows: the table reads the first thousand and stops (it used to
    # fetch every row into memory first).
    huge = cli(env, "sql", "SELECT * FROM range(10000000)")
    assert huge.returncode == 0 and "│ 999   │" in huge.stdout
    assert huge.stderr.strip() == "1000 rows shown, more not read: add LIMIT or use --format csv"
    refused = cli(env, "sql", "SELECT nope FROM images")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith('error: Binder Error: Referenced column "nope" not found')
    bad_format = cli(env, "warehouse", "build", "--format", "csv")
    assert bad_format.returncode == 1 and "expected a format in parquet, jsonl" in bad_format.stderr


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC 1", "Parser Error"),
        ("COPY images TO 'out.csv'", "only SELECT and EXPLAIN run on the warehouse, got COPY"),
        ("ATTACH 'other.db'", "only SELECT and EXPLAIN"),
        ("SELECT 1; SELECT 2", "expected one SQL statement, got 2"),
        ("SET enable_external_access = true", "only SELECT and EXPLAIN"),
    ],
)
def test_only_one_read_runs(lake: Lake, query: str, message: str) -> None:
    build_warehouse(lake)
    with pytest.raises(WarehouseError, match=message) as caught:
        sql(lake, query)
    assert "\n" not in str(caught.value)


def test_a_store_read_cannot_escape_the_warehouse(lake: Lake, tmp_path: Path) -> None:
    """Even a SELECT cannot read other store objects or files (external access off)."""
    build_warehouse(lake)  # an empty lake: the views exist and are empty
    assert sql(lake, "SELECT count(*) FROM images") == [(0,)]
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(WarehouseError, match="Permission Error"):
        sql(lake, "SELECT * FROM read_csv('{}')", tmp_path / "secret.csv")
    with pytest.raises(WarehouseError, match="Permission Error"):
        sql(lake, "SELECT * FROM read_parquet('/etc/*.parquet')")


def _ingest_one(lake: Lake) -> None:
    ingest_bytes(
        pydicom_file(DICOM).read_bytes(),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        source="upload",
        source_kind="upload",
        source_key=DICOM,
    )


def test_full_build_repairs_a_damaged_warehouse(lake: Lake) -> None:
    """A deleted part and an unreadable state are one error line each, and
    `--full` (which the errors name) rebuilds from the catalog alone."""
    _ingest_one(lake)
    first = build_warehouse(lake)
    (part,) = load_state(lake.store, "parquet").parts  # type: ignore[union-attr]
    lake.store.delete(part.key)
    with pytest.raises(WarehouseError, match=r"cannot be read .* build --full") as caught:
        sql(lake, "SELECT count(*) FROM images")
    assert "\n" not in str(caught.value)
    lake.store.put_bytes(state_key("parquet"), b'{"build": 1, "form')
    with pytest.raises(WarehouseError, match="unreadable warehouse state"):
        build_warehouse(lake)
    stray = f"{parts_prefix('parquet')}part-000007-deadbeef-000.parquet"
    lake.store.put_bytes(stray, b"a part no state lists")
    repaired = build_warehouse(lake, full=True)
    # Numbered past every part in the folder, so the strays count as older builds.
    assert (repaired.reason, repaired.build, repaired.parts_removed) == ("--full", 8, 1)
    assert first.build == 1 and sql(lake, "SELECT count(*) FROM images") == [(1,)]
    assert list(lake.store.list(parts_prefix("parquet"))) == [
        part.key
        for part in load_state(lake.store, "parquet").parts  # type: ignore[union-attr]
    ]


def test_a_full_build_keeps_the_parts_of_a_build_racing_it(lake: Lake) -> None:
    """Nothing locks the warehouse: a --full build deletes only older builds' parts,
    so a concurrent build's parts (its number or newer) survive for its state."""
    _ingest_one(lake)
    build_warehouse(lake)
    racing = f"{parts_prefix('parquet')}part-000002-0racing0-000.parquet"
    lake.store.put_bytes(racing, b"another build 2, still running")
    full = build_warehouse(lake, full=True)
    assert (full.build, full.parts_removed) == (2, 1)  # build 1's part only
    assert racing in set(lake.store.list(parts_prefix("parquet")))


def test_a_huge_result_streams_in_batches(lake: Lake) -> None:
    """Ten million rows: the first batch comes at once, and stopping stops DuckDB."""
    from radlake.warehouse.sql import connect, stream_query

    build_warehouse(lake)
    connection = connect(lake.store)
    try:
        stream = stream_query(connection, "SELECT * FROM range(10000000)", batch_rows=100)
        assert stream.columns == ["range"]
        assert next(stream.batches) == [(value,) for value in range(100)]
        with pytest.raises(WarehouseError, match="Invalid Input Error: late"):
            failing = stream_query(
                connection,
                "SELECT CASE WHEN range < 150 THEN range ELSE error('late') END FROM range(200)",
                batch_rows=100,
            )
            list(failing.batches)
    finally:
        connection.close()
