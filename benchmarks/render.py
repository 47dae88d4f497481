"""Preview render cost per stage, on real files of real size.

Run it from the repository root:

    .venv/bin/python benchmarks/render.py               # every file, best of 7
    .venv/bin/python benchmarks/render.py --repeat 15 --json

What it measures, per file, in milliseconds (the fastest of --repeat runs, which
filters out other load on a shared machine):

- parse: `reader.read(data, ...)` and the pixel opener (headers, budget checks; the
  opener decodes PNG/JPEG and inflates NIfTI, DICOM decodes lazily);
- decode: the codec alone (pydicom `pixel_array` for DICOM, Pillow `load` for
  PNG/JPEG; 0 for NIfTI, whose voxels are read by the opener);
- frame: `source.frame(middle)`, full-resolution modality values (decode included
  for DICOM); "modality" is frame minus decode;
- render: `render(source, size=512)` as the ingest worker calls it on an opened
  source; "after decode" is what the preview costs beyond the codec (render minus
  decode for DICOM, render for the others): modality LUT, window, resize;
- png L1 / L0 / RLE / L6: encoding the 512-px preview as PNG at compress_level 1 (what
  the worker writes), 0 (stored), 1 with the Z_RLE strategy, and 6 (zlib's default),
  with the bytes each produces.

To compare with an older revision, run the same script against its sources:

    git archive REV src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/render.py

Files: pydicom's and pydicom-data's CR, MR, CT, segmentation and JPEG 2000 files, and
from ../shared/data (or RADLAKE_SHARED_DATA, skipped when absent) a GE EPI slice, a
1024-px NIH chest PNG, a COVID chest JPEG and the MNI152 T1 NIfTI template.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import pydicom.data
from PIL import Image
from pydicom.pixels.utils import pixel_array

from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import PREVIEW_SIZE, render

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RADLAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PYDICOM_NAMES = (
    "RG1_UNCR.dcm",  # CR 1955 x 1841, 16-bit, MONOCHROME1
    "RG3_UNCR.dcm",  # CR 1760 x 1760
    "RG1_J2KR.dcm",  # the same CR in lossless JPEG 2000
    "RG1_J2KI.dcm",  # and in lossy JPEG 2000
    "MR2_UNCR.dcm",  # MR 1024 x 1024, rescaled
    "693_UNCR.dcm",  # CT 512 x 512
    "liver.dcm",  # segmentation, 1-bit, 3 frames
    "CT_small.dcm",
    "MR_small.dcm",
)
SHARED_FILES = (
    "dicom_dcm_qa_nih_ge_siemens_mr/data/In/20180918GE/mr_0004/axial_epi_fmri_interleaved_i_to_s-00001.dcm",
    "cxr_nih_chestxray14_bbox_subset/data/images/00000032_037.png",
    "cxr_ieee8023_lung_boxes_subset/data/images/01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg",
    "nifti_nilearn_mni152_templates/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
)
PNG_VARIANTS: dict[str, dict[str, int]] = {
    "png L1": {"compress_level": 1},
    "png L0": {"compress_level": 0},
    "png RLE": {"compress_level": 1, "compress_type": zlib.Z_RLE},
    "png L6": {"compress_level": 6},
}
PSEUDONYMIZER = Pseudonymizer(b"benchmark")


def _files() -> list[Path]:
    paths = []
    for name in PYDICOM_NAMES:
        found = pydicom.data.get_testdata_file(name)
        if found is not None:
            paths.append(Path(str(found)))
    for relative in SHARED_FILES:
        path = SHARED / relative
        if path.exists():
            paths.append(path)
        else:
            print(f"skipped (absent): {path}", file=sys.stderr)
    return paths


def _best_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def _decode_only(data: bytes) -> Callable[[], object]:
    if data[128:132] == b"DICM":
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        frames = int(ds.get("NumberOfFrames") or 1)
        index = frames // 2 if frames > 1 else None
        return lambda: pixel_array(ds, index=index)
    if data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1"):
        return lambda: Image.open(io.BytesIO(data)).load()
    return lambda: None


def measure(path: Path, repeat: int) -> dict[str, float | int | str]:
    """Per-stage best times (ms) and PNG sizes for one file."""
    data = path.read_bytes()
    reader = reader_for(detect_format(data))

    def parse() -> object:
        _, opener = reader.read(data, PSEUDONYMIZER)
        return opener()

    source = parse()
    middle = source.frame_count // 2  # type: ignore[attr-defined]
    row: dict[str, float | int | str] = {"file": path.name, "bytes": len(data)}
    row["parse"] = _best_ms(parse, repeat)
    row["decode"] = _best_ms(_decode_only(data), repeat)
    row["frame"] = _best_ms(lambda: source.frame(middle), repeat)  # type: ignore[attr-defined]
    row["render"] = _best_ms(lambda: render(source, size=PREVIEW_SIZE), repeat)  # type: ignore[arg-type]
    dicom = data[128:132] == b"DICM"
    row["modality"] = max(0.0, float(row["frame"]) - float(row["decode"])) if dicom else 0.0
    after = float(row["render"]) - (float(row["decode"]) if dicom else 0.0)
    row["after decode"] = max(0.0, after)
    image = render(source, size=PREVIEW_SIZE).image  # type: ignore[arg-type]
    row["shape"] = "x".join(str(n) for n in source.frame(middle).shape)  # type: ignore[attr-defined]
    for name, options in PNG_VARIANTS.items():

        def encode(options: dict[str, int] = options) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", **options)
            return buffer.getvalue()

        row[name] = _best_ms(encode, repeat)
        row[name + " B"] = len(encode())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per stage (best is kept)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    rows = [measure(path, args.repeat) for path in _files()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    stages = ["parse", "decode", "modality", "render", "after decode", *PNG_VARIANTS]
    print(f"{'file':<32} {'shape':>14} " + " ".join(f"{s:>13}" for s in stages))
    for row in rows:
        cells = " ".join(f"{float(row[s]):13.2f}" for s in stages)
        print(f"{str(row['file'])[:32]:<32} {row['shape']!s:>14} {cells}")
    sizes = {name: statistics.mean(int(r[name + " B"]) for r in rows) for name in PNG_VARIANTS}
    print("mean PNG bytes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()))
    total = {s: sum(float(r[s]) for r in rows) / len(rows) for s in stages}
    print("mean ms/file:   " + ", ".join(f"{k} {v:.2f}" for k, v in total.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
