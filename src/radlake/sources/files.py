"""Finding the file a CSV row names inside a dataset folder, without trusting the row.

A row names a file exactly ("x.jpeg"), or only by a value that the file's name starts
with (Figure1 names its images <patientid>.jpg|.png and lists no file name): the
extension is then found on disk. Names are looked up in one listing per folder, so a
row cannot reach outside the dataset ("../../etc/passwd" is simply not listed) and a
large CSV costs one directory read, not one stat per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        self._listings: dict[str, tuple[dict[str, Path], dict[str, list[Path]]]] = {}

    def _listing(self, folder: str) -> tuple[dict[str, Path], dict[str, list[Path]]]:
        if folder not in self._listings:
            exact: dict[str, Path] = {}
            folded: dict[str, list[Path]] = {}
            directory = self.root / folder
            if _inside(self.root, directory) and directory.is_dir():
                for path in sorted(directory.iterdir()):
                    if path.is_file():
                        exact[path.name] = path
                        folded.setdefault(path.name.lower(), []).append(path)
            self._listings[folder] = (exact, folded)
        return self._listings[folder]

    def find(self, folder: str, value: str, *, listed_in: str) -> Found:
        """The file `value` names in `folder`: that exact name, else the one file named
        `value` plus an image extension (any case).

        Never raises: an absent, ambiguous or out-of-folder name is a reason.
        """
        where = f"{folder}/{value}"
        if not _inside(self.root, self.root / folder):
            return Found(None, f"folder named in {listed_in} is outside the dataset: {folder}")
        if "/" in value or "\\" in value or value in (".", ".."):
            return Found(None, f"file named in {listed_in} is not a plain file name: {where}")
        exact, folded = self._listing(folder)
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
