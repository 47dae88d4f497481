"""NIfTI-1 and NIfTI-2 volumes (plain or gzip-compressed), read with nibabel.

Volumes are shown in RAS+ orientation, radiological convention: axial slices with
anterior up and the patient's right on the viewer's left; slice k is voxel k along
the superior axis. 4-D data render their first volume (b0 for diffusion series).
"""

from __future__ import annotations

import gzip
import struct
import warnings
import zlib
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import CorruptImage, RenderError
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource
from radlake.imaging.reader import ImageReader
from radlake.imaging.sniff import is_gzip

_RAS = np.array([[0, 1], [1, 1], [2, 1]])


def _load(data: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    try:
        raw = gzip.decompress(data) if is_gzip(data[:2]) else data
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptImage(f"truncated or corrupt gzip stream: {exc}") from exc
    (size,) = struct.unpack("<i", raw[:4])
    little = size in (348, 540)
    if not little:
        (size,) = struct.unpack(">i", raw[:4])
    image_class = nib.Nifti2Image if size == 540 else nib.Nifti1Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = image_class.from_bytes(raw)
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError, ...
        raise CorruptImage(f"unreadable NIfTI header: {exc}") from exc
    expected = image.header.get_data_offset() + int(
        np.prod(image.shape) * image.header.get_data_dtype().itemsize
    )
    if len(raw) < expected:
        raise CorruptImage(f"truncated NIfTI: {len(raw)} bytes of the {expected} its header needs")
    return image


class NiftiPixels(PixelSource):
    """A 3-D volume as a stack of axial slices (first volume of 4-D data)."""

    bottom_up = True

    def __init__(self, image: nib.Nifti1Image | nib.Nifti2Image) -> None:
        proxy = image.dataobj
        first = proxy[(...,) + (0,) * (len(image.shape) - 3)] if len(image.shape) > 3 else proxy
        volume = np.asarray(first, dtype=np.float64)
        while volume.ndim < 3:
            volume = volume[..., np.newaxis]
        ornt = ornt_transform(io_orientation(image.affine), _RAS)
        ras = apply_orientation(volume, ornt)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        zooms += [1.0] * (3 - len(zooms))
        # ornt[i, 0] is the output axis of input axis i.
        ras_zooms = np.array(zooms)[np.argsort(ornt[:, 0])]
        # (x, y, z) in RAS -> (z, rows = posterior->anterior flipped, cols = x flipped).
        self._stack: np.ndarray = np.ascontiguousarray(np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1])
        self.frame_count = self._stack.shape[0]
        self.spacing = (float(ras_zooms[2]), float(ras_zooms[1]), float(ras_zooms[0]))

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frame_count:
            raise RenderError(f"expected a slice in 0..{self.frame_count - 1}, got {index}")
        return np.asarray(self._stack[index])

    def volume(self) -> np.ndarray:
        return self._stack


class NiftiReader(ImageReader):
    """NIfTI-1/NIfTI-2, .nii or .nii.gz, 2-D to 7-D."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.NIFTI,)

    def read_metadata(self, data: bytes, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        image = _load(data)
        header = image.header
        shape = tuple(int(n) for n in image.shape)
        zooms = tuple(float(z) for z in header.get_zooms())
        padded = shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape
        attributes: dict[str, Any] = {
            "nifti_version": 2 if isinstance(image, nib.Nifti2Image) else 1,
            "shape": list(shape),
            "zooms": list(zooms),
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
            "units": list(header.get_xyzt_units()),
            "compressed": is_gzip(data[:2]),
        }
        intent = header.get_intent()[0]
        if intent and intent != "none":
            attributes["intent"] = intent
        return ImageMetadata(
            format=ImageFormat.NIFTI,
            rows=padded[1],
            columns=padded[0],
            slices=padded[2],
            volumes=int(np.prod(padded[3:])) if len(padded) > 3 else 1,
            pixel_spacing_row=zooms[1] if len(zooms) > 1 else None,
            pixel_spacing_col=zooms[0] if zooms else None,
            slice_thickness=zooms[2] if len(zooms) > 2 else None,
            dtype=str(header.get_data_dtype()),
            orientation="".join(nib.aff2axcodes(image.affine)),
            attributes=attributes,
        )

    def open_pixels(self, data: bytes) -> PixelSource:
        return NiftiPixels(_load(data))
