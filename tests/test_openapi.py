"""The OpenAPI document says what the API does: bearer auth on every route but
/health, the error answers each route can give, and a model for every JSON answer;
and the API does what the document says (no token: 401; a viewer's answers fit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from radlake.api import schemas
from tests.test_api import Api, build

METHODS = ("get", "post", "put", "patch", "delete")
# The JSON answers and the model each is described by (a list: "[Model]").
ANSWERS = {
    ("get", "/images"): "ImageListing",
    ("get", "/images/{image_id}"): "ImageDetail",
    ("get", "/images/{image_id}/labels"): "ImageLabels",
    ("post", "/images"): "Uploaded",
    ("get", "/series/{uid}"): "SeriesImages",
    ("get", "/studies/{uid}"): "StudyImages",
    ("get", "/jobs"): "[JobItem]",
    ("get", "/quarantine"): "[QuarantineItem]",
    ("get", "/stats"): "Stats",
    ("get", "/audit"): "[AuditItem]",
    ("get", "/cohorts"): "[CohortItem]",
    ("post", "/cohorts"): "SavedCohort",
    ("get", "/datasets"): "[DatasetItem]",
    ("post", "/datasets/{name}/versions"): "CreatedVersion",
    ("get", "/datasets/{name}/versions/{version}"): "DatasetVersion",
    ("get", "/health"): "Health",
    ("post", "/predict"): "PredictionResult",
    ("get", "/images/{image_id}/predictions"): "ImagePredictions",
    ("post", "/predictions/{prediction_id}/feedback"): "FeedbackItem",
    ("post", "/images/{image_id}/feedback"): "FeedbackItem",
    ("get", "/images/{image_id}/feedback"): "ImageFeedback",
    ("get", "/review/queue"): "ReviewQueue",
}
# Routes that take an upload (a 413 beyond the server's limit).
UPLOADS = {
    ("post", "/images"),
    ("post", "/predict"),
    ("post", "/dicomweb/studies"),
    ("post", "/dicomweb/studies/{study}"),
}
# Routes for reviewers, curators or admins only (a viewer's token gets 403).
PRIVILEGED = {
    ("post", "/dicomweb/studies"),
    ("post", "/dicomweb/studies/{study}"),
    ("post", "/predictions/{prediction_id}/feedback"),
    ("post", "/images/{image_id}/feedback"),
    ("get", "/review/queue"),
    ("post", "/images"),
    ("get", "/images/{image_id}/original"),
    ("post", "/cohorts"),
    ("delete", "/cohorts/{name}"),
    ("post", "/datasets/{name}/versions"),
    ("get", "/audit"),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("openapi")
    yield from build(f"sqlite:///{root / 'catalog.sqlite'}", root)


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    return api.app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def test_bearer_scheme_on_every_route_but_health(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    seen = set()
    for method, path, operation in operations(document):
        seen.add((method, path))
        if path == "/health":
            assert "security" not in operation
        else:
            assert operation.get("security") == [{"bearer": []}], (method, path)
    assert set(ANSWERS) | PRIVILEGED <= seen  # the document has every main route
    assert not any(path.startswith("/ui") for _, path in seen)  # web pages are not API


def test_error_answers_listed_with_their_body(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        answers = operation["responses"]
        schema_of = {
            code: answer.get("content", {}).get("application/json", {}).get("schema", {})
            for code, answer in answers.items()
        }
        where = (method, path)
        if path == "/health":
            assert not {"401", "403", "422"} & set(answers)
            continue
        assert schema_of["401"] == {"$ref": ref("ErrorDetail")}, where
        takes_input = bool(operation.get("parameters")) or "requestBody" in operation
        assert ("422" in answers) == takes_input, where
        if takes_input:
            assert schema_of["422"] == {"$ref": ref("Rejected")}, where
        if where in PRIVILEGED:
            assert schema_of["403"] == {"$ref": ref("ErrorDetail")}, where
        if "{" in path and where != ("post", "/datasets/{name}/versions"):  # makes its dataset
            assert schema_of["404"] == {"$ref": ref("ErrorDetail")}, where
        assert ("413" in answers) == (where in UPLOADS), where
    error = document["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["detail"] and error["properties"]["detail"]["type"] == "string"


def test_every_json_answer_has_a_model(document: dict[str, Any]) -> None:
    for (method, path), name in ANSWERS.items():
        answers = document["paths"][path][method]["responses"]
        ok = answers.get("200") or answers["201"]
        schema = ok["content"]["application/json"]["schema"]
        if name.startswith("["):
            assert schema["type"] == "array", (method, path)
            assert schema["items"] == {"$ref": ref(name[1:-1])}, (method, path)
        else:
            assert schema == {"$ref": ref(name)}, (method, path)
        assert name.strip("[]") in document["components"]["schemas"]
    # Binary answers say their media types instead of a JSON schema.
    render = document["paths"]["/images/{image_id}/render"]["get"]["responses"]["200"]
    assert set(render["content"]) == {"image/png", "image/jpeg"}
    zipped = document["paths"]["/images.zip"]["get"]["responses"]["200"]
    assert set(zipped["content"]) == {"application/zip"}


def _filled(path: str) -> str:
    values = {
        "image_id": "1",
        "uid": "1.2.3",
        "name": "x",
        "version": "1",
        "split": "s",
        "prediction_id": "1",
        "study": "1.2.3",
        "series": "1.2.4",
        "instance": "1.2.5",
        "frame": "1",
        "frame_list": "1",
    }
    return re.sub(r"\{(\w+)\}", lambda match: values[match.group(1)], path)


def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method == "post" and path == "/images":
        kwargs["files"] = {"file": ("x.dcm", b"not an image")}
    elif method == "post":
        kwargs["json"] = {"name": "x"}
    return api.client.request(method.upper(), _filled(path), **kwargs)


def test_the_api_does_what_the_document_says(api: Api, document: dict[str, Any]) -> None:
    """No token: 401 with a reason on every documented route but /health; a viewer's
    token on a curator's or admin's route: 403."""
    for method, path, _ in operations(document):
        if path == "/health":
            assert _call(api, method, path, {}).status_code == 200
            continue
        answer = _call(api, method, path, {})
        assert answer.status_code == 401, (method, path, answer.text)
        assert isinstance(answer.json()["detail"], str)
        garbage = _call(api, method, path, {"Authorization": "Bearer not-a-token"})
        assert garbage.status_code == 401, (method, path)
        if (method, path) in PRIVILEGED:
            refused = _call(api, method, path, api.auth("viewer"))
            assert refused.status_code == 403, (method, path, refused.text)
    # The document itself is served to any signed-in role, and to nobody else.
    assert api.client.get("/openapi.json").status_code == 401
    assert api.client.get("/openapi.json", headers=api.auth("viewer")).json() == document


def _fits(model: type[BaseModel], body: Any) -> None:
    for item in body if isinstance(body, list) else [body]:
        model.model_validate(item)


def test_viewer_answers_fit_their_models(api: Api) -> None:
    """Privacy by role cuts values (file names, no preview links), never shapes."""
    viewer, curator = api.auth("viewer"), api.auth("curator")
    listing = api.client.get("/images", params={"limit": 1000}, headers=viewer).json()
    _fits(schemas.ImageListing, listing)
    # A flagged image (ultrasound: burned-in text possible) has no preview for viewers.
    assert any(image["withheld"] and image["preview"] is None for image in listing["images"])
    for image in listing["images"]:
        detail = api.client.get(f"/images/{image['id']}", headers=viewer).json()
        _fits(schemas.ImageDetail, detail)
        assert "/" not in (detail["source_key"] or "")
        _fits(
            schemas.ImageLabels,
            api.client.get(f"/images/{image['id']}/labels", headers=viewer).json(),
        )
        full = api.client.get(f"/images/{image['id']}", headers=curator).json()
        assert full["source_key"].endswith(detail["source_key"]) and "/" in full["source_key"]
    first = api.client.get(f"/images/{listing['images'][0]['id']}", headers=viewer).json()
    _fits(
        schemas.SeriesImages,
        api.client.get(f"/series/{first['series']['series_uid']}", headers=viewer).json(),
    )
    _fits(
        schemas.StudyImages,
        api.client.get(f"/studies/{first['study_uid']}", headers=viewer).json(),
    )
    for path, model in (
        ("/jobs", schemas.JobItem),
        ("/quarantine", schemas.QuarantineItem),
        ("/stats", schemas.Stats),
        ("/cohorts", schemas.CohortItem),
        ("/datasets", schemas.DatasetItem),
    ):
        answer = api.client.get(path, headers=viewer)
        assert answer.status_code == 200, (path, answer.text)
        _fits(model, answer.json())
    jobs = api.client.get("/jobs", headers=viewer).json()
    assert jobs and all("/" not in str(job["parameters"]) for job in jobs)


def test_stats_keeps_its_class_key(api: Api) -> None:
    """The model's class_ field is answered as "class", as before the models."""
    stats = api.client.get("/stats", headers=api.auth("viewer")).json()
    assert set(stats) == {"images", "modality", "view", "format", "source", "class", "split"}
    assert stats["images"] == 4


def test_health_answer(api: Api) -> None:
    assert api.client.get("/health").json().keys() == {"status", "version"}
