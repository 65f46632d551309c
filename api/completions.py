"""``POST /v1/completions``: OpenAI's legacy Completions API, answered by the chat miners.

LangChain's ``OpenAI`` LLM, lm-evaluation-harness's ``local-completions`` generation tasks, and
older tools speak only this route. Each prompt becomes a chat request of one user message and
runs through the same pipeline as ``n`` choices on chat completions (``api/choices.py``): one
key check, miners selected for every answer before any is asked, a race per answer, the scoring
outbox and usage. Prompt i's choice j is the answer at index i * n + j, with the seed + j, so a
prompt gets the same answers in a batch as alone. What a chat model cannot do is refused in
``api/completions_wire.py``.
"""

from __future__ import annotations

import random
import time
from typing import Any

from aiohttp import web

from api.access_log import access_logged
from api.auth import authenticate
from api.chat import bypassed_session
from api.choices import MAX_CHOICES, Ask, choice_seed, run_choices
from api.choices import plan as plan_choices
from api.completion import logprob_tokens
from api.completions_wire import CompletionRequest
from api.concurrency import LIMITER, holds_slot
from api.context import CTX
from api.mixture import is_mixture
from api.race import MinerRun
from api.route_hints import refuse_set, require
from api.sessions import session_header
from shared.errors import ApiError
from shared.http import json_response, parse_model, read_json
from shared.ids import random_hex
from shared.jsonutil import dumps, loads
from shared.miner_client import Event
from shared.protocol import ChatCompletionRequest, passed_on
from shared.sse import encode_event

# Fields a completion request passes on to its chat request as they are.
PASSED_ON = ("model", "temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
             "logit_bias", "user", "task", "uids", "inference_mode", "timeout", "sampling_parameters")
# Chat completions' fields that would change the answer, each with where it is served or what to send here: dropped,
# a caller got 16 tokens for max_completion_tokens 200, prose for a JSON schema, no call for its tools.
CHAT_FIELDS = {
    "messages": "send the conversation to /v1/chat/completions (a text completion answers its prompt)",
    "max_completion_tokens": "the token limit here is max_tokens",
    "top_logprobs": "logprobs is the number of top tokens here (0 to 5)",
    "response_format": "a text completion is plain text: ask for JSON on /v1/chat/completions",
    "tools": "a text completion calls no tools: offer them on /v1/chat/completions",
    "tool_choice": "a text completion calls no tools: offer them on /v1/chat/completions",
    "functions": "a text completion calls no tools: offer them on /v1/chat/completions",
    "function_call": "a text completion calls no tools: offer them on /v1/chat/completions",
    "web_search_options": "web search is served on /v1/chat/completions",
}
# A chat finish reason a text completion has no word for (a miner's tool call, which was not asked for).
FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


@access_logged("completions")
@holds_slot
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat", usage=ctx.usage, slots=request.app[LIMITER])
    sent = await read_json(request)
    require(sent, "prompt")
    wanted: CompletionRequest = parse_model(CompletionRequest, sent)
    if problem := wanted.unservable():
        raise ApiError(400, problem[1], param=problem[0], code="unsupported_parameter")
    bodies = [chat_body(wanted, prompt) for prompt in wanted.prompts]
    reqs: list[ChatCompletionRequest] = [parse_model(ChatCompletionRequest, b) for b in bodies]
    refuse_chat_only(sent, reqs[0], header_session=session_header(request))
    picks = plan_choices(ctx, key, reqs[0], count=len(reqs) * wanted.n,  # every refusal before any miner is asked
                         param="n" if wanted.n > 1 else "prompt")
    seed = wanted.seed if wanted.seed is not None else random.randrange(2**31 - MAX_CHOICES)
    asks = [Ask(req, req.miner_body(seed=choice_seed(seed, j), sent=body), picks[i * wanted.n + j], prompt=i)
            for i, (req, body) in enumerate(zip(reqs, bodies, strict=True)) for j in range(wanted.n)]
    # the key's session pins its chat completions, not these (raced, as chat's n > 1): said, not skipped in silence
    bypassed = await bypassed_session(request, key, reqs[0])
    headers = {"x-sn1-session-bypassed": bypassed.id} if bypassed else {}
    return await run_choices(request, key, asks, TextChoices(wanted), seed=seed, started=started, headers=headers)


def refuse_chat_only(sent: dict[str, Any], req: ChatCompletionRequest, *, header_session: str | None = None) -> None:
    """A mixture of miners, a session and the chat fields that would change the answer (``CHAT_FIELDS``) are chat
    completions' own: asked for here, they are a 400 naming the field, not dropped (the caller would get a plain
    race, or an answer it did not ask for, and never know)."""
    refuse_set(sent, CHAT_FIELDS,
               lambda name, instead: f"{name} is a chat completions field, not served on /v1/completions: {instead}.")
    if sent.get("session_id") is not None or header_session:
        name = "session_id" if sent.get("session_id") is not None else "x-session-id"
        raise ApiError(400, f"{name} is served on /v1/chat/completions only: send the prompt there as a user "
                       "message to use the session.", param=name, code="unsupported_parameter")
    if sent.get("mixture") or is_mixture(req):
        param = "inference_mode" if req.inference_mode and not sent.get("mixture") else "mixture"
        if req.sampling_parameters is not None and req.sampling_parameters.mixture:
            param = "sampling_parameters.mixture"
        raise ApiError(400, "A mixture of miners is served on /v1/chat/completions only (it synthesises one chat "
                       "answer from several).", param=param, code="unsupported_parameter")


def chat_body(r: CompletionRequest, prompt: str) -> dict[str, Any]:
    """The chat completion request (JSON) that answers ``prompt``: one user message, the same sampling."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": r.stream}
    if r.stream and r.stream_options is not None:
        body["stream_options"] = r.stream_options.model_dump(exclude_none=True)
    body.update(passed_on(r, PASSED_ON))
    if (limit := r.token_limit()) is not None:
        body["max_tokens"] = limit
    if r.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = r.logprobs
    return body


def said_tokens(parts: list[Any]) -> list[Any]:
    """The log probabilities of a run's (or a chunk's) text: its answer's tokens, then its refusal's."""
    return logprob_tokens(parts) + logprob_tokens(parts, "refusal")


class TextChoices:
    """The winners as ``text_completion`` choices: one object, or chunks of the same shape."""

    kind = "completions"
    input_param = "prompt"

    def __init__(self, wanted: CompletionRequest) -> None:
        self.wanted = wanted
        self.offsets: dict[int, int] = {}  # a streamed choice's text so far (its next token's text_offset)

    def new_id(self) -> str:
        return f"cmpl-{random_hex()}"

    def _echo(self, index: int) -> str:
        return self.wanted.prompts[index // self.wanted.n] if self.wanted.echo else ""

    def complete(self, winners: list[MinerRun], usage: dict[str, Any], headers: dict[str, str]) -> web.Response:
        # a refusal is the model's words too, and a text completion has no field of its own for it
        choices = [{"text": self._echo(i) + run.text + "".join(run.refusal), "index": i,
                    "logprobs": self._logprobs(said_tokens(run.logprobs), 0),
                    "finish_reason": FINISH.get(run.finish_reason or "stop", "stop")}
                   for i, run in enumerate(winners)]
        obj = self._object(self.new_id(), int(time.time()), self._model(winners[0]), choices, usage,
                           fingerprint=winners[0].fingerprint)  # as chat's n choices carry choice 0's
        return json_response(obj, headers=headers)

    def chunk(self, data: Event, index: int, cid: str, created: int) -> bytes:
        obj = loads(data) if isinstance(data, str) else dict(data)
        out = []
        for c in obj.get("choices") or []:  # a usage-only chunk has none: the request's usage comes last
            delta = c.get("delta") or {}
            text = (delta.get("content") or "") + (delta.get("refusal") or "")  # checked strings: race.absorb
            if index not in self.offsets:  # the choice's first chunk: the prompt first, when echoed
                text = self._echo(index) + text
            finish = c.get("finish_reason")
            tokens = said_tokens([c.get("logprobs")])
            if not (text or finish or tokens):
                continue
            out.append({"text": text, "index": index,
                        "logprobs": self._logprobs(tokens, self.offsets.get(index, 0)),
                        "finish_reason": FINISH.get(finish, "stop") if finish else None})
            self.offsets[index] = self.offsets.get(index, 0) + len(text)
        if not out:
            return b""
        return encode_event(dumps(self._object(cid, created, obj.get("model") or self.wanted.model or "unknown", out,
                                               fingerprint=obj.get("system_fingerprint"))))

    def usage_chunk(self, cid: str, created: int, model: str, usage: dict[str, Any]) -> bytes:
        return encode_event(dumps(self._object(cid, created, model, [], usage)))

    def tail(self, winners: list[MinerRun], cid: str, created: int) -> bytes:
        return b""

    def _model(self, run: MinerRun) -> str:
        return run.model or self.wanted.model or "unknown"

    @staticmethod
    def _object(cid: str, created: int, model: str, choices: list[dict[str, Any]],
                usage: dict[str, Any] | None = None, *, fingerprint: Any = None) -> dict[str, Any]:
        """A ``text_completion`` object or chunk, with the model server's ``system_fingerprint`` when it sent one
        (the backend configuration a ``seed`` reproduces on: OpenAI's Completions API gives it, as chat does)."""
        obj: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                               "choices": choices}
        if isinstance(fingerprint, str):
            obj["system_fingerprint"] = fingerprint
        if usage is not None:
            obj["usage"] = usage
        return obj

    def _logprobs(self, tokens: list[Any], offset: int) -> dict[str, Any] | None:
        """Chat's token log probabilities in the Completions API's shape (None: not asked, or none came)."""
        if self.wanted.logprobs is None or not tokens:
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            if not isinstance(t, dict) or not isinstance(t.get("token"), str):
                continue
            out["tokens"].append(t["token"])
            out["token_logprobs"].append(t.get("logprob"))
            top = {a["token"]: a.get("logprob") for a in t.get("top_logprobs") or []
                   if isinstance(a, dict) and isinstance(a.get("token"), str)}
            # OpenAI's always holds the sampled token ("up to logprobs+1 elements"): with logprobs 0, it alone
            top.setdefault(t["token"], t.get("logprob"))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(t["token"])
        return out
