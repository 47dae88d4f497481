"""The model registry on every catalog backend: register, list, promote, rollback;
the store layout and sha256; refusals of bad files, names and settings."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import ModelAliasEvent, ModelVersion
from radlake.catalog.model_registry import (
    ModelRef,
    aliases,
    list_versions,
    promote,
    resolve_version,
    rollback,
)
from radlake.inference.errors import InferenceError, ModelFileError, ModelNotFound
from radlake.inference.registry import register_model, register_version
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import run_radlake
from tests.inference_graphs import (
    boxes_scores_labels,
    constant_head,
    radlake_contract,
    yolov5_head,
    yolov8_head,
)

NAMES = "{0: 'Left Lung', 1: 'Right Lung'}"
BOXES = [(10.0, 23.0, 30.0, 43.0), (35.0, 13.0, 59.0, 51.0)]


def ultralytics_file(score: float = 0.9, **metadata: str) -> bytes:
    props = {"names": NAMES, "imgsz": "[64, 64]", "task": "detect", **metadata}
    return constant_head(yolov8_head(BOXES, np.array([[score, 0.0], [0.0, score]])), metadata=props)


@pytest.fixture
def model_store(tmp_path: Path) -> ObjectStore:
    return open_store((tmp_path / "store").as_uri())


def test_register_list_promote_rollback(catalog: Engine, model_store: ObjectStore) -> None:
    first, second, third = (ultralytics_file(score) for score in (0.9, 0.8, 0.7))
    with transaction(catalog) as session:
        assert register_version(session, model_store, name="lungs", onnx_bytes_or_path=first) == (
            "lungs",
            1,
        )
        assert (
            register_version(session, model_store, name="lungs", onnx_bytes_or_path=second)[1] == 2
        )
        assert (
            register_version(session, model_store, name="lungs", onnx_bytes_or_path=third)[1] == 3
        )
        # The same file with the same settings again: the same version, nothing new.
        again = register_model(session, model_store, name="lungs", onnx_bytes_or_path=first)
        assert (again.version, again.created) == (1, False)
    with session_factory(catalog)() as session:
        versions = list_versions(session, name="lungs")
        assert [v.version for v in versions] == [1, 2, 3]
        first_row = versions[0]
        assert first_row.store_key == "models/lungs/1/model.onnx"
        assert first_row.sha256 == hashlib.sha256(first).hexdigest()
        assert first_row.decoder == "yolov8"  # read from the output shape and names
        assert first_row.class_names == ["Left Lung", "Right Lung"]
        assert first_row.contract["size"] == [64, 64] and first_row.contract["pad_value"] == 114
        # A bare name without a production alias is the newest version.
        assert resolve_version(session, ref="lungs").version == 3
    assert model_store.get_bytes("models/lungs/1/model.onnx") == first
    assert model_store.get_bytes("models/lungs/3/model.onnx") == third

    with transaction(catalog) as session:
        assert promote(session, name="lungs", version=1) is None
        assert promote(session, name="lungs", version=2) == 1
        assert promote(session, name="lungs", version=3) == 2
        assert promote(session, name="lungs", version=1, alias="staging") is None
    with session_factory(catalog)() as session:
        assert resolve_version(session, ref="lungs").version == 3  # production
        assert resolve_version(session, ref="lungs@staging").version == 1
        assert resolve_version(session, ref="lungs:2").version == 2
    with transaction(catalog) as session:
        assert rollback(session, name="lungs") == (3, 2)
        assert rollback(session, name="lungs") == (2, 1)
    with transaction(catalog) as session, pytest.raises(InferenceError, match="no earlier"):
        rollback(session, name="lungs")
    with session_factory(catalog)() as session:
        model_id = list_versions(session, name="lungs")[0].model_id
        assert aliases(session, model_ids=[model_id])[model_id] == {
            "production": 1,
            "staging": 1,
        }
        history = session.scalars(select(ModelAliasEvent.action).order_by(ModelAliasEvent.id))
        assert list(history) == ["promote"] * 4 + ["rollback"] * 2


def test_unknown_models_versions_and_aliases(catalog: Engine, model_store: ObjectStore) -> None:
    with transaction(catalog) as session:
        register_version(session, model_store, name="lungs", onnx_bytes_or_path=ultralytics_file())
    with session_factory(catalog)() as session:
        for ref, message in (
            ("ribs", "no model 'ribs'"),
            ("lungs:9", "no version 9"),
            ("lungs@staging", "no alias 'staging'"),
            # Found by a hostile tester: beyond any integer column, a 500 from the driver.
            ("lungs:99999999999999999999", "no version 99999999999999999999"),
            (f"lungs:{2**31}", f"no version {2**31}"),
        ):
            with pytest.raises(ModelNotFound, match=message):
                resolve_version(session, ref=ref)
        for ref in (
            "",
            "Lungs",
            "lungs@",
            "lungs:0",
            "lungs:x",
            "a@b:1",
            "../x",
            "lungs@Prod",
            "lungs:\u00b2",
            "lungs:\u0661",
        ):
            with pytest.raises(InferenceError):
                resolve_version(session, ref=ref)
    with transaction(catalog) as session, pytest.raises(ModelNotFound, match="no version 4"):
        promote(session, name="lungs", version=4)
    with transaction(catalog) as session, pytest.raises(ModelNotFound, match="no version"):
        promote(session, name="lungs", version=10**20)
    with transaction(catalog) as session, pytest.raises(ModelNotFound, match="no alias"):
        rollback(session, name="lungs")
    assert str(ModelRef.parse("lungs:3")) == "lungs:3"


def test_hostile_files_and_settings_are_refused(
    catalog: Engine, model_store: ObjectStore, tmp_path: Path
) -> None:
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"onnx_bytes_or_path": b"garbage"}, ModelFileError, "ONNX Runtime cannot load"),
        ({"onnx_bytes_or_path": b""}, ModelFileError, "ONNX Runtime cannot load"),
        ({"onnx_bytes_or_path": tmp_path / "absent.onnx"}, InferenceError, "no model file"),
        ({"name": "Bad Name"}, InferenceError, "model name"),
        ({"name": "../escape"}, InferenceError, "model name"),
        ({"decoder": "detr"}, InferenceError, "decoder among"),
        # A yolov5 decoder on a yolov8 head: refused by the dry run, not at the first request.
        ({"decoder": "yolov5"}, ModelFileError, "yolov5 head"),
        ({"class_names": ["only one"]}, ModelFileError, "yolov8 head for 1 classes|cannot tell"),
        ({"class_names": ["a", "a"]}, ModelFileError, "repeat"),
        ({"contract": {"size": 32}}, ModelFileError, "takes 64x64 inputs"),
        ({"contract": {"channels": 1}}, ModelFileError, "takes 3 channels"),
        ({"contract": {"size": [64, 48]}}, InferenceError, "square"),
        (
            {"onnx_bytes_or_path": ultralytics_file(task="segment")},
            ModelFileError,
            "task 'segment'",
        ),
        (
            {"onnx_bytes_or_path": ultralytics_file(names="__import__('os')")},
            ModelFileError,
            "literal",
        ),
        ({"trained_on_version_id": 12345}, InferenceError, "no dataset version"),
    ]
    for changes, error, message in cases:
        arguments: dict[str, object] = {"name": "lungs", "onnx_bytes_or_path": ultralytics_file()}
        arguments.update(changes)
        with transaction(catalog) as session, pytest.raises(error, match=message):
            register_model(session, model_store, **arguments)  # type: ignore[arg-type]
    with session_factory(catalog)() as session:
        assert session.scalars(select(ModelVersion)).all() == []


def test_contract_metadata_and_explicit_settings(catalog: Engine, model_store: ObjectStore) -> None:
    own = constant_head(
        yolov5_head(BOXES, [1.0, 1.0], np.eye(2)),
        size=32,
        metadata={"radlake_contract": radlake_contract(32, "yolov5", "stretch")},
    )
    torchvision = boxes_scores_labels(BOXES, [0.9, 0.8], [0, 1])
    with transaction(catalog) as session:
        mine = register_model(
            session, model_store, name="own", onnx_bytes_or_path=own, class_names=["a", "b"]
        )
        theirs = register_model(
            session,
            model_store,
            name="tv",
            onnx_bytes_or_path=torchvision,
            class_names=["a", "b"],
            contract={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        )
    assert (mine.decoder, mine.contract["resize"], mine.contract["size"]) == (
        "yolov5",
        "stretch",
        [32, 32],
    )
    assert theirs.decoder == "boxes-scores-labels" and theirs.contract["std"][2] == 0.225
    with transaction(catalog) as session, pytest.raises(InferenceError, match="names no classes"):
        register_model(session, model_store, name="tv", onnx_bytes_or_path=torchvision)


def test_cli_registry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    files = []
    for score in (0.9, 0.8):
        path = tmp_path / f"lungs-{score}.onnx"
        path.write_bytes(ultralytics_file(score))
        files.append(path)
    result = run_radlake(home, "model", "register", "lungs", str(files[0]), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    result = run_radlake(
        home, "model", "register", "lungs", str(files[1]), "--stretch", "--size", "64"
    )
    assert result.returncode == 0 and "registered lungs:2" in result.stdout, result.stderr
    assert run_radlake(home, "model", "promote", "lungs", "1").returncode == 0
    result = run_radlake(home, "model", "promote", "lungs", "2")
    assert "lungs@production -> version 2 (was 1)" in result.stdout
    result = run_radlake(home, "model", "rollback", "lungs")
    assert result.returncode == 0 and "lungs@production -> version 1 (was 2)" in result.stdout
    shown = json.loads(run_radlake(home, "model", "show", "lungs", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["production"]
    listed = json.loads(run_radlake(home, "model", "list", "--json").stdout)
    assert [(row["model"], row["version"]) for row in listed] == [("lungs", 1), ("lungs", 2)]
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    for args, message in (
        (("model", "register", "lungs", str(tmp_path / "junk.onnx")), "ONNX Runtime cannot load"),
        (("model", "register", "x", str(files[0]), "--mean", "a,b"), "--mean as numbers"),
        (("model", "promote", "lungs", "7"), "no version 7"),
    ):
        result = run_radlake(home, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_runs_and_predictions_on_every_backend(catalog: Engine, model_store: ObjectStore) -> None:
    """Recorded runs read back per image and per version; thresholds stored as MySQL
    FLOAT (single precision) still count as the same thresholds for resuming."""
    from radlake.catalog.model_registry import (
        PredictedBox,
        RunRecord,
        predicted_image_ids,
        predictions_for_image,
        record_runs,
        runs_for_image,
    )
    from radlake.catalog.models import Image, Source
    from radlake.domain import Box

    with transaction(catalog) as session:
        register_version(session, model_store, name="lungs", onnx_bytes_or_path=ultralytics_file())
        register_version(
            session, model_store, name="lungs", onnx_bytes_or_path=ultralytics_file(0.7)
        )
        source = Source(name="test", kind="folder")
        session.add(source)
        session.flush()
        images = [
            Image(
                sha256=f"{n:064x}",
                size_bytes=1,
                format="png",
                source_id=source.id,
                source_key=f"{n}.png",
                original_key=f"raw/00/{n:064x}.png",
                rows=192,
                columns=256,
            )
            for n in (1, 2)
        ]
        session.add_all(images)
        session.flush()
        image_ids = [image.id for image in images]
        v1, v2 = (v.id for v in list_versions(session, name="lungs"))
        box = PredictedBox(0, "Left Lung", 0.9, Box(40.0, 60.0, 120.5, 140.25))
        other = PredictedBox(1, "Right Lung", 0.8, Box(140.0, 20.0, 236.0, 172.0))
        record_runs(
            session,
            runs=[
                RunRecord(v1, image_ids[0], 0.25, 0.45, 12.5, "cli", [other, box]),
                RunRecord(v1, image_ids[0], 0.25, 0.45, 11.0, "api:alice", [box]),
                RunRecord(v2, image_ids[0], 0.3, 0.45, 9.0, "cli", []),
                RunRecord(v2, image_ids[1], 0.3, 0.45, 9.0, "cli", [other]),
            ],
        )
    with session_factory(catalog)() as session:
        latest = predictions_for_image(session, image_id=image_ids[0])
        # v1's latest run (one box); v2 ran on this image and found nothing.
        assert [(p.version, p.class_name, p.box) for p in latest] == [(1, "Left Lung", box.box)]
        assert latest[0].as_dict()["box"] == [40.0, 60.0, 120.5, 140.25]
        assert predictions_for_image(session, image_id=image_ids[1], model_version_id=v1) == []
        assert [p.score for p in predictions_for_image(session, image_id=image_ids[1])] == [
            pytest.approx(0.8)
        ]
        runs = runs_for_image(session, image_id=image_ids[0])
        assert [(r.version, r.boxes, r.caller) for r in runs] == [
            (1, 1, "api:alice"),
            (2, 0, "cli"),
        ]
        assert runs[0].as_dict()["latency_ms"] == 11.0
        done = predicted_image_ids(
            session,
            model_version_id=v2,
            image_ids=image_ids,
            score_threshold=0.3,
            iou_threshold=0.45,
        )
        assert done == set(image_ids)
        assert (
            predicted_image_ids(
                session,
                model_version_id=v2,
                image_ids=image_ids,
                score_threshold=0.31,
                iou_threshold=0.45,
            )
            == set()
        )


def test_concurrent_registrations_take_distinct_versions(
    catalog: Engine, model_store: ObjectStore
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    if catalog.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: registrations cannot interleave")
    files = [ultralytics_file(score) for score in (0.9, 0.8, 0.7, 0.6)]

    def register(data: bytes) -> int:
        with transaction(catalog) as session:
            return register_version(session, model_store, name="lungs", onnx_bytes_or_path=data)[1]

    with ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(register, files))
    assert sorted(numbers) == [1, 2, 3, 4]
    for number, data in zip(numbers, files, strict=True):
        # Each file is under its own version's key: none overwrote another's.
        assert model_store.get_bytes(f"models/lungs/{number}/model.onnx") == data


def test_promoting_to_the_current_version_leaves_rollback_alone(
    catalog: Engine, model_store: ObjectStore
) -> None:
    with transaction(catalog) as session:
        for score in (0.9, 0.8):
            register_version(
                session, model_store, name="lungs", onnx_bytes_or_path=ultralytics_file(score)
            )
        assert promote(session, name="lungs", version=1) is None
        assert promote(session, name="lungs", version=2) == 1
        # Found by a hostile tester: a second promote to 2 was an event, so the next
        # rollback "moved" production from 2 to 2 instead of back to 1.
        assert promote(session, name="lungs", version=2) == 2
    with transaction(catalog) as session:
        assert rollback(session, name="lungs") == (2, 1)
        history = session.scalars(select(ModelAliasEvent.action).order_by(ModelAliasEvent.id))
        assert list(history) == ["promote", "promote", "rollback"]


def test_concurrent_first_promotes_of_an_alias(catalog: Engine, model_store: ObjectStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    if catalog.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: promotes cannot interleave")
    with transaction(catalog) as session:
        for score in (0.9, 0.8):
            register_version(
                session, model_store, name="lungs", onnx_bytes_or_path=ultralytics_file(score)
            )

    def move(version: int) -> int | None:
        with transaction(catalog) as session:
            return promote(session, name="lungs", version=version, alias="race")

    # Found on PostgreSQL: 4 concurrent first promotes of one alias, one of them an
    # "internal error (IntegrityError)" on the alias's unique key.
    with ThreadPoolExecutor(8) as pool:
        befores = list(pool.map(move, [1, 2] * 4))
    assert befores.count(None) == 1  # exactly one created the alias
    with session_factory(catalog)() as session:
        model_id = list_versions(session, name="lungs")[0].model_id
        final = aliases(session, model_ids=[model_id])[model_id]["race"]
        events = list(
            session.scalars(
                select(ModelAliasEvent.version_id)
                .where(ModelAliasEvent.alias == "race")
                .order_by(ModelAliasEvent.id)
            )
        )
        version_of = {v.id: v.version for v in list_versions(session, name="lungs")}
    # Each answer is the version it really replaced: the events form one chain.
    chain = [version_of[event] for event in events]
    assert chain[-1] == final
    assert all(a != b for a, b in itertools.pairwise(chain))
