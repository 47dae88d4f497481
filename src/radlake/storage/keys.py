"""Key layout of the store (DESIGN.md "Store layout"): every key is built here."""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

PREVIEW = "preview"
PREVIEW_EXTENSIONS = {"png": "png", "jpeg": "jpg"}

# Patterns of the keys built below, for readers of a listing (verify).
RAW_KEY_PATTERN = re.compile(r"raw/([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9.]+)")
DERIVED_KEY_PATTERN = re.compile(r"derived/([0-9a-f]{64})/.+")
QUARANTINE_KEY_PATTERN = re.compile(r"quarantine/[0-9a-f]{2}/([0-9a-f]{64})")


def _check_sha(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"expected a lowercase hex sha256, got {sha256[:80]!r}")
    return sha256


def raw_key(sha256: str, extension: str) -> str:
    """raw/<sha256[:2]>/<sha256>.<ext>: originals, immutable, content-addressed."""
    _check_sha(sha256)
    return f"raw/{sha256[:2]}/{sha256}.{extension}"


def derived_prefix(sha256: str) -> str:
    """derived/<sha256>/: the folder of one original's renditions."""
    return f"derived/{_check_sha(sha256)}/"


def derived_key(sha256: str, rendition: str, extension: str) -> str:
    """derived/<sha256>/<rendition>.<ext>: previews, slices, normalised images."""
    if not _NAME.match(rendition):
        raise ValueError(f"expected a rendition name like 'preview', got {rendition[:80]!r}")
    return f"{derived_prefix(sha256)}{rendition}.{extension}"


def preview_key(sha256: str, fmt: str = "png") -> str:
    """derived/<sha256>/preview.png|jpg: the preview-size picture of the default
    slice and window (the PNG is written at ingest, the JPEG on first request).

    Raises:
        ValueError: fmt is not png or jpeg, or sha256 is not a lowercase hex sha256.
    """
    extension = PREVIEW_EXTENSIONS.get(fmt)
    if extension is None:
        raise ValueError(f"expected a preview format png or jpeg, got {fmt[:20]!r}")
    return derived_key(sha256, PREVIEW, extension)


def quarantine_key(sha256: str) -> str:
    """quarantine/<sha256[:2]>/<sha256>: rejected inputs, kept so nothing is lost."""
    _check_sha(sha256)
    return f"quarantine/{sha256[:2]}/{sha256}"


def model_key(name: str, version: int) -> str:
    """models/<name>/<version>/model.onnx: a registered model version's file.

    Raises:
        ValueError: name is not a model name (lowercase letters, digits, _ . -) or
            version is not a positive integer.
    """
    if not _NAME.match(name):
        raise ValueError(f"expected a model name like 'lungs-v1', got {name[:80]!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"expected a positive model version, got {version!r:.20}")
    return f"models/{name}/{version}/model.onnx"


def retrain_prefix(name: str, format_name: str) -> str:
    """retrain/<name>/<format>/: a retraining set's export (name: its UTC timestamp).

    Raises:
        ValueError: a part is not a plain lowercase name.
    """
    for part in (name, format_name):
        if not _NAME.match(part):
            raise ValueError(f"expected a plain name for a retrain key part, got {part[:80]!r}")
    return f"retrain/{name}/{format_name}/"
