"""The one filter model: a selection of catalogued images, declared once.

The REST API's query parameters (api.deps), every JSON body that carries a filter
(cohorts, dataset versions), `radlake query`, `--select KEY=VALUE` and the web page's
filter controls are all generated from, or validated by, `ImageFilter`: a field added
here appears everywhere. Unknown keys, wrong types and out-of-range values are
errors, never ignored (issue 8: `?modalty=CR` returned the whole lake).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from radlake.errors import RadlakeError

MAX_ATTRIBUTES = 50  # each is one SQL condition; 1,000 overflowed SQLite's expression tree
MAX_PIXELS = 100_000

Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
AttributeValue = Annotated[str, StringConstraints(max_length=200)]
Pixels = Annotated[int, Field(ge=0, le=MAX_PIXELS)]


def _blank_is_none(value: object) -> object:
    """An empty value (a web form's "any", `?modality=`) is no condition."""
    return None if isinstance(value, str) and not value.strip() else value


Blank = BeforeValidator(_blank_is_none)
OptionalText = Annotated[Text | None, Blank]
OptionalPixels = Annotated[Pixels | None, Blank]


class FilterError(RadlakeError, ValueError):
    """A filter with an unknown key, a wrong type or a value out of range."""


class ImageFilter(BaseModel):
    """A selection of images; every field left empty matches everything.

    It only selects: nothing is moved or deleted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: OptionalText = Field(
        default=None, description="DICOM modality, any case: MR, CT, CR."
    )
    manufacturer: OptionalText = Field(
        default=None, description="Manufacturer prefix, any case: GE matches GE MEDICAL SYSTEMS."
    )
    series_uid: OptionalText = Field(default=None, description="Series Instance UID.")
    study_uid: OptionalText = Field(default=None, description="Study Instance UID.")
    patient: OptionalText = Field(default=None, description="Patient pseudonym.")
    format: OptionalText = Field(default=None, description="dicom, nifti, png or jpeg.")
    body_part: OptionalText = Field(default=None, description="Body part examined, any case: HEAD.")
    view: OptionalText = Field(default=None, description="View position, any case: PA, AP.")
    source: OptionalText = Field(default=None, description="Source name.")
    min_rows: OptionalPixels = Field(default=None, description="At least this many rows.")
    min_columns: OptionalPixels = Field(default=None, description="At least this many columns.")
    min_size: OptionalPixels = Field(
        default=None, description="Both sides at least this many pixels."
    )
    max_size: OptionalPixels = Field(
        default=None, description="Both sides at most this many pixels."
    )
    finding: OptionalText = Field(
        default=None, description="A ground-truth label class (any reader), e.g. Cardiomegaly."
    )
    reader: OptionalText = Field(default=None, description="Images read by this radiologist id.")
    dataset: OptionalText = Field(default=None, description="Members of this dataset's version.")
    version: Annotated[int | None, Blank] = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Dataset version (needs dataset; default newest).",
    )
    split: OptionalText = Field(
        default=None, description="A split of the dataset version (needs dataset)."
    )
    attributes: tuple[tuple[AttributeName, AttributeValue], ...] = Field(
        default=(),
        max_length=MAX_ATTRIBUTES,
        description=f"Source attributes NAME=VALUE, compared as text (at most {MAX_ATTRIBUTES}).",
    )

    @model_validator(mode="after")
    def _dataset_for_split_and_version(self) -> Self:
        for name in ("split", "version"):
            if getattr(self, name) is not None and self.dataset is None:
                raise ValueError(f"{name} needs dataset")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The non-empty fields, JSON-ready (stored with dataset versions and cohorts)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageFilter:
        """Inverse of as_dict; the form of a filter in a JSON body.

        Raises:
            FilterError: an unknown key, a wrong type or a value out of range.
        """
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise FilterError(describe(exc)) from None

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> ImageFilter:
        """Build a filter from `key=value` texts; `attr.NAME=VALUE` selects on attributes.

        Raises:
            FilterError: not key=value, an unknown or repeated key, a wrong value.
        """
        values: dict[str, Any] = {}
        attributes: list[tuple[str, str]] = []
        for pair in pairs:
            key, sep, value = (part.strip() for part in pair.partition("="))
            key = key.replace("-", "_")
            if not sep or not key:
                raise FilterError(f"expected a selection as key=value, got {pair[:80]!r}")
            if key.startswith("attr."):
                attributes.append((key[5:], value))
            elif key in values:
                raise FilterError(f"{key} given twice")
            else:
                values[key] = value
        if attributes:
            values["attributes"] = attributes
        return cls.from_dict(values)

    def merged(self, other: ImageFilter) -> ImageFilter:
        """This filter with other's non-empty fields added (attributes appended).

        Raises:
            FilterError: a field set in both, or too many attributes together.
        """
        mine, theirs = self.as_dict(), other.as_dict()
        both = (set(mine) & set(theirs)) - {"attributes"}
        if both:
            raise FilterError(f"{', '.join(sorted(both))} given twice")
        attributes = [*mine.pop("attributes", []), *theirs.pop("attributes", [])]
        if attributes:
            theirs["attributes"] = attributes
        return ImageFilter.from_dict(mine | theirs)


FILTER_FIELDS: tuple[str, ...] = tuple(ImageFilter.model_fields)


def describe(exc: ValidationError) -> str:
    """One short line from a validation error: where and what, never the whole input."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown filter key {where[:40]!r}")
        else:
            parts.append(f"{where}: {message}" if where else message)
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
