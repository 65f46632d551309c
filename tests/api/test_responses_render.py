"""Chat chunks rendered as the Responses API's events, in OpenAI's order, and as a response object."""

from __future__ import annotations

import json
from typing import Any

from api.responses_render import ResponseStream, complete_output, finished, skeleton
from api.responses_wire import ResponsesRequest
from tests.helpers import response_events

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def chunk(content: str | None = None, calls: list[dict[str, Any]] | None = None,
          finish: str | None = None, thought: str | None = None) -> str:
    delta: dict[str, Any] = {}
    if thought is not None:
        delta["reasoning_content"] = thought
    if content is not None:
        delta["content"] = content
    if calls is not None:
        delta["tool_calls"] = calls
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def stream_of(*chunks: str, finish_reason: str | None = "stop", error: str | None = None) -> list[dict[str, Any]]:
    s = ResponseStream(skeleton(ResponsesRequest(input="x"), response_id="resp_1", model="m"))
    raw = s.start() + b"".join(s.feed(c) for c in chunks) + s.finish(finish_reason=finish_reason, usage=USAGE,
                                                                        error=error)
    return response_events(raw.decode())


def test_text_then_a_call_stream_in_openais_order_and_end_complete() -> None:
    got = stream_of(chunk("Hel"), chunk("lo"),
                    chunk(calls=[{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"ci'}}]),
                    chunk(calls=[{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]), chunk(finish="tool_calls"))
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        # the message is done before the call is added, as OpenAI streams: one item at a time
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    added = [e for e in got if e["type"] == "response.output_item.added"]
    assert added[0]["item"]["status"] == "in_progress" and added[0]["item"]["content"] == []
    assert added[1]["item"]["call_id"] == "call_1" and added[1]["output_index"] == 1
    final = got[-1]["response"]
    assert final["status"] == "completed" and final["id"] == "resp_1"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1] | {"id": None} == {"id": None, "type": "function_call", "status": "completed",
                                                  "call_id": "call_1", "name": "get_weather",
                                                  "arguments": '{"city":"Paris"}'}
    assert final["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                              "output_tokens": 5,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
    done = {e["item"]["id"]: e["item"] for e in got if e["type"] == "response.output_item.done"}
    assert [done[item["id"]] for item in final["output"]] == final["output"]


def test_items_follow_one_another_and_text_after_a_call_is_a_new_message() -> None:
    """LangChain rebuilds a turn from the order items open and close: a message left open across the calls
    became an empty message after them, which strict servers refuse in the next request."""
    got = stream_of(chunk("Checking."),
                    chunk(calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}}]),
                    chunk(calls=[{"index": 1, "id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]),
                    chunk("Done."), chunk(finish="stop"))
    opened: list[int] = []
    for e in got:
        if e["type"] == "response.output_item.added":
            opened.append(e["output_index"])
        elif e["type"] == "response.output_item.done":
            assert opened.pop() == e["output_index"] and not opened, "the item done is the one open"
    final = got[-1]["response"]
    assert [(i["type"], i.get("name") or i.get("content", [{}])[0].get("text")) for i in final["output"]] == [
        ("message", "Checking."), ("function_call", "a"), ("function_call", "b"), ("message", "Done.")]


def test_a_cut_answer_is_incomplete_and_a_failed_winner_is_failed() -> None:
    cut = stream_of(chunk("Hel"), finish_reason="length")[-1]
    assert cut["type"] == "response.incomplete"
    assert cut["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    failed = stream_of(chunk("Hel"), finish_reason=None, error="miner uid 3 failed mid-stream: timeout")[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"] == {"code": "server_error",
                                           "message": "miner uid 3 failed mid-stream: timeout"}
    assert failed["response"]["output"][0]["content"][0]["text"] == "Hel"  # what the caller already has
    assert cut["response"]["output"][0]["status"] == failed["response"]["output"][0]["status"] == "incomplete"


def test_an_empty_answer_is_one_empty_message_streamed_or_not() -> None:
    got = stream_of(chunk(finish="stop"))
    assert [e["type"] for e in got][2:] == ["response.output_item.added", "response.content_part.added",
                                            "response.output_text.done", "response.content_part.done",
                                            "response.output_item.done", "response.completed"]
    whole = finished(skeleton(ResponsesRequest(input="x"), response_id="r", model="m"), complete_output("", None),
                     finish_reason="stop", usage=USAGE)
    assert [item["content"][0]["text"] for item in whole["output"]] == [""]
    assert got[-1]["response"]["output"][0]["content"] == whole["output"][0]["content"]


def test_cached_and_reasoning_tokens_are_carried_over() -> None:
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
             "completion_tokens_details": {"reasoning_tokens": 4}}
    final = finished({"id": "r"}, [], finish_reason="stop", usage=usage)
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 2, "cache_write_tokens": 1}
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
    odd = {**USAGE, "prompt_tokens_details": {"cached_tokens": "2"}, "completion_tokens_details": [1]}
    assert finished({"id": "r"}, [], finish_reason="stop", usage=odd)["usage"]["input_tokens_details"] == \
        {"cached_tokens": 0, "cache_write_tokens": 0}


def test_thinking_alone_cut_short_is_a_reasoning_item_and_no_message_streamed_or_not() -> None:
    """max_tokens spent on thinking: the answer is incomplete, its thinking its only item, as OpenAI gives it (an
    empty message came after it, ``output_text: ""`` in an item OpenAI does not send); one that ended whole and said
    nothing still has its empty message."""
    got = stream_of(chunk(thought="Hmm"), chunk(thought=", let me see"), finish_reason="length")
    assert [e["type"] for e in got][2:] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.incomplete"]
    whole = finished(skeleton(ResponsesRequest(input="x"), response_id="r", model="m"),
                     complete_output("", None, reasoning="Hmm, let me see", finish_reason="length"),
                     finish_reason="length", usage=USAGE)
    for final in (got[-1]["response"], whole):
        assert [(i["type"], i["status"]) for i in final["output"]] == [("reasoning", "incomplete")]
        assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "Hmm, let me see"}]
    cut = finished(skeleton(ResponsesRequest(input="x"), response_id="r", model="m"),
                   complete_output("", None, finish_reason="length"), finish_reason="length", usage=USAGE)
    assert cut["output"] == [] and stream_of(finish_reason="length")[-1]["response"]["output"] == []
    ended = stream_of(chunk(thought="Hmm"), finish_reason="stop")[-1]["response"]
    assert [(i["type"], i["status"]) for i in ended["output"]] == [("reasoning", "completed"), ("message", "completed")]


def test_thinking_between_calls_is_its_own_item() -> None:
    got = stream_of(chunk(thought="First the weather."),
                    chunk(calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}}]),
                    chunk(thought="Now sum up."), chunk("Sunny."), chunk(finish="stop"))
    final = got[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "function_call", "reasoning", "message"]
    done = [e["output_index"] for e in got if e["type"] == "response.output_item.done"]
    assert done == [0, 1, 2, 3]


def test_text_events_give_logprobs_as_openais_event_types_and_the_part_keeps_chats_bytes() -> None:
    """The SDK's text delta and done events type a logprob as token, logprob and top_logprobs (token, logprob);
    the output_text part (in the response) also has ``bytes``, as chat gives them."""
    token = {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
             "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}
    with_logprobs = json.loads(chunk("Hi"))
    with_logprobs["choices"][0]["logprobs"] = {"content": [token]}
    events = stream_of(json.dumps(with_logprobs))
    plain = {"token": "Hi", "logprob": -0.25, "top_logprobs": [{"token": "Hi", "logprob": -0.25}]}
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert delta["logprobs"] == [plain] and done["logprobs"] == [plain]
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == [token]
    from openai.types.responses import ResponseTextDeltaEvent, ResponseTextDoneEvent
    for event, model in ((delta, ResponseTextDeltaEvent), (done, ResponseTextDoneEvent)):
        assert model.model_validate(event).model_dump(exclude_unset=True)["logprobs"] == [plain]
