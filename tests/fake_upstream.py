"""A faithful fake of an OpenAI-compatible server (the edge of the machine), served over HTTP.

It records every request body it receives, so tests can check what a miner forwarded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

MODEL = "fake/llm-1"
REASONER = "fake/o-1"  # the "openai-reasoning-model" quirk's model
CONTEXT_TOKENS = 4096
# How real servers refuse a streamed request too long for the model after answering it 200: the stream
# opens with an error event. llama.cpp until September 2025 (ggml-org/llama.cpp#14566, an ``error:``
# field, then ``[DONE]``), until October 2025 (#16109: ``data: {"error": ...}``; #16486 made it a 400),
# TGI (``generate_stream_internal`` yields the validation error in the stream, ``data:`` without a space).
CONTEXT_ERROR = "the request exceeds the available context size. try increasing the context size or enable context shift"
STREAM_REFUSALS = {
    "llama.cpp-error-field": b'error: {"code":400,"message":"%s","type":"invalid_request_error"}\n\ndata: [DONE]\n\n'
                             % CONTEXT_ERROR.encode(),
    "llama.cpp-data-error": b'data: {"error":{"code":400,"message":"%s","type":"exceed_context_size_error"}}\n\n'
                            b'data: [DONE]\n\n' % CONTEXT_ERROR.encode(),
    "tgi": b'data:{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 9 '
           b'`inputs` tokens and 10000 `max_new_tokens`","error_type":"validation"}\n\ndata:[DONE]\n\n',
}


# How real servers frame a stream, beside OpenAI's ``data: {...}\n\n`` ... ``data: [DONE]\n\n``:
# sse-starlette (llama-cpp-python) ends lines with CRLF and sends ``: ping`` comments; TGI's axum writes
# ``data:`` without a space; llama.cpp opens with a role-only delta whose content is null, puts the
# finish_reason on the last content chunk and ends with a ``choices: []`` chunk carrying usage and
# ``timings``; some servers end without ``[DONE]``.
STREAM_STYLES = ("openai", "sse-starlette", "tgi", "llama.cpp", "no-done")

# Other documented ways real servers differ, each a ``quirks`` name (several may be combined):
QUIRKS = {
    # vLLM with ``continuous_usage_stats``, and several hosted APIs: ``usage`` on every chunk
    "usage-every-chunk": "usage on every streamed chunk",
    # OpenAI, vLLM, SGLang, Ollama: a final ``choices: []`` chunk with usage, only when include_usage asks
    "include-usage": "a usage chunk when stream_options.include_usage is true",
    # sse-starlette-based servers name every event (``event: message``, as the SSE spec allows)
    "event-lines": "an event: line before each data: line",
    # vLLM (``reasoning_content``, ``reasoning`` since v0.10), Ollama and OpenRouter (``reasoning``),
    # llama.cpp (``reasoning_content``): the model's thinking first, in its own delta field
    "reasoning_content": "thinking deltas in reasoning_content before the content",
    "reasoning": "thinking deltas in reasoning before the content",
    # OpenRouter: an error met once the request was under way is answered HTTP 200, the body the error
    # object, its ``code`` the status it stands for
    "error-200": "a too-long request refused with HTTP 200 and an error body (code 400)",
    # llama.cpp and vLLM: the tool call's id and name on its first delta, the arguments in many pieces
    "tool-args-split": "a tool call's arguments over many chunks, the id only on the first",
    # Ollama and LM Studio: the whole call in one chunk, with its finish_reason
    "tool-call-whole": "the whole tool call and finish_reason in one chunk",
    # a server still warming up: the stream's headers at once, its first token a while later
    "slow-first-token": "0.3 s of keep-alive comments before the first token",
    # servers with no model listing (Cloudflare Workers AI's OpenAI endpoint, some proxies): 404
    "no-models": "GET /v1/models is a 404",
    # Mistral's API takes ``random_seed``, not ``seed``, and refuses unknown fields with pydantic's 422
    # (the field named only in the error's ``loc``, its message an object, not text)
    "mistral-422": "seed refused with a 422 extra_forbidden detail",
    # OpenAI's reasoning models (o1, o3, gpt-5) beside its others: max_tokens refused for
    # max_completion_tokens, a temperature or top_p other than 1 refused, each in OpenAI's words
    "openai-reasoning-model": f"{REASONER} listed too, refusing what OpenAI's reasoning models refuse",
    # Ollama's OpenAI endpoint for a prompt it had cached (ollama/ollama#5370): prompt_tokens 0
    "cached-prompt-zero": "usage's prompt_tokens 0, streamed or not",
    # servers that count nothing (some proxies and small servers): an answer not streamed has no usage
    "no-usage": "no usage in an answer not streamed",
}
THOUGHT = "The user wants an echo."


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a request's messages: one a word of their text."""
    def words(content: Any) -> int:
        if isinstance(content, str):
            return len(content.split())
        return sum(words(part.get("text")) for part in content or [] if isinstance(part, dict))

    return sum(words(m.get("content")) for m in body["messages"])


def reasoner_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """What OpenAI's reasoning models refuse of ``body``, in its words (the first thing refused), or None."""
    if "max_tokens" in body:
        return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.", "type": "invalid_request_error",
                "param": "max_tokens", "code": "unsupported_parameter"}
    for name in ("temperature", "top_p"):
        if body.get(name) not in (None, 1):
            return {"message": f"Unsupported value: '{name}' does not support {body[name]} with this model. Only "
                               "the default (1) value is supported.", "type": "invalid_request_error",
                    "param": name, "code": "unsupported_value"}
    return None


def create_fake_upstream(received: list[dict[str, Any]], *, strict: bool = True,
                         refuses: frozenset[str] = frozenset(), models: list[str] | None = None,
                         stream_refusal: str | None = None, stream_style: str = "openai",
                         object_arguments: bool = False, context_tokens: int | None = None,
                         quirks: frozenset[str] = frozenset()) -> web.Application:
    """``refuses``: fields answered with a 400, as OpenAI's hosted API answers ``top_k``.

    ``stream_refusal``: a key of ``STREAM_REFUSALS``, how a streamed request with too many tokens is
    refused (after a 200); None: with a 400, as vLLM and OpenAI refuse it. ``stream_style``: one of
    ``STREAM_STYLES``, how a stream is framed. ``object_arguments``: a tool call's arguments, not
    streamed, are the JSON object itself, as TGI answers them (text-generation-inference#2136).

    ``context_tokens``: a context window that counts the messages too (``prompt_tokens``), refused in vLLM's
    words and shape when passed (by default only ``max_tokens`` over ``CONTEXT_TOKENS`` is).

    ``models``: what ``/models`` lists, read at each call (a test may add to it: a model pulled later);
    ``[MODEL]`` by default. An empty list is ``"data": null``, as Ollama's Go encoder sends its nil slice
    when no model is pulled yet.

    ``quirks``: keys of ``QUIRKS``, the other ways a real server differs."""
    unknown = quirks - QUIRKS.keys()
    if unknown:
        raise ValueError(f"unknown quirks {sorted(unknown)}")
    listed = ([MODEL, REASONER] if "openai-reasoning-model" in quirks else [MODEL]) if models is None else models

    async def list_models(_request: web.Request) -> web.Response:
        if "no-models" in quirks:
            raise web.HTTPNotFound()
        data = [{"id": m, "object": "model", "created": 1, "owned_by": "library"} for m in listed] or None
        return web.json_response({"object": "list", "data": data})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        received.append(body)
        if strict and set(body) & {"task", "sampling_parameters", "uids", "mixture", "timeout"}:
            return web.json_response({"error": {"message": "unknown parameter", "type": "invalid_request_error"}},
                                     status=400)
        if "openai-reasoning-model" in quirks and body.get("model") == REASONER and (refusal := reasoner_refusal(body)):
            return web.json_response({"error": refusal}, status=400)
        if "mistral-422" in quirks and "seed" in body:
            return web.json_response({"object": "error", "message": {"detail": [{
                "type": "extra_forbidden", "loc": ["body", "seed"], "msg": "Extra inputs are not permitted",
                "input": body["seed"]}]}, "type": "invalid_request_message_error", "param": None, "code": None},
                status=422)
        for name in sorted(refuses & set(body)):  # OpenAI's own words
            return web.json_response({"error": {"message": f"Unrecognized request argument supplied: {name}",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        if (body.get("max_tokens") or 0) > CONTEXT_TOKENS and body.get("stream") and stream_refusal:
            return web.Response(body=STREAM_REFUSALS[stream_refusal], content_type="text/event-stream")
        too_long = (f"This model's maximum context length is {CONTEXT_TOKENS} tokens; you asked for "
                    f"{body.get('max_tokens')}.")
        if (body.get("max_tokens") or 0) > CONTEXT_TOKENS and "error-200" in quirks:  # OpenRouter's shape
            return web.json_response({"error": {"code": 400, "message": too_long, "metadata": {}}})
        if (body.get("max_tokens") or 0) > CONTEXT_TOKENS:  # as vLLM and OpenAI refuse it
            return web.json_response({"error": {
                "message": too_long, "type": "invalid_request_error", "param": "max_tokens",
                "code": "context_length_exceeded"}}, status=400)
        asked = prompt_tokens(body) + (body.get("max_tokens") or 0)
        if context_tokens is not None and asked > context_tokens:  # vLLM's words, and its code (the status)
            return web.json_response({"error": {
                "message": f"This model's maximum context length is {context_tokens} tokens. However, you requested "
                           f"{asked} tokens ({prompt_tokens(body)} in the messages, {body.get('max_tokens') or 0} in "
                           "the completion). Please reduce the length of the messages or completion.",
                "type": "BadRequestError", "param": None, "code": 400}}, status=400)
        if body["messages"][-1].get("content") == "overloaded":
            return web.json_response({"error": {"message": "Server overloaded", "type": "server_error"}},
                                     status=503)
        text = "echo: " + str(body["messages"][-1].get("content"))
        if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            text = json.dumps({"echo": text})  # JSON mode, as model servers honour it
        tool_calls = None
        if body.get("tools"):
            fn = body["tools"][0]["function"]["name"]
            tool_calls = [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": fn, "arguments": '{"q": "x"}'}}]
        usage = {"prompt_tokens": 0 if "cached-prompt-zero" in quirks else 3, "completion_tokens": 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
            for thinking in {"reasoning_content", "reasoning"} & quirks:
                message[thinking] = THOUGHT
            if tool_calls:
                message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in tool_calls]
                if object_arguments:
                    message["tool_calls"] = [{**c, "function": {"description": None, "name": c["function"]["name"],
                                                                "arguments": json.loads(c["function"]["arguments"])}}
                                             for c in message["tool_calls"]]
            return web.json_response({
                "id": "up-1", "object": "chat.completion", "created": 1, "model": body.get("model"),
                "system_fingerprint": "fp_fake",  # as OpenAI's answers carry one
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if tool_calls else "stop"}],
                **({} if "no-usage" in quirks else {"usage": usage}),
            })
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        field, end = {"tgi": ("data:", "\n\n"), "sse-starlette": ("data: ", "\r\n\r\n")}.get(stream_style,
                                                                                             ("data: ", "\n\n"))

        event = "event: message\n" if "event-lines" in quirks else ""

        async def send(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> None:
            if stream_style == "sse-starlette":
                await resp.write(b": ping - 2025-01-01 00:00:00.000000+00:00\r\n\r\n")
            if "usage-every-chunk" in quirks:
                extra.setdefault("usage", usage)
            chunk = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                     "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
                     **extra}
            await resp.write(f"{event}{field}{json.dumps(chunk)}{end}".encode())

        if "slow-first-token" in quirks:
            for _ in range(3):
                await resp.write(b": keep-alive\n\n")
                await asyncio.sleep(0.1)
        for thinking in sorted({"reasoning_content", "reasoning"} & quirks):
            await send({"role": "assistant", "content": None, thinking: ""})
            for word in THOUGHT.split(" "):
                await send({thinking: word + " "})
        if tool_calls and "tool-args-split" in quirks:
            call = tool_calls[0]
            await send({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}]})
            for piece in call["function"]["arguments"]:  # a character a chunk
                await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            await send({}, "tool_calls")
        elif tool_calls and "tool-call-whole" in quirks:
            await send({"role": "assistant", "content": "", "tool_calls": tool_calls}, "tool_calls")
        elif tool_calls:
            await send({"role": "assistant", "tool_calls": tool_calls})
            await send({}, "tool_calls")
        elif stream_style == "llama.cpp":
            await send({"role": "assistant", "content": None})
            words = text.split(" ")
            for i, word in enumerate(words):
                await send({"content": word + " "}, "stop" if i == len(words) - 1 else None)
            await send(None, usage=usage, timings={"prompt_n": 3, "predicted_n": 4, "predicted_per_second": 50.0})
        else:
            for word in text.split(" "):
                await send({"content": word + " "})
            await send({}, "stop")
        if "include-usage" in quirks and (body.get("stream_options") or {}).get("include_usage"):
            await send(None, usage=usage)
        if stream_style != "no-done":
            await resp.write(f"{field}[DONE]{end}".encode())
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat)
    return app
