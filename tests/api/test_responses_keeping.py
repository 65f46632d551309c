"""How a response is made ready to store (``api.responses_state.Keeping``): its object, most of what it stores,
is JSON-encoded once per stored response (it was twice: once for the size bound, once for the part written)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.responses_state import History, Keeping
from shared.store.base import KeyRecord
from shared.store.responses import EMPTY, list_size


class CountedObject(dict):
    """A response object that counts how often it is encoded (``json`` reads a dict subclass through ``items``)."""

    encoded = 0

    def items(self) -> Any:  # type: ignore[override]
        type(self).encoded += 1
        return super().items()


@pytest.mark.parametrize("prev", [None, "resp_0"])
def test_an_answers_object_is_encoded_once_per_stored_response(prev: str | None) -> None:
    history = [{"id": "msg_0", "type": "message", "role": "user", "content": "Hi"}]
    added = [{"id": "msg_1", "type": "message", "role": "user", "content": "Again"}]
    key = KeyRecord(id="key-a", key_hash="", prefix="", rate_limit=1)
    keeping = Keeping(key, 60.0, History(history, prev, list_size(history) if prev else EMPTY), added)
    CountedObject.encoded = 0
    final = CountedObject({"id": "resp_1", "object": "response", "output": [{"id": "msg_2", "text": "Hello"}]})
    assert keeping.seal(final) is final and keeping.data is not None
    assert CountedObject.encoded == 1
    stored = json.loads(keeping.data)
    assert (stored["response"], stored.get("prev")) == (dict(final), prev)
    assert stored["items"] == (added if prev else history + added)
