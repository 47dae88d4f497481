"""The reader interface: one class per format, chosen from content (see sniff.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from radlake.domain import ImageFormat, ImageMetadata
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource


class ImageReader(ABC):
    """Reads headers first (cheap) and pixels only when asked (to render).

    Every entry point takes the decode budget (max_decoded_bytes, see budget.py) and
    refuses, from headers alone, content whose pixels would decode to more.
    """

    formats: ClassVar[tuple[ImageFormat, ...]]

    @abstractmethod
    def read_metadata(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ImageMetadata:
        """Catalog fields of one image, free of direct identifiers.

        Raises:
            TooLargeToDecode: the headers claim more decoded bytes than the budget.
            ImageError: the content cannot be read as an image of this format; the
                message is a quarantine reason a person can act on.
        """

    @abstractmethod
    def open_pixels(
        self, data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    ) -> PixelSource:
        """The image's frames, decoded on demand.

        Raises:
            TooLargeToDecode: the headers claim more decoded bytes than the budget.
            ImageError: the pixel data are missing, truncated or undecodable.
        """

    def read(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        """Metadata now and pixels on demand, parsing the content once where possible.

        The budget is checked here, before anything is decoded, and again by the
        pixel opener.

        Raises:
            TooLargeToDecode, ImageError: as read_metadata.
        """
        metadata = self.read_metadata(data, pseudonymizer, max_decoded_bytes=max_decoded_bytes)
        return metadata, lambda: self.open_pixels(data, max_decoded_bytes=max_decoded_bytes)
