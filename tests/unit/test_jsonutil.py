"""Request bodies are parsed by orjson first, yet accept and refuse exactly what the standard parser does."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ApiError
from shared.jsonutil import loads_body

ACCEPTED_BY_STDLIB_ONLY = [
    b'{"seed": 123456789012345678901234567890}',  # beyond 64 bits: orjson refuses, stdlib reads it
    b'{"temperature": NaN}',
    b'{"x": Infinity, "y": -Infinity}',
    b'{"content": "\\ud800"}',  # a lone surrogate escape
    b'{"big": 1e400}',
]


@pytest.mark.parametrize("raw", ACCEPTED_BY_STDLIB_ONLY)
def test_what_the_standard_parser_accepts_is_accepted(raw: bytes) -> None:
    got, want = loads_body(raw), json.loads(raw)
    assert json.dumps(got) == json.dumps(want)  # NaN-safe equality


def test_big_integers_keep_their_value() -> None:
    assert loads_body(b'{"seed": 123456789012345678901234567890}')["seed"] == 123456789012345678901234567890
    assert loads_body(b'[18446744073709551616, -9223372036854775809]') == [2**64, -(2**63) - 1]
    assert loads_body(b'[9223372036854775807]') == [2**63 - 1]
    assert math.isinf(loads_body(b'{"big": 1e400}')["big"])


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"", "empty"),
    (b"{", "not valid JSON"),
    (b'{"a": 1,}', "not valid JSON"),
    (b'{"a": "\xff"}', "not valid UTF-8"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_bad_bodies_are_400s_with_the_standard_message(raw: bytes, fragment: str) -> None:
    with pytest.raises(ApiError) as err:
        loads_body(raw)
    assert err.value.status == 400
    assert fragment in err.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_random_documents_parse_as_the_standard_parser_parses_them(value: object) -> None:
    raw = json.dumps(value).encode()
    assert loads_body(raw) == json.loads(raw)
