"""The Grafana dashboard in deploy/grafana is a valid dashboard, and every
metric and label its PromQL names is one a running sidecar exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase

from sidecar.observability import metrics
from tools.oauth import OAuthClient
from tools.processes import Process, running, start_sidecar

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecar-dashboard.json"

# PromQL words that are not metric names.
PROMQL_WORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "by", "without",
    # binary operators and vector matching
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "abs", "ceil", "floor", "round", "clamp_min", "clamp_max", "clamp", "time",
    "timestamp", "vector", "scalar", "absent", "changes", "resets", "sort", "sort_desc",
    "label_replace", "label_join", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "predict_linear", "sgn",
    "inf", "nan",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


# -- parsing PromQL, just enough ------------------------------------------------

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    text = re.sub(r"\$\{?\w+\}?", " ", expr)  # $__rate_interval, ${datasource}
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = GROUPING.sub(" ", text)  # grouping label lists
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)  # string arguments
    return {name for name in IDENT.findall(text) if name.lower() not in PROMQL_WORDS}


def selector_labels(expr: str) -> list[tuple[str | None, str]]:
    """(metric name or None, label) for every matcher in a selector."""
    return [
        (name or None, label)
        for name, body in SELECTOR.findall(expr)
        for label, _op in MATCHER.findall(body)
    ]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }


def test_the_parser_finds_names_and_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (route, le) (rate(x_seconds_bucket{status=~"5.."}'
        "[$__rate_interval])))\n/\nsum without (kid) (y_total) * on (route) group_left z"
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total", "z"}
    assert selector_labels(expr) == [("x_seconds_bucket", "status")]
    assert grouping_labels(expr) == {"route", "le", "kid"}


# -- the dashboard's shape ------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    d = dashboard()
    assert d["title"]
    assert d["uid"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"])
    assert 36 <= d["schemaVersion"] <= 41
    assert d["panels"], "no panels"
    ids = [panel["id"] for panel in d["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in d["panels"]:
        assert panel["title"], panel
        assert panel["type"], panel
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty expr"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]
            assert metric_names(target["expr"]), f"{panel['title']}: no metric in {target['expr']}"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_data_source_and_client_family_are_template_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    family = variables["client_family"]
    assert family["type"] == "query"
    assert family["multi"]
    assert family["includeAll"]
    assert family["datasource"]["uid"] == "${datasource}"
    assert family["definition"] == "label_values(sidecar_tokens_total, client_family)"
    assert family["query"]["query"] == family["definition"]
    assert any('client_family=~"$client_family"' in expr for _title, expr in exprs())


def test_the_panels_an_operator_needs_are_there() -> None:
    used = " ".join(expr for _title, expr in exprs())
    for needed in (
        'event="issued"',
        'event="refreshed"',
        'event="refused"',
        'reason="grace"',
        'reason="refresh_reuse"',
        "sidecar_rate_limited_total",
        "sidecar_authorizations_total",
        "sidecar_request_duration_seconds_bucket",
        "sidecar_upstream_errors_total",
        "sidecar_upstream_duration_seconds_bucket",
        "sidecar_store_errors_total",
        "sidecar_store_duration_seconds_bucket",
        "sidecar_signing_key_age_seconds",
    ):
        assert needed in used, f"no panel uses {needed}"


# -- against a running sidecar --------------------------------------------------


@pytest.fixture(scope="module")
def exposition(upstream: Process) -> Iterator[str]:
    """/metrics of a real sidecar after a little traffic, a refused token among it."""
    with running(start_sidecar(upstream.url)) as sidecar:
        httpx.get(sidecar.url + "/echo")
        client = OAuthClient(sidecar.url)
        client.register()
        client.verifier = "v" * 43
        assert client.exchange("not-a-code").status_code == 400
        port = sidecar.extra["env"]["SIDECAR_METRICS_PORT"]  # type: ignore[index]
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        yield r.text


def families(text: str) -> dict[str, str]:
    """Family name -> type, from the `# TYPE` lines, with `# HELP` names as untyped."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.match(r"# HELP (\S+) ", line):
            found.setdefault(m.group(1), "untyped")
        if m := re.match(r"# TYPE (\S+) (\S+)", line):
            found[m.group(1)] = m.group(2)
    return found


def family_of(name: str, known: dict[str, str]) -> str | None:
    """The exposed family a PromQL name reads: itself, a histogram's series, or
    a counter under its `_total` name."""
    if name in known:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and known.get(base) == "histogram":
            return base
    if known.get(name + "_total") == "counter":
        return name + "_total"
    return None


def defined_labels() -> dict[str, set[str]]:
    """Exposed family name -> label names, from the sidecar's metric definitions."""
    labels: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            labels[name] = set(value._labelnames)
    return labels


def exposed_labels(text: str, known: dict[str, str]) -> dict[str, set[str]]:
    """Exposed family name -> label names seen on its samples."""
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ", line):
            family = family_of(m.group(1), known)
            if family:
                names = set(re.findall(r'(\w+)="', m.group(2) or ""))
                labels.setdefault(family, set()).update(names - {"le"})
    return labels


def labels_of(name: str, known: dict[str, str], labels: dict[str, set[str]]) -> set[str]:
    family = family_of(name, known)
    assert family
    allowed = labels.get(family, set())
    if known[family] == "histogram" and name.endswith("_bucket"):
        allowed = allowed | {"le"}
    return allowed


def test_the_traffic_exposes_the_token_counters(exposition: str) -> None:
    assert re.search(
        r'sidecar_tokens_total\{[^}]*event="refused"[^}]*reason="invalid_grant"', exposition
    )
    assert "# TYPE sidecar_request_duration_seconds histogram" in exposition


def test_every_metric_a_panel_reads_is_exposed(exposition: str) -> None:
    known = families(exposition)
    assert "sidecar_tokens_total" in known
    unknown = {
        f"{title}: {name}"
        for title, expr in exprs()
        for name in metric_names(expr)
        if family_of(name, known) is None
    }
    assert not unknown, f"metrics the sidecar does not expose: {sorted(unknown)}"


def test_every_label_a_panel_uses_is_a_label_of_its_metric(exposition: str) -> None:
    known = families(exposition)
    labels = defined_labels()
    for family, seen in exposed_labels(exposition, known).items():
        labels.setdefault(family, set()).update(seen)
    wrong = []
    for title, expr in exprs():
        names = {name for name in metric_names(expr) if family_of(name, known)}
        for name, label in selector_labels(expr):
            if name and family_of(name, known) and label not in labels_of(name, known, labels):
                wrong.append(f"{title}: {name} has no label {label}")
        for label in grouping_labels(expr):
            for name in names:
                if label not in labels_of(name, known, labels):
                    wrong.append(f"{title}: {name} has no label {label} to group by")
    assert not wrong, "\n".join(wrong)


def test_the_client_family_variable_reads_a_label_tokens_have(exposition: str) -> None:
    assert "client_family" in defined_labels()["sidecar_tokens_total"]
    assert re.search(r'sidecar_tokens_total\{[^}]*client_family="', exposition)
