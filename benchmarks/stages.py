"""Where ingest's CPU goes, per stage and per modality (a profiling pass, one process).

Every figure is time.process_time() around the library's own calls, on a sample of
the corpus, in this process only (no pool, no IPC), so the stages add up:

    read          Path.read_bytes
    hash          hashlib.sha256
    parse header  detect_format + reader_for(fmt).read (the data set parsed, metadata)
    decode        open_pixels() and the PixelSource calls render makes (frame or
                  stored_frame: decompression, byte order, modality LUT where applied)
    render        render(size=512) minus those calls: shrink/resize, rescale, VOI
                  window, MONOCHROME1, conversion to 8 bits
    encode        pipelines.worker.encode_preview (PNG)
    store write   ObjectStore.put_bytes (preview) + put_if_absent (original), local store
    catalog       ingest() run in this process with a timing executor: ingest's CPU
                  minus the per-file worker calls, i.e. catalog writes, discovery and
                  job bookkeeping (the parent's share), averaged over all files
    worker        the per-file worker call as ingest makes it (same run), for checking
                  that read..store write account for what the worker does
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from radlake.catalog.db import make_engine, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines import worker
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store

T = TypeVar("T")
R = TypeVar("R")

FILE_STAGES = ("read", "hash", "parse header", "decode", "render", "encode", "store write")
ALL = "all"


def read_image(data: bytes, pseudonymizer: Pseudonymizer) -> tuple[Any, Any, Any]:
    """(format, metadata, open_pixels) as the ingest worker gets them.

    The decode budget is passed as the worker passes it, when the reader takes one.
    """
    fmt = detect_format(data)
    reader = reader_for(fmt)
    options: dict[str, Any] = {}
    budget = getattr(worker, "DEFAULT_MAX_DECODED_BYTES", None)
    if budget is not None and "max_decoded_bytes" in inspect.signature(reader.read).parameters:
        options["max_decoded_bytes"] = budget
    metadata, open_pixels = reader.read(data, pseudonymizer, **options)
    return fmt, metadata, open_pixels


class _TimedSource:
    """The reader's PixelSource, with the CPU and wall time of every call render makes
    on it (frame, stored_frame, volume, ...) added up: the pixel decoding.

    Delegation is by name, so whichever method render uses today is timed, and a
    change in the PixelSource interface shows up here unchanged.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.cpu = self.wall = 0.0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = _now()
            try:
                return value(*args, **kwargs)
            finally:
                cpu_end, wall_end = _now()
                self.cpu += cpu_end - cpu
                self.wall += wall_end - wall

        return timed


@dataclass
class Profile:
    """CPU seconds per (modality, stage), and files per modality."""

    seconds: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    wall: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    files: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    catalog: dict[str, float] = field(default_factory=dict)  # backend -> CPU s per file
    worker: dict[str, float] = field(default_factory=dict)  # modality -> CPU s per file
    worker_wall: dict[str, float] = field(default_factory=dict)  # modality -> wall s per file
    errors: list[str] = field(default_factory=list)

    def add(self, modality: str, stage: str, cpu: float, wall: float) -> None:
        for key in (modality, ALL):
            self.seconds[key][stage] += cpu
            self.wall[key][stage] += wall

    def ms(self, modality: str, stage: str) -> float:
        return 1000.0 * self.seconds[modality][stage] / max(1, self.files[modality])

    def wall_ms(self, modality: str, stage: str) -> float:
        return 1000.0 * self.wall[modality][stage] / max(1, self.files[modality])

    def as_dict(self) -> dict[str, object]:
        return {
            "files": dict(self.files),
            "cpu_ms_per_file": {
                m: {stage: round(self.ms(m, stage), 3) for stage in FILE_STAGES} for m in self.files
            },
            "wall_ms_per_file": {
                m: {stage: round(self.wall_ms(m, stage), 3) for stage in FILE_STAGES}
                for m in self.files
            },
            "catalog_cpu_ms_per_file": {k: round(1000 * v, 3) for k, v in self.catalog.items()},
            "worker_cpu_ms_per_file": {k: round(1000 * v, 3) for k, v in self.worker.items()},
            "worker_wall_ms_per_file": {k: round(1000 * v, 3) for k, v in self.worker_wall.items()},
            "errors": self.errors,
        }


def sample(files: Sequence[Path], count: int) -> list[Path]:
    """Every k-th file: the corpus is shuffled, so the sample keeps its mix."""
    if count >= len(files):
        return list(files)
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def _now() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _stages_of_one(path: Path, modality: str, profile: Profile, store: Any, key: bytes) -> None:
    pseudonymizer = Pseudonymizer(key)
    t0 = _now()
    data = path.read_bytes()
    t1 = _now()
    sha256 = hashlib.sha256(data).hexdigest()
    t2 = _now()
    fmt, _metadata, open_pixels = read_image(data, pseudonymizer)
    t3 = _now()
    source = _TimedSource(open_pixels())
    rendered = render(source, size=PREVIEW_SIZE)  # type: ignore[arg-type]
    t5 = _now()
    # Decode: opening the pixels and every pixel call render made; render: the rest.
    t4 = (t5[0] - source.cpu, t5[1] - source.wall)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    png = worker.encode_preview(rendered.image, window)
    t6 = _now()
    store.put_bytes(f"derived/{sha256}/preview.png", png)
    store.put_if_absent(f"raw/{sha256[:2]}/{sha256}.{fmt.extension}", data)
    t7 = _now()
    marks = (t0, t1, t2, t3, t4, t5, t6, t7)
    for stage, start, end in zip(FILE_STAGES, marks[:-1], marks[1:], strict=True):
        profile.add(modality, stage, end[0] - start[0], end[1] - start[1])


class TimingExecutor:
    """Runs ingest's per-file work in this process and times each call (CPU and wall)."""

    workers = 1

    def __init__(self, modality_of: Callable[[str], str]) -> None:
        self.modality_of = modality_of
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.files: dict[str, int] = defaultdict(int)

    def map_unordered(
        self, fn: Callable[[T], R], items: Iterable[T], **_options: Any
    ) -> Iterator[R]:
        # _options: on_crash and whatever else the executor interface grows; nothing
        # can crash a worker here, the work runs in this process.
        for item in items:
            cpu, wall = _now()
            result = fn(item)
            cpu_end, wall_end = _now()
            modality = self.modality_of(str(getattr(item, "path", item)))
            for key in (modality, ALL):
                self.cpu[key] += cpu_end - cpu
                self.wall[key] += wall_end - wall
                self.files[key] += 1
            yield result


def _catalog_pass(
    files: Sequence[Path], modality_of: dict[Path, str], url: str, lake: Path, key: bytes
) -> tuple[float, TimingExecutor]:
    """(catalog CPU s per file, the executor's per-file timings) from one ingest."""
    by_name = {str(path): modality for path, modality in modality_of.items()}
    executor = TimingExecutor(lambda path: by_name.get(path, "?"))
    engine = make_engine(url)
    try:
        upgrade(engine)
        store = open_store((lake / "store").as_uri())
        started = time.process_time()
        summary = ingest(
            [str(path) for path in files],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(key),
            executor=executor,
        )
        total = time.process_time() - started
    finally:
        engine.dispose()
    if summary.catalogued != len(files):
        raise RuntimeError(f"profile ingest: expected {len(files)} catalogued, {summary.line()}")
    return (total - executor.cpu[ALL]) / len(files), executor


def profile_stages(
    files: Sequence[Path],
    modality_of: dict[Path, str],
    key: bytes,
    catalogs: dict[str, Callable[[Path], Any]],
) -> Profile:
    """Stage CPU for files (one process); catalogs maps a backend name to a context
    manager factory yielding a fresh catalog URL for a lake folder."""
    profile = Profile()
    lake = Path(tempfile.mkdtemp(prefix="radlake-bench-profile-"))
    try:
        # Warm-up, not counted: lazy imports and first-call costs (codecs, plugins).
        firsts = {modality_of.get(path, "?"): path for path in reversed(files)}
        warm_store = open_store((lake / "warm-up").as_uri())
        for path in firsts.values():
            with contextlib.suppress(Exception):
                _stages_of_one(path, "warm-up", Profile(), warm_store, key)
        store = open_store((lake / "stage-store").as_uri())
        for path in files:
            modality = modality_of.get(path, "?")
            try:
                _stages_of_one(path, modality, profile, store, key)
            except Exception as exc:  # a reader change broke a file: say so, go on
                profile.errors.append(f"{path.name}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            profile.files[modality] += 1
            profile.files[ALL] += 1
        for backend, catalog in catalogs.items():
            backend_lake = lake / backend
            backend_lake.mkdir()
            with catalog(backend_lake) as url:
                catalog_cpu, timed = _catalog_pass(files, modality_of, url, backend_lake, key)
            profile.catalog[backend] = catalog_cpu
            if not profile.worker:  # the worker's figures from the first backend's run
                profile.worker = {m: timed.cpu[m] / timed.files[m] for m in timed.files}
                profile.worker_wall = {m: timed.wall[m] / timed.files[m] for m in timed.files}
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    return profile


def table(profile: Profile, title: str) -> str:
    """Per-modality CPU ms per file, one column per stage (and two wall-clock columns)."""
    backends = list(profile.catalog)
    header = ["modality", "files", *FILE_STAGES, "store wall"]
    header += [f"catalog ({b})" for b in backends]
    header += ["sum", "worker (in ingest)", "worker wall"]
    rows = [header]
    for modality in [m for m in profile.files if m != ALL] + [ALL]:
        stages = [profile.ms(modality, stage) for stage in FILE_STAGES]
        store_wall = profile.wall_ms(modality, "store write")
        catalog = [1000 * profile.catalog[b] for b in backends]
        total = sum(stages) + (catalog[0] if catalog else 0.0)
        worker = profile.worker.get(modality)
        worker_wall = profile.worker_wall.get(modality)
        rows.append(
            [modality, str(profile.files[modality])]
            + [f"{value:.2f}" for value in [*stages, store_wall, *catalog, total]]
            + ["-" if value is None else f"{1000 * value:.2f}" for value in (worker, worker_wall)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (
        f"{title}: CPU ms per file by stage (profiling pass, one process, process_time; "
        "catalog = ingest() in-process minus its worker calls, averaged over all files; "
        "sum = CPU stages + first catalog; store wall and worker wall are wall-clock ms, "
        "so wall minus CPU is time waiting on the disk)"
    )
    return "\n".join([note, *lines] + [f"  error: {e}" for e in profile.errors[:5]])
