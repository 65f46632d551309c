"""A web search asked for in a chat request is a web retrieval: it needs the key's ``web_retrieval`` scope.

A key given only ``chat`` was refused ``/web_retrieval`` but ran the same search through a chat completion's
``web_search_options`` or a Responses ``web_search`` tool, spending the retrieval miners and reading their results.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import api_with_miners, call

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Tell me about the city of Pelseldan"}]}
SEARCHED_CHAT = CHAT | {"web_search_options": {"search_context_size": "low"}}
SEARCHED_RESPONSE = {"model": "default", "input": "Tell me about the city of Pelseldan", "tools": [{"type": "web_search"}]}


async def test_a_key_without_the_web_retrieval_scope_cannot_search_through_chat(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
        chat_only, _ = await api.ctx.store.create_key(100, scopes=("chat",))
        for path, body, param in (("/v1/chat/completions", SEARCHED_CHAT, "web_search_options"),
                                  ("/v1/responses", SEARCHED_RESPONSE, "tools"),
                                  ("/v1/responses", SEARCHED_RESPONSE | {"background": True}, "tools")):
            status, answer = await call(api, "POST", path, body, key=chat_only)
            assert status == 403, (path, answer)
            assert answer["error"]["code"] == "insufficient_scope" and answer["error"]["param"] == param, answer
            assert "web_retrieval" in answer["error"]["message"]
        status, answer = await call(api, "GET", "/web_retrieval?search_query=Pelseldan", key=chat_only)
        assert status == 403 and answer["error"]["code"] == "insufficient_scope", answer
        # the same key's chat without a search, and a key with every scope searching, are served as before
        assert (await call(api, "POST", "/v1/chat/completions", CHAT, key=chat_only))[0] == 200
        assert (await call(api, "POST", "/v1/responses", SEARCHED_RESPONSE | {"tool_choice": "none"},
                           key=chat_only))[0] == 200
        assert (await call(api, "POST", "/v1/chat/completions", SEARCHED_CHAT))[0] == 200
        assert (await call(api, "POST", "/v1/responses", SEARCHED_RESPONSE))[0] == 200
