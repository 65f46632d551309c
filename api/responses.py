"""``POST /v1/responses``: OpenAI's Responses API, served as a chat completion underneath.

The OpenAI SDK's ``client.responses``, the Agents SDK's default model and
other tools that speak only this API reach the miners through the same
pipeline as ``/v1/chat/completions``: one key check, miner selection, the race,
the scoring outbox and usage. Only the request (``responses_translate``) and
the answer's shape (``responses_render``) differ.
"""

from __future__ import annotations

import time

from aiohttp import web

from api.access_log import access_logged, request_id
from api.auth import authenticate
from api.chat import answer, plan
from api.completion import logprob_tokens, mid_stream_failure, response_usage
from api.context import CTX
from api.race import MinerRun, Race
from api.responses_render import ResponseStream, complete_output, finished, new_id, skeleton
from api.responses_translate import chat_body, search_tool
from api.responses_wire import ResponsesRequest
from api.route_hints import require
from api.web_retrieval import Found
from api.web_search import SOURCES, citations, search_call_item, search_into
from shared.errors import ApiError
from shared.http import json_response, parse_model, read_json
from shared.protocol import ChatCompletionRequest

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@access_logged("responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat", usage=ctx.usage)
    sent = await read_json(request)
    require(sent, "input")
    wanted: ResponsesRequest = parse_model(ResponsesRequest, sent)
    body = chat_body(wanted)
    req: ChatCompletionRequest = parse_model(ChatCompletionRequest, body)
    found = None
    planned = await plan(request, key, req)  # a request refused anyway spends no web search
    tool = search_tool(wanted)
    if tool is not None:
        body, found = await search_into(ctx, body, tool.search_context_size,
                                        request_id=request_id(request))
        req = parse_model(ChatCompletionRequest, body)
    return await answer(request, key, req, body, ResponsesFormat(wanted, found), started=started, planned=planned)


@access_logged("responses")
async def stored_response(request: web.Request) -> web.StreamResponse:
    """``GET`` / ``DELETE /v1/responses/{id}``: nothing is stored, so no id is known; the 404 says why."""
    await authenticate(request, request.app[CTX].store, scope="chat")
    raise ApiError(404, f"No response '{request.match_info['response_id'][:64]}' here: this gateway stores no "
                        "responses. Each is returned once, to the request that made it.", code="response_not_found",
                   param="response_id")


class ResponsesFormat:
    """The winner as a ``response`` object, or as the Responses API's stream of events."""

    kind = "responses"

    def __init__(self, wanted: ResponsesRequest, found: Found | None = None) -> None:
        self.wanted = wanted
        self.found = found  # the web search made for this answer, if any

    def _base(self, req: ChatCompletionRequest, run: MinerRun) -> dict:
        return skeleton(self.wanted, response_id=new_id("resp"), model=run.model or req.model or "unknown")

    def _search_item(self) -> dict | None:
        if self.found is None:
            return None
        return search_call_item(self.found, include_sources=SOURCES in (self.wanted.include or []))

    def _annotate(self, text: str) -> list[dict]:
        return citations(text, self.found) if self.found is not None else []

    def complete(self, req: ChatCompletionRequest, run: MinerRun, headers: dict[str, str]) -> web.Response:
        output = complete_output(run.text, run.merged_tool_calls(), logprob_tokens(run.logprobs), "".join(run.refusal),
                                 "".join(run.reasoning))
        for item in output:
            if item["type"] == "message" and item["content"][0]["type"] == "output_text":
                item["content"][0]["annotations"] = self._annotate(item["content"][0]["text"])
        searched = self._search_item()
        obj = finished(self._base(req, run), ([searched] if searched else []) + output,
                       finish_reason=run.finish_reason, usage=response_usage(req, run))
        return json_response(obj, headers=headers)

    def _start(self, events: ResponseStream) -> bytes:
        searched = self._search_item()
        return events.start() + (events.searched(searched) if searched else b"")

    async def stream(self, request: web.Request, req: ChatCompletionRequest, race: Race, run: MinerRun,
                     headers: dict[str, str]) -> web.StreamResponse:
        events = ResponseStream(self._base(req, run), annotate=self._annotate)
        if run.done:  # the whole answer is in: one body, one write
            body = self._start(events) + b"".join(events.feed(e) for e in run.events) + _end(events, req, run)
            return web.Response(body=body, headers={**headers, **SSE_HEADERS})
        response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
        await response.prepare(request)
        await response.write(self._start(events))
        async for batch in race.follow_batches(run):
            await response.write(b"".join(events.feed(e) for e in batch))
        await response.write_eof(_end(events, req, run))
        return response


def _end(events: ResponseStream, req: ChatCompletionRequest, run: MinerRun) -> bytes:
    return events.finish(finish_reason=run.finish_reason, usage=response_usage(req, run),
                         error=mid_stream_failure(run))
