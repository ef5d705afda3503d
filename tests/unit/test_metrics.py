"""BLOnet's metrics follow one convention, and the alerts and the dashboard only ask for metrics that exist.

The convention is written in shared/metrics.py; docs/observability.md is the catalogue.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import promql_parser
import pytest
import yaml
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import services.audit.app  # noqa: F401 (each service registers its metrics when imported)
import services.gateway.app  # noqa: F401
import services.notifier.app  # noqa: F401
import services.routing.app  # noqa: F401
from shared import metrics
from shared.settings import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
DOC = REPO / "docs" / "observability.md"

SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
UNIT_ENDINGS = {  # what a name that is not a counter ends with, by type
    "gauge": ("_seconds", "_bytes", "_records", "_entries", "_state"),
    "histogram": ("_seconds", "_bytes"),
}
NOT_BASE_UNITS = {"ms", "millis", "milliseconds", "us", "microseconds", "minutes", "hours", "days",
                  "kb", "mb", "gb", "kilobytes", "megabytes", "gigabytes", "percent"}
UNBOUNDED_LABELS = {"alert_id", "thread_id", "event_id", "delivery_id", "forward_id", "trace_id", "traceparent",
                    "key_id", "url", "path", "email", "error", "detail", "message", "explanation"}
EXPOSED_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                    "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
PROMETHEUS_SERIES = {"up"}  # written by Prometheus itself for every target

REQUIRED = {  # exposed name: (type, label names)
    "blonet_alerts_accepted_total": ("counter", ()),
    "blonet_alerts_rejected_total": ("counter", ("reason",)),
    "blonet_routing_decisions_total": ("counter", ("kind", "outcome")),
    "blonet_routing_recipients_total": ("counter", ("profile",)),
    "blonet_routing_denials_total": ("counter", ("code",)),
    "blonet_deliveries_total": ("counter", ("outcome", "endpoint")),
    "blonet_dead_letters_total": ("counter", ("endpoint", "cause")),
    "blonet_accept_to_delivery_seconds": ("histogram", ()),
    "blonet_consumer_lag_records": ("gauge", ("group", "topic", "partition")),
    "blonet_endpoint_circuit_state": ("gauge", ("endpoint", "state")),
    "blonet_audit_tree_entries": ("gauge", ()),
    "blonet_audit_checkpoint_entries": ("gauge", ()),
    "blonet_audit_checkpoint_timestamp_seconds": ("gauge", ()),
    "blonet_http_request_seconds": ("histogram", ("service", "method", "route", "status")),
    "blonet_events_handled_total": ("counter", ("service", "type")),
}


def exposed(name: str, kind: str) -> str:
    """The name a metric is scraped under: prometheus_client adds `_total` to counters."""
    return f"{name}_total" if kind == "counter" else name


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric the services register (Python's own process metrics aside): exposed name → (type, labels)."""
    defaults = {m.name for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR) for m in c.collect()}
    families = {m.name: m.type for m in REGISTRY.collect() if m.name not in defaults}
    declared = {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    assert set(families) == set(declared), (
        f"metrics registered outside shared/metrics.py: {sorted(set(families) - set(declared))}")
    return {exposed(name, kind): (kind, tuple(declared[name]._labelnames)) for name, kind in families.items()}


def series_names() -> set[str]:
    """Every series name a scrape of the services can hold, histogram and `_created` series included."""
    names = set(PROMETHEUS_SERIES)
    for name, (kind, _) in registered().items():
        base = name.removesuffix("_total") if kind == "counter" else name
        names |= {base + suffix for suffix in EXPOSED_SUFFIXES[kind]}
    return names


def test_every_metric_follows_the_convention():
    found = registered()
    assert found
    for name, (kind, labels) in found.items():
        assert name.startswith("blonet_") and SNAKE.fullmatch(name), name
        assert not NOT_BASE_UNITS & set(name.split("_")), f"{name}: use base units (seconds, bytes)"
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
            assert name.endswith(UNIT_ENDINGS[kind]), f"{name}: a {kind} ends in its unit, one of {UNIT_ENDINGS[kind]}"
        for label in labels:
            assert SNAKE.fullmatch(label) and not label.startswith("__"), f"{name}: label {label!r}"
            assert label not in UNBOUNDED_LABELS, f"{name}: label {label!r} has unbounded values"


def test_the_required_metrics_exist_with_their_type_and_labels():
    found = registered()
    for name, spec in REQUIRED.items():
        assert found.get(name) == spec, f"{name}: expected {spec}, registered {found.get(name)}"


def test_the_catalogue_documents_every_metric():
    doc = DOC.read_text()
    for name, (kind, labels) in registered().items():
        row = re.search(rf"^\| `{re.escape(name)}` \| (\w+) \| ([^|]*) \|", doc, re.M)
        assert row, f"docs/observability.md has no catalogue row for {name}"
        assert row.group(1) == kind, name
        assert set(re.findall(r"`(\w+)`", row.group(2))) == set(labels), f"{name}: labels in the catalogue"


def selectors(expr: str) -> set[str]:
    """Parse a PromQL expression (it must parse) and return the metric names it selects."""
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(m.value for m in node.matchers.matchers if m.name == "__name__")
            names.add(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_ask_only_for_registered_metrics():
    known, rules = series_names(), alert_rules()
    assert {"BlonetDeadLettersGrowing", "BlonetConsumerLagGrowing", "BlonetAuditCheckpointStale",
            "BlonetEndpointCircuitOpen"} <= {r["alert"] for r in rules}
    for rule in rules:
        assert selectors(rule["expr"]) <= known, f"{rule['alert']}: unknown {selectors(rule['expr']) - known}"


def test_every_alert_says_how_bad_it_is_and_what_to_do():
    doc = DOC.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs a `for` duration"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        # The runbook link names a section of docs/observability.md with the alert's own heading.
        assert rule["annotations"]["runbook"] == f"docs/observability.md#{name.lower()}", name
        assert re.search(rf"^#+ {name}$", doc, re.M), f"docs/observability.md has no runbook section for {name}"


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every query of every dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(path.name, panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return found


def test_dashboard_queries_parse_and_ask_only_for_registered_metrics():
    known, queries = series_names(), dashboard_queries()
    assert queries
    for dashboard, title, expr in queries:
        promql = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)  # Grafana fills these in
        assert "$" not in promql, f"{dashboard} / {title}: unknown template variable in {expr}"
        assert selectors(promql) <= known, f"{dashboard} / {title}: unknown {selectors(promql) - known}"


def test_dashboard_shows_what_operators_watch():
    shown = set().union(*(selectors(re.sub(r"\$__\w+", "5m", e)) for _, _, e in dashboard_queries()))
    for name in ("blonet_alerts_accepted_total", "blonet_alerts_rejected_total", "blonet_routing_decisions_total",
                 "blonet_deliveries_total", "blonet_accept_to_delivery_seconds_bucket", "blonet_consumer_lag_records",
                 "blonet_endpoint_circuit_state", "blonet_audit_tree_entries", "blonet_audit_checkpoint_timestamp_seconds",
                 "blonet_http_request_seconds_bucket"):
        assert name in shown, name


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool checks deploy/prometheus (apt-get install prometheus; .ci/run installs it when missing)"
    return found


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]],
                         ids=["config", "rule-tests"])
def test_promtool_accepts_the_config_and_each_rule_fires_when_it_should(args):
    result = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
