"""NIfTI-1 and NIfTI-2 volumes (plain or gzip-compressed), read with nibabel.

Volumes are shown in RAS+ orientation, radiological convention: axial slices with
anterior up and the patient's right on the viewer's left; slice k is voxel k along
the superior axis. 4-D data render their first volume (b0 for diffusion series).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import CorruptImage, RenderError, TooLargeToDecode
from radlake.imaging.budget import (
    DEFAULT_MAX_DECODED_BYTES,
    check_decoded_size,
    describe_bytes,
    inflate_prefix,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource, decoding, safe_message
from radlake.imaging.reader import ImageReader
from radlake.imaging.sniff import is_gzip

_RAS = np.array([[0, 1], [1, 1], [2, 1]])
_GZIP_WBITS = zlib.MAX_WBITS | 16
_HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
NiftiHeader: TypeAlias = nib.Nifti1Header | nib.Nifti2Header


def _header(head: bytes | bytearray) -> NiftiHeader:
    """The NIfTI-1 or NIfTI-2 header at the start of the (inflated) content."""
    try:
        (size,) = struct.unpack_from("<i", head)
        if size not in _HEADER_SIZES:
            (size,) = struct.unpack_from(">i", head)
        header_class = _HEADER_SIZES[size]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Exactly the header's bytes: extensions, if any, lie between it and the data.
            header: NiftiHeader = header_class.from_fileobj(io.BytesIO(bytes(head[:size])))
            header.get_data_shape()
    except Exception as exc:  # struct.error, KeyError, nibabel's HeaderDataError, ...
        raise CorruptImage(f"unreadable NIfTI header: {safe_message(exc)}") from exc
    return header


def _load(data: bytes, max_decoded_bytes: int) -> tuple[NiftiHeader, bytes | bytearray]:
    """The header, checked against the budget, then the content up to the last voxel.

    A .nii.gz is inflated only as far as its header says the voxels reach, never past
    the budget: a 1 MB file claiming 1024^3 float voxels is refused from its first
    bytes.
    """
    compressed = is_gzip(data[:2])
    try:
        head = inflate_prefix(data, _GZIP_WBITS, 544) if compressed else data[:544]
    except (zlib.error, EOFError) as exc:
        raise CorruptImage(f"truncated or corrupt gzip stream: {exc}") from exc
    header = _header(head)
    shape = [int(n) for n in header.get_data_shape()]
    itemsize = int(header.get_data_dtype().itemsize)
    check_decoded_size([*shape, itemsize], max_decoded_bytes)
    offset = int(header.get_data_offset())
    if offset > max_decoded_bytes:  # extensions before the voxels are bytes to inflate too
        raise TooLargeToDecode(
            f"too large to decode safely: voxels start at byte {offset} > budget "
            f"({describe_bytes(max_decoded_bytes)})"
        )
    expected = offset + math.prod(shape) * itemsize
    raw: bytes | bytearray = data
    if compressed:
        try:
            raw = inflate_prefix(data, _GZIP_WBITS, expected)
        except (zlib.error, EOFError) as exc:
            raise CorruptImage(f"truncated or corrupt gzip stream: {exc}") from exc
    if len(raw) < expected:
        if bytes(head[344:347]) == b"ni1":  # NIfTI-1 magic of a .hdr/.img pair
            raise CorruptImage(
                "NIfTI header of a .hdr/.img pair: its voxels are in the .img file; "
                "convert the pair to a single .nii or .nii.gz to ingest it"
            )
        raise CorruptImage(f"truncated NIfTI: {len(raw)} bytes of the {expected} its header needs")
    return header, raw


class NiftiPixels(PixelSource):
    """A 3-D volume as a stack of axial slices (first volume of 4-D data)."""

    bottom_up = True

    def __init__(self, header: NiftiHeader, raw: bytes | bytearray) -> None:
        with decoding("unrenderable NIfTI voxels"):
            self._setup(header, raw)

    def _setup(self, header: NiftiHeader, raw: bytes | bytearray) -> None:
        shape = tuple(int(n) for n in header.get_data_shape())
        voxels = np.frombuffer(
            raw, header.get_data_dtype(), math.prod(shape), int(header.get_data_offset())
        ).reshape(shape, order="F")
        first = voxels[(...,) + (0,) * (len(shape) - 3)] if len(shape) > 3 else voxels
        # float32: the first volume only, scaled as nibabel's array proxy would.
        volume = first.astype(np.float32)
        slope, inter = header.get_slope_inter()
        if slope is not None and slope != 1:
            volume *= np.float32(slope)
        if inter is not None and inter != 0:
            volume += np.float32(inter)
        while volume.ndim < 3:
            volume = volume[..., np.newaxis]
        ornt = ornt_transform(io_orientation(header.get_best_affine()), _RAS)
        ras = apply_orientation(volume, ornt)
        zooms = [float(z) for z in header.get_zooms()[:3]]
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

    def read_metadata(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ImageMetadata:
        header, _ = _load(data, max_decoded_bytes)  # also proves the voxels are all there
        return _metadata(header, compressed=is_gzip(data[:2]))

    def read(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        # One inflate serves both the catalog fields and the preview.
        header, raw = _load(data, max_decoded_bytes)
        return _metadata(header, compressed=is_gzip(data[:2])), lambda: NiftiPixels(header, raw)

    def open_pixels(
        self, data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    ) -> PixelSource:
        return NiftiPixels(*_load(data, max_decoded_bytes))


def _metadata(header: NiftiHeader, *, compressed: bool) -> ImageMetadata:
    with decoding("unreadable NIfTI header"):
        shape = tuple(int(n) for n in header.get_data_shape())
        zooms = tuple(float(z) for z in header.get_zooms())
        affine = header.get_best_affine()
        padded = shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape
        attributes: dict[str, Any] = {
            "nifti_version": 2 if isinstance(header, nib.Nifti2Header) else 1,
            "shape": list(shape),
            "zooms": list(zooms),
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
            "units": list(header.get_xyzt_units()),
            "compressed": compressed,
        }
        intent = header.get_intent()[0]
        if intent and intent != "none":
            attributes["intent"] = intent
        return ImageMetadata(
            format=ImageFormat.NIFTI,
            rows=padded[1],
            columns=padded[0],
            slices=padded[2],
            volumes=math.prod(padded[3:]) if len(padded) > 3 else 1,
            pixel_spacing_row=zooms[1] if len(zooms) > 1 else None,
            pixel_spacing_col=zooms[0] if zooms else None,
            slice_thickness=zooms[2] if len(zooms) > 2 else None,
            dtype=str(header.get_data_dtype()),
            orientation="".join(nib.aff2axcodes(affine)),
            attributes=attributes,
        )
