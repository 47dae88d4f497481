"""`radlake render`: any frame, slice or plane of a catalogued image to PNG/JPEG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radlake.catalog.db import session_factory
from radlake.catalog.queries import get_image
from radlake.cli.output import console
from radlake.domain import Plane
from radlake.errors import RenderError
from radlake.lake import load_settings, open_lake
from radlake.pipelines.stored_images import RenderFormat, RenderOptions, StoredImage, StoredImages

_OUTPUT_FORMATS: dict[str, RenderFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def render(
    image_id: Annotated[int, typer.Argument(help="Image id (from `radlake query`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .png or .jpg file.")],
    size: Annotated[
        int | None, typer.Option(min=1, max=8192, help="Longest side in pixels.")
    ] = None,
    slice_index: Annotated[
        int | None, typer.Option("--slice", min=0, help="Frame or slice (default: middle).")
    ] = None,
    plane: Annotated[Plane, typer.Option(help="Plane of a stack or volume.")] = Plane.AXIAL,
    window: Annotated[
        str | None, typer.Option(help="VOI window as CENTER,WIDTH, e.g. 40,400.")
    ] = None,
) -> None:
    """Render one image (its middle frame/slice by default) with standard windowing."""
    fmt = _OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise RenderError(f"expected an output file ending in .png or .jpg, got {output.name!r}")
    options = RenderOptions.parse(
        format=fmt, size=size, slice_index=slice_index, plane=plane, window=window
    )
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        image = StoredImage.of(get_image(session, image_id=image_id))
    images = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    rendered = images.render(image, options)
    try:
        output.write_bytes(rendered.encode(fmt))
    except OSError as exc:
        raise RenderError(f"cannot write {output}: {exc.strerror}") from exc
    used = rendered.window
    window_text = "colour" if used is None else f"window {used.center:g},{used.width:g}"
    console.print(
        f"wrote {output} ({rendered.image.width}x{rendered.image.height}, "
        f"{rendered.plane.value} {rendered.index}, {window_text})",
        highlight=False,
    )
