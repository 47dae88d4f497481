"""Dataset versions over the API: classification exports and split warnings (issue 9)."""

from __future__ import annotations

import csv
import io
import zipfile

from tests.test_api import Api, api  # noqa: F401 (the api fixture)


def test_classification_export_and_split_warnings_over_the_api(api: Api) -> None:  # noqa: F811
    body = {"selection": {"format": "dicom"}, "splits": "training=0.5,test=0.5", "seed": 3}
    made = api.client.post("/datasets/ds/versions", json=body, headers=api.auth("curator"))
    assert made.status_code == 201, made.text
    version = made.json()
    assert isinstance(version["warnings"], list)
    base = "/datasets/ds/versions/1/export"

    answer = api.client.get(
        base,
        params={"format": "classification", "attribute": "modality"},
        headers=api.auth("viewer"),
    )

    assert answer.status_code == 200, answer.text
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    tables = [name for name in archive.namelist() if name.endswith("labels.csv")]
    assert tables, archive.namelist()
    rows = [
        row
        for name in tables
        for row in csv.DictReader(io.StringIO(archive.read(name).decode("utf-8")))
    ]
    assert sum(version["splits"].values()) == len(rows)
    assert {row["split"] for row in rows} <= {"training", "test"}
    assert all(row["modality"] for row in rows)

    wrong = api.client.get(base, params={"format": "parquet"}, headers=api.auth("viewer"))
    assert wrong.status_code == 422
