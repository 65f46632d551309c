"""What a web search's answer costs the API to annotate: each place the answer names a source is a citation, and
a place was checked against every citation kept before it (and each ``[n]`` too), so an answer naming a source
some thousands of times (a miner's, or a model asked to repeat a URL) held the API worker's event loop for seconds
(128 KB: 5 s; a miner's 8 MiB answer: hours). And each place was a citation kept in the worker's memory: a miner's
8 MiB answer naming one URL 700,000 times, as many dicts, over 100 MB; the first ``MAX_CITATIONS`` are kept."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from api.web_search import MAX_CITATIONS
from tests.helpers import Script, api_with_miners, chunk, loop_gaps, sse

PAGE = "http://a.co"
TIMES = 8000


async def test_an_answer_citing_a_source_thousands_of_times_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    # one answer for every request: a result list (the search's) whose text, as the chat answer, names PAGE
    # TIMES times, and refers to it by number as often
    text = json.dumps([{"url": PAGE, "content": f"see {PAGE} " * TIMES + "[1] " * TIMES}])
    miner = Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])
    body = {"input": "Tell me", "tools": [{"type": "web_search"}]}
    async with api_with_miners(tmp_path, {1: miner, 2: miner}) as api, aiohttp.ClientSession() as s:
        async with loop_gaps() as gaps:
            async with s.post(api.url + "/v1/responses", json=body,
                              headers={"Authorization": f"Bearer {api.key}"}) as r:
                status, answer = r.status, await r.json()
        assert max(gaps) < 0.5, f"the event loop was held {max(gaps):.2f} s"
    assert status == 200, answer
    (message,) = [item for item in answer["output"] if item["type"] == "message"]
    annotations = message["content"][0]["annotations"]
    # the first MAX_CITATIONS mentions are citations, each place once, in order (the JSON string's own PAGE
    # first; then the mentions by URL, as the [1]s come after them all); the answer's text is whole
    assert len(annotations) == MAX_CITATIONS
    assert all(a["end_index"] - a["start_index"] == len(PAGE) for a in annotations)
    starts = [a["start_index"] for a in annotations]
    assert starts == sorted(set(starts))
    text_out = message["content"][0]["text"]
    assert text_out.count(PAGE) == TIMES + 1 and text_out.count("[1]") == TIMES
    assert all(text_out[a["start_index"]:a["end_index"]] == PAGE for a in annotations)
