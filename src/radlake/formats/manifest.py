"""manifest.json: every file an export wrote, with its sha256 and size.

An export writes its files through a `ManifestSink`, which hashes each one on the
way, then writes manifest.json last, so a manifest present means the export
finished. Its layout, with keys sorted and one file a line:

    {"files":[
    {"path":"data.yaml","sha256":"...","size":123},
    ...
    ],"metadata":{...caller's metadata: dataset, version, format, size, mode...}}

Files are listed by path; the manifest does not list itself. `canonical_json` is
the one JSON encoder of the formats package, so every JSON file is reproducible.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from radlake.formats.model import FormatError
from radlake.formats.sink import Sink

MANIFEST_NAME = "manifest.json"
README_NAME = "README.txt"


def readme_text(format_name: str, notes: list[str]) -> bytes:
    """README.txt of an export that has something to say (no boxes, stand-in splits),
    next to the files a person opens first."""
    lines = [f"radlake {format_name} export: please note", ""] + [f"- {n}" for n in notes]
    return ("\n".join(lines) + "\n").encode("utf-8")


def canonical_json(value: object) -> str:
    """Compact JSON with sorted keys and fixed separators: the same value, the same text.

    Raises:
        FormatError: value holds something JSON cannot carry (an object, NaN).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"expected JSON-compatible values: {exc}") from exc


class ManifestSink:
    """A sink that passes writes through and records each file's sha256 and size."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.files: dict[str, tuple[str, int]] = {}

    def write(self, relative_path: str, data: bytes) -> None:
        """Write through to the wrapped sink and record the file.

        Raises:
            FormatError: the path is manifest.json or was already written in this
                export (two images would have overwritten each other).
            StorageError: from the wrapped sink.
        """
        if relative_path == MANIFEST_NAME or relative_path in self.files:
            raise FormatError(f"export would write {relative_path!r} twice")
        self.sink.write(relative_path, data)
        self.files[relative_path] = (hashlib.sha256(data).hexdigest(), len(data))

    @property
    def bytes_written(self) -> int:
        return sum(size for _, size in self.files.values())

    def write_manifest(self, metadata: Mapping[str, object]) -> bytes:
        """Write manifest.json (listing every file written so far) and return its bytes.

        Raises:
            FormatError: metadata is not JSON-compatible.
            StorageError: from the wrapped sink.
        """
        data = build_manifest(self.files, metadata)
        self.sink.write(MANIFEST_NAME, data)
        return data


def build_manifest(files: Mapping[str, tuple[str, int]], metadata: Mapping[str, object]) -> bytes:
    """The bytes of manifest.json for files ({path: (sha256, size)}) and metadata.

    Raises:
        FormatError: metadata is not JSON-compatible.
    """
    # One file per line (diffable, greppable) and keys in sorted order, formatted by
    # hand: json's indenting encoder is pure Python and costs ~0.2 s for 15,000 files.
    listing = ",\n".join(
        f'{{"path":{json.dumps(path)},"sha256":"{sha256}","size":{size}}}'
        for path, (sha256, size) in sorted(files.items())
    )
    text = f'{{"files":[\n{listing}\n],"metadata":{canonical_json(dict(metadata))}}}\n'
    return text.encode("utf-8")


def read_manifest(data: bytes) -> tuple[dict[str, tuple[str, int]], dict[str, Any]]:
    """({path: (sha256, size)}, metadata) from manifest.json bytes.

    Raises:
        FormatError: data is not a manifest written by `build_manifest`.
    """
    try:
        parsed = json.loads(data)
        files = {
            str(entry["path"]): (str(entry["sha256"]), int(entry["size"]))
            for entry in parsed["files"]
        }
        metadata = dict(parsed["metadata"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"expected a radlake manifest.json: {exc!r}") from exc
    return files, metadata


def verify_manifest(data: bytes, read: Callable[[str], bytes]) -> list[str]:
    """Paths whose content is missing or differs from manifest.json; empty when intact.

    read(path) returns a file's bytes (`ObjectStore.get_bytes` under the export's
    prefix, `Path.read_bytes` under its folder) and may raise FileNotFoundError
    (which counts as a mismatch).

    Raises:
        FormatError: data is not a manifest.
    """
    files, _ = read_manifest(data)
    bad: list[str] = []
    for path, (sha256, size) in sorted(files.items()):
        try:
            content = read(path)
        except FileNotFoundError:  # ObjectNotFound is one too
            bad.append(path)
            continue
        if len(content) != size or hashlib.sha256(content).hexdigest() != sha256:
            bad.append(path)
    return bad
