"""Uploads of real and hostile DICOM: decoder errors are a 422 with the reason (they
were 500s), a deflated file is catalogued, a bomb is refused by the decode budget, and
a rejected upload leaves nothing behind (issue 7)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from tests.conftest import pydicom_file
from tests.test_api import Api, api, state  # noqa: F401 (the api fixture)
from tests.test_imaging_limits import _bytes, _jpeg_claiming, _mr_small


def test_a_deflated_dicom_upload_is_catalogued(api: Api) -> None:  # noqa: F811
    answer = api.client.post(
        "/images",
        files={"file": ("x.dcm", pydicom_file("image_dfl.dcm").read_bytes())},
        headers=api.auth("curator"),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["already_present"] is False
    again = api.client.post(
        "/images",
        files={"file": ("y.dcm", pydicom_file("image_dfl.dcm").read_bytes())},
        headers=api.auth("curator"),
    )
    assert again.status_code == 201
    assert again.json()["id"] == answer.json()["id"] and again.json()["already_present"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (lambda: _bytes(_mr_small(VOILUTSequence=[Dataset()])), "VOI LUT Sequence"),
        (lambda: _bytes(_mr_small(PhotometricInterpretation="PALETTE COLOR")), "PALETTE COLOR"),
        (
            lambda: _bytes(_mr_small(RescaleSlope="9.87", RescaleIntercept="0")).replace(
                b"9.87", b"abc "
            ),
            "RescaleSlope",
        ),
        (lambda: _jpeg_claiming(40000, 40000), "too large to decode safely: 40000"),
    ],
    ids=["empty-voi-lut-item", "palette-without-palette", "rescale-slope-abc", "jpeg-bomb"],
)
def test_decoder_errors_are_422_with_the_reason(
    api: Api,  # noqa: F811
    data: object,
    reason: str,
) -> None:
    before = state(api)
    payload = data() if callable(data) else data
    answer = api.client.post(
        "/images", files={"file": ("x.dcm", payload)}, headers=api.auth("curator")
    )
    assert answer.status_code == 422, answer.text
    assert reason in answer.json()["detail"]
    assert state(api) == before  # nothing kept of a rejected upload
