"""A value that fits a JSON schema, built from the request's words: the test model's structured output.

Clients check what a model returns against the schema they sent (pydantic in
LangChain's ``with_structured_output``, the OpenAI SDK's ``parse``, an agent's
tool arguments), so the deterministic model must return a value that passes:
every property of an object (nested ones too, through ``$ref``), one item in an
array (or ``minItems``), numbers inside their bounds, strings in their
``format``. The rule, so a test can predict it:

- ``enum`` -> its first value; ``const`` -> itself; ``anyOf``/``oneOf`` -> the
  first choice that is not ``null``; ``allOf`` -> its first schema;
- string -> ``text`` (cut to ``maxLength``, padded to ``minLength``), or a fixed
  value of its ``format`` (date-time, date, time, email, uri, uuid, ipv4, ipv6,
  duration, hostname, and pydantic's own: uuid1, ipv4network, ...); one its
  ``pattern`` does not match is a sample of the pattern (``pattern_sample``);
- integer / number -> the number of words in ``text``, moved into
  ``minimum``/``maximum``, then to a ``multipleOf`` inside them;
- boolean -> ``true``; null -> ``null``;
- object -> every property, and entries up to ``minProperties`` (a ``dict``'s);
  array -> ``minItems`` items, at least one (none past ``maxItems``; each from
  ``text`` and its place, ``uniqueItems``), or a tuple's (``prefixItems``).

From ``SHALLOW`` levels down, the smallest value that fits instead: only the
required properties, ``minItems`` items (none by default), ``null`` where
``anyOf`` allows it. So a model that refers to itself (``friends:
list[Person]``) ends; past ``MAX_DEPTH`` (a schema that requires itself, which
nothing finite fits) an object is ``{}`` and an array ``[]``, as past
``MAX_NODES`` values in one answer; a choice that is itself (``anyOf`` naming its
own schema) is ``null``.
"""

from __future__ import annotations

import math
from typing import Any

from neurons.miner.backends.pattern_sample import MAX_SAMPLE, fits, parsed, sample

SHALLOW = 3
MAX_DEPTH = 12
MAX_STRING = 500
MAX_PADDED = 4096
MAX_ITEMS = 16
MAX_NODES = 5000  # values built for one answer, at most (past it an object is {} and an array [])
FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    # pydantic's own (IPv4Address, IPv4Network, timedelta, UUID1, ...) and JSON Schema's others
    "uuid1": "00000000-0000-1000-8000-000000000000",
    "uuid3": "00000000-0000-3000-8000-000000000000",
    "uuid4": "00000000-0000-4000-8000-000000000000",
    "uuid5": "00000000-0000-5000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "ipvanyaddress": "192.0.2.1",
    "ipv4network": "192.0.2.0/24",
    "ipv6network": "2001:db8::/32",
    "ipvanynetwork": "192.0.2.0/24",
    "ipv4interface": "192.0.2.1/24",
    "ipv6interface": "2001:db8::1/32",
    "ipvanyinterface": "192.0.2.1/24",
    "duration": "PT1H",
    "hostname": "example.com",
    "idn-email": "user@example.com",
    "idn-hostname": "example.com",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri-reference": "https://example.com/",
    "json-pointer": "/",
    "name-email": "User <user@example.com>",
    "base64": "UGFyaXM=",
    "byte": "UGFyaXM=",
}


def instance(schema: Any, text: str, *, root: Any = None, depth: int = 0) -> Any:
    """A value of ``schema`` (``root`` is the document its ``$ref``s point into: the schema itself by default)."""
    return _Builder(schema if root is None else root, text).value(schema, depth)


class _Builder:
    """One answer's building: the schema reaches the miner unchecked, so its work is bounded, not only its
    depth: at most ``MAX_NODES`` values in all (``minItems`` at each of 12 levels multiplies: 16**6 objects
    took seconds of the event loop and gigabytes), and at most ``MAX_DEPTH`` choices (``anyOf`` ...) in a row
    at one level (a choice that names itself recursed until Python's stack ran out: a 500)."""

    def __init__(self, root: Any, text: str) -> None:
        self.root, self.text = root, text
        self.left = MAX_NODES

    def value(self, schema: Any, depth: int, hops: int = 0) -> Any:
        self.left -= 1
        schema = _resolve(schema, self.root)
        if not isinstance(schema, dict):
            return None
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        for key in ("anyOf", "oneOf", "allOf"):
            choices = schema.get(key)
            if isinstance(choices, list) and choices:
                nulls = [c for c in choices if _resolve(c, self.root) == {"type": "null"}]
                if (nulls and depth >= SHALLOW) or hops >= MAX_DEPTH:
                    return None
                choice = next((c for c in choices if c not in nulls), choices[0])
                return self.value(choice, depth, hops + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if not isinstance(kind, str):  # the caller's schema reaches us unchecked: any JSON at all
            kind = None
        if kind is None and isinstance(schema.get("properties"), dict):
            kind = "object"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        return _SCALARS.get(kind, _null)(schema, self.text)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if depth >= MAX_DEPTH or self.left <= 0:
            return {}
        if not isinstance(properties, dict):
            return self._more_properties(schema, depth, 0)
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        built = {name: self.value(sub, depth + 1) for name, sub in properties.items()
                 if depth < SHALLOW or name in required}
        return built | self._more_properties(schema, depth, len(built))

    def _more_properties(self, schema: dict[str, Any], depth: int, has: int) -> dict[str, Any]:
        """The entries a ``minProperties`` (a ``dict`` with ``min_length``) asks beyond the ``has`` built, keyed by
        the words and their place, valued by ``additionalProperties``: none where it is ``false``."""
        extra = schema.get("additionalProperties", {})
        wanted = min(_bound(schema.get("minProperties"), 0), MAX_ITEMS) - has
        if extra is False or wanted <= 0:
            return {}
        extra = extra if isinstance(extra, dict) else {}
        return {_nth_text(self.text, has + n): self._nth(extra, depth + 1, has + n) for n in range(wanted)}

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        if depth >= MAX_DEPTH or self.left <= 0:
            return []
        prefix = schema.get("prefixItems", schema.get("items"))  # a tuple: 2020-12's prefixItems, draft 4's items
        if isinstance(prefix, list):
            return [self.value(item, depth + 1) for item in prefix[:MAX_ITEMS]]
        count = min(_bound(schema.get("minItems"), 1 if depth < SHALLOW else 0), MAX_ITEMS,
                    _bound(schema.get("maxItems"), MAX_ITEMS))
        if schema.get("uniqueItems") is not True:
            return [self.value(schema.get("items", {}), depth + 1) for _ in range(count)]
        return [self._nth(schema.get("items", {}), depth + 1, n) for n in range(count)]

    def _nth(self, schema: Any, depth: int, n: int) -> Any:
        """The ``n``th of values that must differ (a ``uniqueItems`` array's items, a ``set[str]``; a dict's
        entries): built from the words and ``n`` more (``_nth_text``), so its strings and numbers differ."""
        text = self.text
        self.text = _nth_text(text, n)
        try:
            return self.value(schema, depth)
        finally:
            self.text = text


def _nth_text(text: str, n: int) -> str:
    """``text`` for the ``n``th of values that must differ: ``n`` more words (``2 3 ...``), a text of its own and
    a count of its own."""
    return " ".join([text, *map(str, range(2, n + 2))])


def _resolve(schema: Any, root: Any) -> Any:
    """Follow ``$ref``s into ``root`` (``#/$defs/X``, ``#/definitions/X``); any other is an empty schema."""
    for _ in range(MAX_DEPTH):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return schema
        schema = _lookup(root, ref)
    return {}


def _lookup(root: Any, ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _string(schema: dict[str, Any], text: str) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    value = text[: _bound(schema.get("maxLength"), MAX_STRING)]
    shortest = min(_bound(schema.get("minLength"), 0), MAX_PADDED)  # a request must not buy a huge string
    value = value + "x" * (shortest - len(value)) if len(value) < shortest else value
    tree = parsed(pattern := schema.get("pattern"))
    if tree is None or fits(tree, pattern, value):
        return value
    fitted = sample(tree, shortest, _bound(schema.get("maxLength"), MAX_SAMPLE))
    return value if fitted is None else fitted


def _number(schema: dict[str, Any], text: str) -> int | float:
    value: float = len(text.split())
    low, high = _limit(schema, "minimum", "exclusiveMinimum"), _limit(schema, "maximum", "exclusiveMaximum")
    if low is not None and value < low[0] + low[1]:
        value = low[0] + low[1]
    if high is not None and value > high[0] - high[1]:
        value = high[0] - high[1]
        if low is not None and value < low[0] + low[1]:  # a narrow open range (0 < x < 1): its middle
            value = (low[0] + high[0]) / 2
    value = _step(value, schema.get("multipleOf"), low, high)
    return int(value) if schema.get("type") == "integer" else value


def _step(value: float, step: Any, low: tuple[float, int] | None, high: tuple[float, int] | None) -> float:
    """The multiple of ``step`` (``multipleOf``) nearest ``value`` inside the bounds, above it first; ``value``
    when there is none (or no step)."""
    if not isinstance(step, int | float) or isinstance(step, bool) or not 0 < step < float("inf"):
        return value
    for multiple in (math.ceil(value / step), math.floor(value / step)):
        candidate = round(multiple * step, 12)
        if (low is None or candidate > low[0] or (candidate == low[0] and not low[1])) and (
                high is None or candidate < high[0] or (candidate == high[0] and not high[1])):
            return candidate
    return value


def _limit(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float, int] | None:
    """A bound and the step that keeps a value off it (1 when exclusive, 0 when inclusive)."""
    for key, step in ((exclusive, 1), (inclusive, 0)):
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value, step
    return None


def _bound(value: Any, default: int) -> int:
    return value if type(value) is int and value >= 0 else default


def _null(*_args: Any) -> None:
    return None


_SCALARS = {
    "string": _string,
    "integer": _number,
    "number": _number,
    "boolean": lambda *_args: True,
}
