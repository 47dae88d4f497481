"""Burned-in text: found where it is on real ultrasounds and radiographs, blanked on
every frame, the result a valid uncompressed object; clean images stay untouched;
bad pixels and a missing detector give withheld, never an exception."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radlake.errors import RenderError
from radlake.imaging import burned_in, burned_in_detector
from radlake.imaging.burned_in import PixelCheck, TextRegion, check_and_blank, detect_text
from radlake.imaging.dicom_pixels import DicomPixels
from tests.conftest import shared

pytest.importorskip("onnxruntime", reason="the text detector needs the [deid] extra")
pytest.importorskip("cv2", reason="the text detector needs the [deid] extra")
deid_data = pytest.importorskip("deid_data.data", reason="deid-data (burned-in test images)")

US = Path(deid_data.data_base) / "ultrasounds"
CAT = Path(deid_data.data_base) / "animals" / "cat.dcm"
IEEE8023 = ("cxr_ieee8023_lung_boxes_subset", "data", "images")


@pytest.fixture(scope="module", autouse=True)
def detector() -> None:
    try:
        burned_in_detector.load_detector()
    except burned_in_detector.TextDetectorUnavailable as exc:
        pytest.skip(f"text detector not installed: {exc}")


def pydicom_data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    return Path(str(path))


@pytest.fixture(scope="module")
def greyscale_cine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deid-data's 27-frame greyscale ultrasound cine (shipped zipped)."""
    folder = tmp_path_factory.mktemp("cine")
    with zipfile.ZipFile(US / "GREYSCALE_CINE.zip") as archive:
        archive.extract("GREYSCALE_CINE.dcm", folder)
    return folder / "GREYSCALE_CINE.dcm"


def covered(
    regions: list[TextRegion] | tuple[TextRegion, ...], shape: tuple[int, ...]
) -> np.ndarray:
    mask = np.zeros(shape[:2], bool)
    for r in regions:
        mask[r.y_min : r.y_max, r.x_min : r.x_max] = True
    return mask


def contains(region: TextRegion, x: int, y: int) -> bool:
    return region.x_min <= x < region.x_max and region.y_min <= y < region.y_max


def frames_of(ds: Dataset) -> np.ndarray:
    """Every frame as the lake decodes it for display: (frames, rows, columns[, 3])."""
    source = DicomPixels(ds)
    if source.is_color:
        return np.stack([source.frame(i) for i in range(source.frame_count)])
    return np.stack([source.stored_frame(i)[0] for i in range(source.frame_count)])


def round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


# Where the scanner drew text (header band, side panel), and the scan area that holds
# none, read off renderings of the two deid-data stills: (x0, y0, x1, y1).
TEXT_AREAS = {
    "GREYSCALE_IMAGE.dcm": [(0, 0, 1024, 26), (0, 28, 95, 262)],
    "RGB_IMAGE.dcm": [(0, 0, 1024, 58), (925, 60, 1024, 356)],
}
SCAN_AREAS = {"GREYSCALE_IMAGE.dcm": (140, 100, 880, 680), "RGB_IMAGE.dcm": (60, 80, 900, 720)}


class TestDetection:
    @pytest.mark.parametrize("name", sorted(TEXT_AREAS))
    def test_every_glyph_of_the_header_and_side_panel_is_inside_a_region(self, name: str) -> None:
        pixels = pydicom.dcmread(US / name).pixel_array
        luminance = pixels.max(axis=2) if pixels.ndim == 3 else pixels
        regions = detect_text(pixels)
        inside = covered(regions, pixels.shape)
        for x0, y0, x1, y1 in TEXT_AREAS[name]:
            glyphs = luminance[y0:y1, x0:x1] >= 100  # text on a black or dark grey band
            assert glyphs.sum() > 1000, "the area holds text"
            assert inside[y0:y1, x0:x1][glyphs].all(), (name, (x0, y0, x1, y1))
        x0, y0, x1, y1 = SCAN_AREAS[name]
        centres = [((r.x_min + r.x_max) // 2, (r.y_min + r.y_max) // 2) for r in regions]
        assert not [c for c in centres if x0 <= c[0] < x1 and y0 <= c[1] < y1]

    def test_the_patient_name_line_is_one_region(self) -> None:
        # "ZZZDOWNTIME,MARY" is drawn at columns 3-229, rows 4-29 of RGB_IMAGE.
        regions = detect_text(pydicom.dcmread(US / "RGB_IMAGE.dcm").pixel_array)
        line = [r for r in regions if contains(r, 10, 15) and contains(r, 220, 15)]
        assert len(line) == 1 and line[0].y_max <= 40 and line[0].score >= 0.5

    @pytest.mark.parametrize(
        ("where", "marker"),
        [
            # cat.dcm: DX, 12 bits in 16, MONOCHROME2; lead "R" at columns 1098-1231
            ("cat", (1165, 2410)),
            # RG3_J2KR.dcm: CR, 10 bits in 16, MONOCHROME1, JPEG 2000; mirrored "R"
            ("RG3_J2KR.dcm", (1185, 1430)),
        ],
    )
    def test_a_lead_marker_in_a_16_bit_radiograph_is_found_through_either_window(
        self, where: str, marker: tuple[int, int]
    ) -> None:
        ds = pydicom.dcmread(CAT if where == "cat" else pydicom_data(where))
        stored = ds.pixel_array.astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            stored = -stored  # as displayed
        low, high = stored.min(), stored.max()
        min_max = np.rint((stored - low) / (high - low) * 255).astype(np.uint8)
        for pixels in (ds.pixel_array if where == "cat" else stored, min_max):
            # The lake's window (a low percentile to the maximum), then a plain one.
            assert any(contains(r, *marker) for r in detect_text(pixels)), where

    def test_text_written_at_the_top_of_a_ct_range_is_found(self) -> None:
        """A 16-bit CT frame (padding far below the data) with a line drawn at its
        maximum stored value, as scanners burn captions."""
        cv2 = pytest.importorskip("cv2")
        ct = pydicom.dcmread(pydicom_data("CT_small.dcm")).pixel_array  # int16, 128 x 128
        frame = np.kron(ct, np.ones((4, 4), ct.dtype))  # 512 x 512, as a CT is shown
        frame[:, :40] = -2000  # a padding border, far below the data
        caption = np.zeros(frame.shape, np.uint8)
        cv2.putText(caption, "DOE JANE 1951", (60, 470), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
        frame[caption > 0] = frame.max()
        regions = detect_text(frame)
        assert any(contains(r, 70, 460) and contains(r, 280, 460) for r in regions)
        assert all(r.y_min > 400 for r in regions)  # nothing found in the anatomy

    def test_a_chest_radiograph_with_a_caption_is_found_at_the_caption(self) -> None:
        # NIH 00000150_002: "PORTABLE" at the top left (columns 75-200, rows 5-25).
        path = shared("cxr_nih_chestxray14_bbox_subset", "data", "images", "00000150_002.png")
        regions = detect_text(np.asarray(Image.open(path).convert("L")))
        assert any(contains(r, 80, 15) and contains(r, 190, 15) for r in regions)

    @pytest.mark.parametrize(
        "name",
        ["E63574A7-4188-4C8D-8D17-9D67A18A1AFA.jpeg", "9fdd3c3032296fd04d2cad5d9070d4_jumbo.jpeg"],
    )
    def test_chest_radiographs_without_text_give_no_region(self, name: str) -> None:
        path = shared(*IEEE8023, name)
        assert detect_text(np.asarray(Image.open(path).convert("L"))) == []

    def test_a_frame_that_is_not_2d_or_rgb_is_refused(self) -> None:
        with pytest.raises(RenderError, match=r"got shape \(4, 4, 4\)"):
            detect_text(np.zeros((4, 4, 4), np.uint8))

    def test_a_flat_frame_has_no_text(self) -> None:
        assert detect_text(np.full((300, 400), 1234, np.uint16)) == []

    def test_the_model_is_found_without_importing_rapidocr(self) -> None:
        code = (
            "import sys; from radlake.imaging.burned_in_detector import load_detector;"
            "load_detector(); print('rapidocr_onnxruntime' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        )
        assert result.stdout.strip() == "False"
        assert burned_in_detector.detector_model_path().suffix == ".onnx"


def _check_blanked(ds: Dataset, before: np.ndarray, result: PixelCheck) -> Dataset:
    """The outcome a user relies on, on every frame: regions at the background value,
    everything else unchanged, the object valid and uncompressed, the text gone."""
    assert result.status == "blanked" and result.regions and result.reason is None
    back = round_trip(ds)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    after = frames_of(back)
    assert after.shape == before.shape
    inside = covered(result.regions, before.shape[1:])
    colour = before.ndim == 4
    if colour:
        assert back.PhotometricInterpretation == "RGB" and back.PlanarConfiguration == 0
        background = 0
    else:
        low_is_black = back.PhotometricInterpretation == "MONOCHROME2"
        background = before.min() if low_is_black else before.max()
    assert (after[:, inside] == background).all()
    assert np.array_equal(after[:, ~inside], before[:, ~inside])
    # Look again where the check looked: no text left (an ECG trace may remain).
    for index in burned_in.sample_frames(len(after)):
        assert len(detect_text(after[index])) <= 1
    return back


class TestCheckAndBlank:
    @pytest.mark.parametrize(
        "name",
        [
            "GREYSCALE_IMAGE.dcm",  # MONOCHROME2, 8 bits, native
            "RGB_IMAGE.dcm",  # RGB, native
            "ultrasound-multiframe.dcm",  # 30 RGB frames, planar configuration 1
        ],
    )
    def test_deid_data_ultrasounds(self, name: str) -> None:
        ds = pydicom.dcmread(US / name)
        before = frames_of(ds)
        back = _check_blanked(ds, before, check_and_blank(ds))
        assert back.get("NumberOfFrames") == ds.get("NumberOfFrames")
        assert back.SOPInstanceUID == ds.SOPInstanceUID  # the caller remaps UIDs

    @pytest.mark.parametrize("name", sorted(TEXT_AREAS))
    def test_no_glyph_of_the_header_or_side_panel_survives(self, name: str) -> None:
        ds = pydicom.dcmread(US / name)
        glyphs = frames_of(ds)[0]
        assert check_and_blank(ds).status == "blanked"
        after = frames_of(round_trip(ds))[0]
        if glyphs.ndim == 3:
            glyphs, after = glyphs.max(axis=2), after.max(axis=2)
        for x0, y0, x1, y1 in TEXT_AREAS[name]:
            text = glyphs[y0:y1, x0:x1] >= 100
            assert text.sum() > 1000 and (after[y0:y1, x0:x1][text] == 0).all()

    def test_a_greyscale_cine_is_blanked_on_every_frame(self, greyscale_cine: Path) -> None:
        ds = pydicom.dcmread(greyscale_cine)
        before = frames_of(ds)
        result = check_and_blank(ds)
        _check_blanked(ds, before, result)
        # The header line with the name and birth date, on frames never looked at too.
        header = [r for r in result.regions if r.y_max <= 30]
        assert len(header) >= 3

    @pytest.mark.parametrize(
        "name",
        [
            "color3d_jpeg_baseline.dcm",  # 120 frames YBR_FULL_422, JPEG Baseline
            "US1_J2KR.dcm",  # YBR_RCT, JPEG 2000 lossless
            "OBXXXX1A.dcm",  # PALETTE COLOR
            "JPGLosslessP14SV1_1s_1f_8b.dcm",  # MONOCHROME2, JPEG Lossless
        ],
    )
    def test_compressed_and_colour_ultrasounds_come_out_uncompressed(self, name: str) -> None:
        ds = pydicom.dcmread(pydicom_data(name))
        photometric = ds.PhotometricInterpretation
        before = frames_of(ds)  # YBR and palette decoded to RGB by the lake's reader
        back = _check_blanked(ds, before, check_and_blank(ds))
        if photometric == "PALETTE COLOR":
            assert "RedPaletteColorLookupTableData" not in back

    def test_monochrome1_is_blanked_to_its_highest_value(self) -> None:
        ds = pydicom.dcmread(pydicom_data("RG3_J2KR.dcm"))
        before = frames_of(ds)
        result = check_and_blank(ds)
        _check_blanked(ds, before, result)
        assert any(contains(r, 1185, 1430) for r in result.regions)

    @pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_J2KR.dcm"])
    def test_clean_images_are_clean_and_untouched(self, name: str) -> None:
        ds = pydicom.dcmread(pydicom_data(name))
        pixels, syntax = ds.PixelData, ds.file_meta.TransferSyntaxUID
        assert check_and_blank(ds) == PixelCheck("clean")
        assert ds.PixelData == pixels and ds.file_meta.TransferSyntaxUID == syntax

    def test_a_chest_radiograph_as_secondary_capture_is_clean(self) -> None:
        path = shared(*IEEE8023, "E63574A7-4188-4C8D-8D17-9D67A18A1AFA.jpeg")
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        ds.Modality = "OT"
        with Image.open(path) as picture:
            ds.set_pixel_data(np.asarray(picture.convert("L")), "MONOCHROME2", 8)
        pixels = ds.PixelData
        assert check_and_blank(ds) == PixelCheck("clean")
        assert ds.PixelData == pixels


class TestRewrite:
    """Every syntax comes out as Explicit VR Little Endian with the stored values kept.
    These objects carry no text, so the detector is told where to pretend it found some."""

    REGION = TextRegion(5, 5, 20, 12, 0.9)

    @pytest.fixture(autouse=True)
    def _one_region(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(burned_in, "detect_text", lambda pixels: [self.REGION])

    @pytest.mark.parametrize(
        "name",
        [
            "MR_small_implicit.dcm",  # Implicit VR, signed 16 bits
            "image_dfl.dcm",  # Deflated Explicit VR
            "emri_small.dcm",  # 10 frames, 12 bits in 16
            "SC_ybr_full_422_uncompressed.dcm",  # YBR_FULL_422, native
            "SC_rgb_rle_16bit_2frame.dcm",  # 16-bit RGB, RLE: written as 8-bit RGB
        ],
    )
    def test_a_region_is_blanked_and_the_rest_kept(self, name: str) -> None:
        ds = pydicom.dcmread(pydicom_data(name))
        before = frames_of(ds)
        result = check_and_blank(ds)
        assert result.status == "blanked"
        back = round_trip(ds)
        after = frames_of(back)
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert after.dtype == before.dtype and after.shape == before.shape
        inside = covered(result.regions, before.shape[1:])
        assert np.array_equal(after[:, ~inside], before[:, ~inside])
        black = 0 if before.ndim == 4 else before.min()
        assert (after[:, inside] == black).all()
        if before.ndim == 3:
            assert back.BitsStored == ds.BitsStored

    @pytest.mark.parametrize(
        ("name", "why"),
        [
            ("MR_small_bigendian.dcm", "big-endian"),
            ("mlut_18.dcm", "Modality LUT Sequence"),
        ],
    )
    def test_text_that_cannot_be_rewritten_is_withheld_and_left_alone(
        self, name: str, why: str
    ) -> None:
        ds = pydicom.dcmread(pydicom_data(name))
        pixels, syntax = ds.PixelData, ds.file_meta.TransferSyntaxUID
        result = check_and_blank(ds)
        assert result.status == "withheld" and result.regions
        assert result.reason and why in result.reason
        assert ds.PixelData == pixels and ds.file_meta.TransferSyntaxUID == syntax


class TestWithheld:
    def _patient_ds(self) -> Dataset:
        ds = pydicom.dcmread(US / "GREYSCALE_IMAGE.dcm")
        ds.PatientName = "Doe^Jane"
        return ds

    def test_a_truncated_pixel_payload_is_withheld_with_a_reason(self) -> None:
        ds = self._patient_ds()
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        result = check_and_blank(ds)
        assert result.status == "withheld" and result.regions == ()
        assert result.reason and result.reason.startswith("pixels could not be checked")
        assert "Doe" not in result.reason and "\n" not in result.reason

    def test_a_corrupt_jpeg_frame_is_withheld(self) -> None:
        ds = pydicom.dcmread(pydicom_data("examples_ybr_color.dcm"))
        frames = [bytes(f) for f in generate_fragments(ds.PixelData)][1:]
        frames[0] = frames[0][:20] + b"\x00" * 200  # the first frame's scan is garbage
        ds.PixelData = encapsulate(frames)
        result = check_and_blank(ds)
        assert result.status == "withheld"
        assert result.reason and "pixels could not be checked" in result.reason

    def test_pixels_over_the_budget_are_withheld_undecoded(self) -> None:
        ds = self._patient_ds()
        result = check_and_blank(ds, max_decoded_bytes=1024)
        assert result.status == "withheld"
        assert result.reason and "too large to decode" in result.reason

    def test_text_over_the_share_limit_is_withheld_and_left_alone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # GREYSCALE_IMAGE is about 6 % text; a limit of 1 % stands for a report capture.
        monkeypatch.setattr(burned_in, "MAX_TEXT_SHARE", 0.01)
        ds = self._patient_ds()
        pixels = ds.PixelData
        result = check_and_blank(ds)
        assert result.status == "withheld" and len(result.regions) >= 10
        assert result.reason and result.reason.startswith("text covers")
        assert ds.PixelData == pixels

    def test_no_detector_is_withheld_with_the_install_hint(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
        burned_in_detector.load_detector.cache_clear()
        try:
            result = check_and_blank(self._patient_ds())
        finally:
            burned_in_detector.load_detector.cache_clear()
        assert result.status == "withheld"
        assert result.reason and "pip install 'radlake[deid]'" in result.reason

    def test_no_pixels_is_clean(self) -> None:
        ds = pydicom.dcmread(US / "GREYSCALE_IMAGE.dcm", stop_before_pixels=True)
        assert check_and_blank(ds) == PixelCheck("clean")
