"""Benchmark corpora of real DICOM files, replicated with fresh UIDs (built once, reused).

Two corpora, both in a cache folder outside the repository ($RADLAKE_BENCH_CACHE, else
/tmp/radlake-bench-cache):

- archive: the mix of a real archive by file count, MR 50 %, CT 35 %, CR 15 %, from
  real images of every size there is at hand: MR 64^2 (GE EPI) up to 1024^2 (MR2) and
  1368x1350 (Siemens DWI mosaics), CT 128^2 and 512^2 (single- and multi-frame), CR
  1760^2 and 1955x1841 16-bit. Only uncompressed transfer syntaxes (explicit and
  implicit VR little endian), as a PACS export or a scanner push usually delivers.
- small-mr: the former benchmark's corpus, the shared GE and Siemens MR series only
  (64^2 and 216^2), kept as a second row to compare with earlier figures.

Replica k of an original gets fresh Study and Series Instance UIDs (the same within
replica k of one source, so series stay series) and a fresh SOP Instance UID, so
every file is distinct content (distinct sha256). Pixel data are never touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADLAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SOURCE = SHARED_DATA / "dicom_dcm_qa_nih_ge_siemens_mr" / "data" / "In"
CACHE = Path(os.environ.get("RADLAKE_BENCH_CACHE", "/tmp/radlake-bench-cache"))
MARKER = "corpus.json"
FILES_DIR = "files"
ARCHIVE_VERSION = 1
SEED = 20240601
MODALITY_SHARES = {"MR": 0.50, "CT": 0.35, "CR": 0.15}


class BenchmarkError(Exception):
    """A precondition is missing (shared data, database server): exit status 2."""


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """Real originals of one kind, and their share of their modality's files."""

    modality: str
    label: str
    weight: float
    pydicom_files: tuple[str, ...] = ()  # pydicom / pydicom-data test files
    shared_glob: str | None = None  # a glob under the shared data folder


_GE = "dicom_dcm_qa_nih_ge_siemens_mr/data/In/20180918GE/**/*.dcm"
_SIEMENS = "dicom_dcm_qa_nih_ge_siemens_mr/data/In/20180918Si/**/*.dcm"
_HEUDICONV = "dicom_heudiconv_testdata_siemens_mr/data/heudiconv/tests/data/"
ARCHIVE_SOURCES = (
    ArchiveSource("MR", "GE EPI 64x64 (shared)", 0.20, shared_glob=_GE),
    ArchiveSource("MR", "MR_small 64x64", 0.05, ("MR_small.dcm",)),
    ArchiveSource("MR", "emri_small 64x64 x10 frames", 0.05, ("emri_small.dcm",)),
    ArchiveSource(
        "MR",
        "Siemens scout/phantom 160x160 (shared)",
        0.10,
        shared_glob=_HEUDICONV + "{01-anat-scout/0001,phantom,Phoenix/01+AA/01+AA+00001}.dcm",
    ),
    ArchiveSource("MR", "Siemens EPI mosaic 216x216 (shared)", 0.10, shared_glob=_SIEMENS),
    ArchiveSource(
        "MR",
        "Siemens mosaic 384x384 (shared)",
        0.15,
        shared_glob="{" + _HEUDICONV + "axasc35,dicom_dcm_qa_ts_transfer_syntaxes/data/In/1,"
        "dicom_dcm_qa_ts_transfer_syntaxes/data/In/2}.dcm",
    ),
    ArchiveSource(
        "MR",
        "Siemens 484x484 / 300x484",
        0.15,
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", "examples_overlay.dcm"),
    ),
    ArchiveSource("MR", "MR2 1024x1024", 0.15, ("MR2_UNCR.dcm", "MR2_UNCI.dcm")),
    ArchiveSource(
        "MR",
        "Siemens DWI mosaic 1368x1350 (shared)",
        0.05,
        shared_glob=_HEUDICONV + "b0dwiForFmap/*.dcm",
    ),
    ArchiveSource("CT", "CT_small 128x128", 0.20, ("CT_small.dcm",)),
    ArchiveSource("CT", "693 512x512", 0.65, ("693_UNCR.dcm", "693_UNCI.dcm")),
    ArchiveSource("CT", "Enhanced CT 512x512 x2 frames", 0.15, ("eCT_Supplemental.dcm",)),
    ArchiveSource("CR", "RG1 1955x1841", 0.50, ("RG1_UNCR.dcm", "RG1_UNCI.dcm")),
    ArchiveSource("CR", "RG3 1760x1760", 0.50, ("RG3_UNCR.dcm", "RG3_UNCI.dcm")),
)


def _expand_braces(pattern: str) -> list[str]:
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = pattern.index("}", start)
    head, tail = pattern[:start], pattern[end + 1 :]
    return [
        expanded
        for option in pattern[start + 1 : end].split(",")
        for expanded in _expand_braces(head + option + tail)
    ]


def _originals(source: ArchiveSource) -> list[Path]:
    """The source's original files that exist here, sorted."""
    found: list[Path] = []
    for name in source.pydicom_files:
        try:
            path = pydicom.data.get_testdata_file(name, download=False)
        except Exception:  # pydicom-data missing or broken: the source is left out
            path = None
        if isinstance(path, str) and Path(path).is_file():
            found.append(Path(path))
    if source.shared_glob and SHARED_DATA.is_dir():
        for pattern in _expand_braces(source.shared_glob):
            found.extend(path for path in SHARED_DATA.glob(pattern) if path.is_file())
    return sorted(set(found))


def _allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """total split by weight, largest remainders first (the counts add up exactly)."""
    scale = sum(weights.values())
    exact = {key: total * weight / scale for key, weight in weights.items()}
    counts = {key: math.floor(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (counts[key] - exact[key], key))
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


@dataclass(frozen=True, slots=True)
class Plan:
    """Which originals the archive replicates, and how many files of each source."""

    counts: dict[str, int]  # source label -> files
    originals: dict[str, list[Path]]  # source label -> original files
    left_out: list[str] = field(default_factory=list)  # sources missing here

    def digest(self, n: int) -> str:
        text = json.dumps(
            {
                "version": ARCHIVE_VERSION,
                "seed": SEED,
                "n": n,
                "counts": self.counts,
                "originals": {k: [p.name for p in v] for k, v in self.originals.items()},
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_archive(n: int) -> Plan:
    """Counts per source for n files; a source missing here gives its share to the rest
    of its modality.

    Raises:
        BenchmarkError: a modality has no original at all.
    """
    originals = {source.label: _originals(source) for source in ARCHIVE_SOURCES}
    left_out = [label for label, files in originals.items() if not files]
    per_modality = _allocate(n, MODALITY_SHARES)
    counts: dict[str, int] = {}
    for modality, files in per_modality.items():
        weights = {
            s.label: s.weight
            for s in ARCHIVE_SOURCES
            if s.modality == modality and originals[s.label]
        }
        if not weights:
            raise BenchmarkError(f"no {modality} original found (is pydicom-data installed?)")
        counts.update(_allocate(files, weights))
    return Plan(counts, {k: v for k, v in originals.items() if v}, left_out)


def _replica(ds: Dataset, uids: dict[str, str], copy: str) -> Dataset:
    """ds with the fresh UIDs of replica `copy` (ds is changed in place and returned)."""
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    ds.StudyInstanceUID = uids.setdefault(f"{copy}/study/{study}", generate_uid())
    ds.SeriesInstanceUID = uids.setdefault(f"{copy}/series/{series}", generate_uid())
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _reusable(corpus: Path, marker: dict[str, object], n: int) -> list[Path] | None:
    files = corpus_files(corpus)
    sizes = marker.get("sizes")
    if len(files) != n or not isinstance(sizes, dict):
        return None
    for path in files:
        if sizes.get(path.relative_to(corpus).as_posix()) != path.stat().st_size:
            return None
    return files


def build_archive(
    corpus: Path, n: int, say: Callable[[str], None] | None = None
) -> tuple[list[Path], Plan, bool]:
    """The archive corpus of n files under corpus/files (reused when the plan matches).

    Returns the files (sorted, the order ingest walks them), the plan and whether
    they were built now.
    """
    plan = plan_archive(n)
    digest = plan.digest(n)
    marker_path = corpus / MARKER
    if marker_path.exists():
        marker = json.loads(marker_path.read_text())
        if marker.get("digest") == digest:
            files = _reusable(corpus, marker, n)
            if files is not None:
                return files, plan, False
        marker_path.unlink()
    elif corpus.exists() and any(entry.name != FILES_DIR for entry in corpus.iterdir()):
        raise BenchmarkError(f"{corpus} is not empty and holds no {MARKER}: give another")
    shutil.rmtree(corpus / FILES_DIR, ignore_errors=True)
    jobs = [
        (label, index) for label, count in plan.counts.items() for index in range(count)
    ]  # (source, replica index within the source)
    random.Random(SEED).shuffle(jobs)  # modalities interleave as in a real archive walk
    parsed: dict[Path, Dataset] = {}
    uids: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real files carry non-conformant values
        for position, (label, index) in enumerate(jobs):
            originals = plan.originals[label]
            original = originals[index % len(originals)]
            if original not in parsed:
                parsed[original] = pydicom.dcmread(original)
            ds = _replica(parsed[original], uids, f"{label}/{index // len(originals)}")
            modality = next(s.modality for s in ARCHIVE_SOURCES if s.label == label)
            target = (
                corpus / FILES_DIR / f"{position // 250:03d}" / f"{position:06d}-{modality}.dcm"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target)
            sizes[target.relative_to(corpus).as_posix()] = target.stat().st_size
            if say is not None and (position + 1) % 500 == 0:
                say(f"  archive corpus: {position + 1}/{n} files written")
    marker_path.write_text(json.dumps({"digest": digest, "files": n, "sizes": sizes}) + "\n")
    return corpus_files(corpus), plan, True


# -- the small-MR corpus (the former benchmark's; benchmarks/api.py uses it too) ----


def source_files(source: Path) -> list[Path]:
    """The DICOM files of the shared GE/Siemens series, in a stable order."""
    if not source.is_dir():
        raise BenchmarkError(
            f"shared DICOM data not found at {source}; the benchmark replicates those files "
            "(set RADLAKE_SHARED_DATA to the folder holding dicom_dcm_qa_nih_ge_siemens_mr)"
        )
    files = sorted(path for path in source.rglob("*.dcm") if path.is_file())
    if not files:
        raise BenchmarkError(f"no .dcm files under {source}")
    return files


def corpus_files(corpus: Path) -> list[Path]:
    """The replicated files of a corpus folder, sorted."""
    return sorted(path for path in (corpus / FILES_DIR).rglob("*.dcm") if path.is_file())


def build_corpus(corpus: Path, n: int, source: Path) -> tuple[list[Path], bool]:
    """N replicated small-MR files under corpus/files; returns them and whether they
    were built. A corpus folder holding the right count (and the marker) is reused.
    """
    marker = corpus / MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        files = corpus_files(corpus)
        if recorded.get("files") == n and len(files) == n:
            return files, False
        shutil.rmtree(corpus / FILES_DIR, ignore_errors=True)
        marker.unlink()
    elif corpus.exists() and any(corpus.iterdir()):
        if [entry.name for entry in corpus.iterdir()] != [FILES_DIR]:
            raise BenchmarkError(f"{corpus} is not empty and holds no {MARKER}: give another")
        shutil.rmtree(corpus / FILES_DIR)  # an interrupted build of ours: start again
    originals = source_files(source)
    out_root = corpus / FILES_DIR
    for copy in range(math.ceil(n / len(originals))):
        uids: dict[str, str] = {}
        for original in originals[: n - copy * len(originals)]:
            ds = _replica(pydicom.dcmread(original), uids, str(copy))
            target = out_root / f"copy-{copy:04d}" / original.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target)
    marker.write_text(json.dumps({"files": n, "source": str(source)}) + "\n")
    files = corpus_files(corpus)
    if len(files) != n:
        raise RuntimeError(f"built {len(files)} corpus files, expected {n}")
    return files, True


# -- description -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModalityStats:
    files: int
    megabytes: float
    sizes: Counter[str]  # "rows x columns [x frames]" -> files

    def size_range(self) -> str:
        def pixels(key: str) -> int:
            rows, columns = key.split(" ")[0].split("x")
            return int(rows) * int(columns)

        ordered = sorted(self.sizes, key=pixels)
        return ordered[0] if len(ordered) == 1 else f"{ordered[0]} .. {ordered[-1]}"


@dataclass(frozen=True, slots=True)
class Description:
    """What a corpus holds: per modality counts, pixel sizes and bytes."""

    modality_of: dict[Path, str]
    stats: dict[str, ModalityStats]

    @property
    def files(self) -> int:
        return len(self.modality_of)

    @property
    def megabytes(self) -> float:
        return sum(s.megabytes for s in self.stats.values())

    def lines(self) -> list[str]:
        out = []
        for modality, s in self.stats.items():
            share = 100.0 * s.files / self.files
            out.append(
                f"  {modality:3s} {s.files:5d} files ({share:4.1f} %)  "
                f"{s.megabytes / 1000:6.3f} GB  {s.megabytes / s.files:6.2f} MB/file  "
                f"{len(s.sizes)} pixel sizes: {s.size_range()}"
            )
        out.append(f"  all {self.files:5d} files           {self.megabytes / 1000:6.3f} GB")
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "gigabytes": round(self.megabytes / 1000, 4),
            "modalities": {
                m: {"files": s.files, "megabytes": round(s.megabytes, 2), "sizes": dict(s.sizes)}
                for m, s in self.stats.items()
            },
        }


def describe(files: Sequence[Path]) -> Description:
    """Read every file's header (not its pixels) and summarise the corpus."""
    modality_of: dict[Path, str] = {}
    counts: dict[str, int] = defaultdict(int)
    megabytes: dict[str, float] = defaultdict(float)
    sizes: dict[str, Counter[str]] = defaultdict(Counter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            modality = str(ds.get("Modality") or "?")
            frames = int(ds.get("NumberOfFrames") or 1)
            size = f"{ds.get('Rows')}x{ds.get('Columns')}" + (f" x{frames}" if frames > 1 else "")
            modality_of[path] = modality
            counts[modality] += 1
            megabytes[modality] += path.stat().st_size / 1e6
            sizes[modality][size] += 1
    order = sorted(counts, key=lambda m: (-counts[m], m))
    stats = {m: ModalityStats(counts[m], megabytes[m], sizes[m]) for m in order}
    return Description(modality_of, stats)
