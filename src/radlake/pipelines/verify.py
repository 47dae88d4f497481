"""Verify a lake: check the store against the catalog, repair what can be repaired.

One recorded job (kind "verify") checks:
- originals: every catalogued image's original exists and holds size_bytes; its
  sha256 is recomputed for every image, or for a random sample of N images chosen
  with random.Random(seed).sample over the images in id order (same seed and same
  catalog: same images);
- renditions: every rendition row's object exists, decodes (Pillow verify) and has
  the row's width x height;
- quarantine: every quarantine row's stored input exists (rows marked resolved, if
  the catalog records that, may point nowhere);
- orphans: objects under raw/, derived/ and quarantine/ that no row points to;
  anything under derived/<sha256>/ of a catalogued image is its rendering cache, and
  tmp/, exports/ and other prefixes are not looked at.

With repair, a missing or corrupt preview is rendered again from its original (as
the ingest worker renders it); a missing or corrupt original is rewritten from its
source file when that file still hashes to the row's sha256; orphans older than an
hour are deleted; younger ones are left alone (a live ingest writes blobs before
their rows), and quarantine rows pointing nowhere are only reported.

Memory stays bounded: images are paged by id, originals are hashed in 4 MiB chunks,
store listings are streamed, and the keys the catalog points at are kept compactly
(about 100 bytes an image: 10^6 images need about 100 MB).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from PIL import Image as PILImage
from sqlalchemy import Engine, func, null, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image, Job, Quarantine, Rendition, utcnow
from radlake.errors import ImageError, ObjectNotFound, RenderError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines.discover import path_of_key
from radlake.pipelines.worker import encode_preview
from radlake.storage.keys import (
    DERIVED_KEY_PATTERN,
    PREVIEW,
    QUARANTINE_KEY_PATTERN,
    RAW_KEY_PATTERN,
)
from radlake.storage.store import ObjectStore

ORPHAN_MIN_AGE = 3600.0
"""Seconds an unreferenced object must have existed before repair deletes it."""
PAGE_SIZE = 500
MAX_FINDINGS = 1000
HASH_CHUNK = 4 * 1024 * 1024
ORPHAN_PREFIXES = ("raw", "derived", "quarantine")
REINGEST_HINT = "ingest the original again"

Progress = Callable[[str, int, int | None], None]
Remake = Callable[[Sequence[int]], Mapping[int, str]]
"""Makes de-identified objects of these images again; the reasons of those it could not."""
"""Called with (phase, done, total or None when unknown) as work completes."""

Kind = Literal["missing", "corrupt", "orphan", "recent_orphan", "pointing_nowhere"]
Target = Literal["original", "rendition", "object", "quarantine", "deidentified"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found: store keys and catalog ids only, never patient data or paths."""

    kind: Kind
    target: Target
    key: str
    image_id: int | None
    detail: str
    repaired: bool = False

    def line(self) -> str:
        """The finding as the CLI prints it."""
        image = f" (image {self.image_id})" if self.image_id is not None else ""
        return f"{self.kind.replace('_', ' ')} {self.target} {self.key}{image}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Counts of one verify job and its first MAX_FINDINGS findings.

    missing, corrupt, orphans and pointing_nowhere are problems; recent_orphans
    (unreferenced objects younger than an hour) are reported but are no problem.
    """

    job_id: int
    repair: bool
    sample: int | None
    seed: int
    images: int
    images_hashed: int
    bytes_hashed: int
    hash_seconds: float
    renditions: int
    quarantine_rows: int
    objects_listed: int
    missing: int
    corrupt: int
    orphans: int
    recent_orphans: int
    pointing_nowhere: int
    repaired: int
    seconds: float
    findings: tuple[Finding, ...]
    findings_left_out: int

    @property
    def problems(self) -> int:
        return self.missing + self.corrupt + self.orphans + self.pointing_nowhere

    @property
    def unrepaired(self) -> int:
        return self.problems - self.repaired

    @property
    def sound(self) -> bool:
        """True when no problem remains (none found, or all repaired)."""
        return self.unrepaired == 0

    @property
    def megabytes_per_second(self) -> float:
        """Re-hashing rate (reading and hashing originals)."""
        return self.bytes_hashed / 1e6 / self.hash_seconds if self.hash_seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        hashed = _size_text(self.bytes_hashed)
        sampled = (
            f" ({self.images_hashed} re-hashed: a sample, seed {self.seed})"
            if self.sample is not None and self.sample < self.images
            else ""
        )
        recent = (
            f" ({self.recent_orphans} recent objects left alone)" if self.recent_orphans else ""
        )
        return (
            f"{self.images} images checked{sampled}, {hashed} hashed at "
            f"{self.megabytes_per_second:.1f} MB/s: {self.missing} missing, "
            f"{self.corrupt} corrupt, {self.orphans} orphan objects, "
            f"{self.pointing_nowhere} rows pointing nowhere; {self.repaired} repaired"
            f"{recent} in {self.seconds:.1f} s"
        )

    def counts(self) -> dict[str, int]:
        """The counts recorded on the job row."""
        counted = (name.name for name in fields(_Tally) if name.name != "hash_seconds")
        return {name: getattr(self, name) for name in counted} | {"unrepaired": self.unrepaired}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "problems": self.problems,
            "unrepaired": self.unrepaired,
            "sound": self.sound,
            "megabytes_per_second": round(self.megabytes_per_second, 2),
        }


def _size_text(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} KB"


# --- the keys the catalog points at --------------------------------------------------

_RAW_KEY = RAW_KEY_PATTERN
_DERIVED_KEY = DERIVED_KEY_PATTERN
_QUARANTINE_KEY = QUARANTINE_KEY_PATTERN


class _References:
    """Store keys the catalog points at: canonical originals as 32-byte digests by
    extension, anything else (quarantine inputs, keys off the layout) as strings."""

    def __init__(self) -> None:
        self._originals: dict[str, set[bytes]] = {}
        self._other_images: set[bytes] = set()
        self._keys: set[str] = set()

    def add_image(self, sha256: str, original_key: str) -> None:
        match = _RAW_KEY.fullmatch(original_key)
        if match and match[2] == sha256 and match[1] == sha256[:2]:
            self._originals.setdefault(match[3], set()).add(bytes.fromhex(sha256))
            return
        self._keys.add(original_key)
        if re.fullmatch(r"[0-9a-f]{64}", sha256):
            self._other_images.add(bytes.fromhex(sha256))

    def add_rendition(self, sha256: str, key: str) -> None:
        derived = DERIVED_KEY_PATTERN.fullmatch(key)
        if derived is None or derived[1] != sha256:
            self._keys.add(key)

    def add_key(self, key: str) -> None:
        self._keys.add(key)

    def _catalogued(self, digest: bytes) -> bool:
        return digest in self._other_images or any(
            digest in digests for digests in self._originals.values()
        )

    def __contains__(self, key: str) -> bool:
        if key in self._keys:
            return True
        if (raw := _RAW_KEY.fullmatch(key)) and raw[1] == raw[2][:2]:
            return bytes.fromhex(raw[2]) in self._originals.get(raw[3], ())
        if derived := _DERIVED_KEY.fullmatch(key):
            return self._catalogued(bytes.fromhex(derived[1]))
        return False


# --- the checks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ImageRow:
    id: int
    sha256: str
    size_bytes: int
    original_key: str
    source_key: str


@dataclass(frozen=True, slots=True)
class _RenditionRow:
    id: int
    name: str
    key: str
    width: int
    height: int
    window_center: float | None
    window_width: float | None


@dataclass
class _Tally:
    """The report's figures while they grow."""

    images: int = 0
    images_hashed: int = 0
    bytes_hashed: int = 0
    hash_seconds: float = 0.0
    renditions: int = 0
    quarantine_rows: int = 0
    objects_listed: int = 0
    missing: int = 0
    corrupt: int = 0
    orphans: int = 0
    recent_orphans: int = 0
    pointing_nowhere: int = 0
    repaired: int = 0


_COUNTERS: dict[Kind, str] = {
    "missing": "missing",
    "corrupt": "corrupt",
    "orphan": "orphans",
    "recent_orphan": "recent_orphans",
    "pointing_nowhere": "pointing_nowhere",
}


class _Verifier:
    def __init__(
        self, engine: Engine, store: ObjectStore, repair: bool, now: float, max_decoded_bytes: int
    ) -> None:
        self.engine, self.store, self.repair, self.now = engine, store, repair, now
        self.max_decoded_bytes = max_decoded_bytes
        self.tally = _Tally()
        self.findings: list[Finding] = []
        self.findings_left_out = 0
        self.references = _References()
        self._bad_originals: set[int] = set()  # reported and not repaired

    def _report(self, finding: Finding) -> None:
        tally = self.tally
        name = _COUNTERS[finding.kind]
        setattr(tally, name, getattr(tally, name) + 1)
        tally.repaired += finding.repaired
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.findings_left_out += 1

    # originals

    def check_images(self, sample: int | None, seed: int, progress: Progress | None) -> None:
        session = session_factory(self.engine)
        with session() as reading:
            total = int(reading.scalar(select(func.count()).select_from(Image)) or 0)
        chosen = None
        if sample is not None and sample < total:
            chosen = set(random.Random(seed).sample(range(total), sample))
        position, last_id = 0, 0
        while True:
            with session() as reading:
                rows = reading.execute(
                    select(
                        Image.id,
                        Image.sha256,
                        Image.size_bytes,
                        Image.original_key,
                        Image.source_key,
                    )
                    .where(Image.id > last_id)
                    .order_by(Image.id)
                    .limit(PAGE_SIZE)
                ).all()
                images = [_ImageRow(*row) for row in rows]
                renditions: dict[int, list[_RenditionRow]] = {}
                ids = [image.id for image in images]
                for row in reading.scalars(
                    select(Rendition).where(Rendition.image_id.in_(ids)).order_by(Rendition.id)
                ):
                    renditions.setdefault(row.image_id, []).append(
                        _RenditionRow(
                            row.id,
                            row.name,
                            row.key,
                            row.width,
                            row.height,
                            row.window_center,
                            row.window_width,
                        )
                    )
            if not images:
                return
            for image in images:
                rehash = chosen is None or position in chosen
                self._check_image(image, renditions.get(image.id, []), rehash)
                position += 1
                if progress:
                    progress("checking images", position, max(total, position))
            last_id = images[-1].id

    def _check_image(
        self, image: _ImageRow, renditions: Sequence[_RenditionRow], rehash: bool
    ) -> None:
        self.tally.images += 1
        self.references.add_image(image.sha256, image.original_key)
        hashed = self._check_original(image, rehash)
        for rendition in renditions:
            self.tally.renditions += 1
            self.references.add_rendition(image.sha256, rendition.key)
            self._check_rendition(image, rendition, hashed)

    def _check_original(self, image: _ImageRow, rehash: bool) -> bool:
        """Whether the original is known to hash right (checked, or rewritten)."""
        try:
            size = self.store.info(image.original_key).size
        except ObjectNotFound:
            return self._bad_original(image, "missing", "no object under its key")
        if size != image.size_bytes:
            detail = f"{size} bytes, the catalog says {image.size_bytes}"
            return self._bad_original(image, "corrupt", detail)
        if not rehash:
            return False
        started = time.perf_counter()
        try:
            digest, size = self.store.digest(image.original_key, HASH_CHUNK)
        except ObjectNotFound:  # deleted since the look above
            return self._bad_original(image, "missing", "no object under its key")
        self.tally.hash_seconds += time.perf_counter() - started
        self.tally.images_hashed += 1
        self.tally.bytes_hashed += size
        if digest != image.sha256:
            return self._bad_original(image, "corrupt", "its sha256 differs from the catalog's")
        return True

    def _bad_original(self, image: _ImageRow, kind: Kind, detail: str) -> bool:
        repaired = False
        if self.repair:
            data = _source_bytes(image)
            if data is None:
                detail += f"; unrepairable: its source file is gone or changed, {REINGEST_HINT}"
            else:
                self.store.put_bytes(image.original_key, data)
                repaired = True
                detail += "; rewritten from its source file"
        if not repaired:
            self._bad_originals.add(image.id)
        self._report(Finding(kind, "original", image.original_key, image.id, detail, repaired))
        return repaired

    # renditions

    def _check_rendition(self, image: _ImageRow, rendition: _RenditionRow, hashed: bool) -> None:
        try:
            problem = _picture_problem(self.store.get_bytes(rendition.key), rendition)
            kind: Kind = "corrupt"
        except ObjectNotFound:
            problem, kind = "no object under its key", "missing"
        if problem is None:
            return
        repaired = False
        if self.repair:
            unrepairable = self._render_again(image, rendition, hashed)
            repaired = unrepairable is None
            problem += "; rendered again from its original" if repaired else f"; {unrepairable}"
        self._report(Finding(kind, "rendition", rendition.key, image.id, problem, repaired))

    def _render_again(self, image: _ImageRow, rendition: _RenditionRow, hashed: bool) -> str | None:
        """Re-render a preview as the ingest worker does; None when done, else why not."""
        if rendition.name != PREVIEW:
            return f"unrepairable: only previews are rendered again, {REINGEST_HINT}"
        data = self._sound_original(image, hashed)
        if data is None:
            return f"unrepairable: its original is missing or corrupt, {REINGEST_HINT}"
        try:
            reader = reader_for(detect_format(data))
            pixels = reader.open_pixels(data, max_decoded_bytes=self.max_decoded_bytes)
            rendered = render(pixels, size=PREVIEW_SIZE)
        except (ImageError, RenderError) as exc:
            return f"unrepairable: its original does not render ({exc})"
        window = (
            None if rendered.window is None else (rendered.window.center, rendered.window.width)
        )
        self.store.put_bytes(rendition.key, encode_preview(rendered.image, window))
        now = (*rendered.image.size, *(window or (None, None)))
        before = (
            rendition.width,
            rendition.height,
            rendition.window_center,
            rendition.window_width,
        )
        if now != before:
            with transaction(self.engine) as session:
                row = session.get(Rendition, rendition.id)
                if row is not None:
                    row.width, row.height, row.window_center, row.window_width = now
        return None

    def _sound_original(self, image: _ImageRow, hashed: bool) -> bytes | None:
        """The original's bytes when they hash to the row's sha256 (checking them if
        the sample skipped them, and reporting them corrupt if they do not)."""
        if image.id in self._bad_originals:
            return None
        try:
            data = self.store.get_bytes(image.original_key)
        except ObjectNotFound:
            return None
        if hashed or hashlib.sha256(data).hexdigest() == image.sha256:
            return data
        detail = "its sha256 differs from the catalog's (found rendering its preview)"
        if not self._bad_original(image, "corrupt", detail):
            return None
        return self.store.get_bytes(image.original_key)

    # quarantine

    def check_quarantine(self, progress: Progress | None) -> None:
        session = session_factory(self.engine)
        # A later schema may mark rows resolved (the input was catalogued by a later
        # run); those may point nowhere. Tolerate catalogs with and without it.
        resolved_at = getattr(Quarantine, "resolved_at", None)
        with session() as reading:
            total = int(reading.scalar(select(func.count()).select_from(Quarantine)) or 0)
        resolved = null() if resolved_at is None else resolved_at
        done, last_id = 0, 0
        while True:
            with session() as reading:
                rows = reading.execute(
                    select(Quarantine.id, Quarantine.stored_key, resolved)
                    .where(Quarantine.id > last_id)
                    .order_by(Quarantine.id)
                    .limit(PAGE_SIZE)
                ).all()
            if not rows:
                return
            for row_id, stored_key, resolved_when in rows:
                self.tally.quarantine_rows += 1
                done += 1
                if stored_key is not None:
                    self.references.add_key(stored_key)
                    if resolved_when is None and not self.store.exists(stored_key):
                        detail = (
                            f"quarantine row {row_id} keeps no input any more "
                            "(left in place: it still says why the input was rejected)"
                        )
                        self._report(
                            Finding("pointing_nowhere", "quarantine", stored_key, None, detail)
                        )
                if progress:
                    progress("checking quarantine", done, max(total, done))
            last_id = rows[-1][0]

    # orphans

    def find_orphans(self, progress: Progress | None) -> None:
        for prefix in ORPHAN_PREFIXES:
            for key in self.store.iter_keys(prefix):
                self.tally.objects_listed += 1
                if key not in self.references:
                    self._orphan(key)
                if progress and self.tally.objects_listed % 100 == 0:
                    progress("looking for orphans", self.tally.objects_listed, None)

    def _orphan(self, key: str) -> None:
        try:
            modified = self.store.info(key).modified
        except ObjectNotFound:
            return  # deleted meanwhile
        age = None if modified is None else self.now - modified
        if age is not None and age < ORPHAN_MIN_AGE:
            detail = f"recent ({max(age, 0.0) / 60:.0f} min old), left alone"
            self._report(Finding("recent_orphan", "object", key, None, detail))
            return
        detail = "no catalog row points to it, " + (
            "age unknown" if age is None else f"{age / 3600:.1f} h old"
        )
        repaired = False
        if self.repair:
            if age is None:
                detail += "; left alone: the store keeps no modification time"
            elif self._referenced_now(key):
                return  # a row arrived since the catalog was read (a live ingest)
            else:
                self.store.delete(key)
                repaired = True
                detail += "; deleted"
        self._report(Finding("orphan", "object", key, None, detail, repaired))

    def _referenced_now(self, key: str) -> bool:
        """A fresh look at the catalog for keys a live ingest writes (indexed by sha)."""
        with session_factory(self.engine)() as session:
            if raw := _RAW_KEY.fullmatch(key):
                query = select(Image.id).where(Image.sha256 == raw[2], Image.original_key == key)
            elif derived := _DERIVED_KEY.fullmatch(key):
                query = select(Image.id).where(Image.sha256 == derived[1])
            elif _QUARANTINE_KEY.fullmatch(key):
                query = select(Quarantine.id).where(Quarantine.stored_key == key)
            else:
                return False
            return session.scalar(query.limit(1)) is not None


def _picture_problem(data: bytes, rendition: _RenditionRow) -> str | None:
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            size = picture.size
            picture.verify()
    except Exception as exc:  # Pillow raises many kinds for bad bytes (OSError, SyntaxError...)
        return f"does not decode as an image ({type(exc).__name__})"
    if size != (rendition.width, rendition.height):
        return f"a {size[0]}x{size[1]} picture, the row says {rendition.width}x{rendition.height}"
    return None


def _source_bytes(image: _ImageRow) -> bytes | None:
    """The source file's bytes when it is still there and hashes to the row's sha256."""
    try:
        source = path_of_key(image.source_key)  # quoted keys of non-UTF-8 names
        if os.stat(source).st_size != image.size_bytes:
            return None  # changed (and perhaps large): not worth reading
        data = Path(source).read_bytes()
    except (OSError, ValueError):  # gone, unreadable, not a local path
        return None
    return data if hashlib.sha256(data).hexdigest() == image.sha256 else None


def verify_lake(
    *,
    engine: Engine,
    store: ObjectStore,
    repair: bool = False,
    sample: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    now: float | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    remake_deidentified: Remake | None = None,
) -> VerifyReport:
    """Check the lake's store against its catalog, repairing what can be with repair.

    remake_deidentified: makes de-identified objects again (repair only; the CLI passes
    the lake's de-identification).

    sample re-hashes N originals chosen with random.Random(seed) instead of all (sizes
    are always checked); now is the time orphans' ages are measured from (default:
    when the job starts); max_decoded_bytes is the decode budget for rendering
    previews again (the ingest limit).

    Raises:
        ValueError: sample is below 1.
        StorageError, CatalogError: the store or the catalog failed (the job is
            recorded as failed).
    """
    if sample is not None and sample < 1:
        raise ValueError(f"expected a sample of at least 1 image, got {sample}")
    started = time.perf_counter()
    with transaction(engine) as session:
        job = Job(
            kind="verify",
            status="running",
            parameters={"repair": repair, "sample": sample, "seed": seed},
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    clock = time.time() if now is None else now
    verifier = _Verifier(engine, store, repair, clock, max_decoded_bytes)
    status, error = "failed", None
    try:
        verifier.check_images(sample, seed, progress)
        from radlake.pipelines.verify_deid import check_deid_objects

        check_deid_objects(
            engine,
            store,
            report=verifier._report,
            remake=remake_deidentified if repair else None,
            progress=progress,
        )
        verifier.check_quarantine(progress)
        verifier.find_orphans(progress)
        status = "succeeded"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise
    finally:
        seconds = time.perf_counter() - started
        report = VerifyReport(
            job_id=job_id,
            repair=repair,
            sample=sample,
            seed=seed,
            seconds=seconds,
            findings=tuple(verifier.findings),
            findings_left_out=verifier.findings_left_out,
            **asdict(verifier.tally),
        )
        with transaction(engine) as session:
            row = session.get_one(Job, job_id)
            row.status, row.error, row.counts = status, error, report.counts()
            row.finished_at, row.seconds = utcnow(), round(seconds, 3)
    return report
