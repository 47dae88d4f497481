"""The per-file step of ingest, run in worker processes: read, hash, sniff, extract,
render the preview, write blobs. Catalog writes stay in the parent (batched).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from radlake.catalog.persist import CataloguedInput, RejectedInput
from radlake.domain import RenditionInfo
from radlake.errors import ImageError, ObjectNotFound, StorageError
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.pixels import PixelSource
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines.discover import InputFile
from radlake.storage.keys import derived_key, quarantine_key, raw_key
from radlake.storage.store import ObjectStore

PREVIEW = "preview"
_WINDOW_TEXT_KEY = "radlake:window"


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What every worker needs; pickled by value (the store travels as its URL)."""

    store: ObjectStore
    pseudonymizer: Pseudonymizer


def encode_preview(rendered_image: Image.Image, window: tuple[float, float] | None) -> bytes:
    """The preview PNG as stored (fast compression, the window in a text chunk)."""
    info = PngImagePlugin.PngInfo()
    # The window rides in the PNG itself, so a re-run can rebuild the rendition row
    # from the stored preview without decoding the original again.
    info.add_text(_WINDOW_TEXT_KEY, "" if window is None else f"{window[0]!r},{window[1]!r}")
    buffer = io.BytesIO()
    rendered_image.save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


def _rendition_from_png(key: str, png: bytes) -> RenditionInfo:
    with Image.open(io.BytesIO(png)) as image:
        text = image.text.get(_WINDOW_TEXT_KEY, "") if hasattr(image, "text") else ""
        width, height = image.size
    center = width_mm = None
    if text:
        center_text, width_text = text.split(",")
        center, width_mm = float(center_text), float(width_text)
    return RenditionInfo(PREVIEW, key, width, height, center, width_mm)


def _make_preview(
    context: WorkerContext, sha256: str, open_pixels: Callable[[], PixelSource]
) -> RenditionInfo:
    key = derived_key(sha256, PREVIEW, "png")
    try:
        return _rendition_from_png(key, context.store.get_bytes(key))
    except ObjectNotFound:
        pass
    rendered = render(open_pixels(), size=PREVIEW_SIZE)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    png = encode_preview(rendered.image, window)
    context.store.put_bytes(key, png)
    width, height = rendered.image.size
    return RenditionInfo(PREVIEW, key, width, height, *(window or (None, None)))


def process_input(context: WorkerContext, item: InputFile) -> CataloguedInput | RejectedInput:
    """Ingest one file up to the catalog: every outcome is a value, never an exception.

    Raises:
        StorageError: the store failed; the job stops rather than quarantine everything.
    """
    try:
        data = Path(item.path).read_bytes()
    except OSError as exc:
        return RejectedInput(item.source_key, f"unreadable file: {exc.strerror}")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        fmt = detect_format(data)
        metadata, open_pixels = reader_for(fmt).read(data, context.pseudonymizer)
        preview = _make_preview(context, sha256, open_pixels)
        original_key = raw_key(sha256, fmt.extension)
        context.store.put_if_absent(original_key, data)
    except StorageError:
        raise
    except ImageError as exc:
        return _reject(context, item, data, sha256, str(exc))
    except Exception as exc:
        # A reader bug must not lose the input or stop the batch: quarantine it, say so.
        return _reject(context, item, data, sha256, f"internal reader error ({type(exc).__name__})")
    return CataloguedInput(
        sha256=sha256,
        size_bytes=len(data),
        source_key=item.source_key,
        original_key=original_key,
        metadata=metadata,
        renditions=(preview,),
    )


def _reject(
    context: WorkerContext, item: InputFile, data: bytes, sha256: str, reason: str
) -> RejectedInput:
    stored = None
    if data:
        stored = quarantine_key(sha256)
        context.store.put_if_absent(stored, data)
    return RejectedInput(item.source_key, reason, sha256 if data else None, len(data), stored)
