"""Command options generated from the filter model: one `--field-name` per field.

`radlake query` and `radlake select` take every field of ImageFilter under its own
name (`--series-uid`, `--view PA,AP`, ...), `--attr NAME=VALUE`, `--exclude KEY=VALUE`
and `--select KEY=VALUE`, all validated by the same model; a field added there
becomes an option here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from radlake.curation.filters import FilterError, ImageFilter, field_schemas

# Names the options had before they followed the model's field names.
_OLD_NAMES = {"series_uid": ("--series",), "study_uid": ("--study",)}


def _bounds(name: str) -> str:
    """' (0 to 100000)' from the field's JSON schema, when it has numeric bounds."""
    schema = field_schemas()[name]
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            return f" ({option.get('minimum', '')} to {option.get('maximum', '')})"
    return ""


def _parameters() -> list[inspect.Parameter]:
    params: list[inspect.Parameter] = []
    for name, field in ImageFilter.model_fields.items():
        if name == "attributes":
            option = typer.Option(
                "--attr", metavar="NAME=VALUE", help=f"{field.description} Repeatable."
            )
            annotation: Any = Annotated[list[str] | None, option]
            name = "attr"
        elif name == "exclude":
            option = typer.Option(
                "--exclude", "--not", metavar="KEY=VALUE", help=f"{field.description}"
            )
            annotation = Annotated[list[str] | None, option]
        else:
            flag = "--" + name.replace("_", "-")
            bounds = _bounds(name)
            # Validated by the model, not by click: one error line, exit 1, for any value.
            option = typer.Option(
                flag,
                *_OLD_NAMES.get(name, ()),
                metavar="INTEGER" if bounds else "TEXT",
                help=(field.description or "") + bounds,
            )
            annotation = Annotated[str | None, option]
        params.append(
            inspect.Parameter(
                f"filter_{name}",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=annotation,
            )
        )
    select = typer.Option(
        "--select", metavar="KEY=VALUE", help="Any filter field as key=value. Repeatable."
    )
    params.append(
        inspect.Parameter(
            "filter_select",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[list[str] | None, select],
        )
    )
    return params


def selection_from_options(values: dict[str, Any]) -> ImageFilter:
    """The filter the generated options give.

    Raises:
        FilterError: an unknown key, a wrong value, or a field given twice.
    """
    attributes = values.pop("attr", None) or []
    excluded = values.pop("exclude", None) or []
    for flag, given in (("--attr NAME", attributes), ("--exclude KEY", excluded)):
        for pair in given:
            if "=" not in pair:
                raise FilterError(f"expected {flag}=VALUE, got {pair[:80]!r}")
    pairs = [f"attr.{pair}" for pair in attributes]
    pairs += [f"exclude.{pair}" for pair in excluded]
    pairs += [f"{key}={value}" for key, value in values.items() if value is not None]
    return ImageFilter.parse(pairs)


def with_filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give command (which takes `selection: ImageFilter`) one option per filter field."""
    own = [
        param
        for param in inspect.signature(command, eval_str=True).parameters.values()
        if param.name != "selection"
    ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        values = {
            key.removeprefix("filter_"): kwargs.pop(key)
            for key in list(kwargs)
            if key.startswith("filter_")
        }
        select = values.pop("select", None) or []
        selection = selection_from_options(values)
        if select:
            selection = selection.merged(ImageFilter.parse(select))
        command(selection=selection, **kwargs)

    run.__signature__ = inspect.Signature([*own, *_parameters()])  # type: ignore[attr-defined]
    return run
