"""Request bodies are parsed by orjson first, yet accept and refuse what the standard parser does, except
numbers that are not finite (JSON has none) and lone surrogate escapes (no character), which are 400s naming
where they sit."""

from __future__ import annotations

import json
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ApiError
from shared.jsonutil import MAX_DEPTH, NON_FINITE, dumpb, has_long_digits, loads_body, unfit_at

ACCEPTED_BY_STDLIB_ONLY = [
    b'{"seed": 123456789012345678901234567890}',  # beyond 64 bits: orjson refuses, stdlib reads it
    b'{"content": "\\ud83d\\ude00"}',  # a surrogate pair escape: orjson reads it too, one character
]


@pytest.mark.parametrize("raw", ACCEPTED_BY_STDLIB_ONLY)
def test_what_the_standard_parser_accepts_is_accepted(raw: bytes) -> None:
    got, want = loads_body(raw), json.loads(raw)
    assert json.dumps(got) == json.dumps(want)


def test_big_integers_keep_their_value() -> None:
    assert loads_body(b'{"seed": 123456789012345678901234567890}')["seed"] == 123456789012345678901234567890
    assert loads_body(b'[18446744073709551616, -9223372036854775809]') == [2**64, -(2**63) - 1]
    assert loads_body(b'[9223372036854775807]') == [2**63 - 1]


@given(st.binary(max_size=80) | st.lists(st.sampled_from([b"1", b"9", b"0", b"a", b" ", b"\xd9", b"/", b":"]),
                                          max_size=80).map(b"".join))
def test_long_digits_are_found_as_the_regex_finds_them(raw: bytes) -> None:
    """The check that sends a body to the standard parser (an integer beyond 64 bits keeps its digits) finds what
    ``\\d{19}`` finds: every run of 19 ASCII digits, and nothing else."""
    assert has_long_digits(raw) == (re.search(rb"\d{19}", raw) is not None)
    assert has_long_digits(b"x" + b"7" * 19 + raw) and not has_long_digits(b"1" * 18 + b"." + b"2" * 18)


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"temperature": NaN}', "temperature"),
    (b'{"x": 1, "y": -Infinity}', "y"),
    (b'{"logit_bias": {"50256": Infinity}}', "logit_bias.50256"),
    (b'{"messages": [{"role": "user"}, {"content": [1, NaN]}]}', "messages.1.content.1"),
    (b'{"big": 1e400}', "big"),  # beyond a double: the standard parser makes it inf
    (b'{"seed": 123456789012345678901, "t": NaN}', "t"),  # the long-digits path checks too
    (b"NaN", None),
])
def test_numbers_that_are_not_finite_are_400s_naming_where(raw: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as err:
        loads_body(raw)
    assert err.value.status == 400 and err.value.code == "invalid_value"
    assert err.value.param == param
    where = f"value for '{param}'" if param else "request body"
    assert err.value.message.startswith(f"Invalid {where}: ") and "finite" in err.value.message


def test_finite_floats_the_standard_parser_reads_pass() -> None:
    assert loads_body(b'{"t": 1e308, "u": -0.0, "v": [1.5, {"w": 2e-320}]}') == {"t": 1e308, "u": -0.0,
                                                                                "v": [1.5, {"w": 2e-320}]}


def test_the_check_walks_documents_deeper_than_a_recursive_walk_could() -> None:
    long_digits = b'{"seed": 1234567890123456789012, "a":'  # sends the body to the standard parser
    finite = long_digits + b'{"a":' * (MAX_DEPTH - 2) + b"1.5" + b"}" * (MAX_DEPTH - 1)
    assert loads_body(finite)["seed"] == 1234567890123456789012
    doc: object = float("nan")
    for _ in range(5 * sys.getrecursionlimit()):
        doc = [0, doc]
    assert unfit_at({"a": doc}) == (("a",) + (1,) * (5 * sys.getrecursionlimit()), NON_FINITE)


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
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_random_documents_parse_as_the_standard_parser_parses_them(value: object) -> None:
    raw = json.dumps(value).encode()
    assert loads_body(raw) == json.loads(raw)



@pytest.mark.parametrize(("raw", "param", "why"), [
    (b'{"messages": [{"role": "user", "content": "cut \\ud83d"}]}', "messages.0.content", "lone UTF-16 surrogate"),
    (b'{"stop": ["ok", "\\udc00 tail"]}', "stop.1", "lone UTF-16 surrogate"),
    (b'{"metadata": {"\\ud800": "v"}}', "metadata", "object key"),  # the key itself cannot be named
    (b'{"seed": 123456789012345678901, "user": "\\udfff"}', "user", "lone UTF-16 surrogate"),  # long digits path
    (b'"\\ud800"', None, "lone UTF-16 surrogate"),
])
def test_lone_surrogate_escapes_are_400s_naming_where(raw: bytes, param: str | None, why: str) -> None:
    """The standard parser takes them, but no UTF-8 body, log line or payload can hold one: it was a 500."""
    with pytest.raises(ApiError) as err:
        loads_body(raw)
    assert err.value.status == 400 and err.value.code == "invalid_value"
    assert err.value.param == param
    assert why in err.value.message
    json.dumps(err.value.body(), ensure_ascii=False).encode()  # the error itself is writable as UTF-8


@pytest.mark.parametrize("depth", [128, 300, 980])
def test_a_body_nested_past_the_bound_is_a_400_not_a_500_on_its_way_on(depth: int) -> None:
    """980 levels parsed, then sending the body on to the miners (orjson writes 255, the standard library
    about 990) raised RecursionError: a 500 and a traceback. Bodies are bounded at MAX_DEPTH."""
    raw = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ApiError) as e:
        loads_body(raw)
    assert e.value.status == 400 and e.value.code == "invalid_json" and str(MAX_DEPTH) in e.value.message
    fine = b'{"x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert dumpb(loads_body(fine)) == fine.replace(b" ", b"")
    many = b'{"x": [' + b"[], " * 500 + b"[]]}"  # many brackets, shallow: parsed as ever
    assert len(loads_body(many)["x"]) == 501
