"""The predict page (issue 10): a signed-in user uploads an X-ray (curators) or names a
catalogued image, picks a registered model and thresholds with sliders, and sees the
original beside the image with its boxes and the inference time.

The page is a form over `POST /predict`; static/predict.js sends it with fetch (the
session cookie and the page's CSRF token, as app.js does) and draws the answer. The
same script toggles each model version's predictions on the image page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from radlake.api.deps import DbSession
from radlake.api.routes.predict import UPLOAD_ROLE
from radlake.api.web import PALETTE, _cookie_caller, _page, _to_signin
from radlake.catalog.model_registry import DEFAULT_ALIAS, aliases, list_versions
from radlake.inference.runner import DEFAULT_IOU, DEFAULT_SCORE

router = APIRouter(include_in_schema=False)


def model_choices(session: Session) -> list[tuple[str, str]]:
    """(reference, label) for the model picker: each model's default first (its
    production alias, else its newest version), then every version, newest first."""
    versions = list_versions(session)
    pointers = aliases(session, model_ids=sorted({v.model_id for v in versions}))
    by_model: dict[str, list[Any]] = {}
    for version in versions:
        by_model.setdefault(version.model.name, []).append(version)
    choices: list[tuple[str, str]] = []
    for name, found in by_model.items():
        named = pointers.get(found[0].model_id, {})
        default = named.get(DEFAULT_ALIAS, found[-1].version)
        where = DEFAULT_ALIAS if DEFAULT_ALIAS in named else "newest"
        choices.append((name, f"{name} ({where}: v{default})"))
        for version in reversed(found):
            tags = [alias for alias, number in named.items() if number == version.version]
            classes = ", ".join(version.class_names[:4])
            more = "…" if len(version.class_names) > 4 else ""
            suffix = f" [{', '.join(tags)}]" if tags else ""
            label = f"{name}:{version.version}{suffix} · {classes}{more}"
            choices.append((f"{name}:{version.version}", label))
    return choices


@router.get("/ui/predict")
def predict_page(
    request: Request,
    session: DbSession,
    image_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> Response:
    """Upload or pick an image, choose a model and thresholds, see the boxes."""
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    return _page(
        request,
        "predict.html",
        caller,
        models=model_choices(session),
        may_upload=caller.role >= UPLOAD_ROLE,
        image_id=image_id,
        score=DEFAULT_SCORE,
        iou=DEFAULT_IOU,
        palette=PALETTE,
    )
