"""The miner's web search: ranked ``{url, content, relevant}`` results for a query.

In the local network the "web" is the offline corpus the validator verifies
against (``shared.corpus``), so web retrieval works with no network. A real
miner would put a search API behind the same ``SearchBackend`` interface.
"""

from __future__ import annotations

from typing import Protocol

from shared.corpus import Corpus, content_terms, split_sentences

DEFAULT_RESULTS = 3
MAX_RESULTS = 100  # the API's n_results bound


class SearchBackend(Protocol):
    def search(self, query: str, k: int = DEFAULT_RESULTS) -> list[dict[str, str]]: ...


def best_sentence(content: str, query: str) -> str:
    """The sentence of ``content`` sharing the most terms with ``query`` (the first on ties)."""
    terms = set(content_terms(query))
    sentences = split_sentences(content) or [content]
    return max(sentences, key=lambda s: len(terms & set(content_terms(s))))


class CorpusSearch:
    """Search over a local corpus; ``content`` is the page text, ``relevant`` its best sentence."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def search(self, query: str, k: int = DEFAULT_RESULTS) -> list[dict[str, str]]:
        """The top ``k`` pages, keeping only those at least half as relevant as the best one."""
        terms = set(content_terms(query))
        ranked = [(doc, len(terms & set(content_terms(doc.content)))) for doc in self.corpus.search(query, k)]
        if not ranked:
            return []
        best = max(hits for _, hits in ranked)
        return [
            {"url": doc.url, "content": doc.content, "relevant": best_sentence(doc.content, query)}
            for doc, hits in ranked if hits * 2 >= best
        ]
