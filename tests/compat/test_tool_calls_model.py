"""The deterministic test model's documented tool-calling rule (``neurons/miner/backends/tool_calls.py``)."""

from __future__ import annotations

import json

from neurons.miner.backends.deterministic import DeterministicBackend

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string", "enum": ["c", "f"]},
        "alerts": {"type": "boolean"}}, "required": ["city"]}}}
TO_SPANISH = {"type": "function", "function": {"name": "transfer_to_spanish_agent", "parameters": {}}}
TO_ENGLISH = {"type": "function", "function": {"name": "transfer_to_english_agent", "parameters": {}}}


async def complete(**body) -> dict:
    return await DeterministicBackend().complete({"seed": 1, **body})


async def stream(**body) -> list[dict]:
    return [json.loads(c) async for c in DeterministicBackend().stream({"seed": 1, **body})]


async def test_tools_given_calls_a_tool_with_arguments_from_the_last_user_message() -> None:
    out = await complete(messages=[{"role": "user", "content": "Paris in three days"}], tools=[WEATHER])
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris in three days", "days": 4, "unit": "c",
                                                         "alerts": True}


async def test_the_tool_sharing_most_words_wins_and_the_first_on_a_tie() -> None:
    tools = [TO_SPANISH, TO_ENGLISH]
    english = await complete(messages=[{"role": "user", "content": "Hello! I speak English."}], tools=tools)
    tie = await complete(messages=[{"role": "user", "content": "Hola, ¿Cómo te llamas?"}], tools=tools)
    assert english["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "transfer_to_english_agent"
    assert tie["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "transfer_to_spanish_agent"


async def test_named_tool_choice_none_and_tool_results() -> None:
    msgs = [{"role": "user", "content": "Hello English"}]
    named = await complete(messages=msgs, tools=[TO_SPANISH, TO_ENGLISH],
                           tool_choice={"type": "function", "function": {"name": "transfer_to_spanish_agent"}})
    assert named["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "transfer_to_spanish_agent"
    none = await complete(messages=msgs, tools=[WEATHER], tool_choice="none")
    assert none["choices"][0]["message"]["content"] and "tool_calls" not in none["choices"][0]["message"]
    call = named["choices"][0]["message"]["tool_calls"][0]
    after = await complete(tools=[WEATHER], messages=msgs + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{}"}])
    assert after["choices"][0]["finish_reason"] == "stop" and after["choices"][0]["message"]["content"]


async def test_streamed_call_reassembles_to_the_same_call_and_reports_usage() -> None:
    msgs = [{"role": "user", "content": "Paris"}]
    whole = (await complete(messages=msgs, tools=[WEATHER]))["choices"][0]["message"]["tool_calls"][0]
    chunks = await stream(messages=msgs, tools=[WEATHER], stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["tool_calls"][0]["id"] == whole["id"]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
    assert args == whole["function"]["arguments"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_a_required_tool_choice_calls_a_tool_after_a_tool_result_too() -> None:
    """``tool_choice: "required"`` obliges a call, as at OpenAI: the model answered text after a tool result,
    which the API (rightly) refuses as no answer to such a request, so every honest miner failed it."""
    msgs = [{"role": "user", "content": "Weather in Paris"}]
    first = await complete(messages=msgs, tools=[WEATHER])
    call = first["choices"][0]["message"]["tool_calls"][0]
    turn = msgs + [{"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": "{}"}]
    again = await complete(messages=turn, tools=[WEATHER], tool_choice="required")
    assert again["choices"][0]["finish_reason"] == "tool_calls"
    assert again["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    auto = await complete(messages=turn, tools=[WEATHER], tool_choice="auto")
    assert auto["choices"][0]["finish_reason"] == "stop"


async def test_a_required_call_after_a_tool_result_moves_on_to_a_tool_not_yet_called() -> None:
    """An agent whose answer is itself a tool (Pydantic AI's default structured output, ``final_result``)
    sends ``tool_choice: "required"`` on every turn. After its tool's result the
    model called that same tool again, the one the user's words match, and the agent looped until its request
    limit (Pydantic AI's 50): a real model goes on to the tool it has not called yet, the answer."""
    final = {"type": "function", "function": {"name": "final_result", "description": "The final response",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string"}}, "required": ["city"]}}}
    msgs = [{"role": "user", "content": "Weather in Paris"}]
    first = await complete(messages=msgs, tools=[WEATHER, final], tool_choice="required")
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    turn = msgs + [{"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    again = await complete(messages=turn, tools=[WEATHER, final], tool_choice="required")
    assert [c["function"]["name"] for c in again["choices"][0]["message"]["tool_calls"]] == ["final_result"]
    streamed = await stream(messages=turn, tools=[WEATHER, final], tool_choice="required")
    assert streamed[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "final_result"
    new_question = turn + [{"role": "user", "content": "And the weather in Rome?"}]
    asked = await complete(messages=new_question, tools=[WEATHER, final], tool_choice="required")
    assert asked["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_a_message_naming_several_tools_gets_a_call_of_each_in_parallel() -> None:
    """A message that names two or more tools by name gets a call of each, in the order it names them, as
    a model makes parallel calls: the test model made one call only, so an agent's parallel tool calls (the
    SDKs' ``tool_calls[1]``, a stream's second ``index``, the Agents SDK running both) were never exercised
    on a local network. ``parallel_tool_calls: false`` keeps the one call of the usual rule."""
    clock = {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string"}}, "required": ["city"]}}}
    msgs = [{"role": "user", "content": 'Call get_time and get_weather for city "Oslo"'}]
    both = await complete(messages=msgs, tools=[WEATHER, clock])
    calls = both["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Oslo", "Oslo"]
    assert both["choices"][0]["finish_reason"] == "tool_calls" and len({c["id"] for c in calls}) == 2
    chunks = await stream(messages=msgs, tools=[WEATHER, clock], stream_options={"include_usage": True})
    deltas = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [d["index"] for d in deltas if "id" in d] == [0, 1]
    streamed = ["".join(d["function"]["arguments"] for d in deltas if d["index"] == i) for i in (0, 1)]
    assert streamed == [c["function"]["arguments"] for c in calls]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["completion_tokens"]
    one = await complete(messages=msgs, tools=[WEATHER, clock], parallel_tool_calls=False)
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1
    named = await complete(messages=msgs, tools=[WEATHER, clock],
                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert [c["function"]["name"] for c in named["choices"][0]["message"]["tool_calls"]] == ["get_weather"]


async def test_arguments_are_the_values_the_message_states_by_name() -> None:
    """A value stated by its parameter's name ("city "New York"", "days: 3", "the alerts is no", a list, a nested
    object's field) is the argument, as a model takes it; an optional parameter the message does not state is
    left out, and a required one gets the older rule's value. Before, every string was the whole message."""
    trip = {"type": "function", "function": {"name": "bookTrip", "description": "Book a trip", "parameters": {
        "type": "object", "properties": {
            "destinationCity": {"type": "string"}, "nights": {"type": "integer"}, "budget": {"type": "number"},
            "alerts": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "cabin": {"type": "string", "enum": ["economy", "business"]}, "note": {"type": "string"},
            "home": {"type": "object", "properties": {"country_code": {"type": "string"}}}},
        "required": ["destinationCity", "note"]}}}
    said = ('Book a trip: destination city "New York", nights: 3, budget=420.5, the alerts is no, '
            'tags "work", "jazz" and "food", cabin business; country code "PT".')
    out = await complete(messages=[{"role": "user", "content": said}], tools=[trip])
    arguments = json.loads(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"destinationCity": "New York", "nights": 3, "budget": 420.5, "alerts": False,
                         "tags": ["work", "jazz", "food"], "cabin": "business", "home": {"country_code": "PT"},
                         "note": said}
    partial = await complete(messages=[{"role": "user", "content": 'Trip to destinationCity="Oslo".'}], tools=[trip])
    assert json.loads(partial["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "destinationCity": "Oslo", "note": 'Trip to destinationCity="Oslo".'}


async def test_camel_case_names_count_and_function_words_do_not() -> None:
    """``getStockQuote`` shares "stock" with the message (its name was one word); "the", "to", "for" and the like
    are shared by nearly every description, and a long one outvoted the tool the message named."""
    stock = {"type": "function", "function": {"name": "getStockQuote", "parameters": {}}}
    wordy = {"type": "function", "function": {"name": "add_event", "description": "Add it to the calendar for me",
                                              "parameters": {}}}
    out = await complete(messages=[{"role": "user", "content": "What is the stock price for me to see?"}],
                         tools=[wordy, stock])
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "getStockQuote"
