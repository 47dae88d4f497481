"""`radlake feedback import` over a real lake on every catalog backend: the original
pipeline's `<image_id>.json` files (written here as its simulator wrote them) become
one inference run per file and an accepted feedback row per box, exactly; importing
again writes nothing; every hostile entry of the folder is rejected with its reason
while the good files beside it still import; the CLI end to end.

Images: PNGs of 256 x 192 and a real DICOM (pydicom's CT_small, 128 x 128) named as a
VinBigData image is, `<image_id>.dicom`; the model is tests/test_predict_batch's
(classes Left Lung, Right Lung).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback import feedback_records
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.inference_models import InferenceRun, Prediction
from radlake.catalog.models import Image
from radlake.domain import Box
from radlake.imaging.deid import Pseudonymizer
from radlake.inference.errors import ModelNotFound
from radlake.inference.registry import register_version
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.feedback_import import (
    FeedbackImportError,
    FeedbackImportRequest,
    FeedbackImportSummary,
    import_feedback,
)
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file
from tests.conftest import run_radlake as radlake
from tests.test_predict_api import noise_png
from tests.test_predict_batch import model_file

DICOM_ID = "9a5094b2563a1ef3ff50dc5c7ff71345"  # a VinBigData-style image id


def lake_images(engine: Engine, root: Path) -> dict[str, int]:
    """Ingest PNGs a..c (256 x 192), the DICOM, and two different images both named
    dup.png (sources "folder" and "other"); register model lungs v1. Image ids by stem
    (dup: the "folder" one)."""
    store = open_store((root / "store").as_uri())
    images = root / "images"
    (images / "other").mkdir(parents=True)
    for stem in ("a", "b", "c", "dup"):
        (images / f"{stem}.png").write_bytes(noise_png(stem))
    (images / "other" / "dup.png").write_bytes(noise_png("another dup"))
    shutil.copy(pydicom_file("CT_small.dcm"), images / f"{DICOM_ID}.dicom")
    pseudonymizer = Pseudonymizer(SECRET)
    common: dict[str, Any] = {"engine": engine, "store": store, "pseudonymizer": pseudonymizer}
    ingest(sorted(images.glob("*.*")), executor=SerialExecutor(), **common)
    ingest([images / "other"], source="other", executor=SerialExecutor(), **common)
    with transaction(engine) as session:
        register_version(session, store, name="lungs", onnx_bytes_or_path=model_file())
        rows = session.execute(select(Image.id, Image.source_key, Image.source_id)).all()
    ids = {Path(key).stem: image_id for image_id, key, _ in sorted(rows, key=lambda r: -r[0])}
    assert len(rows) == 6 and set(ids) == {"a", "b", "c", "dup", DICOM_ID}, rows
    ids["dup"] = min(image_id for image_id, key, _ in rows if Path(key).stem == "dup")
    return ids


def write(folder: Path, name: str, document: Any) -> None:
    """As the original pipeline's simulator wrote a feedback file."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as handle:
        json.dump(document, handle)


def counts(engine: Engine) -> tuple[int, int, int]:
    with session_factory(engine)() as session:
        return (
            session.scalar(select(func.count(InferenceRun.id))) or 0,
            session.scalar(select(func.count(Prediction.id))) or 0,
            session.scalar(select(func.count(Feedback.id))) or 0,
        )


def run(engine: Engine, folder: Path, **options: Any) -> FeedbackImportSummary:
    return import_feedback(FeedbackImportRequest(folder, "lungs", **options), engine=engine)


def test_original_files_become_runs_predictions_and_feedback(
    catalog: Engine, tmp_path: Path
) -> None:
    ids = lake_images(catalog, tmp_path)
    folder = tmp_path / "prod-feedback"
    box = {"class_id": 0, "confidence": 0.95, "bbox": [40, 60, 120.5, 140]}
    write(folder, "a.json", box | {"timestamp": "2021-03-04T05:06:07"})
    write(
        folder,
        "b.json",
        [
            {
                "class_id": 1,
                "confidence": 0.5,
                "bbox": {"x_min": 140, "y_min": 20, "x_max": 256, "y_max": 192},
                "timestamp": 1614834367,
            },
            box | {"confidence": 0.91, "timestamp": "2021-03-04T07:06:07+02:00"},
        ],
    )
    # The DICOM's id is its file stem, as VinBigData's are.
    write(folder, f"{DICOM_ID}.json", box | {"bbox": [0, 0, 128, 128], "timestamp": 0})

    summary = run(catalog, folder)
    assert summary.as_dict() | {"folder": None} == {
        "folder": None,
        "model": "lungs",
        "version": 1,
        "files": 3,
        "imported_files": 3,
        "imported_boxes": 4,
        "runs": 3,
        "already_imported_files": 0,
        "already_imported_boxes": 0,
        "rejected_by_reason": {},
        "rejected": [],
    }
    with session_factory(catalog)() as session:
        records = feedback_records(session)
        runs = {r.id: r for r in session.scalars(select(InferenceRun))}
        predictions = {p.id: p for p in session.scalars(select(Prediction))}
    at = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    expected = [
        (DICOM_ID, "Left Lung", Box(0, 0, 128, 128), 0.95, datetime(1970, 1, 1, tzinfo=UTC)),
        ("a", "Left Lung", Box(40, 60, 120.5, 140), 0.95, at),
        ("b", "Right Lung", Box(140, 20, 256, 192), 0.5, at),
        ("b", "Left Lung", Box(40, 60, 120.5, 140), 0.91, at),
    ]
    got = [(r.image_id, r.class_name, r.box, r.confidence, r.created_at) for r in records]
    assert got == [(ids[stem], *rest) for stem, *rest in expected]
    for record in records:
        assert (record.verdict, record.channel, record.reviewer) == ("accept", "import", "import")
        assert not record.simulated and (record.model, record.version) == ("lungs", 1)
        prediction = predictions[record.prediction_id or 0]
        assert prediction.run_id == record.run_id
        assert (prediction.class_name, prediction.score) == (record.class_name, record.confidence)
        assert Box(prediction.x_min, prediction.y_min, prediction.x_max, prediction.y_max) == (
            record.box
        )
        found = runs[record.run_id]
        assert (found.image_id, found.model_version_id) == (
            record.image_id,
            record.model_version_id,
        )
        assert (found.score_threshold, found.iou_threshold, found.latency_ms) == (0, 0, 0)
        assert found.caller == "import:prod-feedback"
    assert counts(catalog) == (3, 4, 4)

    # Again: nothing new. A file added since (an import stopped half-way) imports alone.
    write(folder, "c.json", box | {"timestamp": "2021-03-05T00:00:00Z"})
    again = run(catalog, folder, reviewer="dr-ops")
    assert (again.imported_files, again.imported_boxes, again.runs) == (1, 1, 1)
    assert (again.already_files, again.already_boxes, again.rejected) == (3, 4, [])
    assert counts(catalog) == (4, 5, 5)
    with session_factory(catalog)() as session:
        (last,) = feedback_records(session, image_id=ids["c"])
    assert last.reviewer == "dr-ops" and last.created_at == datetime(2021, 3, 5, tzinfo=UTC)
    assert run(catalog, folder).already_files == 4 and counts(catalog) == (4, 5, 5)


def test_two_imports_at_once_store_each_file_once(catalog: Engine, tmp_path: Path) -> None:
    lake_images(catalog, tmp_path)
    folder = tmp_path / "feedback"
    for stem in ("a", "b", "c", DICOM_ID):
        box = {"class_id": 1, "confidence": 0.9, "bbox": [1, 2, 30, 40], "timestamp": 0}
        write(folder, f"{stem}.json", [box, box | {"class_id": 0}])
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: run(catalog, folder), range(2)))
    assert sum(s.imported_files for s in both) == 4  # each file by one of them
    assert all(s.imported_files + s.already_files == 4 for s in both)
    assert counts(catalog) == (4, 8, 8)  # no run left without its feedback


def make_hostile(folder: Path) -> dict[str, str]:
    """Every kind of bad entry, with the reason each must get."""
    good = {"class_id": 0, "confidence": 0.95, "bbox": [1, 2, 30, 40], "timestamp": 1614834367}
    bad: dict[str, tuple[str, Any]] = {
        "missing.json": ("missing_field", {k: v for k, v in good.items() if k != "timestamp"}),
        "empty-list.json": ("missing_field", []),
        "array-of-numbers.json": ("not_json", [1, 2]),
        "class.json": ("bad_class_id", good | {"class_id": 2}),
        "class-bool.json": ("bad_class_id", good | {"class_id": True}),
        "class-half.json": ("bad_class_id", good | {"class_id": 0.5}),
        "three.json": ("bad_bbox", good | {"bbox": [1, 2, 3]}),
        "strings.json": ("bad_bbox", good | {"bbox": ["1", 2, 3, 4]}),
        "inverted.json": ("bad_bbox", good | {"bbox": [30, 2, 1, 40]}),
        "negative.json": ("bad_bbox", good | {"bbox": [-5, 2, 30, 40]}),
        "dict-keys.json": ("bad_bbox", good | {"bbox": {"x": 1, "y": 2, "w": 3, "h": 4}}),
        "c.json": ("outside_image", good | {"bbox": [0, 0, 257, 100]}),
        "confidence.json": ("bad_confidence", good | {"confidence": 1.5}),
        "nan.json": ("not_finite", good | {"confidence": float("nan")}),
        "inf.json": ("not_finite", good | {"bbox": [0, 0, float("inf"), 4]}),
        "huge-int.json": ("not_finite", good | {"bbox": [0, 0, 10**400, 4]}),
        "when.json": ("bad_timestamp", good | {"timestamp": "yesterday"}),
        "millis.json": ("bad_timestamp", good | {"timestamp": 1614834367000}),
        "zzz.json": ("unknown_image", good),
        "dup.json": ("ambiguous_image", good),
        "a b ü\nx.json": ("unknown_image", good),
    }
    for name, (_, document) in bad.items():
        write(folder, name, document)
    reasons = {name: reason for name, (reason, _) in bad.items()}
    (folder / "text.json").write_text("class_id: 0")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError
    (folder / "latin1.json").write_bytes('{"x": "é"}'.encode("latin-1"))
    (folder / "notes.txt").write_text("not feedback")
    (folder / "dir.json").mkdir()
    (folder / "loop.json").symlink_to("loop.json")
    with open(folder / "big.json", "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # 50 MB, never read
    os.close(os.open(os.fsencode(folder) + b"/\xff.json", os.O_CREAT | os.O_WRONLY, 0o600))
    write(folder, "a.json", good)  # the one good file among them
    return reasons | {
        "text.json": "not_json",
        "deep.json": "not_json",
        "latin1.json": "not_json",
        "notes.txt": "not_feedback",
        "dir.json": "not_a_file",
        "loop.json": "unreadable",
        "big.json": "too_large",
        "\\xff.json": "bad_name",
        "a b ü\\nx.json": "unknown_image",
    }


def test_hostile_files_are_rejected_with_reasons(catalog: Engine, tmp_path: Path) -> None:
    ids = lake_images(catalog, tmp_path)
    folder = tmp_path / "hostile"
    expected = make_hostile(folder)
    expected.pop("a b ü\nx.json")
    summary = run(catalog, folder)
    got = {name: rejection.reason for name, rejection in summary.rejected}
    assert got == expected
    assert summary.imported_files == 1 and summary.files == len(expected) + 1
    messages = {name: rejection.message for name, rejection in summary.rejected}
    assert "--source" in messages["dup.json"] and "2 catalogued images" in messages["dup.json"]
    assert "256 x 192" in messages["c.json"] and "50 MB" not in messages["big.json"]
    assert "milliseconds" in messages["millis.json"]
    assert messages["class.json"].endswith("not one of the model's: 0 Left Lung, 1 Right Lung")
    assert "missing timestamp" in messages["missing.json"]
    for message in messages.values():
        assert "\n" not in message
    with session_factory(catalog)() as session:
        assert [r.image_id for r in feedback_records(session)] == [ids["a"]]
    # --source picks one of the two images named dup; the rest stays as it was.
    picked = run(catalog, folder, source="folder")
    assert picked.imported_files == 1 and picked.already_files == 1
    assert {name for name, _ in picked.rejected} == set(expected) - {"dup.json"}
    with session_factory(catalog)() as session:
        assert {r.image_id for r in feedback_records(session)} == {ids["a"], ids["dup"]}

    (tmp_path / "empty").mkdir()
    assert run(catalog, tmp_path / "empty").files == 0
    with pytest.raises(FeedbackImportError, match="expected a folder"):
        run(catalog, tmp_path / "absent")
    with pytest.raises(FeedbackImportError, match="expected a folder"):
        run(catalog, folder / "a.json")
    with pytest.raises(FeedbackImportError, match="no source named"):
        run(catalog, folder, source="nowhere")
    with pytest.raises(ModelNotFound):
        import_feedback(FeedbackImportRequest(folder, "nomodel"), engine=catalog)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_import_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table's every column in full
    home = tmp_path / "home"
    ok(radlake(home, "init"))
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("a", "b"):
        (images / f"{stem}.png").write_bytes(noise_png(stem))
    ok(radlake(home, "ingest", str(images), "--workers", "1"))
    (tmp_path / "lungs.onnx").write_bytes(model_file())
    ok(radlake(home, "model", "register", "lungs", str(tmp_path / "lungs.onnx")))
    folder = tmp_path / "feedback"
    box = {"class_id": 1, "confidence": 0.97, "bbox": [10, 20, 30, 40]}
    write(folder, "a.json", box | {"timestamp": "2021-03-04T05:06:07"})
    write(folder, "b.json", box | {"confidence": 2, "timestamp": 1})
    write(folder, "zzz.json", box | {"timestamp": 1})

    first = json.loads(
        ok(radlake(home, "feedback", "import", str(folder), "--model", "lungs:1", "--json"))
    )
    assert (first["imported_boxes"], first["rejected_by_reason"]) == (
        1,
        {"bad_confidence": 1, "unknown_image": 1},
    )
    text = ok(radlake(home, "feedback", "import", str(folder), "--model", "lungs"))
    assert "0 boxes imported" in text and "1 box (1 file) already imported" in text
    assert "rejected zzz.json: no catalogued image has the id 'zzz'" in text
    # The same folder for another model version is its own feedback, not "already there".
    (tmp_path / "other.onnx").write_bytes(model_file(scores=(0.7, 0.6)))
    ok(radlake(home, "model", "register", "lungs", str(tmp_path / "other.onnx")))
    other = ok(radlake(home, "feedback", "import", str(folder), "--model", "lungs:2"))
    assert "1 box imported from 1 file as feedback on lungs:2" in other
    # Nothing usable at all: a script sees exit 1.
    bad = tmp_path / "bad"
    write(bad, "b.json", box | {"confidence": 2, "timestamp": 1})
    rejected = radlake(home, "feedback", "import", str(bad), "--model", "lungs:1")
    assert rejected.returncode == 1 and "every file was rejected" in rejected.stderr

    listed = json.loads(ok(radlake(home, "feedback", "list", "--model", "lungs:1", "--json")))
    (row,) = listed["feedback"]
    assert (row["verdict"], row["class_name"], row["box"], row["confidence"]) == (
        "accept",
        "Right Lung",
        [10, 20, 30, 40],
        0.97,
    )
    assert row["created_at"] == "2021-03-04T05:06:07+00:00" and row["channel"] == "import"
    table = ok(radlake(home, "feedback", "list", "--since", "2021-03-04", "--model", "lungs:1"))
    assert "Right Lung" in table and "lungs:1" in table and "1 feedback rows" in table
    later = json.loads(ok(radlake(home, "feedback", "list", "--since", "2022-01-01", "--json")))
    assert later == {"feedback": []}

    for args, said in [
        (("import", str(tmp_path / "absent"), "--model", "lungs"), "expected a folder"),
        (("import", str(folder), "--model", "nomodel"), "nomodel"),
        (("list", "--since", "last week"), "--since"),
    ]:
        refused = radlake(home, "feedback", *args)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert said in refused.stderr and "Traceback" not in refused.stderr
