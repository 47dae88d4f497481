"""Format sniffing, readers and rendering on real files and tiny generated PNGs."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pytest
from PIL import Image

from radlake.domain import ImageFormat, Plane
from radlake.errors import CorruptImage, NoPixelData, RenderError, UnsupportedFormat
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.pixels import Window
from radlake.imaging.render import apply_window, render
from tests.conftest import SECRET, pydicom_file, shared

NIBABEL_DATA = Path(nibabel.testing.data_path)
PSEUDONYMIZER = Pseudonymizer(SECRET)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(rendered_image: Image.Image) -> np.ndarray:
    return np.asarray(rendered_image)


class TestSniffing:
    def test_dicom_with_preamble(self) -> None:
        assert detect_format(pydicom_file("CT_small.dcm").read_bytes()) is ImageFormat.DICOM

    def test_dicom_without_preamble_little_and_big_endian(self) -> None:
        for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"):
            assert detect_format(pydicom_file(name).read_bytes()) is ImageFormat.DICOM, name

    def test_nifti_plain_gzip_and_nifti2(self) -> None:
        for name in ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz"):
            assert detect_format((NIBABEL_DATA / name).read_bytes()) is ImageFormat.NIFTI, name

    def test_png_and_jpeg_by_content_not_name(self, tmp_path: Path) -> None:
        png = _png(np.zeros((4, 4), np.uint8))
        assert detect_format(png) is ImageFormat.PNG
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, format="JPEG")
        assert detect_format(buffer.getvalue()) is ImageFormat.JPEG

    def test_empty_and_random_bytes_are_refused_with_reasons(self) -> None:
        with pytest.raises(UnsupportedFormat, match="empty file"):
            detect_format(b"")
        random = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        with pytest.raises(UnsupportedFormat, match="not an image"):
            detect_format(random)


class TestDicom:
    def test_metadata_has_pseudonym_never_identifiers(self) -> None:
        data = pydicom_file("CT_small.dcm").read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        meta = reader_for(ImageFormat.DICOM).read_metadata(data, PSEUDONYMIZER)
        assert meta.modality == "CT"
        assert (meta.rows, meta.columns, meta.frames) == (128, 128, 1)
        assert meta.study_uid == ds.StudyInstanceUID
        assert meta.series_uid == ds.SeriesInstanceUID
        assert meta.patient_pseudonym == PSEUDONYMIZER(ds.PatientID)
        assert meta.patient_pseudonym != ds.PatientID
        flat = repr(meta)
        assert str(ds.PatientName) not in flat
        assert str(ds.PatientID) not in flat
        assert meta.transfer_syntax == "Explicit VR Little Endian"
        assert meta.pixel_spacing_row == pytest.approx(float(ds.PixelSpacing[0]))

    def test_pydicom_transfer_syntaxes_render_identically(self) -> None:
        names = [
            "MR_small.dcm",
            "MR_small_implicit.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_RLE.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
        ]
        reader = reader_for(ImageFormat.DICOM)
        pictures = [
            _pixels(render(reader.open_pixels(pydicom_file(n).read_bytes()), size=None).image)
            for n in names
        ]
        for name, picture in zip(names[1:], pictures[1:], strict=True):
            assert np.array_equal(picture, pictures[0]), name

    def test_rescale_then_header_window(self) -> None:
        # A CT in JPEG 2000 with Rescale Intercept -1024 and a 40/100 HU window.
        data = pydicom_file("693_J2KI.dcm").read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        rendered = render(reader_for(ImageFormat.DICOM).open_pixels(data), size=None)
        assert rendered.window == Window(40.0, 100.0)
        hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.round(np.clip((hounsfield - (40 - 50)) / 100, 0, 1) * 255)
        assert np.array_equal(_pixels(rendered.image), expected.astype(np.uint8))

    def test_monochrome1_is_inverted(self) -> None:
        ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
        buffer = io.BytesIO()
        ds.save_as(buffer)
        normal = render(reader_for(ImageFormat.DICOM).open_pixels(buffer.getvalue()), size=None)
        ds.PhotometricInterpretation = "MONOCHROME1"
        buffer = io.BytesIO()
        ds.save_as(buffer)
        inverted = render(reader_for(ImageFormat.DICOM).open_pixels(buffer.getvalue()), size=None)
        assert np.array_equal(
            _pixels(inverted.image).astype(int), 255 - _pixels(normal.image).astype(int)
        )

    def test_multiframe_middle_frame_and_any_frame(self) -> None:
        data = pydicom_file("rtdose.dcm").read_bytes()
        source = reader_for(ImageFormat.DICOM).open_pixels(data)
        assert source.frame_count == 15
        assert render(source).index == 7
        assert render(source, index=0).index == 0
        with pytest.raises(RenderError, match=r"0\.\.14"):
            render(source, index=15)
        coronal = render(source, plane=Plane.CORONAL, size=None)
        assert coronal.image.size[1] > 1  # frames stacked into a real plane

    def test_no_pixel_data_and_truncated(self) -> None:
        reader = reader_for(ImageFormat.DICOM)
        with pytest.raises(NoPixelData, match="Comprehensive SR"):
            reader.read_metadata(pydicom_file("test-SR.dcm").read_bytes(), PSEUDONYMIZER)
        truncated = pydicom_file("MR_small.dcm").read_bytes()[:3000]
        with pytest.raises(CorruptImage):
            data = truncated
            reader.read_metadata(data, PSEUDONYMIZER)
            render(reader.open_pixels(data))

    def test_shared_transfer_syntaxes_render_identically(self) -> None:
        folder = shared("dicom_dcm_qa_ts_transfer_syntaxes", "data", "In")
        reader = reader_for(ImageFormat.DICOM)
        pictures = {}
        syntaxes = set()
        for path in sorted(folder.glob("*.dcm")):
            data = path.read_bytes()
            syntaxes.add(reader.read_metadata(data, PSEUDONYMIZER).transfer_syntax)
            pictures[path.name] = _pixels(render(reader.open_pixels(data), size=None).image)
        assert len(syntaxes) == 7
        reference = pictures.pop("1.dcm")
        for name, picture in pictures.items():
            assert np.array_equal(picture, reference), name

    def test_enhanced_mr_multiframe(self) -> None:
        folder = shared("dicom_heudiconv_testdata_siemens_mr", "data", "heudiconv", "tests")
        path = next((folder / "data" / "xa_4d_interrupted").glob("MRe.*"))
        data = path.read_bytes()
        reader = reader_for(ImageFormat.DICOM)
        meta = reader.read_metadata(data, PSEUDONYMIZER)
        assert meta.frames in (26, 34)
        assert meta.pixel_spacing_row is not None  # from the functional groups
        source = reader.open_pixels(data)
        picture = _pixels(render(source, index=meta.frames - 1).image)
        assert picture.std() > 5  # a real brain/phantom image, not a blank


class TestNifti:
    def test_metadata(self) -> None:
        data = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
        meta = reader_for(ImageFormat.NIFTI).read_metadata(data, PSEUDONYMIZER)
        image = nib.load(NIBABEL_DATA / "example4d.nii.gz")
        x, y, z, t = image.shape
        assert (meta.columns, meta.rows, meta.slices, meta.volumes) == (x, y, z, t)
        assert meta.orientation == "".join(nib.aff2axcodes(image.affine))
        assert meta.dtype == str(image.get_data_dtype())

    def test_three_planes_with_true_aspect(self) -> None:
        folder = shared("nifti_dipy_small_dwi", "data")
        data = (folder / "aniso_vox.nii.gz").read_bytes()  # 4 x 4 x 5 mm voxels
        source = reader_for(ImageFormat.NIFTI).open_pixels(data)
        sizes = {}
        for plane in Plane:
            rendered = render(source, plane=plane, size=512)
            assert _pixels(rendered.image).std() > 5, plane
            sizes[plane] = rendered.image.size
        # 58 x 58 voxels of 4 mm axially; 24 slices of 5 mm: 120 mm tall vs 232 mm wide.
        assert sizes[Plane.AXIAL] == (512, 512)
        width, height = sizes[Plane.CORONAL]
        assert width == 512
        assert height == pytest.approx(512 * 120 / 232, abs=2)

    def test_nan_voxels_render_without_error(self, tmp_path: Path) -> None:
        volume = np.arange(8 * 8 * 4, dtype=np.float32).reshape(8, 8, 4)
        volume[2:5, 2:5, :] = np.nan
        image = nib.Nifti1Image(volume, np.eye(4))
        data = image.to_bytes()
        meta = reader_for(ImageFormat.NIFTI).read_metadata(data, PSEUDONYMIZER)
        assert meta.dtype == "float32"
        rendered = render(reader_for(ImageFormat.NIFTI).open_pixels(data), size=None)
        picture = _pixels(rendered.image)
        assert picture.max() == 255  # the finite values still span the window

    def test_truncated_gzip_is_corrupt(self) -> None:
        data = gzip.compress(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)).to_bytes())
        with pytest.raises(CorruptImage):
            reader_for(ImageFormat.NIFTI).read_metadata(data[: len(data) // 2], PSEUDONYMIZER)


class TestRaster:
    def test_sixteen_bit_png_is_windowed_not_clipped(self) -> None:
        ramp = np.linspace(1000, 40000, 64 * 64).astype(np.uint16).reshape(64, 64)
        data = _png(ramp)
        reader = reader_for(ImageFormat.PNG)
        meta = reader.read_metadata(data, PSEUDONYMIZER)
        assert meta.bits_stored == 16
        rendered = render(reader.open_pixels(data), size=None)
        picture = _pixels(rendered.image)
        assert rendered.window is not None
        assert rendered.window.width > 30000
        # A clip to 8 bits would saturate almost everything at 255.
        assert picture.min() == 0
        assert picture.max() == 255
        assert len(np.unique(picture)) > 200

    def test_eight_bit_png_is_shown_unchanged(self) -> None:
        array = np.random.default_rng(1).integers(0, 256, (32, 48), dtype=np.uint8)
        rendered = render(reader_for(ImageFormat.PNG).open_pixels(_png(array)), size=None)
        assert np.array_equal(_pixels(rendered.image), array)

    def test_real_nih_chest_xray(self) -> None:
        path = shared("cxr_nih_chestxray14_bbox_subset", "data", "images", "00000032_037.png")
        reader = reader_for(ImageFormat.PNG)
        meta = reader.read_metadata(path.read_bytes(), PSEUDONYMIZER)
        assert (meta.rows, meta.columns) == (1024, 1024)
        assert render(reader.open_pixels(path.read_bytes())).image.size == (512, 512)


def test_apply_window_maps_linearly_and_clips() -> None:
    values = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0, np.nan])
    unit = apply_window(values, Window(40, 80))
    assert unit.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 0.0]


def test_window_parse_rejects_bad_text() -> None:
    assert Window.parse("40,400") == Window(40.0, 400.0)
    for text in ("40", "a,b", "40,0", "40,-3", "nan,1", "1,inf", "1e308,1e-308"):
        with pytest.raises(RenderError, match="expected"):
            Window.parse(text)
