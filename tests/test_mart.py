"""`radlake mart push` as a user runs it: a labelled lake's dataset version pushed as
COCO and YOLO to a folder and to S3 (moto); boxes equal the catalog's exactly; a
re-push copies nothing; a push killed with SIGKILL is finished by the next one; a
file changed at the destination is found and copied again; bad requests and store
faults are one error line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image, Label
from radlake.cli.main import app, run
from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.domain import Box
from radlake.errors import ConfigError, StorageError
from radlake.formats.coords import ResizeTransform, box_to_coco, box_to_yolo
from radlake.formats.manifest import read_manifest
from radlake.lake import init_lake, open_lake, open_store_at, store_url_for
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.mart import MART_MANIFEST
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from tests.conftest import s3_options
from tests.faultproxy import fault_proxy_fixture  # noqa: F401

IMAGES = 40
CLASSES = ("Left Lung", "Right Lung")


def write_source(root: Path) -> None:
    """A VinBigData-layout source: films of different sizes, two boxes each at
    fractional, different places (an exact copy is the only way to match them)."""
    (root / "train").mkdir(parents=True)
    rows, meta = [], []
    for n in range(IMAGES):
        image_id = f"film{n:03d}"
        width, height = 160 + 4 * n, 120 + 3 * (n % 7)
        rng = np.random.default_rng(zlib.crc32(image_id.encode()))
        PILImage.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(
            root / "train" / f"{image_id}.png"
        )
        meta.append(f"{image_id},{height},{width}")
        left = (10.25 + n * 0.5, 12.75, 70.5 + n * 0.25, 100.125)
        right = (width - 80.375, 8.5 + n % 5, width - 6.625, height - 9.875)
        for class_id, (name, box) in enumerate(zip(CLASSES, (left, right), strict=True)):
            rows.append(f"{image_id},{name},{class_id},R1,{','.join(str(v) for v in box)}")
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + "\n".join(rows) + "\n"
    )
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


def radlake(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The `radlake` command as a user runs it, with RADLAKE_HOME and env set."""
    return subprocess.run(
        [*command(), *args],
        env=environment(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def push(home: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`radlake mart push ARGS --json` in this process (the CLI's own code, without a
    new interpreter per call); its summary."""
    settings = {k: None for k in os.environ if k.startswith("RADLAKE_")}
    variables: dict[str, str | None] = settings | {"RADLAKE_HOME": str(home)} | (env or {})
    result = CliRunner().invoke(app, ["mart", "push", *args, "--json"], env=variables)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def command() -> list[str]:
    return [sys.executable, "-m", "radlake.cli.main"]


def environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    return env | {"RADLAKE_HOME": str(home)} | (extra or {})


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


def s3_env(endpoint: str, retry_seconds: float = 5) -> dict[str, str]:
    return {
        "RADLAKE_S3_ENDPOINT_URL": endpoint,
        "RADLAKE_S3_ACCESS_KEY_ID": "testing",
        "RADLAKE_S3_SECRET_ACCESS_KEY": "testing",
        "RADLAKE_S3_REGION": "us-east-1",
        "RADLAKE_RETRY_SECONDS": str(retry_seconds),
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with the films loaded and dataset `films` v1 (half training, half test)."""
    base = tmp_path_factory.mktemp("mart")
    write_source(base / "src")
    lake_home = base / "home"
    # Built in this process (the CLI's own steps, without an interpreter per step).
    lake, _ = init_lake(Settings(home=lake_home))
    loaded = load_source(
        read_vinbigdata(base / "src"),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    assert loaded.boxes == 2 * IMAGES
    request = VersionRequest(
        dataset="films",
        selection=ImageFilter(source="vinbigdata"),
        spec=SplitSpec.parse("training=0.5,test=0.5"),
    )
    with transaction(lake.engine) as session:
        assert create_version(session, request)[0].version == 1
    lake.engine.dispose()
    return lake_home


def catalog_boxes(home: Path) -> dict[str, list[tuple[str, Box, int, int]]]:
    """Source image name -> (class, box, stored width, height) from the catalog."""
    lake = open_lake(Settings(home=home))
    found: dict[str, list[tuple[str, Box, int, int]]] = {}
    with session_factory(lake.engine)() as session:
        rows = session.execute(
            select(Image.source_key, Image.columns, Image.rows, Label)
            .join(Label, Label.image_id == Image.id)
            .where(Label.origin == "ground_truth")
        )
        for key, width, height, label in rows:
            assert None not in (label.x_min, label.y_min, label.x_max, label.y_max)
            box = Box(label.x_min, label.y_min, label.x_max, label.y_max)
            found.setdefault(Path(key).stem, []).append((label.class_name, box, width, height))
    lake.engine.dispose()
    assert len(found) == IMAGES
    return found


def close(actual: list[float], expected: tuple[float, ...]) -> bool:
    """Equal to the 6 decimals the formats write (the same text at that precision)."""
    return [f"{a:.6f}" for a in actual] == [f"{e:.6f}" for e in expected]


def check_coco(
    read: Any, boxes: dict[str, list[tuple[str, Box, int, int]]], size: int | None
) -> None:
    """Every COCO bbox is the catalog's box, [x, y, w, h] in the exported image's pixels."""
    seen = 0
    for split in ("training", "test"):
        document = json.loads(read(f"annotations/{split}.json"))
        names = {c["id"]: c["name"] for c in document["categories"]}
        images = {i["id"]: i for i in document["images"]}
        for annotation in document["annotations"]:
            image = images[annotation["image_id"]]
            stem = Path(image["file_name"]).stem
            truth = {name: (box, w, h) for name, box, w, h in boxes[stem]}
            box, width, height = truth[names[annotation["category_id"]]]
            placed = ResizeTransform(width, height, size, "pad").apply(box)
            assert (image["width"], image["height"]) == (size or width, size or height)
            assert close(annotation["bbox"], box_to_coco(placed)), (stem, annotation["bbox"])
            seen += 1
    assert seen == 2 * IMAGES


def check_yolo(
    read: Any, boxes: dict[str, list[tuple[str, Box, int, int]]], size: int | None
) -> None:
    """Every YOLO line is the catalog's box in normalised centre form."""
    names = read_yaml_names(read("data.yaml"))
    seen = 0
    for split, stems in split_stems(read).items():
        for stem in stems:
            lines = read(f"labels/{split}/{stem}.txt").decode().splitlines()
            truth = {name: (box, w, h) for name, box, w, h in boxes[stem]}
            assert len(lines) == len(truth)
            for line in lines:
                class_id, *values = line.split()
                box, width, height = truth[names[int(class_id)]]
                transform = ResizeTransform(width, height, size, "pad")
                expected = box_to_yolo(transform.apply(box), *transform.output_size)
                assert close([float(v) for v in values], expected), (stem, line)
                seen += 1
    assert seen == 2 * IMAGES


def read_yaml_names(data: bytes) -> list[str]:
    import yaml

    return list(yaml.safe_load(data)["names"])


def split_stems(read: Any) -> dict[str, list[str]]:
    files, _ = read_manifest(read("manifest.json"))
    stems: dict[str, list[str]] = {}
    for path in files:
        if path.startswith("labels/"):
            _, split, name = path.split("/")
            stems.setdefault(split, []).append(Path(name).stem)
    return stems


def check_complete(read: Any) -> int:
    """Every file of the export's manifest is at the destination with its sha256 and
    size, and the mart manifest is complete and agrees; returns the number of files."""
    files, _ = read_manifest(read("manifest.json"))
    for path, (sha256, size) in files.items():
        data = read(path)
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha256, size), path
    mart = json.loads(read(MART_MANIFEST))
    assert mart["complete"] is True
    listed = {entry["path"]: entry["sha256"] for entry in mart["files"]}
    assert {p: s for p, (s, _) in files.items()} == {
        p: s for p, s in listed.items() if p != "manifest.json"
    }
    manifest_bytes = read("manifest.json")
    assert listed["manifest.json"] == hashlib.sha256(manifest_bytes).hexdigest()
    return len(listed)


def test_folder_coco_exact_boxes_repush_damage_stale_prune(home: Path, tmp_path: Path) -> None:
    boxes = catalog_boxes(home)
    out = tmp_path / "mart"

    def read(path: str) -> bytes:
        return (out / path).read_bytes()

    first = push(home, "films:1", "--to", str(out), "--format", "coco", "--size", "0")
    files = check_complete(read)
    assert (first["files"], first["copied"], first["skipped"]) == (files, files, 0)
    assert first["images"] == IMAGES and first["boxes"] == 2 * IMAGES
    assert first["bytes_copied"] == first["bytes_total"] > 0
    check_coco(read, boxes, None)
    assert not (out / "tmp").exists()  # the store's temporaries leave no folder behind

    # Unchanged: nothing copied, nothing rewritten (the mart manifest keeps its bytes).
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = push(home, "films", "--to", str(out), "--format", "coco", "--size", "0")
    assert (again["copied"], again["skipped"], again["bytes_copied"]) == (0, files, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    # Damage at the destination: same size, other bytes (found by its new mtime); a
    # truncated file; a missing file. Each is copied again, and the export's manifest,
    # taken away while the destination changes, comes back last.
    image = next(out.glob("images/training/*.png"))
    good = image.read_bytes()
    image.write_bytes(bytes(len(good)))
    annotations = out / "annotations" / "test.json"
    annotations.write_bytes(annotations.read_bytes()[:100])
    (out / "annotations" / "training.json").unlink()
    fixed = push(home, "films:1", "--to", str(out), "--format", "coco", "--size", "0")
    assert (fixed["copied"], fixed["repaired"], fixed["skipped"]) == (4, 2, files - 4)
    assert image.read_bytes() == good
    check_complete(read)

    # --checksum reads every file back: damage that kept size and mtime is found too.
    stat = image.stat()
    image.write_bytes(bytes(len(good)))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    quick = push(home, "films", "--to", str(out), "--format", "coco", "--size", "0")
    assert quick["copied"] == 0  # the quick check trusts size and mtime, as rsync does
    thorough = push(
        home, "films", "--to", str(out), "--format", "coco", "--size", "0", "--checksum"
    )
    assert (thorough["copied"], thorough["repaired"]) == (2, 1)  # and manifest.json
    assert image.read_bytes() == good

    # YOLO pushed over it: COCO's annotations no longer belong (listed, kept), the
    # images are the same bytes (skipped); --prune removes the stale files; a file
    # radlake never put there is left alone.
    (out / "notes.txt").write_text("mine")
    yolo = push(home, "films", "--to", str(out), "--format", "yolo", "--size", "0")
    assert yolo["stale"] == ["annotations/test.json", "annotations/training.json"]
    assert yolo["skipped"] == IMAGES and yolo["foreign"] == 1
    assert (out / "annotations" / "test.json").exists()
    check_yolo(read, boxes, None)
    pruned = push(home, "films", "--to", str(out), "--format", "yolo", "--size", "0", "--prune")
    assert (pruned["pruned"], pruned["stale"], pruned["copied"]) == (2, [], 0)
    assert not (out / "annotations").exists() or not any((out / "annotations").iterdir())
    assert (out / "notes.txt").read_text() == "mine"
    check_complete(read)


@pytest.fixture
def bucket_fs(s3_endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**s3_options(s3_endpoint), skip_instance_cache=True)


def s3_reader(fs: s3fs.S3FileSystem, prefix: str) -> Any:
    fs.invalidate_cache()  # listings made before a push must not hide its objects

    def read(path: str) -> bytes:
        return bytes(fs.cat_file(f"{prefix}/{path}"))

    return read


def test_s3_yolo_and_coco_exact_boxes_and_repush(
    home: Path, s3_bucket: str, s3_endpoint: str, bucket_fs: s3fs.S3FileSystem
) -> None:
    boxes = catalog_boxes(home)
    env = s3_env(s3_endpoint)
    for fmt, check in (("yolo", check_yolo), ("coco", check_coco)):
        prefix = f"{s3_bucket}/marts/{fmt}"
        target = f"s3://{prefix}"
        first = push(home, "films:1", "--to", target, "--format", fmt, "--size", "256", env=env)
        read = s3_reader(bucket_fs, prefix)
        files = check_complete(read)
        assert (first["copied"], first["skipped"]) == (files, 0)
        check(read, boxes, 256)
        again = push(home, "films:1", "--to", target, "--format", fmt, "--size", "256", env=env)
        assert (again["copied"], again["skipped"]) == (0, files)

    # An object replaced at the destination with other bytes of the same size.
    prefix = f"{s3_bucket}/marts/coco"
    key = sorted(bucket_fs.find(f"{prefix}/images/test"))[0]
    good = bytes(bucket_fs.cat_file(key))
    bucket_fs.pipe_file(key, bytes(len(good)))
    fixed = push(
        home,
        "films:1",
        "--to",
        f"s3://{prefix}",
        "--format",
        "coco",
        "--size",
        "256",
        "--checksum",
        env=env,
    )
    assert (fixed["copied"], fixed["repaired"]) == (2, 1)  # and manifest.json
    assert bytes(bucket_fs.cat_file(key)) == good


def object_names(fs: s3fs.S3FileSystem, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return [p[len(prefix) + 1 :] for p in fs.find(prefix)]


def test_killed_push_is_finished_by_the_next(
    home: Path,
    s3_bucket: str,
    s3_endpoint: str,
    bucket_fs: s3fs.S3FileSystem,
    fault_proxy: Any,
) -> None:
    """SIGKILL mid-push: the objects there are whole, and the next push copies only
    the rest. The proxy stalls the push once some files are there, so the kill lands
    half way every time, however fast the machine."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = fault_proxy((host, int(port)))
    env = s3_env(f"http://127.0.0.1:{proxy.port}", retry_seconds=120)
    prefix = f"{s3_bucket}/mart"
    args = ["mart", "push", "films", "--to", f"s3://{prefix}", "--format", "yolo", "--size", "0"]
    process = subprocess.Popen(
        [*command(), *args, "--jobs", "2", "--json"],
        env=environment(home, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len([n for n in object_names(bucket_fs, prefix) if n.startswith("images/")]) < 8:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the push wrote no images in 120 s"
            time.sleep(0.02)
        proxy.set_mode("stall")
        time.sleep(0.5)  # requests in flight end (cut) or hang; none completes after this
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    left = [n for n in object_names(bucket_fs, prefix) if n != MART_MANIFEST]
    mart = json.loads(bucket_fs.cat_file(f"{prefix}/{MART_MANIFEST}"))
    assert mart["complete"] is False  # a half-done destination says so
    assert "manifest.json" not in left  # the export's manifest only ever lands last

    proxy.set_mode("pass")
    resumed = push(home, *args[2:], env=env)
    files = check_complete(s3_reader(bucket_fs, prefix))
    assert 8 <= len(left) < files - 1
    # Every object the killed push left is whole: kept, not copied again.
    assert (resumed["copied"], resumed["skipped"], resumed["repaired"]) == (
        files - len(left),
        len(left),
        0,
    )
    check_yolo(s3_reader(bucket_fs, prefix), catalog_boxes(home), None)


def test_bad_requests_and_store_fault_are_one_line(
    home: Path,
    tmp_path: Path,
    s3_bucket: str,
    s3_endpoint: str,
    fault_proxy: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "never"
    for name in [k for k in os.environ if k.startswith("RADLAKE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RADLAKE_HOME", str(home))

    def refused(*args: str) -> str:
        """The console script's own entry point in this process: its one stderr line."""
        monkeypatch.setattr(sys, "argv", ["radlake", "mart", "push", *args])
        with pytest.raises(SystemExit) as exited:
            run()
        captured = capsys.readouterr()
        assert exited.value.code == 1 and captured.out == "", captured
        assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured
        return captured.err.strip()

    to = ["--to", str(out)]
    assert refused("nope", *to, "--format", "coco") == "error: no dataset 'nope'"
    assert "no version 9 of dataset 'films'" in refused("films:9", *to, "--format", "coco")
    assert "expected a version number" in refused("films:x", *to, "--format", "coco")
    assert "expected --format coco or yolo, got 'voc'" in refused("films", *to, "--format", "voc")
    assert "expected --mode pad or stretch" in refused(
        "films", *to, "--format", "yolo", "--mode", "crop"
    )
    assert "expected --to DIR or s3://bucket/prefix" in refused(
        "films", "--to", "http://host/x", "--format", "coco"
    )
    assert not out.exists()  # a refused push touches no destination

    # A store fault, through the real command: reported as the destination's fault.
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = fault_proxy((host, int(port)))
    proxy.set_mode("refuse")
    env = s3_env(f"http://127.0.0.1:{proxy.port}", retry_seconds=1)
    fault = one_error(
        radlake(home, "mart", "push", "films", "--to", f"s3://{s3_bucket}/m", "--format", "coco",
                env=env)
    )  # fmt: skip
    assert fault.startswith("error: destination store unreachable ("), fault


def test_destination_folders_keep_their_names(tmp_path: Path) -> None:
    """--to "my mart/ü" was opened as my%20mart/%C3%BC (Path.as_uri(), which fsspec does
    not unquote); a file, or a folder that cannot be made, is one error line."""
    settings = Settings(home=tmp_path / "home")
    folder = tmp_path / "my mart" / "ü#1"
    store = open_store_at(settings, store_url_for(str(folder)))
    store.put_bytes("images/a.png", b"x")
    assert (folder / "images" / "a.png").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["my mart"]
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ConfigError, match="which is a file"):
        store_url_for(str(tmp_path / "a-file"))
    with pytest.raises(StorageError, match="cannot create the folder"):
        open_store_at(settings, store_url_for("/proc/self/no/such"))
