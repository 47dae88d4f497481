"""The one filter model (issue 8): declared once, strict everywhere, the same selection
through the API's query, the CLI, a cohort body and the web page's controls."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from typing import Any

import pytest

from radlake.curation.filters import (
    FILTER_FIELDS,
    MAX_ATTRIBUTES,
    MAX_VALUES,
    SEVERAL_VALUES,
    FilterError,
    ImageFilter,
)
from tests.conftest import SECRET
from tests.test_web import Site, site, thumb_ids

__all__ = ["site"]  # the fixture, shared with test_web

FILTERS: list[dict[str, Any]] = [
    {"modality": "CT"},
    {"source": "pydicom", "min_rows": 100},
    {"finding": "Nodule"},
    {"source": "generated", "max_size": 64},
    # Issue 9: several values, the shorter/longer side, and a complement.
    {"modality": ["CT", "MR"]},
    {"format": ["png", "dicom"], "finding": ["Nodule", "NoSuchClass"]},
    {"min_short_side": 64, "max_long_side": 128},
    {"source": ["pydicom", "generated"], "exclude": {"modality": "CT"}},
    {"max_short_side": 48},
]


def auth(site: Site, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.tokens[role]}"}


def text(value: Any) -> str:
    """A value as one query/CLI text: several values separated by commas."""
    return ",".join(value) if isinstance(value, list) else str(value)


def query_params(selection: dict[str, Any]) -> list[tuple[str, str]]:
    nested = ("attributes", "exclude")
    pairs = [(k, text(v)) for k, v in selection.items() if k not in nested]
    pairs += [("exclude", f"{k}={text(v)}") for k, v in selection.get("exclude", {}).items()]
    return pairs + [("attr", f"{k}={v}") for k, v in selection.get("attributes", [])]


def cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= {
        "RADLAKE_HOME": str(site.root),
        "RADLAKE_CATALOG_URL": f"sqlite:///{site.root / 'db' / 'catalog.sqlite'}",
        "RADLAKE_STORE_URL": (site.root / "store").as_uri(),
        "RADLAKE_SECRET_KEY": SECRET.decode(),
    }
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_options(selection: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in selection.items():
        if key == "attributes":
            for name, given in value:
                args += ["--attr", f"{name}={given}"]
        elif key == "exclude":
            for name, given in value.items():
                args += ["--exclude", f"{name}={text(given)}"]
        else:
            args += ["--" + key.replace("_", "-"), text(value)]
    return args


class FormControls(HTMLParser):
    """The filter form's controls as a browser sees them: name -> (tag, options)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.controls: dict[str, tuple[str, list[str]]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and found.get("id") == "filters":
            self.inside = True
        elif self.inside and tag in ("select", "input") and found.get("name"):
            name = str(found["name"])
            self.controls[name] = (tag, [])
            self.current = name if tag == "select" else None
        elif self.inside and tag == "option" and self.current is not None:
            self.controls[self.current][1].append(str(found.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.current = None


def form_controls(html: str) -> dict[str, tuple[str, list[str]]]:
    parser = FormControls()
    parser.feed(html)
    return parser.controls


# ------------------------------------------------------------------- the model


def test_model_rejects_unknown_keys_wrong_types_and_loose_split() -> None:
    for bad, reason in (
        ({"modalty": "CR"}, "unknown filter key 'modalty'"),
        ({"modality": 5}, "modality: Input should be a valid string"),
        ({"min_rows": "abc"}, "min_rows: Input should be a valid integer"),
        ({"min_rows": -1}, "min_rows"),
        ({"split": "test"}, "split needs dataset"),
        ({"version": 2}, "version needs dataset"),
        ({"finding": "x" * 201}, "finding"),
        ({"attributes": [["k", "v"]] * 1000}, f"at most {MAX_ATTRIBUTES} items"),
    ):
        with pytest.raises(FilterError) as caught:
            ImageFilter.from_dict(bad)
        text = str(caught.value)
        assert reason in text and "\n" not in text and len(text) < 300, text
    with pytest.raises(FilterError, match="given twice"):
        ImageFilter.parse(["modality=CT", "modality=MR"])
    with pytest.raises(FilterError, match="key=value"):
        ImageFilter.parse(["modality"])


def test_model_round_trips_through_dict_and_pairs() -> None:
    selection = ImageFilter(
        modality="CT", min_size=10, dataset="d", split="test", attributes=(("a", "1"),)
    )
    assert ImageFilter.from_dict(json.loads(json.dumps(selection.as_dict()))) == selection
    assert (
        ImageFilter.parse(["modality=CT", "min-size=10", "dataset=d", "split=test", "attr.a=1"])
        == selection
    )
    assert ImageFilter.from_dict({"modality": "", "min_rows": ""}) == ImageFilter()


# ----------------------------------------------------------------------- the API


def test_api_query_rejects_unknown_keys_types_loose_split_and_many_attrs(site: Site) -> None:
    client = site.client()
    headers = auth(site, "viewer")
    for path in ("/images", "/images.zip"):
        for params, reason in (
            ({"modalty": "CR"}, "unknown query parameter 'modalty'"),
            ({"split": "test"}, "split needs dataset"),
            ({"min_rows": "abc"}, None),
            ([("attr", f"k{n}=v") for n in range(1000)], "attributes"),
            # A key that takes one value, given twice, silently meant one of them.
            ([("min_rows", "1"), ("min_rows", "99999")], "min_rows given twice"),
            ([("dataset", "a"), ("dataset", "b")], "dataset given twice"),
        ):
            answer = client.get(path, params=params, headers=headers)
            assert answer.status_code == 422, (path, params, answer.text[:200])
            if reason is not None:
                assert reason in str(answer.json()["detail"]), answer.text[:300]
    ok = client.get("/images", params={"modality": "CT", "limit": 5}, headers=headers)
    assert ok.status_code == 200 and ok.json()["total"] == 1
    for query, reason in (("modalty=CT", "unknown query parameter"), ("split=a", "needs dataset")):
        page = site.client("viewer").get(f"/ui?{query}")
        assert page.status_code == 422 and reason in page.text, page.text[:300]


def test_filter_bodies_reject_unknown_keys_and_wrong_types(site: Site) -> None:
    client = site.client()
    headers = auth(site, "curator")
    for bad in ({"modality": 5}, {"modalty": "CR"}, {"min_rows": "abc"}, {"split": "test"}):
        answer = client.post("/cohorts", json={"name": "c", "filter": bad}, headers=headers)
        assert answer.status_code == 422, (bad, answer.text)
        answer = client.post("/datasets/x/versions", json={"selection": bad}, headers=headers)
        assert answer.status_code == 422, (bad, answer.text)
    many = {"attributes": [[f"k{n}", "v"] for n in range(1000)]}
    answer = client.post("/cohorts", json={"name": "c", "filter": many}, headers=headers)
    assert answer.status_code == 422
    assert client.get("/cohorts", headers=headers).json() == []


def test_delete_cohort_by_curator_not_viewer(site: Site) -> None:
    client = site.client()
    curator, viewer = auth(site, "curator"), auth(site, "viewer")
    made = client.post(
        "/cohorts", json={"name": "ct", "filter": {"modality": "CT"}}, headers=curator
    )
    assert made.status_code == 201
    assert client.delete("/cohorts/ct", headers=viewer).status_code == 403
    assert client.delete("/cohorts/ct", headers=curator).status_code == 204
    assert client.get("/cohorts", headers=viewer).json() == []
    assert client.delete("/cohorts/ct", headers=curator).status_code == 404
    assert client.get("/cohorts/ct.zip", headers=viewer).status_code == 404
    events = client.get("/audit", headers=auth(site, "admin")).json()
    text = json.dumps(events)
    assert "cohort.delete" in text and "cohort.save" in text


# ----------------------------------------------------------------------- the CLI


def test_cli_query_rejects_bad_filters_in_one_line(site: Site) -> None:
    for args, reason in (
        (["--select", "modalty=CR"], "unknown filter key 'modalty'"),
        (["--split", "test"], "split needs dataset"),
        (["--min-rows", "abc"], "min_rows"),
        (["--modality", "CT", "--select", "modality=MR"], "given twice"),
        (["--attr", "no-equals"], "NAME=VALUE"),
    ):
        result = cli(site, "query", "--json", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert reason in lines[0], lines[0]


def test_cli_has_an_option_for_every_field() -> None:
    from typer.testing import CliRunner

    from radlake.cli.main import app

    text = CliRunner().invoke(app, ["query", "--help"], env={"COLUMNS": "200"}).output
    for name in FILTER_FIELDS:
        flag = "--attr" if name == "attributes" else "--" + name.replace("_", "-")
        assert flag in text, flag
    assert "--select" in text


def test_cli_json_lists_uid_view_findings_and_licence(site: Site) -> None:
    result = cli(site, "query", "--json", "--finding", "Nodule")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["images"]
    assert row["id"] == site.ids["png"]
    assert row["findings"] == ["Effusion", "Mass", "Nodule"]  # ground truth, distinct
    assert {"sop_instance_uid", "view", "license"} <= set(row)
    ct = json.loads(cli(site, "query", "--json", "--modality", "CT").stdout)["images"][0]
    assert ct["sop_instance_uid"] and ct["findings"] == []


# ------------------------------------------------------------------ the round trip


def test_web_controls_are_the_model_fields(site: Site) -> None:
    page = site.client("viewer").get("/ui")
    names = set(form_controls(page.text))
    assert names == {"attr" if f == "attributes" else f for f in FILTER_FIELDS}
    kept = site.client("viewer").get("/ui", params=[("attr", "a=1"), ("attr", "b=2")]).text
    assert re.findall(r'name="attr" type="text" value="([^"]*)"', kept) == ["a=1", "b=2", ""]


@pytest.mark.parametrize("selection", FILTERS, ids=lambda s: ",".join(sorted(s)))
def test_one_filter_selects_the_same_images_everywhere(
    site: Site, selection: dict[str, Any]
) -> None:
    client = site.client()
    viewer = auth(site, "viewer")
    # The API's query parameters.
    answer = client.get("/images", params=query_params(selection), headers=viewer)
    assert answer.status_code == 200, answer.text
    by_api = sorted(image["id"] for image in answer.json()["images"])
    assert by_api, "every filter here matches something"
    # `radlake query --json` with one option per field.
    result = cli(site, "query", "--json", *cli_options(selection))
    assert result.returncode == 0, result.stderr
    by_cli = sorted(row["id"] for row in json.loads(result.stdout)["images"])
    # The same through --select KEY=VALUE.
    pairs = [f"{k}={text(v)}" for k, v in selection.items() if k not in ("attributes", "exclude")]
    pairs += [f"exclude.{k}={text(v)}" for k, v in selection.get("exclude", {}).items()]
    selected = cli(site, "query", "--json", *[a for p in pairs for a in ("--select", p)])
    by_select = sorted(row["id"] for row in json.loads(selected.stdout)["images"])
    # A cohort's JSON body, downloaded as a zip.
    name = "c" + re.sub(r"\W", "", "".join(sorted(selection)))
    made = client.post(
        "/cohorts", json={"name": name, "filter": selection}, headers=auth(site, "curator")
    )
    assert made.status_code == 201, made.text
    archive = zipfile.ZipFile(
        io.BytesIO(client.get(f"/cohorts/{name}.zip", headers=viewer).content)
    )
    rows = csv.DictReader(io.StringIO(archive.read("metadata.csv").decode()))
    by_cohort = sorted(int(row["id"]) for row in rows)
    # The web page: fill its filter controls as a person would, submit the form.
    browser = site.client("viewer")
    controls = form_controls(browser.get("/ui").text)
    form: list[tuple[str, str]] = []
    for key, value in query_params(selection):
        tag, options = controls[key]
        # A drop-down offers one value at a time; several go in as the text PA,AP.
        assert tag == "input" or value in options or "," in value, (key, value, options)
        form.append((key, value))
    form += [(key, "") for key in controls if key not in dict(form)]  # left at "any"
    by_web = sorted(thumb_ids(browser.get("/ui", params=form).text))
    assert by_api == by_cli == by_select == by_cohort == by_web, (
        by_api,
        by_cli,
        by_select,
        by_cohort,
        by_web,
    )


# ------------------------------------------------------------ issue 9: the new fields


def test_several_values_read_the_same_from_text_list_and_pairs() -> None:
    by_text = ImageFilter.from_dict({"view": "PA, AP,AP Supine"})
    by_list = ImageFilter.from_dict({"view": ["PA", "AP", "AP Supine"]})
    by_pair = ImageFilter.parse(["view=PA,AP,AP Supine"])
    assert by_text == by_list == by_pair
    assert by_text.view == ("PA", "AP", "AP Supine")
    # One value is stored as the plain string filters had before issue 9.
    assert ImageFilter.from_dict({"view": ["PA"]}).as_dict() == {"view": "PA"}
    assert by_list.as_dict() == {"view": ["PA", "AP", "AP Supine"]}
    assert ImageFilter.from_dict(by_list.as_dict()) == by_list
    complement = ImageFilter.parse(["view=PA,AP", "exclude.min-short-side=1024"])
    assert complement.as_dict() == {"view": ["PA", "AP"], "exclude": {"min_short_side": 1024}}
    assert ImageFilter.from_dict(json.loads(json.dumps(complement.as_dict()))) == complement
    assert ImageFilter.parse([f"{k}={v}" for k, v in complement.as_pairs()]) == complement
    assert ImageFilter.from_dict({"view": "", "exclude": ""}) == ImageFilter()


def test_bad_values_lists_bounds_and_excludes_are_one_line_errors() -> None:
    for bad, reason in (
        ({"view": []}, "view: Tuple should have at least 1 item"),
        ({"view": "PA,"}, "view: String should have at least 1 character"),
        ({"view": ["PA", ""]}, "view"),
        ({"view": [str(n) for n in range(MAX_VALUES + 1)]}, f"at most {MAX_VALUES} items"),
        ({"view": ",".join(str(n) for n in range(MAX_VALUES + 1))}, f"at most {MAX_VALUES}"),
        ({"view": [5]}, "view: Input should be a valid string"),
        ({"view": {"PA": 1}}, "view"),
        ({"min_short_side": 2000, "max_short_side": 1000}, "min_short_side 2000 is above"),
        ({"max_long_side": -1}, "max_long_side"),
        ({"exclude": {}}, "exclude needs at least one condition"),
        ({"exclude": {"modalty": "CR"}}, "unknown filter key 'exclude.modalty'"),
        ({"exclude": {"exclude": {"view": "PA"}}}, "exclude cannot hold another exclude"),
        ({"exclude": "modality=CR"}, "exclude"),
    ):
        with pytest.raises(FilterError) as caught:
            ImageFilter.from_dict(bad)
        message = str(caught.value)
        assert reason in message and "\n" not in message and len(message) < 300, message
    with pytest.raises(FilterError, match="exclude: unknown filter key 'modalty'"):
        ImageFilter.parse(["exclude.modalty=CR"])
    for empty in ("view=", "exclude.view= "):  # "view=$UNSET" must not select everything
        with pytest.raises(FilterError, match="has no value"):
            ImageFilter.parse([empty])
    assert {"modality", "view", "finding", "format", "source", "split"} <= SEVERAL_VALUES
    assert not SEVERAL_VALUES & {"min_size", "dataset", "version", "patient", "exclude"}


def test_api_takes_several_values_as_commas_or_repeats(site: Site) -> None:
    client = site.client()
    viewer = auth(site, "viewer")

    def ids(params: Any) -> list[int]:
        answer = client.get("/images", params=params, headers=viewer)
        assert answer.status_code == 200, answer.text
        return sorted(image["id"] for image in answer.json()["images"])

    both = sorted([site.ids["CT"], site.ids["MR"]])
    assert ids({"modality": "CT,MR"}) == ids([("modality", "CT"), ("modality", "mr")]) == both
    assert ids({"modality": "CT,MR", "exclude": "modality=MR"}) == [site.ids["CT"]]
    everything = ids({})
    part = ids({"min_short_side": 64})
    rest = ids({"exclude": "min_short_side=64"})
    assert sorted(part + rest) == everything and not set(part) & set(rest)
    many = ",".join(f"V{n}" for n in range(MAX_VALUES + 1))
    for params, reason in (
        ({"view": many}, f"at most {MAX_VALUES}"),
        ({"view": "PA,"}, "view"),
        ([("view", "PA"), ("view", "")], "view"),
        ({"exclude": "modalty=CR"}, "exclude: unknown filter key 'modalty'"),
        ({"exclude": "no-equals"}, "exclude: expected a selection as key=value"),
        ({"min_long_side": "big"}, None),
        ({"min_short_side": 10, "max_short_side": 5}, "above"),
    ):
        answer = client.get("/images", params=params, headers=viewer)
        assert answer.status_code == 422, (params, answer.text[:200])
        if reason is not None:
            assert reason in str(answer.json()["detail"]), answer.text[:300]
    # The same list in a JSON body; a bad one is a 422 and saves nothing.
    curator = auth(site, "curator")
    made = client.post(
        "/cohorts", json={"name": "two", "filter": {"modality": ["CT", "MR"]}}, headers=curator
    )
    assert made.status_code == 201, made.text
    archive = zipfile.ZipFile(io.BytesIO(client.get("/cohorts/two.zip", headers=viewer).content))
    rows = csv.DictReader(io.StringIO(archive.read("metadata.csv").decode()))
    assert sorted(int(row["id"]) for row in rows) == both
    for bad in ({"view": []}, {"view": [f"V{n}" for n in range(51)]}, {"exclude": {}}):
        answer = client.post("/cohorts", json={"name": "bad", "filter": bad}, headers=curator)
        assert answer.status_code == 422, (bad, answer.text)
    # The web page keeps several values as the text it was given.
    page = site.client("viewer").get("/ui", params={"modality": "CT,MR"})
    assert page.status_code == 200 and sorted(thumb_ids(page.text)) == both
    assert '<option value="CT,MR" selected>' in page.text


def test_cli_rejects_bad_several_values_in_one_line(site: Site) -> None:
    many = ",".join(f"V{n}" for n in range(MAX_VALUES + 1))
    for args, reason in (
        (["--select", f"view={many}"], f"at most {MAX_VALUES}"),
        (["--view", "PA,"], "view"),
        (["--exclude", "modalty=CR"], "unknown filter key 'modalty'"),
        (["--not", "no-equals"], "--exclude KEY=VALUE"),
        (["--min-short-side", "10", "--max-short-side", "5"], "above"),
    ):
        result = cli(site, "query", "--json", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert reason in lines[0], lines[0]
