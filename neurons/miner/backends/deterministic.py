"""A seeded test model that needs no weights, and answers every task correctly.

Same messages + seed + sampling parameters -> the same text, so a validator
running the same generator can reproduce (and exactly check) an honest answer.
Per task (the body's ``task``):

- ``InferenceTask``: word-salad from a fixed vocabulary, a pure function of
  the request; ``max_tokens`` bounds the number of words;
- ``QuestionAnsweringTask``: the context sentence that shares the most words
  with the question (extractive QA);
- ``ArithmeticTask``: the value of the expression in the prompt;
- ``WebRetrievalTask``: a JSON list of ``{url, content, relevant}`` from the
  local corpus search, at most ``target_results`` long.

Like a model server, it ends the answer before the first of the request's
``stop`` sequences (the sequence itself is not sent, and ``finish_reason`` is
``stop``), and with ``logprobs: true`` it sends made-up but stable log
probabilities in the usual shape (``logprobs.py``). A ``response_format`` of
``json_schema`` gets JSON that fits the schema (``schema_instance.py``),
``json_object`` JSON that fits the JSON schema its system message gives, as a model follows
the instructions Instructor's ``JSON`` mode and Pydantic AI's ``PromptedOutput`` write there,
else ``{"answer": ...}``.

With ``tools`` in the request it calls a tool instead (the rule is in
``tool_calls.py``); after a ``tool`` result it answers in text.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from neurons.miner.backends.logprobs import Logprobs, wants_logprobs
from neurons.miner.backends.schema_instance import instance
from neurons.miner.backends.tool_calls import planned_tool_calls, tool_call_completion, tool_call_stream
from neurons.miner.search import DEFAULT_RESULTS, MAX_RESULTS, CorpusSearch, SearchBackend, best_sentence
from shared import tasks
from shared.arithmetic import evaluate, find_expression
from shared.corpus import builtin_corpus
from shared.jsonutil import dumps
from shared.protocol import (
    chunk_object,
    completion_object,
    content_text,
    estimate_tokens,
    messages_text,
    new_completion_id,
    usage_chunk,
)

VOCABULARY = (
    "the a network miner validator answer token model subnet signal weight score stake block chain "
    "query result reason because therefore example value system request response stream fast slow "
    "honest useful clear simple data context question agent tool call function open source node "
    "light river stone cloud garden market bridge window paper music number letter city story"
).split()
DEFAULT_WORDS = 48
WORDS_PER_CHUNK = 4


def _arguments(calls: list[dict[str, Any]]) -> str:
    """The calls' arguments, the text their completion tokens are counted on."""
    return " ".join(call["function"]["arguments"] for call in calls)


def request_fingerprint(body: dict[str, Any]) -> bytes:
    """The inputs that determine the answer, canonically encoded."""
    messages = [(m.get("role"), content_text(m.get("content"))) for m in body.get("messages", [])]
    sp = body.get("sampling_parameters") or {}
    key = {
        "messages": messages,
        "seed": body.get("seed"),
        "temperature": body.get("temperature", sp.get("temperature")),
        "top_p": body.get("top_p", sp.get("top_p")),
        "top_k": sp.get("top_k"),
        "max_tokens": body.get("max_tokens"),
    }
    return json.dumps(key, sort_keys=True, separators=(",", ":")).encode()


def generate_text(body: dict[str, Any]) -> str:
    """The deterministic answer for a request (used by the miner and the validator alike)."""
    digest = hashlib.sha256(request_fingerprint(body)).digest()
    rng = random.Random(digest)
    max_tokens = body.get("max_tokens") or (body.get("sampling_parameters") or {}).get("max_new_tokens")
    n_words = min(DEFAULT_WORDS, int(max_tokens)) if max_tokens else DEFAULT_WORDS
    words = [rng.choice(VOCABULARY) for _ in range(max(1, n_words))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def prompt_text(body: dict[str, Any]) -> str:
    return messages_text(body.get("messages", []))


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return prompt_text(body)


def answer_question(prompt: str) -> str | None:
    """Extractive QA on a ``Context: ... Question: ...`` prompt; None when the prompt has neither."""
    ctx_at, q_at = prompt.rfind(tasks.CONTEXT_MARKER), prompt.rfind(tasks.QUESTION_MARKER)
    if ctx_at < 0 or q_at < ctx_at:
        return None
    context = prompt[ctx_at + len(tasks.CONTEXT_MARKER) : q_at].strip()
    asked = prompt[q_at + len(tasks.QUESTION_MARKER) :].strip()
    question = asked.splitlines()[0] if asked else ""  # "Question:" with nothing after it was an IndexError (a 500)
    if not context or not question:
        return None
    return best_sentence(context, question)


def answer_arithmetic(prompt: str) -> str | None:
    expression = find_expression(prompt)
    if expression is None:
        return None
    try:
        return str(evaluate(expression))
    except ValueError:
        return None


def stop_sequences(body: dict[str, Any]) -> list[str]:
    """The request's ``stop`` as a list (one string or up to four; empty ones stop nothing)."""
    stop = body.get("stop")
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    return [s for s in sequences if isinstance(s, str) and s]


def cut_at_stop(text: str, body: dict[str, Any]) -> str:
    """``text`` up to the earliest of the request's stop sequences."""
    found = [at for s in stop_sequences(body) if (at := text.find(s)) >= 0]
    return text[: min(found)] if found else text


def structured(text: str, prompt: str, response_format: Any, messages: Any = ()) -> str:
    """The answer in the form ``response_format`` asks for: JSON that fits a ``json_schema``
    (``schema_instance.py``, from the prompt's words); for ``json_object``, JSON that fits the schema
    the system messages give (libraries put it there, a real model follows it), else ``{"answer": text}``."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        return dumps(instance(spec.get("schema") if isinstance(spec, dict) else None, prompt))
    if kind == "json_object":
        schema = schema_in(instructions_text(messages))
        return dumps(instance(schema, prompt) if schema is not None else {"answer": text})
    return text


def instructions_text(messages: Any) -> str:
    """The system and developer messages: where libraries write the schema a JSON answer must fit."""
    return "\n".join(content_text(m.get("content")) for m in messages or ()
                     if isinstance(m, dict) and m.get("role") in ("system", "developer"))


def schema_in(text: str, *, tries: int = 32) -> dict[str, Any] | None:
    """The first JSON object in ``text`` that is an object's JSON schema (it has ``properties``), else
    None; at most ``tries`` candidate ``{`` are decoded, so a long prompt costs little."""
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at >= 0 and tries > 0:
        tries -= 1
        try:
            found, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        if isinstance(found, dict) and isinstance(found.get("properties"), dict):
            return found
        at = text.find("{", end)
    return None


def wanted_results(body: dict[str, Any]) -> int:
    """How many search results to return at most: the request's ``target_results`` (the API's
    ``n_results``, or the validator's 3, 5 or 8, up to ``MAX_RESULTS``), else ``DEFAULT_RESULTS``."""
    wanted = body.get("target_results")
    if type(wanted) is int and wanted >= 1:
        return min(wanted, MAX_RESULTS)
    return DEFAULT_RESULTS


class DeterministicBackend:
    name = "deterministic"

    def __init__(self, model: str = "sn1/deterministic", *, search: SearchBackend | None = None) -> None:
        self.model = model
        self.search = search or CorpusSearch(builtin_corpus())

    def models(self) -> list[str]:
        return [self.model]

    def tasks(self) -> list[str]:
        return list(tasks.ALL_TASKS)

    def answer_text(self, body: dict[str, Any]) -> str:
        """The answer for any task (what the validator checks against); the seeded text when a
        prompt does not parse. Cut before a stop sequence, it has fewer words than ``max_tokens``,
        so ``_finish_reason`` says ``stop``."""
        task = body.get("task") or tasks.INFERENCE
        prompt = last_user_text(body)
        answer: str | None = None
        if task == tasks.QUESTION_ANSWERING:
            answer = answer_question(prompt)
        elif task == tasks.ARITHMETIC:
            answer = answer_arithmetic(prompt)
        elif task == tasks.WEB_RETRIEVAL:
            answer = dumps(self.search.search(prompt.strip(), wanted_results(body)))
        text = answer if answer is not None else generate_text(body)
        shaped = structured(text, prompt, body.get("response_format"), body.get("messages"))
        return cut_at_stop(shaped, body)

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = estimate_tokens(prompt_text(body))
        completion = len(text.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _finish_reason(self, body: dict[str, Any], text: str) -> str:
        max_tokens = body.get("max_tokens")
        return "length" if max_tokens and len(text.split()) >= int(max_tokens) < DEFAULT_WORDS else "stop"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        calls = planned_tool_calls(body)  # tools given: see tool_calls.py for the documented rule
        if calls:
            return tool_call_completion(calls, model=self.model, usage=self._usage(body, _arguments(calls)))
        text = self.answer_text(body)
        logprobs = self._logprobs(body)
        return completion_object(
            completion_id=new_completion_id(),
            model=self.model,
            content=text,
            finish_reason=self._finish_reason(body, text),
            usage=self._usage(body, text),
            logprobs=logprobs.of(text) if logprobs else None,
        )

    def _logprobs(self, body: dict[str, Any]) -> Logprobs | None:
        """The answer's log probabilities, when the request asks for them."""
        return Logprobs(body, request_fingerprint(body), VOCABULARY) if wants_logprobs(body) else None

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        calls = planned_tool_calls(body)
        if calls:
            wants_usage = (body.get("stream_options") or {}).get("include_usage")
            usage = self._usage(body, _arguments(calls)) if wants_usage else None
            for data in tool_call_stream(calls, model=self.model, usage=usage):
                yield data
            return
        text = self.answer_text(body)
        cid = new_completion_id()
        words = text.split(" ")
        logprobs = self._logprobs(body)
        yield dumps(chunk_object(completion_id=cid, model=self.model, delta={"role": "assistant", "content": ""}))
        for i in range(0, len(words), WORDS_PER_CHUNK):
            piece = " ".join(words[i : i + WORDS_PER_CHUNK])
            if i:
                piece = " " + piece
            yield dumps(chunk_object(completion_id=cid, model=self.model, delta={"content": piece},
                                     logprobs=logprobs.of(piece) if logprobs else None))
        yield dumps(
            chunk_object(completion_id=cid, model=self.model, delta={}, finish_reason=self._finish_reason(body, text))
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            yield dumps(usage_chunk(completion_id=cid, model=self.model, usage=self._usage(body, text)))

    async def close(self) -> None:
        return None
