"""A 400 names the place and the problem of the value the caller sent, not pydantic's union members."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from api.responses_wire import ResponsesRequest
from shared.errors import ApiError, first_problem
from shared.http import parse_model
from shared.protocol import ChatCompletionRequest

HI = [{"role": "user", "content": "x"}]


def problem(model: type[BaseModel], data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return first_problem(e.value)


@pytest.mark.parametrize(("model", "data", "where", "why"), [
    # a list whose part is wrong: the part is named, not "content.str"
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text", "Input should be a valid string"),
    (ChatCompletionRequest, {"messages": HI, "stop": ["a", 5]}, "stop.1", "Input should be a valid string"),
    (ResponsesRequest, {"input": [5]}, "input.0", "Input should be a valid dictionary"),
    # a value no member takes: every member's type, at the field
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": {"a": 1}}]}, "messages.0.content",
     "Input should be a valid string or a valid list"),
    (ChatCompletionRequest, {"messages": HI, "tool_choice": 5}, "tool_choice",
     "Input should be a valid string or a valid dictionary"),
    (ResponsesRequest, {"input": {"a": 1}}, "input", "Input should be a valid string or a valid list"),
    # the first problem is still the first field's; a plain field is as before
    (ChatCompletionRequest, {"messages": HI, "temperature": "hot", "stop": 5}, "temperature",
     "Input should be a valid number"),
    (ChatCompletionRequest, {"messages": HI, "logit_bias": {"Hello": "x", "str": "y"}}, "logit_bias.Hello",
     "Input should be a valid number"),
])
def test_the_problem_is_named_where_the_caller_put_it(model: type[BaseModel], data: dict[str, Any], where: str,
                                                      why: str) -> None:
    assert problem(model, data) == (where, why)


def test_a_problem_of_the_whole_body_is_said_so_not_named_as_a_field_called_body() -> None:
    """The validator's scoring payload has a field ``body``: "Invalid value for 'body'" pointed at it when the
    problem was the payload's as a whole (repeated uids, now named as the uids': a winner not among them here)."""
    from neurons.validator.payload import OrganicPayload
    from shared.errors import ApiError
    from shared.http import parse_model

    with pytest.raises(ApiError) as e:
        parse_model(OrganicPayload, {"body": {"messages": HI}, "uids": [1], "winner": 2})
    assert e.value.param is None and e.value.message == "Invalid request body: winner is not one of uids", e.value


@pytest.mark.parametrize(("data", "sent"), [([1], "an array"), ("x", "a string"), (None, "null"), (3, "a number")])
def test_a_part_that_is_no_object_is_named_not_the_body(data: Any, sent: str) -> None:
    """A part of the body read as a model (an ``input`` item, an imported key's entry) that is no JSON object was
    refused as "Request body must be a JSON object.", which sent the caller looking at a body that is one."""
    with pytest.raises(ApiError) as e:
        parse_model(ChatCompletionRequest, data, at="input.3")
    assert e.value.status == 400 and e.value.param == "input.3" and e.value.code == "invalid_value"
    assert e.value.message.startswith("""Invalid value for 'input.3': must be a JSON object ({"messages", "model", """)
    assert e.value.message.endswith(f", ...}}), not {sent}")


def test_a_body_that_is_no_object_is_the_body() -> None:
    with pytest.raises(ApiError) as e:
        parse_model(ChatCompletionRequest, [1])
    assert (e.value.status, e.value.param, e.value.message) == (400, None, "Request body must be a JSON object.")
