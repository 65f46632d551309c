"""Log probabilities for the deterministic model, so a client's ``logprobs`` code can run locally.

The model has no distribution to sample from, so the numbers are made up, but
they have the shape a model server sends (``{"content": [{"token", "logprob",
"bytes", "top_logprobs"}]}``), each token is its own most likely choice, and the
same request gets the same numbers whether it streams or not.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

TOKEN = re.compile(r"\s*\S+|\s+")  # a word with the spaces before it (trailing spaces on their own)


def wants_logprobs(body: dict[str, Any]) -> bool:
    return body.get("logprobs") is True


class Logprobs:
    """Draws each token's numbers in order: feed the answer whole, or piece by piece as it streams."""

    def __init__(self, body: dict[str, Any], fingerprint: bytes, alternatives: list[str]) -> None:
        self._rng = random.Random(hashlib.sha256(fingerprint + b"/logprobs").digest())
        top = body.get("top_logprobs")
        self._top = top if type(top) is int and 0 <= top <= 20 else 0
        self._alternatives = alternatives

    def of(self, text: str) -> dict[str, Any]:
        """The ``logprobs`` object for the next piece of the answer."""
        return {"content": [self._entry(token) for token in TOKEN.findall(text)]}

    def _entry(self, token: str) -> dict[str, Any]:
        logprob = -round(self._rng.uniform(0.0, 1.5), 4)
        entry: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
        top = [{"token": token, "logprob": logprob, "bytes": entry["bytes"]}] if self._top else []
        space = token[: len(token) - len(token.lstrip())]
        others = [w for w in self._alternatives if w != token.strip()]
        for word in self._rng.sample(others, k=min(len(others), max(0, self._top - 1))):
            logprob = round(logprob - self._rng.uniform(0.5, 3.0), 4)
            alt = space + word
            top.append({"token": alt, "logprob": logprob, "bytes": list(alt.encode())})
        entry["top_logprobs"] = top
        return entry
