"""JSON helpers shared by every process (one place to swap the codec).

Serialising and parsing on the hot path (miner chunks, scoring payloads) use
orjson: the profile of the API under load showed JSON at ~11% of its CPU with
the standard library, a few times less with orjson. Output is the same compact
UTF-8 JSON; what orjson cannot encode (integers beyond 64 bits) falls back to
the standard library. ``loads`` is strict JSON (no NaN/Infinity literals,
numbers that overflow a double are an error: a ``ValueError`` like any bad
input). Request bodies (``loads_body``) accept what the standard parser
accepts, except what JSON text may spell but no answer can carry: orjson
reads a body, and whatever it refuses (NaN literals, lone surrogates, bad
input) is read again by the standard parser, whose answer or error message is
the one given. A body with a run of 19 or more digits goes to the standard
parser directly: orjson would turn an integer beyond 64 bits into a float,
silently losing digits. Two things the standard parser takes are then a 400
naming where they sit:

- a NaN or Infinity literal, or a number beyond a double's range: JSON has no
  such numbers, and forwarded with orjson it would reach the miner as ``null``
  (a client's mistake blamed on a miner as a 502);
- a lone UTF-16 surrogate escape (``"\\ud800"`` without its pair, what a
  JavaScript client sends for an emoji cut in half): it is not a character, so
  no UTF-8 body to a miner, no log line and no scoring payload could hold it
  (it was a 500).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from shared.errors import ApiError, invalid_value

_OPTIONS = orjson.OPT_NON_STR_KEYS
# A possible integer beyond 64 bits: a run of 19 digits, found as a run of 19 b"0" in the body with each digit made a
# b"0" and every other byte a space (two passes in C over the body: a regex search for rb"\d{19}" tried a match at
# each byte, ~25 ns a byte, 6 us for a chat request of 240 bytes and 0.3 s for one of 8 MB).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGITS = b"0" * 19
# How deep a request body may nest: far past any chat request or JSON schema, and under what the encoders take
# (orjson writes 255 levels, the standard library's encoder about 990; deeper, a body read fine was a 500 when
# it was sent on to the miners).
MAX_DEPTH = 128


def dumpb(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:  # e.g. an int beyond 64 bits from a caller's extra field
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(obj: Any) -> str:
    return dumpb(obj).decode()


def loads(data: str | bytes) -> Any:
    """Parse trusted-shape JSON (miner chunks, stored payloads); raises ``ValueError`` on bad input."""
    return orjson.loads(data)


def loads_body(raw: bytes) -> Any:
    """Parse a request body, turning every decoding failure into a 400."""
    if not raw:
        raise ApiError(400, "Request body is empty; expected a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # only then can it nest too deep: a walk is worth it
        value = _parsed(raw)
        if deeper_than(value, MAX_DEPTH):
            raise ApiError(400, f"Request body nests arrays and objects more than {MAX_DEPTH} deep.",
                           code="invalid_json")
        return value
    return _parsed(raw)


def _parsed(raw: bytes) -> Any:
    if not has_long_digits(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard parser decides, and words the error
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8.", code="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"Request body is not valid JSON: {e}", code="invalid_json") from None
    unfit = unfit_at(value)
    if unfit is not None:
        where, problem = unfit
        raise invalid_value(".".join(map(str, where)) or None, problem)
    return value


def has_long_digits(raw: bytes) -> bool:
    """Whether ``raw`` holds a run of 19 or more ASCII digits (what orjson may read as a float, losing digits)."""
    return _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO)


def deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest in ``value`` more than ``limit`` deep (no recursion, as ``unfit_at``)."""
    stack: list[tuple[int, Any]] = [(1, value)]
    while stack:
        depth, item = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth > limit:
                return True
            stack.extend((depth + 1, v) for v in (item.values() if kind is dict else item))
    return False


NON_FINITE = "NaN, Infinity and numbers beyond a double's range are not JSON numbers; send a finite number."
SURROGATE = ("the text holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair, as from an emoji cut "
             "in half), which is not a character; send valid Unicode text.")
SURROGATE_KEY = "an object key holds a lone UTF-16 surrogate escape, which is not a character; send valid Unicode text."
_SURROGATES = re.compile("[\ud800-\udfff]")


def whole_characters(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (what the standard parser reads from a ``"\\ud83d"`` escape
    without its pair) replaced by U+FFFD, as a UTF-8 decoder replaces a broken sequence: for a miner's text
    the API passes on, which no encoder could otherwise write (a search result holding one was a 500)."""
    return _SURROGATES.sub("\ufffd", text)


def unfit_at(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """Where the first value JSON can spell but no answer can carry sits, and why (``NON_FINITE``,
    ``SURROGATE``, ``SURROGATE_KEY``), or None. A key with a surrogate is named by its object's path:
    the key itself cannot be written into the error. No recursion: a document the standard parser
    read can nest deeper than a recursive walk may go."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return path, NON_FINITE
        elif kind is str:
            if _SURROGATES.search(item):
                return path, SURROGATE
        elif kind is dict:
            if any(_SURROGATES.search(k) for k in item):
                return path, SURROGATE_KEY
            stack.extend((path + (k,), v) for k, v in reversed(item.items()))
        elif kind is list:
            stack.extend((path + (i,), v) for i, v in reversed(list(enumerate(item))))
    return None
