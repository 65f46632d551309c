"""WebRetrievalTask: results must be well formed, distinct, real and relevant.

A miner answers with a JSON list of ``{url, content, relevant}``. Each result
earns its relevance (the share of the query's terms found in its content) only
if it is well formed, its URL (normalised) was not already listed, ``content`` really is
text of that URL's page in the corpus the validator holds, and ``relevant`` is
a passage of ``content``. The reward is half the mean result score (junk
padding lowers the mean) and half whether the page the query was made from is
among the valid results (synthetic tasks only; organic queries have no target,
so the mean is the reward).

The mean is a precision measure, on purpose: an honest list whose lower-ranked pages share fewer of
the query's terms scores below 1 (about 0.93 on the built-in corpus; the same for every honest miner,
and weights are relative), and a real page off the query lowers it like junk. Lifting that list to 1.0
means discounting its weaker pages' relevance, which discounts padding with real pages too. Neither
the number of results nor their order is rewarded: a recall term (results asked for, given) would be
a design change, not a fix of this mean.

An organic query is a caller's, about anything: the pages a miner finds are mostly not in the
validator's corpus, and a page the validator does not hold is neither proof of a fake nor
verifiable. So for organic answers (``verifiable_only``) such results are left out of the mean, and
an answer with no result the validator can check is not scored (it was 0 for every honest miner).
"""

from __future__ import annotations

from typing import Any

from api.web_retrieval import results_list
from shared.corpus import Corpus, content_terms
from shared.urls import url_key

MAX_RESULTS = 10
MIN_CONTENT_CHARS = 20


def result_valid(item: Any, corpus: Corpus) -> bool:
    if not isinstance(item, dict):
        return False
    url, content, relevant = item.get("url"), item.get("content"), item.get("relevant")
    if not (isinstance(url, str) and isinstance(content, str) and isinstance(relevant, str)):
        return False
    doc = corpus.get(url)
    content = content.strip()
    if doc is None or len(content) < min(MIN_CONTENT_CHARS, len(doc.content)) or content not in doc.content:
        return False
    return bool(relevant.strip()) and relevant.strip() in content


def relevance(query_terms: set[str], text: str) -> float:
    if not query_terms:
        return 0.0
    return len(query_terms & set(content_terms(text))) / len(query_terms)


def web_reward(answer: str, query: str, corpus: Corpus, target_url: str | None = None, *,
               verifiable_only: bool = False) -> float | None:
    """The answer's reward; None (not scored) when ``verifiable_only`` and no result is one the
    validator can check (its URL is not in the corpus)."""
    results = results_list(answer)  # as the API reads them for callers; None: malformed
    if results == [] and verifiable_only:
        return None  # an organic query may have no answer on the web: "nothing found" is no fault
    if not results:
        return 0.0
    results = results[:MAX_RESULTS]
    terms = set(content_terms(query))
    seen: set[str] = set()
    scores, valid_urls = [], set()
    for item in results:
        url = item.get("url") if isinstance(item, dict) else None
        key = url_key(url) if isinstance(url, str) else None
        if verifiable_only and key is not None and key not in seen and corpus.get(url) is None:
            seen.add(key)  # a page the validator does not hold: not counted either way
            continue
        if key is None or key in seen or not result_valid(item, corpus):
            scores.append(0.0)
            if key is not None:
                seen.add(key)
            continue
        seen.add(key)
        valid_urls.add(key)
        scores.append(relevance(terms, item["content"]))
    if not scores:
        return None
    mean = sum(scores) / len(scores)
    if target_url is None:
        return mean
    return 0.5 * mean + 0.5 * (1.0 if url_key(target_url) in valid_urls else 0.0)
