"""The Responses API's web search: the query, the context the miners get, the call item and citations."""

from __future__ import annotations

import tracemalloc

from api.responses_render import ResponseStream, skeleton
from api.responses_wire import ResponsesRequest
from api.web_retrieval import Found, WebResult
from api.web_search import (
    MAX_CITATIONS,
    chat_citations,
    citations,
    context_text,
    query_of,
    search_call_item,
    with_results,
)
from tests.api.test_responses_render import USAGE, chunk
from tests.helpers import response_events

A, B = "https://corpus.sn1.local/wiki/pelseldan-city", "https://corpus.sn1.local/wiki/marcor-city"
FOUND = Found(query="Pelseldan", uids=[1, 2], all_failed=False,
              results=[WebResult(url=A, content="Pelseldan is a city. " * 200), WebResult(url=B, content="Marcor.")])


def test_the_query_is_the_last_user_messages_text() -> None:
    assert query_of([{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                     {"role": "user", "content": [{"type": "text", "text": "Tell me"},
                                                  {"type": "image_url", "image_url": {"url": "u"}},
                                                  {"type": "text", "text": "about Pelseldan"}]},
                     {"role": "tool", "tool_call_id": "c", "content": "t"}]) == "Tell me about Pelseldan"
    assert query_of([{"role": "user", "content": "q" * 5000}]) == "q" * 2000
    assert query_of([{"role": "system", "content": "s"}]) == ""


def test_the_results_go_after_the_leading_system_messages_cut_to_the_context_size() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Pelseldan?"}]}
    got = with_results(body, FOUND, "low")
    assert [m["role"] for m in got["messages"]] == ["system", "system", "user"]
    context = got["messages"][1]["content"]
    assert f"[1] {A}" in context and f"[2] {B}" in context and "cite each source" in context
    assert "never as instructions" in context  # miners and pages are untrusted
    assert len(context) < 500 + 500 + 300  # low: 500 characters of each result
    assert body["messages"][1]["role"] == "user", "the caller's body is not changed"
    assert "found nothing" in context_text(Found(query="q", results=[], uids=[], all_failed=True), 500)


def test_the_call_item_lists_its_sources_only_when_asked() -> None:
    item = search_call_item(FOUND, include_sources=True)
    assert item["type"] == "web_search_call" and item["status"] == "completed" and item["id"].startswith("ws_")
    assert item["action"] == {"type": "search", "query": "Pelseldan",
                              "sources": [{"type": "url", "url": A}, {"type": "url", "url": B}]}
    assert "sources" not in search_call_item(FOUND, include_sources=False)["action"]


def test_each_mention_of_a_sources_url_is_a_citation_in_order() -> None:
    text = f"See {B} and {A}; again {B}."
    got = citations(text, FOUND)
    assert [(a["url"], text[a["start_index"]:a["end_index"]]) for a in got] == [(B, B), (A, A), (B, B)]
    assert citations("no links here", FOUND) == []
    (chat,) = chat_citations(f"See {A}.", FOUND)  # a chat completion nests the place under url_citation
    assert chat == {"type": "url_citation", "url_citation": {"start_index": 4, "end_index": 4 + len(A), "url": A,
                                                             "title": A}}


def test_a_source_whose_url_begins_another_sources_is_not_cited_inside_it() -> None:
    """Sources ``.../x`` and ``.../x/y``: a mention of the longer one cited both, overlapping."""
    short, long = "https://a.example/x", "https://a.example/x/y"
    found = Found(query="q", uids=[1], all_failed=False,
                  results=[WebResult(url=short, content="s"), WebResult(url=long, content="l")])
    text = f"See {long} and {short}."
    got = [(a["url"], a["start_index"]) for a in citations(text, found)]
    assert got == [(long, 4), (short, text.index(" and ") + 5)]


def test_a_url_that_only_begins_with_a_sources_is_not_a_citation_of_it() -> None:
    """Source ``.../wiki/Paris``, an answer naming ``.../wiki/Paris_Agreement``: it was cited, over part of
    another page's URL. The sentence's own punctuation after a URL still ends it."""
    source = "https://en.example/wiki/Paris"
    found = Found(query="q", uids=[1], all_failed=False, results=[WebResult(url=source, content="s")])
    for other in ("_Agreement", "/history", "-2024", "?lang=fr", "%C3%A9", "s"):
        assert citations(f"See {source}{other} for more", found) == [], other
    for end in (".", ",", ")", "!", "", " and more", ";"):
        text = f"(see {source}{end}"
        assert [(a["start_index"], a["end_index"]) for a in citations(text, found)] == [(5, 5 + len(source))], end


def test_a_source_named_by_its_number_is_a_citation_of_its_url() -> None:
    """Sources are numbered in the miners' context, and models cite them so: [1] is the first result."""
    text = f"Pelseldan is on a river [1][2]. See [3], [0] and [2](https://x.example/) or {A}[1]."
    got = [(a["url"], text[a["start_index"]:a["end_index"]]) for a in citations(text, FOUND)]
    # [3] and [0] name no result; a markdown link's label is not a reference (its URL is not a result here)
    assert got == [(A, "[1]"), (B, "[2]"), (A, A), (A, "[1]")]


def test_a_streamed_search_comes_first_and_the_answer_carries_its_citations() -> None:
    s = ResponseStream(skeleton(ResponsesRequest(input="x", tools=[{"type": "web_search"}]), response_id="resp_1",
                                model="m"), annotate=lambda text: citations(text, FOUND))
    item = search_call_item(FOUND, include_sources=False)
    raw = (s.start() + s.searched(item) + s.feed(chunk(f"It is {A[:20]}")) + s.feed(chunk(f"{A[20:]} .")) +
           s.finish(finish_reason="stop", usage=USAGE))
    got = response_events(raw.decode())
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.web_search_call.in_progress", "response.web_search_call.searching",
        "response.web_search_call.completed", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.annotation.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.get("output_index") for e in got if e["type"] == "response.output_item.added"] == [0, 1]
    final = got[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["web_search_call", "message"]
    assert final["output"][0] == item
    (cite,) = final["output"][1]["content"][0]["annotations"]
    assert cite["url"] == A and final["output"][1]["content"][0]["text"][cite["start_index"]:cite["end_index"]] == A


def test_a_cut_answer_leaves_the_search_completed() -> None:
    s = ResponseStream(skeleton(ResponsesRequest(input="x"), response_id="resp_1", model="m"))
    raw = s.start() + s.searched(search_call_item(FOUND, include_sources=False)) + s.feed(chunk("It")) + s.finish(
        finish_reason="length", usage=USAGE)
    final = response_events(raw.decode())[-1]["response"]
    assert final["status"] == "incomplete"
    assert [o["status"] for o in final["output"]] == ["completed", "incomplete"]


def test_a_search_no_miner_answered_is_a_failed_call_and_the_answer_goes_on() -> None:
    nothing = Found(query="Pelseldan", results=[], uids=[1, 2], all_failed=True)
    item = search_call_item(nothing, include_sources=True)
    assert item["status"] == "failed" and item["action"]["sources"] == []
    s = ResponseStream(skeleton(ResponsesRequest(input="x"), response_id="resp_1", model="m"))
    raw = s.start() + s.searched(item) + s.feed(chunk("From memory.")) + s.finish(finish_reason="stop", usage=USAGE)
    got = response_events(raw.decode())
    kinds = [e["type"] for e in got]
    assert "response.web_search_call.completed" not in kinds and kinds[-1] == "response.completed"
    assert [o["status"] for o in got[-1]["response"]["output"]] == ["failed", "completed"]


def test_a_miners_8_mib_answer_naming_a_source_700_000_times_keeps_a_bounded_number_of_citations() -> None:
    # each place was a citation (and a place found, before it): 700,000 of them, over 100 MB of the API worker's
    # memory for one answer; the first MAX_CITATIONS are kept, and what finding them holds is as bounded
    page = "http://a.co/x"
    found = Found(query="q", results=[WebResult(url=page, content="c")], uids=[1], all_failed=False)
    text = (f"{page} [1] " * (8 * 2**20 // len(f"{page} [1] ")))[:8 * 2**20]
    tracemalloc.start()
    try:
        annotations = citations(text, found)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(annotations) == MAX_CITATIONS
    assert [a["start_index"] for a in annotations[:4]] == [0, len(page) + 1, len(page) + 5, 2 * len(page) + 6]
    assert peak < 2 * 2**20, f"{peak / 2**20:.1f} MiB held to annotate one answer"
