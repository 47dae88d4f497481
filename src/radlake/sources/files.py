"""Finding the file a CSV row names inside a dataset folder, without trusting the row.

A row names a file exactly ("x.jpeg"), or only by a value that the file's name starts
with (Figure1 names its images <patientid>.jpg|.png and lists no file name): the
extension is then found on disk. Names are looked up in one listing per folder, so a
row cannot reach outside the dataset ("../../etc/passwd" is simply not listed) and a
large CSV costs one directory read, not one stat per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from radlake.sources.csvfile import SourceFormatError

# Extensions tried when a row's value has none; the formats ingest reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")


@dataclass(frozen=True, slots=True)
class Found:
    """Where a row's file is, or why it has none (a reason a person can act on)."""

    path: Path | None
    reason: str | None = None


class DatasetFiles:
    """The files of a dataset folder's subfolders, listed once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # folder -> (files by name, files by lower-case name); None: outside the root
        self._listings: dict[str, tuple[dict[str, Path], dict[str, list[Path]]] | None] = {}

    def _listing(self, folder: str) -> tuple[dict[str, Path], dict[str, list[Path]]] | None:
        if folder not in self._listings:
            directory = self.root / folder
            if not _inside(self.root, directory):
                self._listings[folder] = None
                return None
            exact: dict[str, Path] = {}
            folded: dict[str, list[Path]] = {}
            if directory.is_dir():
                # scandir knows each entry's type from the listing: no stat per file
                try:
                    with os.scandir(directory) as entries:
                        names = sorted(entry.name for entry in entries if entry.is_file())
                except OSError as exc:
                    raise SourceFormatError(
                        f"cannot list {folder}/ in the dataset: {exc.strerror}"
                    ) from None
                for name in names:
                    exact[name] = directory / name
                    folded.setdefault(name.lower(), []).append(exact[name])
            self._listings[folder] = (exact, folded)
        return self._listings[folder]

    def find(self, folder: str, value: str, *, listed_in: str) -> Found:
        """The file `value` names in `folder`: that exact name, else the one file named
        `value` plus an image extension (any case).

        An absent, ambiguous or out-of-folder name is a reason, not an error.

        Raises:
            SourceFormatError: the folder exists but cannot be listed.
        """
        where = f"{folder}/{value}"
        listing = self._listing(folder)
        if listing is None:
            return Found(None, f"folder named in {listed_in} is outside the dataset: {folder}")
        if "/" in value or "\\" in value or value in (".", ".."):
            return Found(None, f"file named in {listed_in} is not a plain file name: {where}")
        exact, folded = listing
        if value in exact:
            return Found(exact[value])
        candidates = [
            path for ext in IMAGE_EXTENSIONS for path in folded.get(f"{value}{ext}".lower(), [])
        ]
        if len(candidates) == 1:
            return Found(candidates[0])
        if candidates:
            names = ", ".join(p.name for p in candidates[:5])
            return Found(
                None,
                f"{len(candidates)} files match {where} in {listed_in} ({names}): "
                "keep one, or name the file in a column and map it with --column filename=...",
            )
        return Found(None, f"file listed in {listed_in} is absent: {where}")


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False
