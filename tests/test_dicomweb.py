"""DICOMweb over a real socket (uvicorn in a thread) with a real client, dicomweb-client
0.61.2: QIDO-RS searches, WADO-RS retrievals, STOW-RS stores, roles, and hostile
requests. The lake holds pydicom's real files, de-identified by the lake's pipeline;
nothing answered may carry an original identifier."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.web import DICOMwebClient
from PIL import Image as PILImage
from pydicom.encaps import generate_frames
from requests import HTTPError
from sqlalchemy import select, update

from radlake.api.app import create_app
from radlake.api.dicomweb_media import Part, dicom_part_media, multipart_body
from radlake.auth import Role, create_token
from radlake.catalog.db import make_engine, transaction, upgrade
from radlake.catalog.deid_models import PIXELS_CLEAN, PIXELS_WITHHELD, DeidInstance
from radlake.catalog.dicomweb_queries import stored_instances
from radlake.catalog.models import AuditEvent
from radlake.imaging.deid_check import check
from radlake.lake import Lake
from tests.test_api_live import serve
from tests.test_dicomweb_backends import FILES, REPLICAS, build_deid_lake, sample_file

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


@dataclass(frozen=True, slots=True)
class Live:
    url: str
    tokens: dict[str, str]
    lake: Lake

    def client(self, role: str | None = "viewer", token: str | None = None) -> DICOMwebClient:
        headers = {}
        if role is not None or token is not None:
            headers["Authorization"] = f"Bearer {token or self.tokens[str(role)]}"
        return DICOMwebClient(f"{self.url}/dicomweb", headers=headers, timeout=120)

    def auth(self, role: str = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _live(root: Path) -> Iterator[Live]:
    engine = make_engine(f"sqlite:///{root / 'catalog.sqlite'}")
    upgrade(engine)
    lake = build_deid_lake(engine, root)
    with transaction(engine) as session:
        tokens = {r.name.lower(): create_token(session, name=r.name.lower(), role=r) for r in Role}
    with serve(create_app(lake)) as url:
        yield Live(url, tokens, lake)
    engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The lake every test reads; stores here only add instances it already has."""
    yield from _live(tmp_path_factory.mktemp("dicomweb"))


@pytest.fixture(scope="module")
def growing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A lake of its own for stores that add new studies."""
    yield from _live(tmp_path_factory.mktemp("dicomweb-stow"))


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{live.url}/dicomweb", timeout=120) as client:
        yield client


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute of a DICOM JSON object, or None."""
    found = item.get(tag, {}).get("Value")
    return found[0] if found else None


STUDY_UID, SERIES_UID, SOP_UID, MODALITIES = "0020000D", "0020000E", "00080018", "00080061"
STUDY_DATE, RETRIEVE_URL = "00080020", "00081190"


def originals() -> set[str]:
    """Every UID, PatientID and PatientName of the original files."""
    found: set[str] = set()
    for name in FILES:
        ds = pydicom.dcmread(sample_file(name), stop_before_pixels=True)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            found.add(str(ds.get(keyword)))
        for keyword in ("PatientID", "PatientName"):
            if str(ds.get(keyword) or "").strip():
                found.add(str(ds.get(keyword)))
    return found


def ct_study(live: Live) -> dict[str, Any]:
    """CT_small's study, found by its patient's pseudonym."""
    patient = live.lake.pseudonymizer("1CT1")
    (study,) = live.client().search_for_studies(search_filters={"PatientID": patient})
    return study


def test_search_studies_answers_de_identified_study_attributes(live: Live) -> None:
    studies = live.client().search_for_studies()
    assert len(studies) == len(FILES)
    text = str(studies)
    assert not [o for o in originals() if o in text], "an original identifier was answered"
    ct = ct_study(live)
    assert value(ct, "00201206") == 2 and value(ct, "00201208") == 1 + REPLICAS
    assert ct[MODALITIES]["Value"] == ["CT"]
    assert value(ct, "00100020") == live.lake.pseudonymizer("1CT1")
    # dicomweb-client sends Host without the port: the URL follows the Host it was sent.
    assert value(ct, RETRIEVE_URL).endswith(f"/dicomweb/studies/{value(ct, STUDY_UID)}")
    direct = httpx.get(f"{live.url}/dicomweb/studies", headers=live.auth()).json()
    assert f"{live.url}/dicomweb/studies/{value(ct, STUDY_UID)}" in str(direct)
    assert ct["00100010"]["vr"] == "PN" and value(ct, "00080056") == "ONLINE"


def test_search_filters_dates_wildcards_tags_and_pages(live: Live) -> None:
    client = live.client()
    dates = sorted(value(s, STUDY_DATE) for s in client.search_for_studies())
    day = value(ct_study(live), STUDY_DATE)
    exact = client.search_for_studies(search_filters={"StudyDate": f"{day}-{day}"})
    assert {value(s, STUDY_DATE) for s in exact} == {day}
    before = client.search_for_studies(search_filters={"StudyDate": f"-{day}"})
    assert len(before) == sum(d <= day for d in dates)
    after = client.search_for_studies(search_filters={"StudyDate": f"{day}-"})
    assert len(after) == sum(d >= day for d in dates)
    assert len(client.search_for_studies(search_filters={"00080061": "MR"})) == 2
    assert len(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR,NM"})) == 3
    bone = client.search_for_studies(search_filters={"StudyDescription": "*body?bone"})
    assert [value(s, "00081030") for s in bone] == ["Whole Body Bone"]
    pages = [client.search_for_studies(limit=1, offset=n) for n in range(len(FILES) + 1)]
    assert [len(p) for p in pages] == [1] * len(FILES) + [0]
    everything = client.search_for_studies()
    assert [p[0][STUDY_UID] for p in pages[:-1]] == [s[STUDY_UID] for s in everything]
    assert client.search_for_studies(get_remaining=True, limit=3) == everything


def test_no_match_is_204_and_reads_as_nothing(live: Live, http: httpx.Client) -> None:
    answer = http.get("/studies", params={"PatientID": "nobody"}, headers=live.auth())
    assert answer.status_code == 204 and answer.content == b""
    assert live.client().search_for_studies(search_filters={"PatientID": "nobody"}) == []


def test_includefield_returns_more_of_the_de_identified_header(live: Live) -> None:
    client = live.client()
    (study,) = client.search_for_studies(
        search_filters={"ModalitiesInStudy": "CT"}, fields=["PatientSex", "00180050"]
    )
    assert "00100040" in study and "00180050" in study  # asked: returned, maybe empty
    instances = client.search_for_instances(
        study_instance_uid=study[STUDY_UID]["Value"][0], fields=["all"]
    )
    assert all("00280100" in i and "00200032" in i for i in instances)  # header attributes


def test_series_and_instances_searches(live: Live) -> None:
    client = live.client()
    study = value(ct_study(live), STUDY_UID)
    series = client.search_for_series(study_instance_uid=study)
    assert sorted(value(s, "00201209") for s in series) == [1, REPLICAS]
    assert len(client.search_for_series()) == len(FILES) + 1
    assert {
        value(s, "00080060") for s in client.search_for_series(search_filters={"Modality": "MR"})
    } == {"MR"}
    copies = next(value(s, SERIES_UID) for s in series if value(s, "00201209") == REPLICAS)
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=copies)
    assert [value(i, "00200013") for i in instances] == [1, 2, 3]
    assert len(client.search_for_instances(study_instance_uid=study)) == 1 + REPLICAS
    assert len(client.search_for_instances()) == len(FILES) + REPLICAS
    sop = value(instances[0], SOP_UID)
    (one,) = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert value(one, RETRIEVE_URL).endswith(f"/studies/{study}/series/{copies}/instances/{sop}")
    (its_study,) = client.search_for_studies(search_filters={"SOPInstanceUID": sop})
    assert value(its_study, STUDY_UID) == study and value(its_study, "00201208") == 1 + REPLICAS


def test_retrieved_objects_are_the_de_identified_ones(live: Live) -> None:
    client = live.client()
    study = value(ct_study(live), STUDY_UID)
    found = client.retrieve_study(study)
    assert len(found) == 1 + REPLICAS
    forbidden = originals()
    for ds in found:
        assert str(ds.StudyInstanceUID) == study
        assert str(ds.PatientID) == live.lake.pseudonymizer("1CT1")
        assert str(ds.SOPInstanceUID) not in forbidden and str(ds.PatientName) not in forbidden
        assert check(ds) == [], [f.path for f in check(ds)]
        assert ds.pixel_array.shape == (128, 128)
    series = str(found[0].SeriesInstanceUID)
    assert len(client.retrieve_series(study, series)) == sum(
        str(ds.SeriesInstanceUID) == series for ds in found
    )
    one = client.retrieve_instance(study, series, str(found[0].SOPInstanceUID))
    assert one.SOPInstanceUID == found[0].SOPInstanceUID
    with transaction(live.lake.engine) as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert "dicomweb.retrieve" in actions


def test_objects_are_streamed_a_chunk_at_a_time(live: Live) -> None:
    study = value(ct_study(live), STUDY_UID)
    with transaction(live.lake.engine) as session:
        stored = stored_instances(session, study_uid=study)
    parts = [Part(s.key, dicom_part_media(s.transfer_syntax)) for s in stored]
    pieces = list(multipart_body(live.lake.store, parts, "b0undary", chunk_size=4096))
    assert max(len(piece) for piece in pieces) <= 4096
    assert len(pieces) > sum(s.size_bytes for s in stored) // 4096  # many reads, no whole object
    segments = b"".join(pieces).split(b"--b0undary")
    assert segments[0] == b"" and segments[-1] == b"--\r\n"
    objects = [seg.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for seg in segments[1:-1]]
    assert [hashlib.sha256(o).hexdigest() for o in objects] == [s.sha256 for s in stored]


def test_metadata_is_the_stored_header(live: Live) -> None:
    client = live.client()
    study = value(ct_study(live), STUDY_UID)
    metadata = client.retrieve_study_metadata(study)
    assert len(metadata) == 1 + REPLICAS
    assert all(value(m, STUDY_UID) == study and "7FE00010" not in m for m in metadata)
    assert all(value(m, "00120062") == "YES" for m in metadata)  # PatientIdentityRemoved
    first = metadata[0]
    series, sop = value(first, SERIES_UID), value(first, SOP_UID)
    in_series = client.retrieve_series_metadata(study, series)
    assert first in in_series and all(value(m, SERIES_UID) == series for m in in_series)
    assert client.retrieve_instance_metadata(study, series, sop) == first
    with transaction(live.lake.engine) as session:
        header = session.scalar(select(DeidInstance.header).where(DeidInstance.sop_uid == sop))
    assert header == first
    assert not [o for o in originals() if o in str(metadata)]


def _instance(live: Live, modality: str) -> tuple[str, str, str, dict[str, Any]]:
    (item, *_) = live.client().search_for_instances(search_filters={"Modality": modality})
    return value(item, STUDY_UID), value(item, SERIES_UID), value(item, SOP_UID), item


def test_rendered_pictures_decode_at_the_right_size(live: Live) -> None:
    client = live.client()
    study, series, sop, item = _instance(live, "NM")
    png = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
    picture = PILImage.open(io.BytesIO(png))
    assert picture.format == "PNG"
    assert picture.size == (value(item, "00280011"), value(item, "00280010"))  # columns, rows
    jpeg = client.retrieve_instance_rendered(study, series, sop)
    assert PILImage.open(io.BytesIO(jpeg)).format == "JPEG"
    fitted = client.retrieve_instance_rendered(
        study, series, sop, media_types=("image/png",), params={"viewport": "128,128"}
    )
    assert max(PILImage.open(io.BytesIO(fitted)).size) == 128
    mri = next(
        i
        for i in client.search_for_instances(search_filters={"Modality": "MR"})
        if (value(i, "00280008") or 1) > 1
    )
    frames = [
        client.retrieve_instance_frames_rendered(
            value(mri, STUDY_UID),
            value(mri, SERIES_UID),
            value(mri, SOP_UID),
            [n],
            media_types=("image/png",),
        )
        for n in (1, 5)
    ]
    assert all(PILImage.open(io.BytesIO(f)).size == (64, 64) for f in frames)
    assert frames[0] != frames[1]


def test_frames_are_the_stored_pixel_data(live: Live, http: httpx.Client) -> None:
    client = live.client()
    mri = next(
        i
        for i in client.search_for_instances(search_filters={"Modality": "MR"})
        if (value(i, "00280008") or 1) > 1
    )
    ids = (value(mri, STUDY_UID), value(mri, SERIES_UID), value(mri, SOP_UID))
    whole = client.retrieve_instance(*ids).pixel_array
    octets = (("application/octet-stream", "1.2.840.10008.1.2.1"),)
    frames = client.retrieve_instance_frames(*ids, frame_numbers=[2, 7], media_types=octets)
    assert frames == [whole[1].tobytes(), whole[6].tobytes()]
    assert client.retrieve_instance_frames(*ids, frame_numbers=[10]) == [whole[9].tobytes()]
    study, series, sop, _ = _instance(live, "NM")  # JPEG 2000: the codestream as stored
    (j2k,) = client.retrieve_instance_frames(
        study, series, sop, frame_numbers=[1], media_types=(("image/jp2", "*"),)
    )
    stored = client.retrieve_instance(study, series, sop)
    assert j2k.startswith(b"\xff\x4f\xff\x51") and j2k == next(generate_frames(stored.PixelData))
    path = f"/studies/{study}/series/{series}/instances/{sop}/frames"
    # OHIF's Accept lets the server choose: the codestream as stored, labelled.
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    chosen = http.get(f"{path}/1", headers=live.auth() | {"Accept": ohif})
    assert chosen.status_code == 200, chosen.text
    assert chosen.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )
    syntax = stored.file_meta.TransferSyntaxUID
    label = f"Content-Type: application/octet-stream; transfer-syntax={syntax}\r\n\r\n"
    assert chosen.content.split(label.encode(), 1)[1].startswith(j2k + b"\r\n--")
    for frames_asked, accept, status in (
        ("1", 'multipart/related; type="application/octet-stream"', 406),
        ("0", "*/*", 400),
        ("2", "*/*", 400),
        ("1,x", "*/*", 400),
    ):
        answer = http.get(f"{path}/{frames_asked}", headers=live.auth() | {"Accept": accept})
        assert answer.status_code == status and answer.json()["detail"], frames_asked


def _part(data: bytes, media: str = "application/dicom") -> bytes:
    return b"--b0undary\r\nContent-Type: " + media.encode() + b"\r\n\r\n" + data + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--b0undary--\r\n"


def test_store_then_search_and_retrieve(growing: Live) -> None:
    live = growing
    sent = [pydicom.dcmread(sample_file(n)) for n in ("MR2_J2KR.dcm", "693_J2KR.dcm")]
    answer = live.client("curator").store_instances(sent)
    stored = answer.ReferencedSOPSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in stored] == [
        str(d.SOPInstanceUID) for d in sent
    ]
    assert "FailedSOPSequence" not in answer
    for item in stored:
        study, series, sop = str(item.RetrieveURL).split("/studies/")[1].split("/")[::2]
        assert sop != str(sent[0].SOPInstanceUID) and sop.startswith("2.25.")
        (found,) = live.client().search_for_instances(search_filters={"SOPInstanceUID": sop})
        assert value(found, STUDY_UID) == study
        ds = live.client().retrieve_instance(study, series, sop)
        assert check(ds) == []
    again = live.client("admin").store_instances(sent[:1])  # already there: stored again
    assert str(again.ReferencedSOPSequence[0].RetrieveURL) == str(stored[0].RetrieveURL)


def test_store_answers_202_with_each_failure_and_its_reason(live: Live, http: httpx.Client) -> None:
    good = sample_file("CT_small.dcm").read_bytes()
    truncated = sample_file("MR_small.dcm").read_bytes()[:600]
    png = io.BytesIO()
    PILImage.new("L", (8, 8)).save(png, format="PNG")
    body = _body(
        _part(good), _part(truncated), _part(png.getvalue()), _part(b"{}", "application/json")
    )
    answer = http.post(
        "/studies", content=body, headers=live.auth("curator") | {"Content-Type": STOW_TYPE}
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == DICOM_JSON
    result = pydicom.Dataset.from_json(answer.json())
    assert len(result.ReferencedSOPSequence) == 1
    failed = result.FailedSOPSequence
    assert [int(i.FailureReason) for i in failed] == [0xC000] * 3
    reasons = [str(i.get("TransactionStatusComment", "")) for i in failed]
    assert all(reasons) and "not a DICOM object" in reasons[1] and "application/json" in reasons[2]
    truncated_sop = pydicom.dcmread(sample_file("MR_small.dcm")).SOPInstanceUID
    assert str(failed[0].ReferencedSOPInstanceUID) == str(truncated_sop)
    # The answer names instances by the UIDs they were sent with, and nothing else of them.
    for identifier in ("1CT1", "4MR1", "CompressedSamples"):
        assert identifier not in answer.text


def test_store_refuses_what_is_not_a_dicom_multipart(live: Live, http: httpx.Client) -> None:
    headers = live.auth("curator")
    dicom = sample_file("CT_small.dcm").read_bytes()
    plain = http.post(
        "/studies", content=dicom, headers=headers | {"Content-Type": "application/dicom"}
    )
    assert plain.status_code == 415 and "multipart/related" in plain.json()["detail"]
    json_type = 'multipart/related; type="application/dicom+json"; boundary=b0undary'
    assert (
        http.post(
            "/studies", content=b"x", headers=headers | {"Content-Type": json_type}
        ).status_code
        == 415
    )
    garbage = http.post("/studies", content=b"hello", headers=headers | {"Content-Type": STOW_TYPE})
    assert garbage.status_code == 400 and "multipart" in garbage.json()["detail"]
    no_boundary = http.post(
        "/studies", content=dicom, headers=headers | {"Content-Type": "multipart/related"}
    )
    assert no_boundary.status_code == 400
    text = http.post(
        "/studies",
        content=_body(_part(b"not dicom at all")),
        headers=headers | {"Content-Type": STOW_TYPE},
    )
    assert text.status_code == 409
    assert "not a DICOM object" in text.text
    other = "1.2.3.4"
    wrong_study = http.post(
        f"/studies/{other}",
        content=_body(_part(dicom)),
        headers=headers | {"Content-Type": STOW_TYPE},
    )
    assert wrong_study.status_code == 409
    (item,) = pydicom.Dataset.from_json(wrong_study.json()).FailedSOPSequence
    assert int(item.FailureReason) == 0xA900


def test_store_limits(live: Live) -> None:
    small, large = (
        sample_file("MR_small.dcm").read_bytes(),
        sample_file("CT_small.dcm").read_bytes(),
    )
    app = create_app(live.lake, upload_limit=20_000)  # per part: MR_small fits, CT_small not
    app.state.stow_limit = 100_000
    with serve(app) as url, httpx.Client(base_url=f"{url}/dicomweb", timeout=120) as http:
        headers = live.auth("curator") | {"Content-Type": STOW_TYPE}
        answer = http.post("/studies", content=_body(_part(small), _part(large)), headers=headers)
        assert answer.status_code == 202, answer.text
        result = pydicom.Dataset.from_json(answer.json())
        (failed,) = result.FailedSOPSequence
        assert int(failed.FailureReason) == 0xA700
        assert "20000-byte limit" in str(failed.TransactionStatusComment)
        too_big = _body(*[_part(small)] * 12)
        declared = http.post("/studies", content=too_big, headers=headers)
        assert declared.status_code == 413 and "100000-byte" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is met while reading
            yield from (too_big[n : n + 8192] for n in range(0, len(too_big), 8192))

        streamed = http.post("/studies", content=chunks(), headers=headers)
        assert streamed.status_code == 202, streamed.text
        result = pydicom.Dataset.from_json(streamed.json())
        assert len(result.ReferencedSOPSequence) >= 8
        assert "the rest was not read" in str(result.FailedSOPSequence[-1].TransactionStatusComment)


def test_roles_and_tokens(live: Live, http: httpx.Client) -> None:
    study = value(ct_study(live), STUDY_UID)
    for path in ("/studies", f"/studies/{study}", f"/studies/{study}/metadata"):
        assert http.get(path).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get(path, headers=live.auth("viewer")).status_code == 200
    body = _body(_part(sample_file("CT_small.dcm").read_bytes()))
    for role, status in (("viewer", 403), ("reviewer", 403), ("curator", 200)):
        headers = live.auth(role) | {"Content-Type": STOW_TYPE}
        assert http.post("/studies", content=body, headers=headers).status_code == status, role
    assert (
        http.post("/studies", content=body, headers={"Content-Type": STOW_TYPE}).status_code == 401
    )
    with pytest.raises(HTTPError) as refused:
        live.client("viewer").store_instances([pydicom.dcmread(sample_file("CT_small.dcm"))])
    assert refused.value.response.status_code == 403


def test_withheld_instances_are_invisible(live: Live, http: httpx.Client) -> None:
    client = live.client()
    study, series, sop, _ = _instance(live, "NM")
    with transaction(live.lake.engine) as session:
        session.execute(
            update(DeidInstance).where(DeidInstance.sop_uid == sop).values(pixels=PIXELS_WITHHELD)
        )
    try:
        assert client.search_for_instances(search_filters={"SOPInstanceUID": sop}) == []
        assert client.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
        instance = f"/studies/{study}/series/{series}/instances/{sop}"
        refused = http.get(instance, headers=live.auth("admin"))
        assert refused.status_code == 403 and "withheld" in refused.json()["detail"]
        assert http.get(f"{instance}/rendered", headers=live.auth("admin")).status_code == 403
        assert http.get(f"/studies/{study}", headers=live.auth("admin")).status_code == 404
        assert http.get(f"/studies/{study}/metadata", headers=live.auth()).status_code == 404
    finally:
        with transaction(live.lake.engine) as session:
            session.execute(
                update(DeidInstance).where(DeidInstance.sop_uid == sop).values(pixels=PIXELS_CLEAN)
            )


HOSTILE_GETS = [
    ("/studies/" + "1" * 100, {}, {}),
    ("/studies/abc/series", {}, {}),
    ("/studies/1..2", {}, {}),
    ("/studies/%2E%2E/metadata", {}, {}),
    ("/studies", {"limit": "1" * 30}, {}),
    ("/studies", {"limit": "0"}, {}),
    ("/studies", {"offset": "-1"}, {}),
    ("/studies", {"StudyDate": "2020"}, {}),
    ("/studies", {"StudyDate": "20201301"}, {}),
    ("/studies", {"StudyDate": "20201231-20200101"}, {}),
    ("/studies", {"StudyDate": "-"}, {}),
    ("/studies", {"StudyInstanceUID": "1.2,abc"}, {}),
    ("/series", {"SeriesNumber": "x"}, {}),
    ("/studies", {"PatientID": "x" * 65}, {}),
    ("/studies", {"nonsense": "1"}, {}),
    ("/studies", {"includefield": "NotAKeyword"}, {}),
    ("/studies", {"includefield": "00081250.00400560"}, {}),
    ("/studies", {"fuzzymatching": "maybe"}, {}),
    ("/studies", {}, {"Accept": "text/html"}),
    ("/instances", {}, {"Accept": 'multipart/related; type="application/dicom"'}),
]


@pytest.mark.parametrize(("path", "params", "extra"), HOSTILE_GETS)
def test_hostile_requests_get_a_reason_never_a_500(
    live: Live, http: httpx.Client, path: str, params: dict[str, str], extra: dict[str, str]
) -> None:
    answer = http.get(path, params=params, headers=live.auth() | extra)
    assert 400 <= answer.status_code < 500, (path, params, answer.status_code, answer.text)
    assert answer.json()["detail"]


def test_hostile_retrievals_get_a_reason(live: Live, http: httpx.Client) -> None:
    study, series, sop, _ = _instance(live, "CT")
    instance = f"/studies/{study}/series/{series}/instances/{sop}"
    cases = [
        (instance, {}, {"Accept": "application/json"}),
        (
            instance,
            {},
            {"Accept": f"{MULTIPART_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50"},
        ),
        (f"{instance}/metadata", {}, {"Accept": "application/dicom"}),
        (f"{instance}/rendered", {}, {"Accept": "application/dicom"}),
        (f"{instance}/rendered", {"window": "abc"}, {}),
        (f"{instance}/rendered", {"viewport": "0,0"}, {}),
        (f"{instance}/rendered", {"bogus": "1"}, {}),
        (f"{instance}/frames/0/rendered", {}, {}),
        (f"{instance}/frames/99/rendered", {}, {}),
        (f"{instance}/frames/1,2/rendered", {}, {}),
        (f"/studies/{study}/series/{series}/instances/1.2.3", {}, {}),
        ("/studies/1.2.3", {}, {}),
    ]
    for path, params, extra in cases:
        answer = http.get(path, params=params, headers=live.auth() | extra)
        assert 400 <= answer.status_code < 500, (path, params, answer.status_code, answer.text)
        assert answer.json()["detail"], path
    capped = http.get("/instances", params={"limit": "5000"}, headers=live.auth())
    assert capped.status_code == 200 and "maximum" in capped.headers["warning"]


def test_a_web_viewer_on_another_origin_browses_as_ohif_does(live: Live) -> None:
    """OHIF's calls, from another origin: CORS preflight on /dicomweb only (for the
    origins the setting names), then its study list, series list, series metadata and
    a frame, each with the bearer token it is configured with."""
    viewer_origin = "http://viewer.example:3000"
    app = create_app(live.lake, cors_origins=[viewer_origin])
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as browser:
        asked = {
            "Origin": viewer_origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        preflight = browser.options("/dicomweb/studies", headers=asked)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == viewer_origin
        assert "access-control-allow-credentials" not in preflight.headers
        stranger = browser.options("/dicomweb/studies", headers=asked | {"Origin": "http://evil"})
        assert "access-control-allow-origin" not in stranger.headers
        elsewhere = browser.options("/images", headers=asked)
        assert "access-control-allow-origin" not in elsewhere.headers  # DICOMweb only

        headers = live.auth("viewer") | {"Origin": viewer_origin, "Accept": DICOM_JSON}
        studies = browser.get(
            "/dicomweb/studies",
            params={
                "limit": "101",
                "offset": "0",
                "fuzzymatching": "false",
                "includefield": "00081030,00080060",
            },
            headers=headers,
        )
        assert studies.status_code == 200, studies.text
        assert studies.headers["access-control-allow-origin"] == viewer_origin
        study = value(studies.json()[0], STUDY_UID)
        series = browser.get(f"/dicomweb/studies/{study}/series", headers=headers).json()
        series_uid = value(series[0], SERIES_UID)
        metadata = browser.get(
            f"/dicomweb/studies/{study}/series/{series_uid}/metadata", headers=headers
        ).json()
        assert metadata and value(metadata[0], SOP_UID)
        sop = value(metadata[0], SOP_UID)
        frame = browser.get(
            f"/dicomweb/studies/{study}/series/{series_uid}/instances/{sop}/frames/1",
            headers=headers
            | {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        )
        assert frame.status_code == 200, frame.text
        assert frame.headers["content-type"].startswith("multipart/related")
        assert not {value(item, "00100020") for item in metadata} & originals()
