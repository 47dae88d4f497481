"""Pick the reader for some content: sniff, then dispatch on the detected format."""

from __future__ import annotations

from radlake.domain import ImageFormat
from radlake.errors import UnsupportedFormat
from radlake.imaging.dicom import DicomReader
from radlake.imaging.nifti import NiftiReader
from radlake.imaging.raster import RasterReader
from radlake.imaging.reader import ImageReader
from radlake.imaging.sniff import SNIFF_BYTES, sniff_format

_READERS: dict[ImageFormat, ImageReader] = {}
for _reader in (DicomReader(), NiftiReader(), RasterReader()):
    for _fmt in _reader.formats:
        _READERS[_fmt] = _reader


def detect_format(data: bytes) -> ImageFormat:
    """The format of some content.

    Raises:
        UnsupportedFormat: empty, or the content matches no supported format.
    """
    if not data:
        raise UnsupportedFormat("empty file (0 bytes)")
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        raise UnsupportedFormat(
            "not an image: content matches no supported format (DICOM, NIfTI, PNG, JPEG)"
        )
    return fmt


def reader_for(fmt: ImageFormat) -> ImageReader:
    """The reader for a detected format."""
    return _READERS[fmt]
