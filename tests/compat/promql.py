"""The metric and label names a PromQL expression uses, read with a few regular expressions (no PromQL engine:
the monitoring kit's test needs names, not values).

How it reads an expression, in order:

1. string literals (``"5.."``, ``"/v1/models/{model}"``) are emptied, so a brace or a word inside one is never
   taken for syntax;
2. range and subquery brackets (``[5m]``, ``[$__rate_interval]``) are dropped;
3. each selector, ``name{label="...", other=~"..."}``, gives the metric and the label names matched on it;
4. each grouping clause, ``by (...)``, ``without (...)``, ``on (...)``, ``ignoring (...)``, ``group_left (...)``,
   ``group_right (...)``, gives label names not tied to one metric, and is then dropped;
5. every word left that is not followed by ``(`` (a function or an aggregation), not a keyword (``and``,
   ``or``, ``bool``, ...) and not part of a number or a duration is a metric name.

What it does not do: check syntax (``promtool check rules`` does, where it is installed), or know which metric a
``by (label)`` groups: the test checks those labels against every metric of the same expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                      "group_right", "inf", "nan"})
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
RANGE = re.compile(r"\[[^\]]*\]")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
WORD = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


@dataclass
class Names:
    """What one expression names: its metrics, the labels matched on each, and its grouping labels."""

    metrics: set[str] = field(default_factory=set)
    matched: dict[str, set[str]] = field(default_factory=dict)  # metric -> label names in its {...}
    grouping: set[str] = field(default_factory=set)


def names(expr: str) -> Names:
    """The metric and label names ``expr`` uses (see the module's docstring for how they are read)."""
    out = Names()
    text = RANGE.sub(" ", STRING.sub('""', expr))
    for metric, body in SELECTOR.findall(text):
        labels = set(MATCHER.findall(body))
        if metric:
            out.metrics.add(metric)
            out.matched.setdefault(metric, set()).update(labels)
        else:  # a bare {...}: labels with no metric name of their own
            out.grouping |= labels
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    for labels in GROUPING.findall(text):
        out.grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    out.metrics |= {w for w in WORD.findall(text) if w.lower() not in KEYWORDS}
    return out
