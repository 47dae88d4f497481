"""One stored-image service: the pixels of a catalogued image, and its renderings.

Every caller that turns a stored original into a picture goes through here: the CLI
(`radlake render`), the API (renderings and zips), exports and inference. The service
reads the original from the store, picks the reader by the catalogued format, keeps
the lake's decode budget, and holds an optional guard (the API's decode slot) around
the decode.

Render cache (issue 8): only presets are kept in the store, the preview-size picture
of the default slice, plane and window, as PNG (written at ingest) or JPEG: at most
two objects per image, so the cache is bounded by the catalog. A custom window,
slice, plane or size is rendered on the fly and never stored: any viewer could
otherwise mint a permanent object per request, and an LRU cap over a shared store
needs a size ledger that every API process and worker keeps consistent (S3 has no
atomic counters, no access times). A custom render costs one decode; the ETag, made
from the canonical options, lets browsers skip even that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from radlake.domain import ImageFormat, Plane
from radlake.errors import ObjectNotFound, RenderError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.formats import reader_for
from radlake.imaging.pixels import PixelSource, Window
from radlake.imaging.render import PREVIEW_SIZE, Rendered, render
from radlake.pipelines.worker import encode_preview
from radlake.storage.keys import preview_key
from radlake.storage.store import ObjectStore

RenderFormat = Literal["png", "jpeg"]
# The sizes a served rendering may have (longest side): a fixed set, so the number of
# distinct renderings and ETags of an image is bounded too. The API answers 422 for
# any other size rather than rounding up: a client asking 300 gets told, not a
# picture of another size than it asked for.
RENDER_SIZES = (64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True, slots=True)
class StoredImage:
    """What the service needs of a catalogued image (an ORM object or a plain row)."""

    sha256: str
    format: ImageFormat
    original_key: str

    @classmethod
    def of(cls, row: Any) -> StoredImage:
        """From anything with sha256, format and original_key attributes."""
        return cls(str(row.sha256), ImageFormat(row.format), str(row.original_key))


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to render: numbers, never text, so equal requests are equal values.

    size None keeps the stored size; slice_index None is the middle frame or slice;
    window None is the header's window, else a percentile window.
    """

    format: RenderFormat = "png"
    size: int | None = PREVIEW_SIZE
    slice_index: int | None = None
    plane: Plane = Plane.AXIAL
    window: Window | None = None
    true_aspect: bool = True

    @classmethod
    def parse(
        cls,
        *,
        format: RenderFormat = "png",
        size: int | None = PREVIEW_SIZE,
        slice_index: int | None = None,
        plane: Plane = Plane.AXIAL,
        window: str | None = None,
    ) -> RenderOptions:
        """Options from request text: "40,400", "+40,4e2" and "40.0,400" are one window.

        Raises:
            RenderError: the window is not CENTER,WIDTH with a positive width.
        """
        chosen = _canonical_window(Window.parse(window)) if window else None
        return cls(format, size, slice_index, plane, chosen)

    @property
    def canonical(self) -> str:
        """One text per distinct rendering (the ETag and any key are made from it)."""
        window = None if self.window is None else f"{self.window.center!r},{self.window.width!r}"
        aspect = "" if self.true_aspect else "|stored-aspect"
        text = f"{self.format}|{self.size}|{self.slice_index}|{self.plane.value}|{window}"
        return text + aspect

    @property
    def is_preset(self) -> bool:
        """The preview-size picture of the default slice, plane and window: stored."""
        return (
            self.size == PREVIEW_SIZE
            and self.slice_index is None
            and self.plane is Plane.AXIAL
            and self.window is None
            and self.true_aspect
        )

    def etag(self, sha256: str) -> str:
        """A strong ETag: the image and the canonical options (stable across releases
        for the preview: the same text as before options were canonical)."""
        digest = hashlib.sha256(self.canonical.encode()).hexdigest()[:16]
        return f'"{sha256[:16]}-{digest}"'


def _canonical_window(window: Window) -> Window:
    # -0.0 and 0.0 print differently; floats parsed from any spelling are otherwise one.
    return Window(window.center + 0.0, window.width + 0.0)


class StoredImages:
    """Loads and renders stored images under one decode budget and guard."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        decode_guard: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        """decode_guard: entered around every decode (the API passes decode_slot)."""
        self.store = store
        self.max_decoded_bytes = max_decoded_bytes
        self._guard = decode_guard or nullcontext

    def pixels(self, image: StoredImage) -> PixelSource:
        """The original's pixels, decoded lazily: hold the guard while using them.

        Raises:
            ObjectNotFound, StoreUnavailable, StorageError: the store failed.
            ImageError: the original is not a readable image of its format, or its
                pixels exceed max_decoded_bytes.
        """
        return reader_for(image.format).open_pixels(
            self.store.get_bytes(image.original_key), max_decoded_bytes=self.max_decoded_bytes
        )

    def render(self, image: StoredImage, options: RenderOptions) -> Rendered:
        """The original rendered with options, inside the decode guard; never stored.

        Raises:
            RenderError: the options do not fit the image (slice out of range, ...).
            ImageError, StorageError: as pixels().
        """
        with self._guard():
            return render(
                self.pixels(image),
                size=options.size,
                index=options.slice_index,
                plane=options.plane,
                window=options.window,
                true_aspect=options.true_aspect,
            )

    def encoded(self, image: StoredImage, options: RenderOptions) -> bytes:
        """render() encoded as options.format; never stored."""
        return self.render(image, options).encode(options.format)

    def rendering(self, image: StoredImage, options: RenderOptions) -> bytes:
        """Encoded picture: a preset is read from the store (made and kept on first
        request), anything else is rendered on the fly (see the module docstring).

        Raises:
            RenderError, ImageError, StorageError: as render().
        """
        if not options.is_preset:
            return self.encoded(image, options)
        key = preview_key(image.sha256, options.format)
        try:
            return self.store.get_bytes(key)
        except ObjectNotFound:
            pass
        rendered = self.render(image, options)
        if options.format == "png":
            # The same bytes ingest writes (worker._make_preview), window chunk included.
            used = rendered.window
            window = None if used is None else (used.center, used.width)
            data = encode_preview(rendered.image, window)
        else:
            data = rendered.encode(options.format)
        self.store.put_bytes(key, data)
        return data

    def preview(self, image: StoredImage) -> bytes:
        """The stored preview PNG (made and kept if it is missing).

        Raises:
            RenderError, ImageError, StorageError: as render().
        """
        return self.rendering(image, RenderOptions())


def check_size(size: int) -> int:
    """size when it is one of RENDER_SIZES.

    Raises:
        RenderError: any other size.
    """
    if size not in RENDER_SIZES:
        sizes = ", ".join(map(str, RENDER_SIZES))
        raise RenderError(f"expected a size among {sizes}, got {size}")
    return size
