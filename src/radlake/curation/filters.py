"""The one filter model: a selection of catalogued images, declared once.

The REST API's query parameters (api.deps), every JSON body that carries a filter
(cohorts, dataset versions), `radlake query`, `--select KEY=VALUE` and the web page's
filter controls are all generated from, or validated by, `ImageFilter`: a field added
here appears everywhere. Unknown keys, wrong types and out-of-range values are
errors, never ignored (issue 8: `?modalty=CR` returned the whole lake).

Issue 9: a field typed `Values` takes several values (`view=PA,AP,AP Supine`, a JSON
list, or a plain string as before) and matches any of them; `exclude` is a sub-filter
whose matches are left out, so one base selection splits into a group and its exact
complement (`min_short_side=1024` / `exclude.min_short_side=1024`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from radlake.errors import RadlakeError

MAX_ATTRIBUTES = 50  # each is one SQL condition; 1,000 overflowed SQLite's expression tree
MAX_PIXELS = 100_000
MAX_VALUES = 50  # values of one key: each is one bound parameter of an IN (...)


def _storable(text: str) -> str:
    """Text a catalog can hold: PostgreSQL refuses NUL in text (a 500, not a 422)."""
    if "\x00" in text:
        raise ValueError("a NUL character is not allowed")
    return text


Storable = AfterValidator(_storable)
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), Storable]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=100), Storable]
AttributeValue = Annotated[str, StringConstraints(max_length=200), Storable]
Pixels = Annotated[int, Field(ge=0, le=MAX_PIXELS)]


def _blank_is_none(value: object) -> object:
    """An empty value (a web form's "any", `?modality=`) is no condition."""
    return None if isinstance(value, str) and not value.strip() else value


Blank = BeforeValidator(_blank_is_none)
OptionalText = Annotated[Text | None, Blank]
OptionalPixels = Annotated[Pixels | None, Blank]


class SeveralValues:
    """Marks a field that takes several values (matching any); API and CLI read it."""


def _split_values(value: object) -> object:
    """`PA,AP` or ["PA", "AP"] (items may hold commas too) -> ("PA", "AP").

    A comma always separates values, whichever way they come, so the query string, the
    CLI and a JSON body read the same text the same way. A wholly blank value is no
    condition (a form's "any"); a blank item among others is an error (min_length).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value if isinstance(value, list | tuple) else [value]
    texts = [item for item in items if isinstance(item, str)]
    if len(texts) < len(items):
        return items  # not text: pydantic says what was expected
    return tuple(part for text in texts for part in text.split(","))


def _one_or_list(values: tuple[str, ...]) -> str | list[str]:
    """One value stays a plain string: filters stored before issue 9 read the same."""
    return values[0] if len(values) == 1 else list(values)


Value = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Storable
]
Values = Annotated[
    Annotated[tuple[Value, ...], Field(min_length=1, max_length=MAX_VALUES)] | None,
    BeforeValidator(_split_values),
    PlainSerializer(_one_or_list, when_used="unless-none"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "one value, or several separated by commas"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 50},
                {"type": "null"},
            ]
        }
    ),
    SeveralValues(),
]


class FilterError(RadlakeError, ValueError):
    """A filter with an unknown key, a wrong type or a value out of range."""


class ImageFilter(BaseModel):
    """A selection of images; every field left empty matches everything.

    It only selects: nothing is moved or deleted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: Values = Field(
        default=None, description="DICOM modality, any case: MR, CT, CR (several: CR,DX)."
    )
    manufacturer: Values = Field(
        default=None,
        description=(
            "Manufacturer prefix, any case: GE matches GE MEDICAL SYSTEMS (several: GE,AGFA)."
        ),
    )
    series_uid: OptionalText = Field(default=None, description="Series Instance UID.")
    study_uid: OptionalText = Field(default=None, description="Study Instance UID.")
    patient: OptionalText = Field(default=None, description="Patient pseudonym.")
    format: Values = Field(
        default=None, description="dicom, nifti, png or jpeg (several: png,jpeg)."
    )
    body_part: Values = Field(
        default=None, description="Body part examined, any case: HEAD (several: CHEST,HEAD)."
    )
    view: Values = Field(
        default=None, description="View position, any case: PA (several: PA,AP,AP Supine)."
    )
    source: Values = Field(default=None, description="Source name (several: covid,nih).")
    min_rows: OptionalPixels = Field(default=None, description="At least this many rows.")
    min_columns: OptionalPixels = Field(default=None, description="At least this many columns.")
    min_size: OptionalPixels = Field(
        default=None, description="Both sides at least this many pixels (= min_short_side)."
    )
    max_size: OptionalPixels = Field(
        default=None, description="Both sides at most this many pixels (= max_long_side)."
    )
    min_short_side: OptionalPixels = Field(
        default=None, description="The shorter side at least this many pixels (both sides are)."
    )
    max_short_side: OptionalPixels = Field(
        default=None, description="The shorter side at most this many pixels (one side is)."
    )
    min_long_side: OptionalPixels = Field(
        default=None, description="The longer side at least this many pixels (one side is)."
    )
    max_long_side: OptionalPixels = Field(
        default=None, description="The longer side at most this many pixels (both sides are)."
    )
    finding: Values = Field(
        default=None,
        description="A ground-truth label class (any reader): Cardiomegaly (several: any of them).",
    )
    reader: OptionalText = Field(default=None, description="Images read by this radiologist id.")
    dataset: OptionalText = Field(default=None, description="Members of this dataset's version.")
    version: Annotated[int | None, Blank] = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Dataset version (needs dataset; default newest).",
    )
    split: Values = Field(
        default=None,
        description="A split of the dataset version (needs dataset; several: val,test).",
    )
    attributes: tuple[tuple[AttributeName, AttributeValue], ...] = Field(
        default=(),
        max_length=MAX_ATTRIBUTES,
        description=f"Source attributes NAME=VALUE, compared as text (at most {MAX_ATTRIBUTES}).",
    )
    exclude: Annotated[ImageFilter | None, Blank] = Field(
        default=None,
        description=(
            "Leave out the images this sub-filter matches (KEY=VALUE, repeatable). The"
            " complement is taken within the rest of this selection, not the whole lake:"
            " view=PA,AP with exclude min_short_side=1024 is exactly the PA/AP images that"
            " min_short_side=1024 does not select."
        ),
    )

    @model_validator(mode="after")
    def _dataset_for_split_and_version(self) -> Self:
        for name in ("split", "version"):
            if getattr(self, name) is not None and self.dataset is None:
                raise ValueError(f"{name} needs dataset")
        return self

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Self:
        for low, high in (
            ("min_short_side", "max_short_side"),
            ("min_long_side", "max_long_side"),
            ("min_size", "max_size"),
        ):
            lower, upper = getattr(self, low), getattr(self, high)
            if lower is not None and upper is not None and lower > upper:
                raise ValueError(f"{low} {lower} is above {high} {upper}: nothing matches")
        return self

    @model_validator(mode="after")
    def _exclude_is_one_level(self) -> Self:
        if self.exclude is not None:
            if self.exclude.exclude is not None:
                raise ValueError("exclude cannot hold another exclude")
            if not self.exclude.as_dict():
                raise ValueError("exclude needs at least one condition (it would leave nothing)")
        return self

    def as_pairs(self) -> list[tuple[str, str]]:
        """The non-empty fields as (key, text) pairs that `parse` reads back: several
        values joined by commas, `attr.NAME` and `exclude.KEY` for the nested ones."""
        pairs: list[tuple[str, str]] = []
        for key, value in self.as_dict().items():
            if key == "attributes":
                pairs += [(f"attr.{name}", text) for name, text in value]
            elif key == "exclude":
                assert self.exclude is not None  # as_dict has it
                pairs += [(f"exclude.{k}", v) for k, v in self.exclude.as_pairs()]
            else:
                pairs.append((key, ",".join(value) if isinstance(value, list) else str(value)))
        return pairs

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
        excluded: list[str] = []
        for pair in pairs:
            key, sep, value = (part.strip() for part in pair.partition("="))
            if not sep or not key:
                raise FilterError(f"expected a selection as key=value, got {pair[:80]!r}")
            if key.startswith("attr."):
                attributes.append((key[5:], value))
                continue
            key = key.replace("-", "_")
            if not value:
                # "view=$UNSET" would otherwise select the whole lake without a word.
                raise FilterError(f"{key[:40]} has no value: leave it out to select any")
            if key.startswith("exclude."):
                excluded.append(f"{key[8:]}={value}")
            elif key in values:
                raise FilterError(f"{key} given twice")
            else:
                values[key] = value
        if attributes:
            values["attributes"] = attributes
        if excluded:
            if "exclude" in values:
                raise FilterError("exclude given twice")
            try:
                values["exclude"] = cls.parse(excluded)
            except FilterError as exc:
                raise FilterError(f"exclude: {exc}") from None
        return cls.from_dict(values)

    def merged(self, other: ImageFilter) -> ImageFilter:
        """This filter with other's non-empty fields added (attributes appended).

        Raises:
            FilterError: a field set in both, or too many attributes together.
        """
        mine, theirs = self.as_dict(), other.as_dict()
        if self.exclude is not None and other.exclude is not None:
            theirs["exclude"] = self.exclude.merged(other.exclude).as_dict()
            del mine["exclude"]
        both = (set(mine) & set(theirs)) - {"attributes"}
        if both:
            raise FilterError(f"{', '.join(sorted(both))} given twice")
        attributes = [*mine.pop("attributes", []), *theirs.pop("attributes", [])]
        if attributes:
            theirs["attributes"] = attributes
        return ImageFilter.from_dict(mine | theirs)


ImageFilter.model_rebuild()  # exclude refers to the class itself
FILTER_FIELDS: tuple[str, ...] = tuple(ImageFilter.model_fields)


def field_schemas() -> dict[str, dict[str, Any]]:
    """Each field's JSON schema (the model refers to itself, so the root is a $ref)."""
    schema = ImageFilter.model_json_schema()
    return dict(schema["$defs"]["ImageFilter"]["properties"])


# Declared once, by the field's type: API query parameters and CLI help follow it.
SEVERAL_VALUES: frozenset[str] = frozenset(
    name
    for name, field in ImageFilter.model_fields.items()
    if any(isinstance(item, SeveralValues) for item in field.metadata)
)


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
