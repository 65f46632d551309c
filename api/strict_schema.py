"""An answer's check against a strict JSON schema (a ``strict`` tool's parameters, a ``strict`` ``json_schema``
``response_format``): jsonschema, bounded in time and kept from fetching anything.

Its own module, imported at the first strict schema's check (``api.answer_checks._misfit``; that import holds the
event loop once, 0.1-0.3 s): jsonschema, its referencing and ``regex`` cost every worker ~3 MB of memory and ~0.1 s
of CPU at start, for callers who send a strict schema alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from jsonschema_specifications import REGISTRY as SPECIFICATIONS

# What one answer's check against a strict schema may take: an honest one takes a millisecond or so (~80 us an
# item of a list); a caller's schema can ask for years, and held the event loop (every request of the worker) while
# it ran: a ``pattern`` that backtracks (``^(a|aa)+$`` on 60 letters and a ``!``), ``anyOf`` within ``anyOf`` through
# ``$defs`` (twice the work a level: 25 levels of a few hundred bytes are 33 million steps). Past it, the answer is
# left unchecked, as one whose schema the check cannot read (the model server enforces the schema it was given).
CHECK_SECONDS = 0.25
_CHECK_UNTIL: ContextVar[float] = ContextVar("sn1_check_until", default=math.inf)  # ``time.monotonic``


class CheckTooSlow(Exception):
    """The check of an answer against a strict schema took past ``CHECK_SECONDS``: the answer is not checked."""


def _left() -> float:
    """What is left of the check's ``CHECK_SECONDS``; CheckTooSlow once nothing is."""
    left = _CHECK_UNTIL.get() - time.monotonic()
    if left <= 0:
        raise CheckTooSlow
    return left


def _search(pattern: str, text: str) -> bool:
    """``re.search`` as jsonschema makes it, within what is left of the check's time (``regex``'s timeout: Python's
    ``re`` cannot be stopped once it runs)."""
    try:
        return regex.search(pattern, text, timeout=_left()) is not None
    except TimeoutError:
        raise CheckTooSlow from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """jsonschema's ``pattern``, bounded (``_search``)."""
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: dict[str, Any]) -> Iterator[ValidationError]:
    """jsonschema's ``patternProperties``, bounded (``_search``)."""
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _timed(keyword: Callable[..., Any]) -> Callable[..., Iterator[ValidationError]]:
    """A jsonschema keyword that first checks the check's time is not up (every step of a walk is a keyword's)."""
    def run(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
        _left()
        yield from keyword(validator, value, instance, schema) or ()

    return run


# made once: ``validators.extend`` takes some 4 ms
BoundedValidator = validators.extend(Draft202012Validator, {
    name: _timed(keyword) for name, keyword in (Draft202012Validator.VALIDATORS
                                                | {"pattern": _pattern, "patternProperties": _pattern_properties}).items()})


def misfit(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit ``schema`` (None: it fits, or the schema cannot be checked).

    The schema is not checked against the metaschema first: that took ~20 ms of the event loop (an agent
    with ten strict tools paid it ten times on every turn), and a schema the validator cannot read or walk
    (``"type": 5``, a ``$ref`` to nowhere, ``anyOf`` naming itself), or that takes longer than ``CHECK_SECONDS``
    to check, raises here, and is left to the model server, as it was when the metaschema refused it.

    A ``$ref`` is followed within the schema and to the JSON Schema metaschemas alone (``SPECIFICATIONS``, no
    retrieval): jsonschema's default fetches any other URL with a blocking ``urlopen`` and no timeout, so a caller's
    ``"$ref": "http://169.254.169.254/..."`` had the API request it from inside its network, and a URL that never
    answered held the event loop for good."""
    until = _CHECK_UNTIL.set(time.monotonic() + CHECK_SECONDS)
    try:
        error = best_match(BoundedValidator(schema, registry=SPECIFICATIONS).iter_errors(value))
    except Exception:  # noqa: BLE001 - jsonschema raises many kinds (TypeError, UnknownType, Unresolvable, ...)
        return None
    finally:
        _CHECK_UNTIL.reset(until)
    return None if error is None else error.message[:200]
