"""The headers the miner sends its upstream and the validator its reference model (one helper for both)."""

from __future__ import annotations

from shared.openai_headers import openai_headers


def test_a_key_is_sent_as_a_bearer_token_and_no_key_sends_no_authorization() -> None:
    assert openai_headers("sk-1") == {"Content-Type": "application/json", "Accept": "application/json",
                                      "Authorization": "Bearer sk-1"}
    for none in (None, ""):  # an unset UPSTREAM_API_KEY / REFERENCE_LLM_API_KEY: no empty "Bearer " either
        assert openai_headers(none) == {"Content-Type": "application/json", "Accept": "application/json"}


def test_a_stream_accepts_server_sent_events() -> None:
    assert openai_headers("sk-1", accept="text/event-stream") == {
        "Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer sk-1"}
