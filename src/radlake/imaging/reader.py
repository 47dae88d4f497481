"""The reader interface: one class per format, chosen from content (see sniff.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from radlake.domain import ImageFormat, ImageMetadata
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource


class ImageReader(ABC):
    """Reads headers first (cheap) and pixels only when asked (to render)."""

    formats: ClassVar[tuple[ImageFormat, ...]]

    @abstractmethod
    def read_metadata(self, data: bytes, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        """Catalog fields of one image, free of direct identifiers.

        Raises:
            ImageError: the content cannot be read as an image of this format; the
                message is a quarantine reason a person can act on.
        """

    @abstractmethod
    def open_pixels(self, data: bytes) -> PixelSource:
        """The image's frames, decoded on demand.

        Raises:
            ImageError: the pixel data are missing, truncated or undecodable.
        """

    def read(
        self, data: bytes, pseudonymizer: Pseudonymizer
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        """Metadata now and pixels on demand, parsing the content once where possible.

        Raises:
            ImageError: as read_metadata.
        """
        return self.read_metadata(data, pseudonymizer), lambda: self.open_pixels(data)
