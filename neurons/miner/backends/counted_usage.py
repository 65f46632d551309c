"""A relayed answer's ``usage`` with the counts OpenAI always gives: prompt, completion and total tokens.

A model server's own count is relayed as it is, but not a missing one, nor a 0 for a side that has text:
Ollama answered ``prompt_tokens: 0`` for a prompt it had cached (ollama/ollama#5370), servers leave ``usage``
out, or send only ``completion_tokens``. The API charges a key's daily token limit by a miner's count, so a 0 was
a request charged nothing. Such a count is estimated as the API estimates one (``shared.protocol.estimated_counts``:
~4 characters a token), ``"estimated": true`` beside it. The bytes are parsed only when their usage may need it
(``counted``): an answer with two counts above 0 goes on untouched. A stream is relayed unparsed: its usage's
``prompt_tokens`` of 0 is estimated in place (``prompt_counted``); a stream's usage left out is the API's to estimate,
from the text it reads anyway.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.jsonutil import dumpb
from shared.protocol import content_text, estimate_tokens, estimated_counts, messages_text, token_count

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# a count above 0 (``"prompt_tokens_details"`` is not ``"prompt_tokens"``: the quote follows the name)
COUNTED = (re.compile(rb'"prompt_tokens"\s*:\s*[1-9]'), re.compile(rb'"completion_tokens"\s*:\s*[1-9]'))
SIDES = ("prompt_tokens", "completion_tokens")
# a usage object in a stream's bytes (its details groups one level down), its prompt count 0, and its total
STREAMED_USAGE = re.compile(rb'"usage"\s*:\s*\{(?:[^{}]|\{[^{}]*\})*\}')
ZERO_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*0(?=\s*[,}])')
TOTAL = re.compile(rb'("total_tokens"\s*:\s*)(\d+)')
THINKING = ("reasoning_content", "reasoning")  # vLLM's and llama.cpp's, Ollama's and OpenRouter's


def counted(raw: bytes, body: dict[str, Any]) -> bytes:
    """``raw`` (a JSON completion answering ``body``) with its usage's counts that are missing, or 0 for text that
    is there, estimated; ``raw`` itself when none is, or when it is no completion (the API judges that)."""
    at = raw.rfind(b'"usage"')
    if at >= 0 and USAGE_OBJECT.match(raw, at) and all(count.search(raw, at) for count in COUNTED):
        return raw  # the usual answer: a count of each side
    try:
        answer = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return raw
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    estimate = estimated_counts(prompt_of(body), "".join(map(answer_text, answer["choices"])))
    missing = [side for side in SIDES if not token_count(usage.get(side)) and estimate[side]]
    if not missing and answer.get("usage") is usage:
        return raw  # its 0s are of sides with no text
    counts = {side: token_count(usage.get(side)) or 0 for side in SIDES} | {side: estimate[side] for side in missing}
    answer["usage"] = usage | counts | {"total_tokens": sum(counts.values()), "estimated": True}
    return dumpb(answer)


def answer_text(choice: Any) -> str:
    """What a choice's model wrote, as the API's estimate counts it: its thinking, text, refusal, and its tool calls'
    names and arguments."""
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return ""
    parts = [message.get(name) for name in THINKING]
    parts += [content_text(message.get("content")) if isinstance(message.get("content"), list)
              else message.get("content"), message.get("refusal")]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            parts += [function.get("name"), arguments if isinstance(arguments, str) else json.dumps(arguments)]
    return "".join(part for part in parts if isinstance(part, str))


def prompt_counted(piece: bytes, body: dict[str, Any]) -> bytes:
    """A piece of a stream answering ``body`` with each usage's ``prompt_tokens`` of 0 estimated (its total with it,
    ``"estimated": true`` beside it); ``piece`` itself when none is 0, as in nearly every piece."""
    if b'"usage"' not in piece or ZERO_PROMPT.search(piece) is None:
        return piece
    prompt = estimate_tokens(prompt_of(body))
    if not prompt:
        return piece

    def estimated(usage: re.Match[bytes]) -> bytes:
        found = usage[0]
        if ZERO_PROMPT.search(found) is None:
            return found
        found = TOTAL.sub(lambda total: total[1] + b"%d" % (int(total[2]) + prompt),
                          ZERO_PROMPT.sub(b'"prompt_tokens":%d' % prompt, found))
        return found if b'"estimated"' in found else found[:-1] + b',"estimated":true}'

    return STREAMED_USAGE.sub(estimated, piece)


def prompt_of(body: dict[str, Any]) -> str:
    """The text of ``body``'s messages, as the API's estimate reads them."""
    return messages_text(m for m in body.get("messages") or () if isinstance(m, dict))
