"""The monitoring kit (``deploy/prometheus/alerts.yml``, ``deploy/grafana/sn1-node.json``) names only what the node
exports: a rule on a metric that does not exist never fires, and an operator learns it in an outage.

The test drives a real local subnet (the suite's ``localnet`` fixture: API, validator, three miners) through a
chat, a wrong key, a rate-limited key and the chat's scoring delivery, scrapes both ``/metrics``, and checks every
metric name and label name of every rule's ``expr`` and every dashboard query against what the two processes
export (names read by ``tests/compat/promql.py``, a small regex-based extractor, itself tested below).

Exported names are read with prometheus_client's own parser: a counter ``x`` is exposed as ``x_total``, a
histogram ``y`` as ``y_bucket`` (with ``le``), ``y_count`` and ``y_sum``. A labelled counter nothing has
incremented yet (``sn1_validator_loop_failures_total`` on a healthy validator) is exported with its HELP and TYPE
and no sample, so its label names are read from its declaration in ``shared/metrics.py`` instead. ``up`` and the
``job`` and ``instance`` labels are Prometheus's own, added at the scrape.

PromQL syntax is checked by ``promtool check rules`` where promtool is installed (Debian's ``prometheus``
package); the test says so and skips that part where it is not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from shared.metrics import ApiMetrics, ValidatorMetrics
from tests.compat.promql import names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sn1-node.json"
README = (ROOT / "README.md").read_text()
PROMETHEUS_SERIES = {"up"}  # made by Prometheus at each scrape
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
SEVERITIES = {"critical", "warning"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str]]:
    """``(where, expr)`` for every rule and every dashboard query."""
    found = [(f"alert {r['alert']}", r["expr"]) for r in rules()]
    found += [(f"panel {p['title']!r}", t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]
    return found


def declared_labels() -> dict[str, set[str]]:
    """Each family's label names as ``shared/metrics.py`` declares them (for a family exported without samples)."""
    found: dict[str, set[str]] = {}
    for registry in (ApiMetrics().registry, ValidatorMetrics().registry):
        for collector in list(registry._collector_to_names):
            if isinstance(collector, Metric):
                continue
            found[collector._name] = set(collector._labelnames)
    return found


def declared_series() -> dict[str, tuple[str, str]]:
    """Each series ``shared/metrics.py`` declares, as a scrape spells it (a counter ``x`` as ``x_total``): its
    type, and a gauge's ``multiprocess_mode`` (how the API's workers' values are merged)."""
    found: dict[str, tuple[str, str]] = {}
    for registry in (ApiMetrics().registry, ValidatorMetrics().registry):
        for collector in list(registry._collector_to_names):
            if isinstance(collector, Metric):
                continue
            kind = collector._type
            for suffix in SUFFIXES.get(kind, ("",)):
                found[collector._name + suffix] = (kind, getattr(collector, "_multiprocess_mode", ""))
    return found


def exported(texts: list[str]) -> dict[str, set[str]]:
    """``{sample name: its label names}`` for every series the scrapes expose, or would once observed."""
    declared = declared_labels()
    out: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for suffix in SUFFIXES.get(family.type, ("",)):
                labels = declared.get(family.name, set()) | ({"le"} if suffix == "_bucket" else set())
                out.setdefault(family.name + suffix, set()).update(labels)
            for s in family.samples:
                out.setdefault(s.name, set()).update(s.labels)
    return out


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def request(url: str, key: str, body: dict | None = None) -> int:
    """The status of a GET (or, with ``body``, a POST) under API key ``key``."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def scraped(localnet: dict) -> dict[str, set[str]]:
    """Both processes' exported names, once a chat, a wrong key, a 429 and the chat's delivery to the validator
    have made their counters."""
    api, validator = localnet["api_url"], localnet["validator_url"]
    chat = {"model": "sn1/deterministic", "messages": [{"role": "user", "content": "Hello"}]}
    assert request(api + "/v1/chat/completions", localnet["api_key"], chat) == 200
    assert request(api + "/v1/models", "sn1-not-a-key") == 401
    created = urllib.request.Request(api + "/api_management/create-api-key?rate_limit=1", method="POST",
                                     headers={"admin-key": localnet["admin_key"]})
    with urllib.request.urlopen(created, timeout=10) as r:
        limited = json.load(r)["api_key"]
    assert [request(api + "/v1/models", limited) for _ in range(2)] == [200, 429]
    deadline = time.monotonic() + 30
    while not re.search(r'^sn1_validator_http_requests_total\{[^}]*route="/scoring"', get(validator + "/metrics"),
                        re.M):
        assert time.monotonic() < deadline, "the chat's scoring payload never reached the validator"
        time.sleep(0.2)
    return exported([get(api + "/metrics"), get(validator + "/metrics")])


@pytest.mark.parametrize(("where", "expr"), queries(), ids=[w for w, _ in queries()])
def test_every_metric_and_label_the_kit_names_is_exported(scraped: dict[str, set[str]], where: str,
                                                          expr: str) -> None:
    used = names(expr)
    assert used.metrics, f"{where}: no metric found in {expr!r}"
    missing = sorted(m for m in used.metrics if m not in scraped and m not in PROMETHEUS_SERIES)
    assert not missing, f"{where}: the node exports no {missing} (is it spelled as /metrics spells it?)"
    for metric, labels in used.matched.items():
        have = scraped.get(metric, set()) | TARGET_LABELS
        assert labels <= have, f"{where}: {metric} has no label {sorted(labels - have)} (it has {sorted(have)})"
    have = set().union(*(scraped.get(m, set()) for m in used.metrics)) | TARGET_LABELS
    assert used.grouping <= have, f"{where}: grouping by {sorted(used.grouping - have)}, which no metric has"


def test_each_rule_says_what_is_wrong_what_to_do_and_where_the_readme_explains_it() -> None:
    headings = re.findall(r"^#+ (.+)$", README, re.M)
    seen: set[str] = set()
    for rule in rules():
        name = rule["alert"]
        assert name not in seen, f"{name} twice"
        seen.add(name)
        assert rule["labels"]["severity"] in SEVERITIES and re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        sections = re.findall(r'README: "([^"]+)"', rule["annotations"]["description"])
        assert sections, f"{name}: its description names no README section"
        for section in sections:
            assert any(h.replace("`", "").startswith(section) for h in headings), f"{name}: no README {section!r}"


def test_the_readme_table_lists_every_alert_with_its_severity() -> None:
    monitoring = README[README.index("### Monitoring"):]
    monitoring = monitoring[:monitoring.index("\n## ")]
    table = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", monitoring, re.M))
    assert table == {r["alert"]: r["labels"]["severity"] for r in rules()}


def test_every_scoring_outbox_metric_has_an_alert() -> None:
    """Each way the scoring outbox loses or holds back organic traffic (a backlog, a full outbox's drops, failed
    deliveries, payloads the validator would not take) pages someone: ``sn1_api_outbox_rejected`` had no rule, so
    answers dropped unscored (an API and a validator of different versions) went unseen outside the log."""
    outbox = sorted(name for name in declared_series() if name.startswith("sn1_api_outbox_"))
    named = {m for r in rules() for m in names(r["expr"]).metrics}
    assert len(outbox) >= 5, outbox
    assert not [m for m in outbox if m not in named], f"no alert names {sorted(set(outbox) - named)}"


def test_the_dashboard_draws_every_scoring_outbox_metric() -> None:
    """The dashboard's "Scoring outbox" panel drew the backlog, a full outbox's drops, deliveries and failures, but
    not ``sn1_api_outbox_rejected``: payloads dropped unscored showed nowhere beside the others."""
    outbox = sorted(name for name in declared_series() if name.startswith("sn1_api_outbox_"))
    drawn = {m for where, expr in queries() if where.startswith("panel") for m in names(expr).metrics}
    assert not [m for m in outbox if m not in drawn], f"no panel draws {sorted(set(outbox) - drawn)}"


RISES = re.compile(r"\b(increase|rate|irate|resets)\s*\(\s*([a-zA-Z_:][\w:]*)")


@pytest.mark.parametrize(("where", "expr"), queries(), ids=[w for w, _ in queries()])
def test_no_rule_or_panel_reads_a_gauge_as_a_counter(where: str, expr: str) -> None:
    """``increase()`` (and ``rate()``) on a gauge summed across the API's workers (``livesum``): when the API's
    supervisor replaces a worker, the sum falls by that worker's count, which PromQL takes for a counter's reset,
    counting the whole sum after it as a rise. SN1ScoringPayloadsRejected and SN1ScoringPayloadsLost fired at
    a worker's restart with nothing rejected or lost; SN1ScoringDeliveryFailing saw deliveries that were none.
    Such counts are counters now (a dead worker's count stays in a counter's sum). The validator's counts since
    start (``reference_failures``, ``organic_stale_dropped``) were gauges too, read by SN1ValidatorReferenceErrors
    and SN1ValidatorOrganicDroppedStale with ``increase()``, which Prometheus answers with "metric might not be a
    counter": a count that only grows is a counter (``_total``), whatever the process."""
    declared = declared_series()
    misread = [(fn, metric) for fn, metric in RISES.findall(expr) if declared.get(metric, ("", ""))[0] == "gauge"]
    assert not misread, f"{where}: {misread} read a gauge as a counter"


@pytest.mark.parametrize(("expr", "found"), [
    ("sum by (job) (increase(sn1_api_outbox_rejected[30m])) > 0", [("increase", "sn1_api_outbox_rejected")]),
    ("sum(rate( x_total{a=\"b\"}[5m])) / sum(delta(y[5m]))", [("rate", "x_total")]),
])
def test_the_rise_reader_finds_the_metric_of_each_increase_and_rate(expr: str, found: list[tuple[str, str]]) -> None:
    assert RISES.findall(expr) == found


def test_the_rules_scrape_the_jobs_the_example_configuration_names() -> None:
    jobs = {j for _, expr in queries() for j in re.findall(r'up\{job="([^"]+)"\}', expr)}
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert jobs == {c["job_name"] for c in config["scrape_configs"]} == {"sn1-api", "sn1-validator"}
    assert config["rule_files"] == ["alerts.yml"]


def test_the_dashboard_is_importable_and_modest() -> None:
    dash = dashboard()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert 10 <= len(panels) <= 16
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_grafanas_import_asks_for_the_prometheus_data_source_and_every_panel_uses_it() -> None:
    """Grafana's Import (README: Monitoring) asks for a data source only for an ``__inputs`` entry of an
    exported dashboard, and writes the one picked wherever ``${DS_...}`` stands. The dashboard had none (its
    panels read a ``datasource`` variable, to be set after the import): the import asked nothing, where the
    README said to pick the data source in it."""
    dash = dashboard()
    inputs = {i["name"]: i for i in dash.get("__inputs", [])}
    assert [(i["type"], i["pluginId"]) for i in inputs.values()] == [("datasource", "prometheus")], inputs
    name = next(iter(inputs))
    assert name.startswith("DS_") and inputs[name]["label"], inputs
    imported = json.loads(DASHBOARD.read_text().replace(f"${{{name}}}", "picked-uid"))  # what the import does
    for p in (p for p in imported["panels"] if p["type"] != "row"):
        assert p["datasource"] == {"type": "prometheus", "uid": "picked-uid"} and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "picked-uid"}, p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(imported)))
    assert used <= variables, f"the dashboard names {sorted(used - variables)}, which nothing defines once imported"
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in dash["panels"] if p["type"] != "row"} <= required


def test_promtool_accepts_the_rules_and_the_example_configuration() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus): PromQL syntax not checked")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(EXAMPLE_CONFIG)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("expr", "metrics", "matched", "grouping"), [
    ('up{job="sn1-api"} == 0', {"up"}, {"up": {"job"}}, set()),
    ('sum by (job, instance) (rate(a_total{status=~"5.."}[5m])) / sum by (job, instance) (rate(a_total[5m])) > 0.05',
     {"a_total"}, {"a_total": {"status"}}, {"job", "instance"}),
    ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{route=~"/v1/models/{model}|/x"}[$__rate_interval])))',
     {"h_bucket"}, {"h_bucket": {"route"}}, {"le"}),
    ("1 - (sum(increase(wins_total[10m])) or vector(0)) / sum(increase(fanouts_total[10m])) > 0.5",
     {"wins_total", "fanouts_total"}, {}, set()),
    ('time() - (max(ts_seconds{job="$validator_job"}) > 0) offset 1h', {"ts_seconds"}, {"ts_seconds": {"job"}}, set()),
    ("sum(rate(x[5m])) without (uid) * on (instance) group_left (check) y > bool 0 unless z",
     {"x", "y", "z"}, {}, {"uid", "instance", "check"}),
])
def test_the_extractor_reads_metric_and_label_names(expr: str, metrics: set[str], matched: dict[str, set[str]],
                                                    grouping: set[str]) -> None:
    got = names(expr)
    assert (got.metrics, got.matched, got.grouping) == (metrics, matched, grouping)
