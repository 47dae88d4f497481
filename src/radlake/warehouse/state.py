"""Where a warehouse lives in the store and what its _state.json records.

The state is the warehouse's commit point: a build writes its part files first and
the state last (one atomic PUT or rename), so a reader or the next build sees
either the previous complete warehouse or the new one, never half a build. Parts
that no state lists (a build that died before its state) are ignored by readers
and deleted by the next `--full` build.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from radlake.errors import ObjectNotFound, RadlakeError
from radlake.storage.store import ObjectStore

# The views `radlake sql` offers (radlake.warehouse.sql defines them). Named here, away
# from DuckDB, so the CLI's help can list them without importing DuckDB and pyarrow.
VIEWS = (
    "images",
    "labels",
    "predictions",
    "runs",
    "feedback",
    "memberships",
    "renditions",
    "documents",
)

Format = Literal["parquet", "jsonl"]
FORMATS: tuple[Format, ...] = ("parquet", "jsonl")
# Bumped when the document schema changes: an incremental build over an older
# schema's parts becomes a full build (old and new documents must not mix).
SCHEMA_VERSION = 1
_EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl"}


class WarehouseError(RadlakeError, ValueError):
    """The warehouse cannot do what was asked: never built, unreadable state, a bad
    query (DuckDB's message), a statement that is not a read."""


def root(fmt: Format) -> str:
    """The prefix of one format's warehouse: warehouse/ or warehouse/jsonl/."""
    return "warehouse/" if fmt == "parquet" else "warehouse/jsonl/"


def state_key(fmt: Format) -> str:
    return f"{root(fmt)}_state.json"


def parts_prefix(fmt: Format) -> str:
    """The folder of a format's image documents (DESIGN.md warehouse/<table>/)."""
    return f"{root(fmt)}images/"


def part_key(fmt: Format, build: int, token: str, sequence: int) -> str:
    """A part's key: the build number orders parts, the token keeps two builds racing
    on the same number from overwriting each other's parts."""
    return f"{parts_prefix(fmt)}part-{build:06d}-{token}-{sequence:03d}.{_EXTENSIONS[fmt]}"


@dataclass(frozen=True, slots=True)
class Part:
    key: str
    build: int
    documents: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class State:
    """One format's warehouse after a build."""

    format: Format
    build: int  # the number of the last build that wrote documents or moved the watermark
    built_at: str  # ISO 8601, UTC
    watermark: dict[str, Any]  # changes.Watermark.as_dict()
    parts: tuple[Part, ...] = ()
    images: int = 0  # distinct images with a document
    schema: int = SCHEMA_VERSION
    full_build: int = 0  # the build whose parts are the base (the last --full)

    @property
    def documents(self) -> int:
        return sum(part.documents for part in self.parts)

    @property
    def superseded(self) -> int:
        """Documents a newer document of the same image replaces (dropped by --full)."""
        return self.documents - self.images

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["parts"] = [asdict(part) for part in self.parts]
        return found


def load_state(store: ObjectStore, fmt: Format) -> State | None:
    """The format's state, None when no build has finished.

    Raises:
        WarehouseError: the state is not one this version of radlake wrote.
        StorageError: the store failed.
    """
    try:
        raw = store.get_bytes(state_key(fmt))
    except ObjectNotFound:
        return None
    try:
        found = json.loads(raw)
        return State(
            format=found["format"],
            build=int(found["build"]),
            built_at=str(found["built_at"]),
            watermark=dict(found["watermark"]),
            parts=tuple(Part(**part) for part in found["parts"]),
            images=int(found["images"]),
            schema=int(found["schema"]),
            full_build=int(found.get("full_build", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WarehouseError(
            f"unreadable warehouse state {state_key(fmt)} ({type(exc).__name__}): "
            "run `radlake warehouse build --full` to rebuild it"
        ) from exc


def save_state(store: ObjectStore, state: State) -> None:
    """Write the state (atomically: the store's PUT or rename), making the build live."""
    data = json.dumps(state.as_dict(), indent=1, sort_keys=True).encode()
    store.put_bytes(state_key(state.format), data)


def check_format(fmt: str) -> Format:
    """fmt as a Format.

    Raises:
        WarehouseError: not one of FORMATS.
    """
    if fmt not in FORMATS:
        raise WarehouseError(f"expected a format in {', '.join(FORMATS)}, got {fmt[:40]!r}")
    return fmt
