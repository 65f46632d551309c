"""Web retrieval: hostile miner output is parsed safely, results de-duplicated by URL."""

from __future__ import annotations

import json

from api.web_retrieval import merge_results, parse_results
from shared.urls import normalise_url


def test_normalise_url() -> None:
    assert normalise_url("HTTPS://Example.COM:443/a/#frag") == "https://example.com/a"
    assert normalise_url("http://example.com") == "http://example.com/"
    assert normalise_url("http://example.com:8080/x?q=1") == "http://example.com:8080/x?q=1"
    assert normalise_url("javascript:alert(1)") is None
    assert normalise_url("ftp://example.com/") is None
    assert normalise_url("not a url") is None
    assert normalise_url("https://x.example/%7efoo") == normalise_url("https://x.example/~foo")


def test_an_encoded_question_mark_in_a_path_is_another_page_than_a_query() -> None:
    """``/a%3Fb`` is the page "a?b"; ``/a?b`` is page ``a`` with a query: the path was decoded, the two
    became one key, and the second page was dropped from the merged results as a duplicate."""
    assert normalise_url("https://x.example/a%3Fb") != normalise_url("https://x.example/a?b")
    assert normalise_url("https://x.example/a%2Fb") != normalise_url("https://x.example/a/b")
    a = parse_results(json.dumps([{"url": "https://x.example/wiki/What%3F", "content": "the page What?"}]))
    b = parse_results(json.dumps([{"url": "https://x.example/wiki/What?", "content": "the page What"}]))
    assert [r.content for r in merge_results([a, b], 10)] == ["the page What?", "the page What"]


def test_hostile_outputs_give_only_well_formed_items() -> None:
    good = {"url": "https://a.example/x", "content": "text", "relevant": "yes"}
    hostile = [
        "", "null", "42", "{", '"a string"', json.dumps({"results": "nope"}),
        "[" * 5000 + "]" * 5000,
    ]
    for text in hostile:
        assert parse_results(text) == []
    mixed = json.dumps([good, 1, None, "x", {"url": 5, "content": "c"}, {"url": "https://b.example"},
                        {"url": "file:///etc/passwd", "content": "root"}, {"url": "https://c.example", "content": "  "},
                        {"url": "https://d.example", "content": "ok", "relevant": ["not", "str"]}])
    assert [r.url for r in parse_results(mixed)] == ["https://a.example/x"]
    fenced = "```json\n" + json.dumps([good]) + "\n```"
    assert [r.url for r in parse_results(fenced)] == ["https://a.example/x"]
    wrapped = json.dumps({"results": [good]})
    assert len(parse_results(wrapped)) == 1


def test_merge_dedups_by_normalised_url_round_robin() -> None:
    a = parse_results(json.dumps([{"url": "https://x.example/1", "content": "a1"},
                                  {"url": "https://x.example/2", "content": "a2"}]))
    b = parse_results(json.dumps([{"url": "HTTPS://X.example/1/", "content": "b1"},
                                  {"url": "https://x.example/3", "content": "b3"}]))
    merged = merge_results([a, b], 10)
    assert [r.content for r in merged] == ["a1", "a2", "b3"]
    assert len(merge_results([a, b], 2)) == 2
