"""A domain's function tool, built at random: its name, its parameters' names, types, descriptions and
which of them are required, in one of several naming styles; ``strict`` ones follow OpenAI's strict-mode
rules (every object closed with ``additionalProperties: false``, every property required, no keywords
strict mode refuses)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neurons.validator.agents.catalogue import Domain, Param

STYLES = ("snake", "camel", "kebab")  # how a function's name is written (parameters: snake or camel)
PREFIXES = ("", "", "", "", "app_", "svc_", "my_", "tool_", "v2_")
OPTIONAL_SHARE = 0.6  # of a domain's optional parameters, how many a tool declares


@dataclass(frozen=True)
class Prop:
    """One declared property: its name in the schema, its catalogue entry, its schema, and a nested
    object's properties."""

    name: str
    param: Param
    schema: dict[str, Any]
    fields: tuple[Prop, ...] = ()


@dataclass(frozen=True)
class Built:
    """A tool as offered, its domain, and its top-level properties (to draw and state argument values)."""

    tool: dict[str, Any]
    domain: Domain
    props: tuple[Prop, ...]

    @property
    def name(self) -> str:
        return str(self.tool["function"]["name"])


def written(words: Sequence[str], style: str) -> str:
    """``words`` as one identifier: get_weather, getWeather or get-weather."""
    if style == "camel":
        return words[0] + "".join(w.capitalize() for w in words[1:])
    return ("-" if style == "kebab" else "_").join(words)


def build_tool(domain: Domain, rng: random.Random, *, strict: bool) -> Built:
    """One of the domain's tools: a random name, a random selection of its parameters, varied wording."""
    style = rng.choice(STYLES)
    verb, noun = rng.choice(domain.verbs), rng.choice(domain.nouns)
    words = [w for w in (rng.choice(PREFIXES).rstrip("_"), verb, *noun.split("_")) if w]
    key_style = "camel" if style == "camel" or rng.random() < 0.2 else "snake"
    params = [p for p in domain.params if p.required or strict or rng.random() < OPTIONAL_SHARE]
    if rng.random() < 0.5:
        rng.shuffle(params)
    props = tuple(_prop(p, rng, key_style, strict) for p in params)
    function: dict[str, Any] = {"name": written(words, style)[:64], "description": _description(domain, rng),
                                "parameters": _object_schema(props, rng, strict)}
    if strict:
        function["strict"] = True
    return Built({"type": "function", "function": function}, domain, props)


def _description(domain: Domain, rng: random.Random) -> str:
    text = rng.choice(domain.docs)
    return rng.choice((text, text + ".", text.lower(), text + ". " + rng.choice(_DOC_TAILS)))


_DOC_TAILS = ("Returns JSON.", "Use it when the user asks for it.", "Results are cached for a minute.",
              "Requires the user's consent.", "Call once per request.", "All times are UTC.")


def _prop(param: Param, rng: random.Random, key_style: str, strict: bool) -> Prop:
    name = written(rng.choice(param.names).split("_"), key_style)
    fields = tuple(_prop(f, rng, key_style, strict) for f in param.fields)
    schema = _object_schema(fields, rng, strict) if param.kind == "object" else _schema(param, rng, strict)
    if param.docs and rng.random() < 0.7:
        doc = rng.choice(param.docs)
        schema = {"description": doc.capitalize() if rng.random() < 0.5 else doc, **schema}
    return Prop(name, param, schema, fields)


def _object_schema(props: Sequence[Prop], rng: random.Random, strict: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {p.name: p.schema for p in props},
                              "required": [p.name for p in props if p.param.required or strict]}
    if strict or rng.random() < 0.3:
        schema["additionalProperties"] = False
    return schema


def _schema(param: Param, rng: random.Random, strict: bool) -> dict[str, Any]:
    """A scalar's or an array's schema: bounds and formats only where strict mode takes none of them."""
    if param.kind == "enum":
        return {"type": "string", "enum": _enum(param.pool, rng)}
    if param.kind == "array":
        items = {"type": "string", "enum": _enum(param.pool, rng)} if param.item == "enum" else {"type": "string"}
        schema: dict[str, Any] = {"type": "array", "items": items}
        if not strict and rng.random() < 0.3:
            schema["minItems"] = 1
        return schema
    schema = {"type": param.kind}
    if param.kind in ("integer", "number") and not strict and rng.random() < 0.4:
        low, high = param.pool
        schema |= {"minimum": low, "maximum": high}
    return schema


def _enum(pool: Any, rng: random.Random) -> list[str]:
    """Some of the pool's values, in a random order (at least two, or all there are)."""
    values = list(pool)
    return rng.sample(values, rng.randint(min(2, len(values)), len(values)))


def draw(prop: Prop, rng: random.Random, topics: Sequence[str]) -> Any:
    """A value for ``prop``: from its pool (``topics`` for a string with none: a search's query)."""
    kind, pool = prop.param.kind, prop.param.pool
    if kind == "object":
        return {f.name: draw(f, rng, topics) for f in prop.fields}
    if kind == "enum":
        return rng.choice(prop.schema["enum"])
    if kind == "array":
        return _items(prop, rng, topics)
    if kind == "integer":
        return rng.randint(*pool)
    if kind == "number":
        return round(rng.uniform(*pool), rng.choice((1, 2)))
    if kind == "boolean":
        return rng.random() < 0.5
    return _word(pool, rng, topics)


def _items(prop: Prop, rng: random.Random, topics: Sequence[str]) -> list[Any]:
    items = prop.schema["items"]
    count = rng.randint(1, 3)
    if "enum" in items:
        return rng.sample(items["enum"], min(count, len(items["enum"])))
    return list(dict.fromkeys(_word(prop.param.pool, rng, topics) for _ in range(count)))


def _word(pool: Any, rng: random.Random, topics: Sequence[str]) -> str:
    if callable(pool):
        return str(pool(rng))
    return str(rng.choice(pool or topics))
