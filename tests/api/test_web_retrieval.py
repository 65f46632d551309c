"""Web retrieval: hostile miner output is parsed safely, results de-duplicated by URL."""

from __future__ import annotations

import json

from api.web_retrieval import merge_results, normalise_url, parse_results


def test_normalise_url() -> None:
    assert normalise_url("HTTPS://Example.COM:443/a/#frag") == "https://example.com/a"
    assert normalise_url("http://example.com") == "http://example.com/"
    assert normalise_url("http://example.com:8080/x?q=1") == "http://example.com:8080/x?q=1"
    assert normalise_url("javascript:alert(1)") is None
    assert normalise_url("ftp://example.com/") is None
    assert normalise_url("not a url") is None


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
