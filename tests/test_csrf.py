"""Writes signed by the web page's cookie must come from this server's own pages:
SameSite=Strict does not stop a page on another port of the same host (issue 8)."""

from __future__ import annotations

import io

from PIL import Image as PILImage

from radlake.api.deps import COOKIE_NAME
from tests.test_api import Api, api  # noqa: F401 (the api fixture)


def _png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("L", (16, 12), 99).save(buffer, "PNG")
    return buffer.getvalue()


def test_cookie_writes_need_this_servers_origin(api: Api) -> None:  # noqa: F811
    api.client.cookies.set(COOKIE_NAME, api.tokens["curator"])
    try:
        for origin in ("http://evil.example", "http://testserver:8081", "null", None):
            headers = {"Origin": origin} if origin else {}
            answer = api.client.post("/images", files={"file": ("a.png", _png())}, headers=headers)
            assert answer.status_code == 403, (origin, answer.text)
        same = api.client.post(
            "/images", files={"file": ("a.png", _png())}, headers={"Origin": "http://testserver"}
        )
        assert same.status_code == 201, same.text
        assert (
            api.client.get("/images", headers={"Origin": "http://evil.example"}).status_code == 200
        )
    finally:
        api.client.cookies.clear()
    # API clients with a bearer token are not browsers: no Origin is asked of them.
    bearer = api.client.post(
        "/images",
        files={"file": ("b.png", _png())},
        headers={**api.auth("curator"), "Origin": "http://evil.example"},
    )
    assert bearer.status_code == 201, bearer.text
