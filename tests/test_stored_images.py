"""The stored-image service (issue 8): one way from a stored original to pixels and
pictures for the CLI, the API (renderings and zips) and exports; canonical render
options; a render cache bounded by the catalog (presets only)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image
from radlake.cli import render_cmd
from radlake.domain import ImageFormat, Plane
from radlake.errors import RenderError
from radlake.imaging.formats import reader_for
from radlake.imaging.pixels import Window
from radlake.imaging.render import render
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.pipelines.stored_images import (
    RENDER_SIZES,
    RenderOptions,
    StoredImage,
    StoredImages,
    check_size,
)
from radlake.storage.keys import derived_prefix, preview_key
from tests.conftest import pydicom_file

SPELLINGS = ("40,400", "40,400.0", "+40,400", "40,4e2")


@pytest.fixture
def stored(lake: Lake) -> Iterator[tuple[Lake, dict[str, StoredImage], dict[str, int]]]:
    """A lake holding a CT (one frame) and an RT dose (15 frames), by name."""
    files = [pydicom_file(name) for name in ("CT_small.dcm", "rtdose.dcm")]
    ingest(
        files,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    with session_factory(lake.engine)() as session:
        rows = session.execute(
            select(Image.id, Image.sha256, Image.format, Image.original_key, Image.modality)
        )
        found = {row.modality: (row.id, StoredImage.of(row)) for row in rows}
    yield (
        lake,
        {name: image for name, (_, image) in found.items()},
        {name: image_id for name, (image_id, _) in found.items()},
    )


def _old_render(lake: Lake, image: StoredImage, fmt: str, **options: object) -> bytes:
    """What every caller wrote inline before the service (issue 8's four copies)."""
    source = reader_for(image.format).open_pixels(
        lake.store.get_bytes(image.original_key), max_decoded_bytes=lake.limits.max_decoded_bytes
    )
    return render(source, **options).encode(fmt)  # type: ignore[arg-type]


def _derived(lake: Lake, image: StoredImage) -> list[str]:
    return list(lake.store.list(derived_prefix(image.sha256)))


# --- canonical options ---------------------------------------------------------------


def test_every_spelling_of_a_window_is_one_option_and_one_etag() -> None:
    parsed = {RenderOptions.parse(window=text) for text in SPELLINGS}
    assert len(parsed) == 1
    (options,) = parsed
    assert options.window == Window(40.0, 400.0)
    sha = "a" * 64
    assert {RenderOptions.parse(window=text).etag(sha) for text in SPELLINGS} == {options.etag(sha)}
    assert RenderOptions.parse(window="-0,1") == RenderOptions.parse(window="0,1")
    assert RenderOptions.parse(window="40,400").etag(sha) != RenderOptions.parse(
        window="40,401"
    ).etag(sha)


def test_the_preview_etag_is_unchanged_by_canonical_options() -> None:
    # The text the route hashed before options were parsed: browsers' cached previews
    # stay valid across the upgrade.
    assert RenderOptions().canonical == "png|512|None|axial|None"


def test_sizes_come_from_a_fixed_set() -> None:
    assert RENDER_SIZES == (64, 128, 256, 512, 1024, 2048)
    assert all(check_size(size) == size for size in RENDER_SIZES)
    for size in (16, 100, 300, 4096):
        with pytest.raises(RenderError, match="expected a size among 64, 128"):
            check_size(size)


def test_only_the_default_preview_options_are_presets() -> None:
    assert RenderOptions().is_preset and RenderOptions(format="jpeg").is_preset
    for options in (
        RenderOptions(size=256),
        RenderOptions(slice_index=0),
        RenderOptions(plane=Plane.CORONAL),
        RenderOptions.parse(window="40,400"),
        RenderOptions(true_aspect=False),
    ):
        assert not options.is_preset


# --- the bounded cache ----------------------------------------------------------------


def test_custom_renders_leave_no_object_in_the_store(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
) -> None:
    lake, images, _ = stored
    dose = images["RTDOSE"]
    service = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    before = _derived(lake, dose)
    assert before == [preview_key(dose.sha256)]
    for center in range(40):
        for text in (f"{center},400", f"+{center},4e2"):
            service.rendering(dose, RenderOptions.parse(format="jpeg", size=64, window=text))
    for index in range(15):
        service.rendering(dose, RenderOptions(slice_index=index, size=128))
    service.rendering(dose, RenderOptions(plane=Plane.SAGITTAL))
    assert _derived(lake, dose) == before
    # The two presets: at most two objects per image, whatever viewers ask.
    service.rendering(dose, RenderOptions(format="jpeg"))
    service.rendering(dose, RenderOptions(format="jpeg"))
    assert _derived(lake, dose) == sorted([*before, preview_key(dose.sha256, "jpeg")])


def test_the_png_preset_is_the_ingest_preview_and_is_rebuilt_identically(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
) -> None:
    lake, images, _ = stored
    ct = images["CT"]
    service = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    ingested = lake.store.get_bytes(preview_key(ct.sha256))
    assert service.preview(ct) == ingested
    lake.store.delete(preview_key(ct.sha256))
    assert service.preview(ct) == ingested
    assert lake.store.get_bytes(preview_key(ct.sha256)) == ingested


def test_renders_hold_the_decode_guard(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
) -> None:
    lake, images, _ = stored
    entered: list[int] = []

    @contextmanager
    def guard() -> Iterator[None]:
        entered.append(1)
        yield

    service = StoredImages(lake.store, decode_guard=guard)
    service.rendering(images["CT"], RenderOptions())  # stored: no decode
    assert entered == []
    service.rendering(images["CT"], RenderOptions(size=64))
    assert entered == [1]


# --- every caller gets the bytes it made before ----------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("png", {"size": 256}),  # CLI --size 256
        ("jpeg", {"size": 64, "window": Window(40.0, 400.0)}),  # API and CLI with a window
        ("jpeg", {"size": 512}),  # zip of renderings
        ("png", {"size": None}),  # CLI at the stored size
        ("png", {"size": 128, "index": 3}),  # a slice
    ],
)
def test_the_service_renders_what_callers_rendered_inline(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
    fmt: str,
    options: dict[str, object],
) -> None:
    lake, images, _ = stored
    service = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    for name, image in images.items():
        if "index" in options and name == "CT":
            continue
        request = RenderOptions(
            format="jpeg" if fmt == "jpeg" else "png",
            size=options["size"],  # type: ignore[arg-type]
            slice_index=options.get("index"),  # type: ignore[arg-type]
            window=options.get("window"),  # type: ignore[arg-type]
        )
        assert service.encoded(image, request) == _old_render(lake, image, fmt, **options)


def test_export_images_are_what_export_rendered_inline(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
) -> None:
    lake, images, _ = stored
    service = StoredImages(lake.store)
    options = RenderOptions(size=None, true_aspect=False)
    for image in images.values():
        source = reader_for(image.format).open_pixels(lake.store.get_bytes(image.original_key))
        before = render(source, size=None, true_aspect=False).image
        after = service.render(image, options).image
        assert after.size == before.size and after.tobytes() == before.tobytes()


def test_the_cli_writes_what_it_wrote_before(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake, images, ids = stored
    monkeypatch.setattr(render_cmd, "load_settings", lambda: None)
    monkeypatch.setattr(render_cmd, "open_lake", lambda settings: lake)
    output = tmp_path / "ct.jpg"
    render_cmd.render(ids["CT"], output, size=64, window="+40,4e2")
    window = Window(40.0, 400.0)
    assert output.read_bytes() == _old_render(lake, images["CT"], "jpeg", size=64, window=window)
    render_cmd.render(ids["RTDOSE"], tmp_path / "dose.png", slice_index=2, plane=Plane.AXIAL)
    expected = _old_render(lake, images["RTDOSE"], "png", size=None, index=2)
    assert (tmp_path / "dose.png").read_bytes() == expected


@pytest.fixture
def client(stored: tuple[Lake, dict[str, StoredImage], dict[str, int]]) -> Iterator[TestClient]:
    lake = stored[0]
    with transaction(lake.engine) as session:
        token = create_token(session, name="viewer", role=Role.VIEWER)
    with TestClient(create_app(lake)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client


def test_the_api_serves_one_rendering_per_canonical_request(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]], client: TestClient
) -> None:
    lake, images, ids = stored
    ct = images["CT"]
    before = _derived(lake, ct)
    answers = [
        client.get(
            f"/images/{ids['CT']}/render",
            params={"format": "jpeg", "size": 64, "window": text},
        )
        for text in SPELLINGS
    ]
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.headers["etag"] for answer in answers}) == 1
    expected = _old_render(lake, ct, "jpeg", size=64, window=Window(40.0, 400.0))
    assert all(answer.content == expected for answer in answers)
    assert _derived(lake, ct) == before  # custom renders are never stored

    preview = client.get(f"/images/{ids['CT']}/render")
    assert preview.content == lake.store.get_bytes(preview_key(ct.sha256))
    assert preview.headers["etag"] == RenderOptions().etag(ct.sha256)

    refused = client.get(f"/images/{ids['CT']}/render", params={"size": 300})
    assert refused.status_code == 422 and "64, 128, 256" in refused.json()["detail"]


def test_a_zip_entry_is_what_the_zip_rendered_before(
    stored: tuple[Lake, dict[str, StoredImage], dict[str, int]], client: TestClient
) -> None:
    lake, images, ids = stored
    answer = client.get(
        "/images.zip", params={"content": "rendered", "image_format": "jpeg", "size": 200}
    )
    assert answer.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        for name, image in images.items():
            entry = archive.read(f"images/{ids[name]}.jpg")
            assert entry == _old_render(lake, image, "jpeg", size=200)
            assert PILImage.open(io.BytesIO(entry)).format == "JPEG"
    previews = client.get("/images.zip", params={"content": "preview"})
    with zipfile.ZipFile(io.BytesIO(previews.content)) as archive:
        for name, image in images.items():
            assert archive.read(f"images/{ids[name]}.png") == lake.store.get_bytes(
                preview_key(image.sha256)
            )


def test_stored_image_of_a_row_reads_its_format() -> None:
    image = StoredImage.of(
        type("Row", (), {"sha256": "a" * 64, "format": "dicom", "original_key": "raw/x"})()
    )
    assert image.format is ImageFormat.DICOM
