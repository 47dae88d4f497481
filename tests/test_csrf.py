"""Writes signed by the web page's session cookie must come from this server's own
pages (Origin, port included: SameSite=Strict does not stop a page on another port of
the same host) and carry the session's CSRF token (issue 8). Bearer clients are not
browsers: neither is asked of them. The auth matrix of test_api, for cookies."""

from __future__ import annotations

import io
import re

from PIL import Image as PILImage

from radlake.api.deps import COOKIE_NAME
from tests.test_api import Api, api  # noqa: F401 (the api fixture)

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
SAME = {"Origin": "http://testserver"}


def _png(value: int = 99) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("L", (16, 12), value).save(buffer, "PNG")
    return buffer.getvalue()


def sign_in(api: Api, role: str) -> tuple[str, str]:  # noqa: F811
    """A new web session for role: its cookie, and the CSRF token its page shows."""
    api.client.cookies.clear()
    answer = api.client.post("/ui/signin", data={"token": api.tokens[role]}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    cookie = api.client.cookies[COOKIE_NAME]
    page = api.client.get("/ui")
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page.text)
    assert found is not None, page.text[:300]
    api.client.cookies.clear()
    return cookie, found.group(1)


def unsafe_routes(api: Api) -> list[tuple[str, str]]:  # noqa: F811
    """Every write the API registers, path parameters filled with harmless values."""
    found = [
        (method.upper(), re.sub(r"\{[^}]+\}", "nosuch", path))
        for path, operations in api.app.openapi()["paths"].items()
        for method in operations
        if method.upper() in UNSAFE
    ]
    assert len(found) >= 4, found  # upload, cohorts save/delete, dataset versions at least
    return sorted(found)


def test_every_cookie_write_needs_this_origin_and_the_sessions_csrf_token(api: Api) -> None:  # noqa: F811
    cookie, csrf = sign_in(api, "admin")
    _, other_csrf = sign_in(api, "admin")  # another session's token is not this one's
    api.client.cookies.set(COOKIE_NAME, cookie)
    try:
        for method, path in unsafe_routes(api):
            for headers, reason in (
                ({"Origin": "http://evil.example", "X-CSRF-Token": csrf}, "this server's pages"),
                ({"Origin": "http://testserver:8081", "X-CSRF-Token": csrf}, "this server's"),
                ({"Origin": "null", "X-CSRF-Token": csrf}, "this server's pages"),
                ({"X-CSRF-Token": csrf}, "this server's pages"),  # no Origin, no Referer
                (SAME, "CSRF token"),
                ({**SAME, "X-CSRF-Token": ""}, "CSRF token"),
                ({**SAME, "X-CSRF-Token": other_csrf}, "CSRF token"),
                ({**SAME, "X-CSRF-Token": csrf.upper()}, "CSRF token"),
                ({**SAME, "X-CSRF-Token": cookie}, "CSRF token"),  # the cookie is not it
            ):
                answer = api.client.request(method, path, headers=headers)
                assert answer.status_code == 403, (method, path, headers, answer.text)
                assert reason in answer.json()["detail"], (method, path, answer.text)
            # With both, the write reaches the route (which then judges the request).
            passed = api.client.request(method, path, headers={**SAME, "X-CSRF-Token": csrf})
            assert passed.status_code not in (401, 403), (method, path, passed.text)
            # Reads need neither.
        assert (
            api.client.get("/images", headers={"Origin": "http://evil.example"}).status_code == 200
        )
    finally:
        api.client.cookies.clear()


def test_the_page_upload_and_cohort_pass_with_the_token_and_fail_without(api: Api) -> None:  # noqa: F811
    cookie, csrf = sign_in(api, "curator")
    api.client.cookies.set(COOKIE_NAME, cookie)
    try:
        upload = {"file": ("a.png", _png())}
        refused = api.client.post("/images", files=upload, headers=SAME)
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        # fetch sends the header; the plain HTML form (no script) sends the hidden field.
        by_header = api.client.post("/images", files=upload, headers={**SAME, "X-CSRF-Token": csrf})
        assert by_header.status_code == 201, by_header.text
        by_field = api.client.post(
            "/images", files={"file": ("b.png", _png(7))}, data={"csrf_token": csrf}, headers=SAME
        )
        assert by_field.status_code == 201, by_field.text
        assert by_field.json()["already_present"] is False
        wrong_field = api.client.post(
            "/images", files=upload, data={"csrf_token": "0" * 64}, headers=SAME
        )
        assert wrong_field.status_code == 403, wrong_field.text
        cohort = {"name": "ct_only", "filter": {"modality": "CT"}}
        assert api.client.post("/cohorts", json=cohort, headers=SAME).status_code == 403
        saved = api.client.post("/cohorts", json=cohort, headers={**SAME, "X-CSRF-Token": csrf})
        assert saved.status_code == 201, saved.text
        # A form-encoded body to a JSON route: its csrf_token field is read, the route
        # then refuses the body for what it is.
        form = api.client.post("/cohorts", data={"csrf_token": csrf, "name": "x"}, headers=SAME)
        assert form.status_code == 422, form.text
    finally:
        api.client.cookies.clear()


def test_bearer_clients_need_no_origin_and_no_csrf_token(api: Api) -> None:  # noqa: F811
    bearer = api.client.post(
        "/images",
        files={"file": ("b.png", _png())},
        headers={**api.auth("curator"), "Origin": "http://evil.example"},
    )
    assert bearer.status_code == 201, bearer.text
    # A bearer header wins over a cookie that rides along: it is judged alone.
    cookie, _ = sign_in(api, "viewer")
    api.client.cookies.set(COOKIE_NAME, cookie)
    try:
        cohort = {"name": "by_bearer", "filter": {}}
        answer = api.client.post(
            "/cohorts",
            json=cohort,
            headers={**api.auth("curator"), "Origin": "http://evil.example"},
        )
        assert answer.status_code == 201, answer.text
    finally:
        api.client.cookies.clear()
