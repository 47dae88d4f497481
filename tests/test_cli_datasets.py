"""The dataset workflow from the command line, as an ML engineer runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pycocotools.coco import COCO

from tests.conftest import run_radlake as radlake
from tests.test_datasets import write_vinbigdata


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_source_agreement_dataset_diff_export(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "vin"
    write_vinbigdata(root, range(30))
    ok(radlake(home, "init"))
    loaded = json.loads(ok(radlake(home, "source", "vinbigdata", str(root), "--json")))
    assert (loaded["records"], loaded["linked"], loaded["boxes"]) == (30, 30, 60)

    report = json.loads(ok(radlake(home, "labels", "agreement", "--json")))
    assert report["overall"]["images"] == 30
    cardiomegaly = next(c for c in report["classes"] if c["class_name"] == "Cardiomegaly")
    # R1 and R2 agree, R3's box is elsewhere: one matching pair of three.
    assert cardiomegaly["images"] == 10
    assert abs(cardiomegaly["box_f1"] - 1 / 3) < 1e-9
    assert cardiomegaly["image_agreement"] == 1.0  # all three saw it

    spec = "training=0.6,validation=0.2,test=0.2"
    first = json.loads(ok(radlake(home, "dataset", "create", "vin", "--splits", spec, "--json")))
    assert (first["version"], first["created"], first["leakage"]["ok"]) == (1, True, True)
    again = json.loads(ok(radlake(home, "dataset", "create", "vin", "--splits", spec, "--json")))
    assert (again["version"], again["created"]) == (1, False)
    second = json.loads(
        ok(radlake(home, "dataset", "create", "vin", "--splits", spec, "--seed", "5", "--json"))
    )
    assert second["version"] == 2
    diff = json.loads(ok(radlake(home, "dataset", "diff", "vin", "1", "2", "--json")))
    assert diff["added"] == 0 and diff["settings"]["seed"] == {"a": 0, "b": 5}
    for bad in (".x", "a b", "..", "_x"):  # the API's rule for new names, in the CLI too
        refused = radlake(home, "dataset", "create", bad, "--splits", spec)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "a new dataset's name" in refused.stderr

    out = tmp_path / "coco"
    exported = json.loads(
        ok(
            radlake(
                home,
                "dataset",
                "export",
                "vin",
                "--format",
                "coco",
                "--out",
                str(out),
                "--size",
                "512",
                "--json",
            )
        )
    )
    assert exported["images"] == 30
    assert (out / "manifest.json").is_file()
    assert len(COCO(str(out / "annotations" / "training.json")).getImgIds()) == 18

    to_store = json.loads(
        ok(radlake(home, "dataset", "export", "vin", "--format", "yolo", "--labels-only", "--json"))
    )
    assert "exports/vin/2/yolo" in to_store["location"]

    bad = radlake(home, "dataset", "create", "vin", "--select", "colour=blue")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: unknown filter key 'colour'"
    missing = radlake(home, "dataset", "show", "nope")
    assert missing.returncode == 1 and "no dataset 'nope'" in missing.stderr
