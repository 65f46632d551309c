"""Tool-call arguments a message states by name: the deterministic test model's reading of an agent's request.

A real model fills a call's arguments with the values the user gave ("the city is "Oslo"", "3 days");
filling every string with the whole message (``schema_instance.py``) made any call of the test model
a poor one, and a synthetic agent's prompt with concrete values could not be answered honestly by the
model the local network runs. The rule, public so a test (and the validator's prompts) can rely on it:

- a property is *stated* when its label, outside double quotes, is followed by a value of its type. The
  label is its name as written (``departure_date``, ``departureDate``) or its words joined by spaces
  (``departure date``: split on ``_``, ``-`` and camelCase, any case); between label and value may stand
  one of ``:``, ``=``, ``is``, ``of``, ``as``, ``set to``, ``should be``, ``being``. The first such
  mention wins;
- values: a string is double-quoted text (``"Oslo"``); an ``enum`` value is one of its values, bare or
  quoted; an integer or number is a JSON number (``3``, ``-2.5``); a boolean is ``true``/``yes`` or
  ``false``/``no``; an array is one or more items of its ``items`` type separated by ``,`` or ``and``;
  a nested object is stated when any of its own properties is, and holds those;
- when a message states at least one property, the arguments are what it states (a required property
  it does not state gets the value ``schema_instance`` gives); when it states none, None: the caller
  keeps the older rule (every property from the message's words).
"""

from __future__ import annotations

import json
import re
from typing import Any

from neurons.miner.backends.schema_instance import instance

_QUOTED = re.compile(r'"[^"]*"')
_FILLER = re.compile(r'\s*(?:(?:[:=]|\bis\b|\bof\b|\bas\b|\bset to\b|\bshould be\b|\bbeing\b)\s*)?')
_NUMBER = re.compile(r'-?\d+(?:\.\d+)?(?![\w.]\d)')
_BOOLEAN = {"true": True, "yes": True, "false": False, "no": False}
_TOKEN = re.compile(r'"([^"]*)"|([^\s,;"]+?)(?=[\s,;.!?)]*(?:\s|$|[,;]))')
_SEPARATOR = re.compile(r'\s*(?:,\s*(?:and\s+)?|and\s+)')
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_MISSING = object()  # no value stated (None is a value)


def name_words(name: str) -> list[str]:
    """A function's or a property's name as lower-case words: ``getWeatherForecast`` and
    ``get_weather-forecast`` are both ``get weather forecast``."""
    return [w.lower() for w in _NAME_WORD.findall(name)]


def stated_arguments(parameters: Any, text: str) -> dict[str, Any] | None:
    """The arguments ``text`` states for a function's ``parameters`` (the rule is in the module
    docstring); None when it states none of them."""
    plain = _QUOTED.sub(lambda m: " " * len(m.group()), text)  # labels inside quoted values are not labels
    return _object(parameters, text, plain)


def _object(schema: Any, text: str, plain: str) -> dict[str, Any] | None:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return None
    out: dict[str, Any] = {}
    for name, sub in properties.items():
        value = _property(str(name), sub, text, plain)
        if value is not _MISSING:
            out[name] = value
    if not out:
        return None
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    for name in required:
        if name in properties and name not in out:
            out[name] = instance(properties[name], text)
    return out


def _property(name: str, schema: Any, text: str, plain: str) -> Any:
    """The value ``text`` states for property ``name``, or ``_MISSING``."""
    if isinstance(schema, dict) and schema.get("type") == "object":
        nested = _object(schema, text, plain)
        return _MISSING if nested is None else nested
    words = name_words(name)
    if not words:
        return _MISSING
    label = re.compile(rf"(?<![\w-])(?:{re.escape(name)}|{r'[ ]+'.join(map(re.escape, words))})(?![\w-])",
                       re.IGNORECASE)
    for mention in label.finditer(plain):
        value = _value(schema, text, _FILLER.match(text, mention.end()).end())
        if value is not _MISSING:
            return value
    return _MISSING


def _value(schema: Any, text: str, at: int) -> Any:
    """A value of ``schema`` starting at ``at`` in ``text``, or ``_MISSING``."""
    if not isinstance(schema, dict):
        return _MISSING
    if schema.get("type") == "array":
        return _items(schema.get("items"), text, at)
    value, _ = _scalar(schema, text, at)
    return value


def _items(schema: Any, text: str, at: int) -> Any:
    items: list[Any] = []
    while True:
        value, end = _scalar(schema, text, at)
        if value is _MISSING:
            return items or _MISSING
        items.append(value)
        more = _SEPARATOR.match(text, end)
        if more is None:
            return items
        at = more.end()


def _scalar(schema: Any, text: str, at: int) -> tuple[Any, int]:
    """(value, where it ends), or (``_MISSING``, ``at``)."""
    if not isinstance(schema, dict):
        return _MISSING, at
    kind = schema.get("type")
    if kind in ("integer", "number"):
        match = _NUMBER.match(text, at)
        if match is None or (kind == "integer" and "." in match.group()):
            return _MISSING, at
        return json.loads(match.group()), match.end()
    token = _TOKEN.match(text, at)
    if token is None:
        return _MISSING, at
    quoted, bare = token.group(1), token.group(2)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        word = quoted if quoted is not None else bare
        return (word, token.end()) if word in enum else (_MISSING, at)
    if kind == "boolean" and bare is not None and bare.lower() in _BOOLEAN:
        return _BOOLEAN[bare.lower()], token.end()
    if kind == "string" and quoted is not None:
        return quoted, token.end()
    return _MISSING, at
