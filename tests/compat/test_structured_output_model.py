"""The deterministic test model's structured output: JSON that the caller's own schema accepts.

What a client does with ``response_format`` (pydantic in the OpenAI SDK's ``parse`` and LangChain's
``with_structured_output``) is validate the answer against the model it sent, so these tests do
the same with pydantic models of the shapes applications use.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import UUID1, UUID4, BaseModel, Field, IPvAnyAddress

from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.backends.schema_instance import instance
from neurons.miner.backends.tool_calls import planned_tool_call

PROMPT = "Paris is lovely in spring"


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip_code: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=120)
    score: float = Field(gt=0, lt=1)
    colour: Colour
    kind: Literal["a", "b"]
    born: datetime
    home: Address
    past: list[Address] = Field(min_length=2)
    nickname: str | None
    friends: list[Person] = []


def schema_of(model: type[BaseModel]) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}


def answer(**fields) -> str:
    return DeterministicBackend().answer_text({"messages": [{"role": "user", "content": PROMPT}], "seed": 1,
                                               **fields})


def test_json_schema_answers_validate_against_the_callers_model() -> None:
    person = Person.model_validate_json(answer(response_format=schema_of(Person)))
    assert person.name == PROMPT and person.age == 18 and 0 < person.score < 1
    assert person.colour is Colour.RED and person.kind == "a" and len(person.home.zip_code) == 5
    assert len(person.past) == 2 and person.nickname == PROMPT
    assert person.friends and person.friends[0].home.city == PROMPT, "a model that refers to itself still fits"


class Booking(BaseModel):
    """Shapes the test model broke: a ``pattern`` (codes, phone numbers), a tuple (``prefixItems``), a step."""

    code: str = Field(pattern=r"^[A-Z]{2}-\d{3}$")
    phone: str = Field(pattern=r"^\+?[0-9]{7,12}$", max_length=12)
    slot: tuple[int, str, bool]
    seats: int = Field(ge=1, le=20, multiple_of=4)
    price: float = Field(multiple_of=0.5, gt=0)
    tags: set[str] = Field(min_length=2)


def test_patterns_tuples_steps_and_unique_items_fit_the_callers_model() -> None:
    """``client.chat.completions.parse`` with a field ``Field(pattern=...)`` got a 502 (the SDK's strict schema
    is checked, and the prompt's words fit no pattern), and a ``tuple[int, str]`` came back ``[null, null]``:
    a pydantic model the application already had failed on the local network and nowhere else."""
    booking = Booking.model_validate_json(answer(response_format=schema_of(Booking)))
    assert booking.seats % 4 == 0 and booking.slot[1] == PROMPT and len(booking.tags) == 2
    assert instance({"type": "string", "pattern": "Paris"}, PROMPT) == PROMPT, "words that fit are kept"
    assert instance({"type": "string", "pattern": "(a"}, PROMPT) == PROMPT, "a pattern that is no regex: the words"
    assert instance({"type": "integer", "minimum": 5, "maximum": 7, "multipleOf": 10}, "x") == 5, "none fits: a bound"


class Host(BaseModel):
    """Pydantic's own types, each a string ``format`` (or a dict's ``minProperties``) the words do not fit."""

    address: IPv4Address
    v6: IPv6Address
    network: IPv4Network
    any_address: IPvAnyAddress
    ttl: timedelta
    id: UUID1
    token: UUID4
    labels: dict[str, int] = Field(min_length=2)
    ports: frozenset[int] = Field(min_length=3)
    none_yet: list[int] = Field(max_length=0)


def test_pydantic_formats_and_sized_dicts_fit_the_callers_model() -> None:
    """An IP address, a ``timedelta``, a versioned UUID or a ``dict`` with ``min_length`` came back as the prompt's
    words (or ``{}``, or a set of equal numbers): the caller's ``parse`` failed on the local network."""
    host = Host.model_validate_json(answer(response_format=schema_of(Host)))
    assert len(host.labels) == 2 and len(host.ports) == 3 and host.none_yet == []


def test_a_costly_or_odd_pattern_ends_quickly_and_quietly() -> None:
    """The caller's ``pattern`` reaches the miner unchecked: repeats inside repeats built 16 million characters
    (seconds of the event loop) before the sample was found too long, and a pattern Python's ``re`` warns about
    (``[[:alpha:]]``, a POSIX class) wrote a ``FutureWarning`` to the miner's log for every answer."""
    started = time.perf_counter()
    for pattern in ("(a{4000}){4000}", "((a{60}){60}){60}", "(?P<n>){4000}x", "(a+)+$"):
        assert len(instance({"type": "string", "pattern": pattern}, PROMPT)) <= 4096
    assert time.perf_counter() - started < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = instance({"type": "string", "pattern": "[[:alpha:]]"}, PROMPT)
    assert fitted == "[]", fitted  # to Python's re: a class of "[:alph", then "]"


def test_json_object_wraps_the_usual_answer_and_no_format_is_plain_text() -> None:
    plain = answer()
    assert json.loads(answer(response_format={"type": "json_object"})) == {"answer": plain}
    assert answer(response_format={"type": "text"}) == plain


def test_json_object_follows_a_schema_the_system_message_gives() -> None:
    """Instructor's JSON mode and Pydantic AI's PromptedOutput write the schema into a system message and
    ask for ``json_object``; a real model follows it, so the test model does, or their runs would fail."""
    said = f"Answer in JSON that fits this schema:\n{json.dumps(Address.model_json_schema())}\nNo prose."
    messages = [{"role": "system", "content": "{not json} {\"also\": \"not a schema\"}"},
                {"role": "developer", "content": said}, {"role": "user", "content": PROMPT}]
    address = Address.model_validate_json(answer(response_format={"type": "json_object"}, messages=messages))
    assert address.city == PROMPT and len(address.zip_code) == 5
    in_user_turn = [{"role": "user", "content": said}]
    assert set(json.loads(answer(response_format={"type": "json_object"}, messages=in_user_turn))) == {"answer"}


def test_instance_follows_the_documented_rule_and_survives_odd_schemas() -> None:
    assert instance({"type": "integer", "minimum": 10}, "two words") == 10
    assert instance({"type": "number", "exclusiveMaximum": 1}, "three words here") == 0
    assert instance({"type": ["null", "string"], "format": "email"}, "x") == "user@example.com"
    assert instance({"$ref": "#/$defs/missing"}, "x") is None
    loop = {"$ref": "#"}
    assert instance(loop, "x") is None, "a schema that is only a reference to itself ends"
    assert instance({"oneOf": [{"const": 7}]}, "x") == 7
    assert instance("not a schema", "x") is None
    assert len(instance({"type": "string", "minLength": 10**9}, "x")) == 4096, "no huge string on request"
    assert len(instance({"type": "array", "minItems": 10**9, "items": {"type": "integer"}}, "x")) == 16


def test_a_schema_that_chooses_itself_or_multiplies_ends_quickly() -> None:
    """A caller's schema sets the work: ``anyOf`` naming its own schema recursed until Python's stack ran out (a
    500 from every test miner), and ``minItems: 16`` at each level built 16**12 objects (seconds of the event
    loop per level). Each ends now, small and in well under a second."""
    import time

    from neurons.miner.backends import schema_instance

    chooses_itself = {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}, "$ref": "#/$defs/A"}
    assert instance(chooses_itself, "x") is None
    assert instance({"$defs": {"A": {"allOf": [{"oneOf": [{"$ref": "#/$defs/A"}]}]}}, "$ref": "#/$defs/A"}, "x") is None
    for width in (16, 3):
        node = {"type": "object", "required": ["c", "d"], "properties": {
            "c": {"type": "array", "minItems": width, "items": {"$ref": "#/$defs/N"}},
            "d": {"type": "array", "minItems": width, "items": {"$ref": "#/$defs/N"}}}}
        started = time.process_time()  # CPU time: a busy host's wall clock (1.06 s once in CI's run) is not the code's
        made = json.dumps(instance({"$defs": {"N": node}, "$ref": "#/$defs/N"}, "x"))
        assert time.process_time() - started < 1 and made.count("{") <= schema_instance.MAX_NODES + 100, width
    body = {"messages": [{"role": "user", "content": PROMPT}], "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": chooses_itself}}}
    assert json.loads(DeterministicBackend().answer_text(body)) is None  # an answer, not a 500


def test_tool_arguments_fit_nested_parameters() -> None:
    tool = {"type": "function", "function": {"name": "book", "parameters": Person.model_json_schema()}}
    call = planned_tool_call({"messages": [{"role": "user", "content": PROMPT}], "tools": [tool], "seed": 1})
    assert call is not None
    Person.model_validate_json(call["function"]["arguments"])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["string", "integer", "number", "boolean", "object", "array", "null", "#/$defs/a", "#",
                       "date-time", "$ref", "properties", "items", "anyOf", "enum", "minItems", "minimum"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "properties", "items", "$ref", "$defs", "a", "anyOf", "oneOf", "allOf", "enum",
                         "const", "required", "minItems", "minLength", "maxLength", "minimum", "maximum",
                         "exclusiveMinimum", "exclusiveMaximum", "format"]), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_any_json_as_a_schema_gives_json_and_never_raises(schema: object) -> None:
    """A caller's schema reaches the miner unchecked: whatever it is, the answer is still JSON."""
    json.dumps(instance(schema, PROMPT))
    body = {"messages": [{"role": "user", "content": PROMPT}], "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    json.loads(DeterministicBackend().answer_text(body))
