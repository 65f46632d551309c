"""README "Metrics" names every metric the API and the validator export, each by the name a scrape shows (a
counter with its ``_total``), and no metric they do not export: dashboards and alert rules are written from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shared.metrics import ApiMetrics, ValidatorMetrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("### Metrics (`GET /metrics`"):]
SECTION = SECTION[:SECTION.index("\n### ", 1)]
# Each process's paragraph, by the words that open it, and the metrics it exports.
PROCESSES = {"API (`sn1_api_*`)": ("sn1_api", ApiMetrics), "Validator (`sn1_validator_*`)": ("sn1_validator",
                                                                                            ValidatorMetrics)}
# The validator's paragraph says "the same HTTP metrics" rather than naming them again.
SAID_AS_THE_SAME = {"sn1_validator": {"http_requests_total", "http_request_duration_seconds", "rate_limited_total"}}
# A name in backquotes, with its labels if it has any: ``miner_wins_total{uid}``.
NAME = re.compile(r"`([a-z][a-z_]*)(\{[a-z,]+\})?`")

def paragraph(opening: str) -> str:
    start = SECTION.index(opening)
    ends = [SECTION.index(o, start + 1) for o in PROCESSES if SECTION.find(o, start + 1) > 0]
    return SECTION[start:min(ends, default=len(SECTION))]


def exported(prefix: str, metrics: type[ApiMetrics] | type[ValidatorMetrics]) -> set[str]:
    """The names a scrape shows, without ``prefix_``: a counter's with its ``_total``."""
    families = metrics(CollectorRegistry()).registry.collect()
    return {(f.name + "_total" if f.type == "counter" else f.name).removeprefix(prefix + "_") for f in families}


@pytest.mark.parametrize("opening", list(PROCESSES))
def test_the_metrics_paragraph_names_each_exported_metric_and_no_other(opening: str) -> None:
    prefix, metrics = PROCESSES[opening]
    names = exported(prefix, metrics)
    named = NAME.findall(paragraph(opening))
    said = {name for name, _ in named} | SAID_AS_THE_SAME.get(prefix, set())
    assert names - said == set(), f"exported by {prefix} but not in README 'Metrics'"
    # what reads as a metric (a counter's or a duration's name, or one with labels) is one
    metric_like = {name for name, labels in named if labels or name.endswith(("_total", "_seconds"))}
    assert metric_like - names == set(), f"named in README 'Metrics' under {prefix}_* but not exported"
