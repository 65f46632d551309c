"""What a model server refuses of a request, learnt from its refusals (a 4xx whose words name the field), per
model: a field the answer does without is dropped, a field the model takes under another name is renamed.

The request is then sent again at once, and the field is never sent to that model again. Learnt per model:
one upstream may serve models that differ (OpenAI's reasoning models refuse what its other models take).
Only what an answer does without is ever dropped: without ``tools``, ``response_format`` or ``logprobs`` the
answer would not be what was asked, and their refusal stays the caller's.
"""

from __future__ import annotations

import re
from typing import Any

from loguru import logger

from shared.jsonutil import dumpb, loads
from shared.logging import printable

# Dropped when a refusal names them. The sampling extras that vLLM, llama.cpp and Ollama honour and hosted
# APIs (OpenAI's own) refuse; ``seed``, which the API and the validator put on every request and strict APIs
# refuse (Mistral's is ``random_seed``: 422 extra_forbidden), so such a miner failed every request;
# ``stream_options`` (Azure OpenAI before 2024-09-01-preview, and servers older than it: the API estimates
# the usage that does not come) and ``parallel_tool_calls`` (a hint that SDKs send by default, which older
# servers and OpenAI's reasoning models refuse).
OPTIONAL_FIELDS = ("top_k", "min_p", "repetition_penalty", "top_a", "seed", "stream_options",
                   "parallel_tool_calls")
# Dropped only when the refusal says the model takes nothing but its default. OpenAI's reasoning models:
# "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is
# supported." (any other refusal naming them is the caller's value refused, and must not strip every later
# request of its sampling).
DEFAULT_ONLY_FIELDS = ("temperature", "top_p")
DEFAULT_ONLY = re.compile(r"\bonly the default\b", re.IGNORECASE)
# Renamed when the refusal says to. OpenAI's reasoning models: "Unsupported parameter: 'max_tokens' is not
# supported with this model. Use 'max_completion_tokens' instead." (the API hands miners ``max_tokens``).
RENAMES = {"max_tokens": "max_completion_tokens"}
# The models whose refusals are kept, at most (the least recently learnt forgotten first: asked again, a model's
# server refuses again, and it is learnt again). A miner learns only for the models it advertises (a request for
# any other is its 404 before its model server is asked); the validator's reference model is asked under the
# model each organic job names, and any miner can advertise, and any caller ask for, endless names.
MAX_MODELS = 64


def names(message: str, field: str) -> bool:
    """Whether a refusal's words name ``field`` (as a word: ``max_tokens`` is not in ``max_completion_tokens``)."""
    return re.search(rf"\b{field}\b", message) is not None


class FieldRefusals:
    """The fields each model refused, and the ones it takes under another name."""

    def __init__(self) -> None:
        self._dropped: dict[str, set[str]] = {}
        self._renamed: dict[str, dict[str, str]] = {}

    def __len__(self) -> int:
        """How many models' refusals are kept."""
        return len(self._dropped)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as its model takes it: without the fields it refused, with the renamed ones renamed (``body``
        itself while no model refused a field, as nearly always: no copy a request)."""
        if not self._dropped and not self._renamed:
            return body
        model = str(body.get("model") or "")
        dropped, renamed = self._dropped.get(model, ()), self._renamed.get(model, {})
        out = {k: v for k, v in body.items() if k not in dropped}
        for old, new in renamed.items():
            if old in out:
                out.setdefault(new, out.pop(old))
        return out

    def learn(self, sent: dict[str, Any], message: str) -> bool:
        """Whether the refusal ``message`` of ``sent`` names a field of it to drop or rename (learnt for its
        model for good, with a WARNING): then ``apply(sent)`` is the request to send again."""
        drop = {f for f in OPTIONAL_FIELDS if f in sent and names(message, f)}
        if DEFAULT_ONLY.search(message):
            drop |= {f for f in DEFAULT_ONLY_FIELDS if f in sent and names(message, f)}
        rename = {old: new for old, new in RENAMES.items()
                  if old in sent and names(message, old) and re.search(rf"\buse '?{new}'? instead", message, re.I)}
        if not drop and not rename:
            return False
        model = str(sent.get("model") or "")
        if model not in self._dropped and len(self._dropped) >= MAX_MODELS:
            oldest = next(iter(self._dropped))
            del self._dropped[oldest], self._renamed[oldest]
        self._dropped.setdefault(model, set()).update(drop)
        self._renamed.setdefault(model, {}).update(rename)
        changes = sorted(drop) + [f"{old} (sent as {new})" for old, new in rename.items()]
        logger.warning("the upstream refuses {} for model {} ({}): not sent to it from now on", ", ".join(changes),
                       printable(model), printable(message[:200]))
        return True

    def resent(self, sent: bytes, message: str) -> bytes | None:
        """``learn`` for a request kept as the JSON it was sent as (a caller's media are held in it alone, not in a
        body beside it too): the JSON to send again, or None when the refusal names nothing to drop or rename. Read
        back only here, on a refusal."""
        body = loads(sent)
        return dumpb(self.apply(body)) if self.learn(body, message) else None
