"""Hostile and malformed inputs at the reader (issue 7): the decode budget, decoder
errors, UIDs.

Every poison file is written here, small on disk, without ever holding the pixels it
claims: long runs of zeros are deflated once and the compressed block repeated (each
block follows a full flush, so it stands alone in the stream).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
)

from radlake.domain import ImageFormat
from radlake.errors import CorruptImage, ImageError, RenderError, TooLargeToDecode
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES, MIB
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import render
from tests.conftest import ROOT, SECRET, pydicom_file

PSEUDONYMIZER = Pseudonymizer(SECRET)
ZERO_PIECE = MIB
PEAK_RSS_LIMIT = 300 * MIB


def _refusal(figures: str, budget: str) -> str:
    """The TooLargeToDecode message for figures written as 16000x16000x1x1."""
    return f"too large to decode safely: {figures.replace('x', chr(0xD7))} B > budget ({budget})"


# --- writing poison without holding it ------------------------------------------


def _deflated_zeros(count: int, *, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of prefix followed by count zero bytes, final block last."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeated = block.compress(bytes(ZERO_PIECE)) + block.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(count % ZERO_PIECE)) + last.flush()
    return stream + repeated * (count // ZERO_PIECE) + tail


def _adler32_of_zeros(count: int) -> int:
    # RFC 1950 8.2: a = 1 + sum of bytes = 1; b = sum of the running a = count.
    return ((count % 65521) << 16) | 1


def _png_claiming(side: int, *, bit_depth: int = 16, colour: int = 0) -> bytes:
    """A complete PNG of side x side zeros (every row: filter 0, then zero samples)."""
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw_size = side * (1 + side * samples * bit_depth // 8)
    idat = b"\x78\xda" + _deflated_zeros(raw_size) + struct.pack(">I", _adler32_of_zeros(raw_size))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real tiny JPEG whose frame header (SOF0) is patched to claim width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _gzip(stream: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream + struct.pack("<II", crc, size)


def _nifti_gz_claiming(shape: tuple[int, ...], dtype: str, zeros: int) -> bytes:
    """A .nii.gz whose header claims shape x dtype, followed by zeros voxel bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    head = header.binaryblock + b"\x00" * 4  # no extensions
    crc = zlib.crc32(head)
    zero_piece = bytes(ZERO_PIECE)
    for _ in range(zeros // ZERO_PIECE):
        crc = zlib.crc32(zero_piece, crc)
    crc = zlib.crc32(bytes(zeros % ZERO_PIECE), crc)
    return _gzip(_deflated_zeros(zeros, prefix=head), crc, (len(head) + zeros) % 2**32)


def _part10(ds: Dataset, transfer_syntax: str, body: bytes | None = None) -> bytes:
    """A DICOM file with any transfer syntax, even one pydicom cannot write itself."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    if body is None:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
        body = out.getvalue()
    return head.getvalue() + body


def _small_ct(**values: object) -> Dataset:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.remove_private_tags()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _encapsulated(ds: Dataset, codestream: bytes, transfer_syntax: str) -> bytes:
    ds.add_new(0x7FE00010, "OB", encapsulate([codestream]))
    ds["PixelData"].is_undefined_length = True
    return _part10(ds, transfer_syntax)


def _jpeg_stream(sof: int, bits: int, side: int, components: int = 1) -> bytes:
    frame = struct.pack(">BHHB", bits, side, side, components) + b"\x01\x11\x00" * components
    return b"\xff\xd8" + struct.pack(">BBH", 0xFF, sof, 2 + len(frame)) + frame + b"\xff\xd9"


def _j2k_stream(bits: int, side: int) -> bytes:
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, side, side, 0, 0, 1)
    siz += bytes([bits - 1, 1, 1])
    return b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(siz)) + siz + b"\xff\xd9"


def _deflated_dicom(pixel_bytes: int) -> bytes:
    """A deflated data set (PS3.5 A.5) whose Pixel Data inflates to pixel_bytes zeros."""
    ds = _small_ct()
    del ds.PixelData
    side = math.isqrt(pixel_bytes // 2)
    ds.Rows = ds.Columns = side
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    body = _deflated_zeros(pixel_bytes, prefix=out.getvalue() + pixel_header)
    return _part10(ds, DeflatedExplicitVRLittleEndian, body)


def _read(data: bytes, **budget: int) -> None:
    reader = reader_for(detect_format(data))
    _, open_pixels = reader.read(data, PSEUDONYMIZER, **budget)
    render(open_pixels())


def _every_entry_point(data: bytes, **budget: int) -> list[str]:
    """The refusal of read, read_metadata and open_pixels, each one checking alone."""
    reader = reader_for(detect_format(data))
    messages = []
    calls: list[Callable[[], object]] = [
        lambda: reader.read(data, PSEUDONYMIZER, **budget),
        lambda: reader.read_metadata(data, PSEUDONYMIZER, **budget),
        lambda: reader.open_pixels(data, **budget),
    ]
    for call in calls:
        with pytest.raises(TooLargeToDecode) as caught:
            call()
        messages.append(str(caught.value))
    return messages


# --- the budget, from headers --------------------------------------------------


class TestDecodeBudget:
    def test_jpeg_claiming_16000_squared(self) -> None:
        data = _jpeg_claiming(16000, 16000)
        assert len(data) < 1000
        # 244 MiB of 8-bit samples: under the 1024 MiB default, over a 128 MiB budget.
        expected = _refusal("16000x16000x1x1", "128 MiB")
        assert _every_entry_point(data, max_decoded_bytes=128 * MIB) == [expected] * 3
        huge = _jpeg_claiming(40000, 40000)
        assert _every_entry_point(huge)[0] == (_refusal("40000x40000x1x1", "1024 MiB"))

    def test_sixteen_bit_png_claiming_16384_squared(self) -> None:
        data = _png_claiming(16384)
        assert len(data) < 1024 * 1024  # 512 MiB of zeros, deflated
        messages = _every_entry_point(data, max_decoded_bytes=256 * MIB)
        assert messages[0] == _refusal("16384x16384x1x2", "256 MiB")
        rgba = _png_claiming(16384, colour=6)  # 2 GiB of 16-bit RGBA: over the default
        assert _every_entry_point(rgba)[0] == (_refusal("16384x16384x4x2", "1024 MiB"))

    @pytest.mark.parametrize(
        ("transfer_syntax", "codestream", "figures"),
        [
            (JPEGLosslessSV1, _jpeg_stream(0xC3, 16, 30000), "30000x30000x1x1x2"),
            (JPEGLSLossless, _jpeg_stream(0xF7, 16, 30000), "30000x30000x1x1x2"),
            (JPEG2000Lossless, _j2k_stream(16, 30000), "30000x30000x1x1x2"),
        ],
        ids=["jpeg-lossless-SOF3", "jpeg-ls-SOF55", "jpeg-2000-SIZ"],
    )
    def test_dicom_whose_codestream_claims_more_than_its_header(
        self, transfer_syntax: str, codestream: bytes, figures: str
    ) -> None:
        data = _encapsulated(_small_ct(Rows=64, Columns=64), codestream, transfer_syntax)
        assert len(data) < 5000
        messages = _every_entry_point(data)
        assert messages == [_refusal(figures, "1024 MiB")] * 3

    def test_dicom_baseline_jpeg_claim_counts_against_a_smaller_budget(self) -> None:
        ds = _small_ct(Rows=64, Columns=64, BitsAllocated=8, BitsStored=8, HighBit=7)
        data = _encapsulated(ds, _jpeg_stream(0xC0, 8, 30000), JPEGBaseline8Bit)
        message = _every_entry_point(data, max_decoded_bytes=512 * MIB)[0]
        assert message == _refusal("30000x30000x1x1x1", "512 MiB")

    def test_native_dicom_whose_frames_exceed_the_budget(self) -> None:
        ds = _small_ct(Rows=4096, Columns=4096, NumberOfFrames=100)
        data = _part10(ds, ExplicitVRLittleEndian)
        assert len(data) < 50_000  # the header claims 3.2 GB; the pixels are 32 KB
        assert _every_entry_point(data) == [_refusal("4096x4096x100x1x2", "1024 MiB")] * 3

    def test_deflated_dicom_inflating_past_the_budget(self) -> None:
        data = _deflated_dicom(128 * MIB)
        assert len(data) < 200_000
        message = _every_entry_point(data, max_decoded_bytes=64 * MIB)[0]
        assert message.startswith("too large to decode safely: ")
        assert "deflated data set inflates to over 67108864 B > budget (64 MiB)" in message

    def test_nifti_gz_claiming_1024_cubed_floats(self) -> None:
        data = _nifti_gz_claiming((1024, 1024, 1024), "float32", zeros=1024 * MIB)
        assert len(data) < 1.5 * MIB
        assert _every_entry_point(data) == [_refusal("1024x1024x1024x4", "1024 MiB")] * 3

    def test_a_smaller_budget_refuses_a_real_image_the_default_accepts(self) -> None:
        data = Path(str(pydicom.data.get_testdata_file("RG1_UNCR.dcm"))).read_bytes()
        message = _every_entry_point(data, max_decoded_bytes=4 * MIB)[0]
        assert message == _refusal("1955x1841x1x1x2", "4 MiB")
        _read(data)  # 7 MB of pixels: well within the default
        _read(data, max_decoded_bytes=DEFAULT_MAX_DECODED_BYTES)

    def test_poison_is_refused_without_allocating(self, tmp_path: Path) -> None:
        """In a fresh process, peak RSS stays near the interpreter's own footprint."""
        cases = {
            "bomb.jpg": (_jpeg_claiming(16000, 16000), 128 * MIB),
            "bomb.png": (_png_claiming(16384), 256 * MIB),
            "bomb.nii.gz": (
                _nifti_gz_claiming((1024, 1024, 1024), "float32", 1024 * MIB),
                DEFAULT_MAX_DECODED_BYTES,
            ),
            "bomb-deflated.dcm": (_deflated_dicom(256 * MIB), 64 * MIB),
        }
        for name, (data, _) in cases.items():
            (tmp_path / name).write_bytes(data)
        script = """
import json, sys
from radlake.errors import TooLargeToDecode
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import render

def peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

for path, budget in json.loads(sys.argv[1]):
    data = open(path, "rb").read()
    try:
        metadata, open_pixels = reader_for(detect_format(data)).read(
            data, Pseudonymizer(b"k"), max_decoded_bytes=budget
        )
        render(open_pixels())
        outcome = "accepted"
    except TooLargeToDecode as exc:
        outcome = str(exc)
    print(json.dumps({"path": path, "outcome": outcome, "peak": peak()}))
"""
        arguments = [[str(tmp_path / name), budget] for name, (_, budget) in cases.items()]
        result = subprocess.run(
            [sys.executable, "-c", script, json.dumps(arguments)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == len(cases)
        for row in rows:
            assert row["outcome"].startswith("too large to decode safely"), row
            assert row["peak"] < PEAK_RSS_LIMIT, row


# --- deflate: bounded, and real files catalogue and render ----------------------


class TestDeflate:
    def test_deflated_data_set_within_budget_catalogues_and_renders(self) -> None:
        data = pydicom_file("image_dfl.dcm").read_bytes()
        metadata, open_pixels = reader_for(detect_format(data)).read(data, PSEUDONYMIZER)
        assert metadata.transfer_syntax == "Deflated Explicit VR Little Endian"
        assert (metadata.rows, metadata.columns) == (512, 512)
        assert np.asarray(render(open_pixels()).image).std() > 5

    def test_deflated_image_frame_compression_renders_like_the_native_file(self) -> None:
        # PS3.5 8.2.16 (pydicom-data's liver_deflate.dcm): each frame deflated alone.
        # pydicom 3.0 has no decoder for it, and asking it failed with "UID is not a
        # transfer syntax".
        native = Path(str(pydicom.data.get_testdata_file("liver.dcm"))).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(native))
        frame_bytes = ds.Rows * ds.Columns // 8  # 1 bit per pixel, packed
        frames = []
        for number in range(int(ds.NumberOfFrames)):
            deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = ds.PixelData[number * frame_bytes : (number + 1) * frame_bytes]
            frames.append(deflater.compress(packed) + deflater.flush())
        ds.add_new(0x7FE00010, "OB", encapsulate(frames))
        ds["PixelData"].is_undefined_length = True
        data = _part10(ds, "1.2.840.10008.1.2.8.1")

        reader = reader_for(detect_format(data))
        metadata, open_pixels = reader.read(data, PSEUDONYMIZER)
        assert metadata.transfer_syntax == "Deflated Image Frame Compression"
        assert metadata.frames == 3
        deflated, plain = open_pixels(), reader.open_pixels(native)
        for index in range(3):
            assert np.array_equal(deflated.frame(index), plain.frame(index))
            assert np.array_equal(
                np.asarray(render(deflated, index=index).image),
                np.asarray(render(plain, index=index).image),
            )

    def test_truncated_deflated_data_set_is_corrupt(self) -> None:
        data = pydicom_file("image_dfl.dcm").read_bytes()
        with pytest.raises(CorruptImage, match="deflated data set"):
            reader_for(ImageFormat.DICOM).read(data[: len(data) // 2], PSEUDONYMIZER)

    def test_a_deflated_frame_cannot_inflate_past_its_size(self) -> None:
        ds = _small_ct()
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        frame = deflater.compress(bytes(64 * MIB)) + deflater.flush()  # 128 x 128 x 2 claimed
        del ds.PixelData
        ds.add_new(0x7FE00010, "OB", encapsulate([frame]))
        ds["PixelData"].is_undefined_length = True
        data = _part10(ds, "1.2.840.10008.1.2.8.1")
        rendered = render(reader_for(ImageFormat.DICOM).open_pixels(data))
        assert rendered.image.size == (512, 512)  # the first 32 KB, and nothing more


# --- decoder and render errors are ImageError with a reason ---------------------


def _mr_small(**values: object) -> Dataset:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    with warnings.catch_warnings():  # pydicom warns about the invalid values set here
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer)
    return buffer.getvalue()


class TestDecoderErrors:
    def test_voi_lut_sequence_with_one_empty_item(self) -> None:
        data = _bytes(_mr_small(VOILUTSequence=[Dataset()]))
        _, open_pixels = reader_for(ImageFormat.DICOM).read(data, PSEUDONYMIZER)
        with pytest.raises(CorruptImage, match="VOI LUT Sequence"):
            render(open_pixels())

    def test_palette_colour_without_its_palette(self) -> None:
        data = _bytes(_mr_small(PhotometricInterpretation="PALETTE COLOR"))
        _, open_pixels = reader_for(ImageFormat.DICOM).read(data, PSEUDONYMIZER)
        with pytest.raises(CorruptImage, match="PALETTE COLOR"):
            render(open_pixels())

    def test_rescale_slope_that_is_not_a_number(self) -> None:
        data = _bytes(_mr_small(RescaleSlope="9.87", RescaleIntercept="0"))
        data = data.replace(b"9.87", b"abc ")
        _, open_pixels = reader_for(ImageFormat.DICOM).read(data, PSEUDONYMIZER)  # catalogued
        with pytest.raises(CorruptImage, match="malformed RescaleSlope"):
            render(open_pixels())

    def test_window_centre_that_is_not_a_number_falls_back_to_percentiles(self) -> None:
        data = _bytes(_mr_small(WindowCenter="9.87", WindowWidth="400")).replace(b"9.87", b"abc ")
        rendered = render(reader_for(ImageFormat.DICOM).open_pixels(data))
        assert rendered.window is not None and rendered.window.width != 400

    @pytest.mark.parametrize(
        "values",
        [
            {"BitsAllocated": 7},
            {"BitsAllocated": 64, "BitsStored": 64},
            {"SamplesPerPixel": 3},
            {"PixelRepresentation": 5},
            {"HighBit": 40},
            {"Rows": 65, "Columns": 63},
            {"NumberOfFrames": 4},
            {"PhotometricInterpretation": "YBR_FULL_422"},
            {"WindowCenter": "40", "WindowWidth": "-1"},
            {"ModalityLUTSequence": [Dataset()]},
            {"VOILUTSequence": [Dataset(), Dataset()]},
            {"RescaleIntercept": "1e999"},
        ],
        ids=repr,
    )
    def test_malformed_pixel_modules_render_or_say_why(self, values: dict[str, object]) -> None:
        data = _bytes(_mr_small(**values))
        reader = reader_for(ImageFormat.DICOM)
        try:
            _, open_pixels = reader.read(data, PSEUDONYMIZER)
            source = open_pixels()
            for size in (None, 32):
                render(source, size=size)
        except ImageError as exc:
            assert str(exc)  # a reason a person can act on, and no traceback
            assert "MR_small" not in str(exc)

    def test_truncated_raster_fails_at_render_with_a_reason(self) -> None:
        noise = np.random.default_rng(3).integers(0, 2**16, (64, 64), dtype=np.uint16)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "PNG")
        data = buffer.getvalue()[:4000]  # of about 8 KB
        _, open_pixels = reader_for(ImageFormat.PNG).read(data, PSEUDONYMIZER)
        with pytest.raises(CorruptImage, match="undecodable raster image"):
            render(open_pixels())

    def test_nifti_with_a_voxel_type_that_is_not_a_number(self) -> None:
        volume = np.zeros((4, 4, 4, 3), np.uint8).view([("R", "u1"), ("G", "u1"), ("B", "u1")])
        data = nib.Nifti1Image(volume[..., 0], np.eye(4)).to_bytes()
        reader = reader_for(ImageFormat.NIFTI)
        try:
            render(reader.open_pixels(data))
        except ImageError as exc:
            assert str(exc)

    def test_a_panicking_rle_decoder_is_a_corrupt_image(self) -> None:
        # pylibjpeg-rle (Rust) panics on this segment (a literal run past the frame);
        # pyo3 raises the panic as a BaseException, which `except Exception` misses.
        ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
        fragment = bytearray(next(itertools.islice(generate_fragments(ds.PixelData), 1, 2)))
        fragment[2013] = 66
        ds.PixelData = encapsulate([bytes(fragment)])
        source = reader_for(ImageFormat.DICOM).open_pixels(_bytes(ds))
        with pytest.raises(CorruptImage, match="truncated or malformed pixel data"):
            render(source)

    def test_out_of_range_frame_is_still_a_render_error(self) -> None:
        source = reader_for(ImageFormat.DICOM).open_pixels(_bytes(_mr_small()))
        with pytest.raises(RenderError, match=r"0\.\.0"):
            render(source, index=3)


# --- UIDs ------------------------------------------------------------------------


class TestUids:
    def test_uid_over_64_characters_is_refused_with_the_rule(self) -> None:
        data = _bytes(_mr_small(SeriesInstanceUID="1.2." + "3" * 72))
        with pytest.raises(CorruptImage) as caught:
            reader_for(ImageFormat.DICOM).read(data, PSEUDONYMIZER)
        assert str(caught.value) == (
            "invalid SeriesInstanceUID: 76 characters, PS3.5 9.1 allows at most 64"
        )

    def test_64_characters_and_nul_padding_are_fine(self) -> None:
        longest = "1." + "2" * 62
        data = _bytes(_mr_small(StudyInstanceUID=longest, SOPInstanceUID="1.2.3.4"))
        data = data.replace(b"1.2.3.4\x00", b"1.2.3\x00\x00\x00")
        metadata = reader_for(ImageFormat.DICOM).read_metadata(data, PSEUDONYMIZER)
        assert metadata.study_uid == longest
        assert metadata.sop_instance_uid == "1.2.3"

    def test_non_conformant_but_common_uids_are_kept(self) -> None:
        odd = "1.2.840.0123.04"  # leading zeros in components: invalid, and common
        metadata = reader_for(ImageFormat.DICOM).read_metadata(
            _bytes(_mr_small(SeriesInstanceUID=odd)), PSEUDONYMIZER
        )
        assert metadata.series_uid == odd
