"""The per-file step of ingest, run in worker processes: read, hash, sniff, extract,
render the preview, write blobs. Catalog writes stay in the parent (batched).

Every outcome of an input is a value (catalogued or rejected with a reason); only a
fault of the store escapes, as StorageError, because it says nothing about the input.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from PIL import Image, PngImagePlugin

from radlake.domain import CataloguedInput, RejectedInput, RenditionInfo
from radlake.errors import ImageError, ObjectNotFound, StorageError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES, MIB
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.intensity import INTENSITY_KEY, intensity_stats
from radlake.imaging.pixels import PixelSource
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines.discover import InputFile
from radlake.storage.keys import PREVIEW, preview_key, quarantine_key, raw_key
from radlake.storage.store import ObjectStore

_WINDOW_TEXT_KEY = "radlake:window"
DEFAULT_MAX_INPUT_BYTES = 2048 * MIB


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What every worker needs; pickled by value (the store travels as its URL).

    max_decoded_bytes: the decode budget, checked from headers before any pixel.
    max_input_bytes: inputs larger than this are refused unread.
    keep_rejected: keep a rejected input's bytes under quarantine/ (an upload's
        caller still has its file and gets the reason at once, so uploads do not).
    """

    store: ObjectStore
    pseudonymizer: Pseudonymizer
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    keep_rejected: bool = True


def encode_preview(rendered_image: Image.Image, window: tuple[float, float] | None) -> bytes:
    """The preview PNG as stored (fast compression, the window in a text chunk)."""
    info = PngImagePlugin.PngInfo()
    # The window rides in the PNG itself, so a re-run can rebuild the rendition row
    # from the stored preview without decoding the original again.
    info.add_text(_WINDOW_TEXT_KEY, "" if window is None else f"{window[0]!r},{window[1]!r}")
    buffer = io.BytesIO()
    rendered_image.save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


Preview = tuple[RenditionInfo, dict[str, float]]  # the rendition and its intensity stats


def _rendition_from_png(key: str, png: bytes) -> Preview:
    with Image.open(io.BytesIO(png)) as image:
        text = image.text.get(_WINDOW_TEXT_KEY, "") if hasattr(image, "text") else ""
        width, height = image.size
        stats = intensity_stats(image)
    center = width_mm = None
    if text:
        center_text, width_text = text.split(",")
        center, width_mm = float(center_text), float(width_text)
    return RenditionInfo(PREVIEW, key, width, height, center, width_mm), stats


def _make_preview(
    context: WorkerContext, sha256: str, open_pixels: Callable[[], PixelSource]
) -> Preview:
    key = preview_key(sha256)
    try:
        return _rendition_from_png(key, context.store.get_bytes(key))
    except ObjectNotFound:
        pass
    rendered = render(open_pixels(), size=PREVIEW_SIZE)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    png = encode_preview(rendered.image, window)
    context.store.put_bytes(key, png, sync=False)  # synced before the batch commits
    width, height = rendered.image.size
    rendition = RenditionInfo(PREVIEW, key, width, height, *(window or (None, None)))
    return rendition, intensity_stats(rendered.image)


def process_input(context: WorkerContext, item: InputFile) -> CataloguedInput | RejectedInput:
    """Ingest one file up to the catalog: every outcome is a value, never an exception.

    Raises:
        StorageError: the store failed; the job stops rather than quarantine everything.
    """
    try:
        size = os.stat(item.path).st_size
        if size > context.max_input_bytes:
            return RejectedInput(
                item.source_key,
                f"too large to ingest: {size:,} bytes > the {context.max_input_bytes:,}-byte "
                "input limit (RADLAKE_MAX_INPUT_MB); the file was left where it is",
                size_bytes=size,
            )
        with open(item.path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return RejectedInput(item.source_key, f"unreadable file: {exc.strerror}")
    except MemoryError:
        return RejectedInput(item.source_key, "not enough memory to read the file")
    return process_bytes(context, data, item.source_key)


def process_bytes(
    context: WorkerContext, data: bytes, source_key: str
) -> CataloguedInput | RejectedInput:
    """Ingest one input given as bytes (an upload, a DICOM association) up to the catalog.

    Raises:
        StorageError: the store failed.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        fmt = detect_format(data)
        metadata, open_pixels = reader_for(fmt).read(
            data, context.pseudonymizer, max_decoded_bytes=context.max_decoded_bytes
        )
        preview, stats = _make_preview(context, sha256, open_pixels)
        metadata = replace(metadata, attributes={**metadata.attributes, INTENSITY_KEY: stats})
        original_key = raw_key(sha256, fmt.extension)
        context.store.put_if_absent(original_key, data, sync=False)
    except StorageError:
        raise
    except ImageError as exc:
        return _reject(context, source_key, data, sha256, str(exc))
    except MemoryError:
        return _reject(
            context,
            source_key,
            data,
            sha256,
            "ran out of memory decoding it: lower the number of workers or RADLAKE_MAX_DECODED_MB",
        )
    except Exception as exc:
        # A reader bug must not lose the input or stop the batch: quarantine it, say so.
        return _reject(
            context, source_key, data, sha256, f"internal reader error ({type(exc).__name__})"
        )
    return CataloguedInput(
        sha256=sha256,
        size_bytes=len(data),
        source_key=source_key,
        original_key=original_key,
        metadata=metadata,
        renditions=(preview,),
    )


def _reject(
    context: WorkerContext, source_key: str, data: bytes, sha256: str, reason: str
) -> RejectedInput:
    stored = None
    if data and context.keep_rejected:
        stored = quarantine_key(sha256)
        context.store.put_if_absent(stored, data, sync=False)
    return RejectedInput(source_key, reason, sha256 if data else None, len(data), stored)


def crashed_input(item: InputFile, reason: str) -> RejectedInput:
    """The outcome of an input whose worker died (see executor.OnCrash)."""
    try:
        size: int | None = os.stat(item.path).st_size
    except OSError:
        size = None
    # The bytes are not copied to quarantine/: reading them again is what killed the
    # worker, and the file is still where it was.
    return RejectedInput(item.source_key, reason, size_bytes=size)
