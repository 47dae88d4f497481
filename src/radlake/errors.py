"""One exception tree for radlake.

    RadlakeError
    ├── ConfigError
    ├── ImageError
    │   ├── UnsupportedFormat(ImageError, ValueError)
    │   ├── CorruptImage(ImageError, ValueError)
    │   ├── NoPixelData(ImageError, ValueError)
    │   ├── UndecodableImage(ImageError, ValueError)
    │   └── TooLargeToDecode(ImageError, ValueError)
    ├── RenderError(RadlakeError, ValueError)
    ├── StorageError
    │   ├── ObjectNotFound(StorageError, FileNotFoundError)
    │   └── StoreUnavailable(StorageError, ConnectionError)
    └── CatalogError
        ├── NotInitialized
        ├── CatalogUnavailable(CatalogError, ConnectionError)
        └── ImageNotFound(CatalogError, LookupError)

Modules add their own leaves (each also a ValueError): SourceFormatError
(sources.csvfile), SplitSpecError and SplitInputError (curation.splits),
AgreementError (curation.agreement), DatasetError (curation.versions), FormatError
(formats.model), TokenError (auth), ZipNameError (api.zipstream), InputPathError
(pipelines.discover, a FileNotFoundError), TextDetectorUnavailable
(imaging.burned_in_detector, an ImportError).

Messages say what was expected and what was received; they never carry patient
data (names, IDs, dates), so they are safe for logs, the CLI and HTTP answers.
"""

from __future__ import annotations


class RadlakeError(Exception):
    """Root of every error radlake raises on purpose."""


class ConfigError(RadlakeError):
    """Settings are missing or inconsistent."""


class ImageError(RadlakeError):
    """An input could not be read as a medical image; the message is its quarantine reason."""


class UnsupportedFormat(ImageError, ValueError):
    """The content matches no supported format (DICOM, NIfTI, PNG, JPEG)."""


class CorruptImage(ImageError, ValueError):
    """The content starts like a supported format but is truncated or malformed."""


class NoPixelData(ImageError, ValueError):
    """A valid object that carries no image (a structured report, a protocol)."""


class UndecodableImage(ImageError, ValueError):
    """Pixel data exist but no installed decoder handles them."""


class TooLargeToDecode(ImageError, ValueError):
    """The headers claim more decoded pixels than the decode budget allows (a bomb,
    or an image too large for this machine); nothing was decoded."""


class RenderError(RadlakeError, ValueError):
    """A rendering request does not fit the image (slice out of range, bad window)."""


class StorageError(RadlakeError):
    """The object store failed."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object under the requested key."""


class StoreUnavailable(StorageError, ConnectionError):
    """The store kept failing after bounded retries: a fault, never a bad input."""


class CatalogError(RadlakeError):
    """The catalog database failed or holds unexpected state."""


class NotInitialized(CatalogError):
    """No lake at the configured location: run `radlake init`."""


class CatalogUnavailable(CatalogError, ConnectionError):
    """The catalog database kept failing after bounded retries: a fault, never a bad input."""


class ImageNotFound(CatalogError, LookupError):
    """No catalogued image has the requested id."""
