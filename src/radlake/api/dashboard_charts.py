"""Plotly figures (plain JSON: data and layout) for the dashboard pages.

Figures are built here as dicts and drawn in the browser by plotly.js, which the app
serves from the installed plotly package (web_dashboard.PLOTLY_JS). Nothing here
computes a figure's numbers: they come from catalog/dashboard_*.py as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

Figure = dict[str, Any]
HEIGHT = 280


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": HEIGHT,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 60},
        "legend": {"orientation": "h"},
        **extra,
    }


def bars(title: str, counts: Mapping[str, int | float], *, horizontal: bool = False) -> Figure:
    """One bar per key."""
    keys, values = list(counts), list(counts.values())
    trace = (
        {"type": "bar", "y": keys, "x": values, "orientation": "h"}
        if horizontal
        else {"type": "bar", "x": keys, "y": values}
    )
    extra: dict[str, Any] = (
        {"margin": {"l": 220, "r": 10, "t": 40, "b": 40}}
        if horizontal
        else {"xaxis": {"type": "category"}}  # days, splits and counts are labels here
    )
    layout = _layout(title, **extra)
    if horizontal:
        layout["yaxis"] = {"automargin": True, "autorange": "reversed"}
    return {"data": [trace], "layout": layout}


def grouped(
    title: str, table: Mapping[str, Mapping[str, int | float | None]], *, stacked: bool = False
) -> Figure:
    """Rows of table on the x axis, one trace per column (e.g. class x split)."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    data = [
        {
            "type": "bar",
            "name": column,
            "x": list(table),
            "y": [row.get(column) for row in table.values()],
        }
        for column in columns
    ]
    layout = _layout(title, barmode="stack" if stacked else "group", xaxis={"type": "category"})
    return {"data": data, "layout": layout}


def two_axes(
    title: str,
    left: tuple[str, Sequence[tuple[str, float | None]]],
    right: tuple[str, Sequence[tuple[str, float | None]]],
) -> Figure:
    """Two series of (x, y) points, each on its own y axis (left and right)."""
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": [x for x, _ in points],
            "y": [y for _, y in points],
            "yaxis": axis,
        }
        for (name, points), axis in ((left, "y"), (right, "y2"))
    ]
    layout = _layout(
        title,
        xaxis={"type": "category"},
        yaxis={"title": {"text": left[0]}},
        yaxis2={"title": {"text": right[0]}, "overlaying": "y", "side": "right"},
        margin={"l": 60, "r": 60, "t": 40, "b": 60},
    )
    return {"data": data, "layout": layout}


def histograms(
    title: str, edges: Sequence[float], counts: Mapping[str, Sequence[int]], *, x_title: str
) -> Figure:
    """Counts over bins (edges), one bar trace per key, overlaid."""
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    width = (edges[1] - edges[0]) if len(edges) > 1 else 1
    data = [
        {
            "type": "bar",
            "name": name,
            "x": centres,
            "y": list(values),
            "width": width,
            "opacity": 0.6,
        }
        for name, values in counts.items()
    ]
    return {
        "data": data,
        "layout": _layout(title, barmode="overlay", xaxis={"title": {"text": x_title}}),
    }


def heatmap(title: str, cells: Sequence[Sequence[int]]) -> Figure:
    """A grid of counts over the image: row 0 at the top, as in the image."""
    n = len(cells)
    axis = [round((i + 0.5) / n, 4) for i in range(n)] if n else []
    trace = {
        "type": "heatmap",
        "z": [list(row) for row in cells],
        "x": axis,
        "y": axis,
        "colorscale": "Viridis",
        # No colour bar and no pixelated <image>: plotly.js styles both with inline
        # style attributes, which the pages' CSP refuses; counts show on hover.
        "showscale": False,
        "zsmooth": "best",
    }
    layout = _layout(
        title,
        height=260,
        xaxis={"range": [0, 1], "constrain": "domain"},
        yaxis={"range": [1, 0], "scaleanchor": "x"},
        margin={"l": 40, "r": 10, "t": 40, "b": 30},
    )
    return {"data": [trace], "layout": layout}
