"""The offline search corpus shared by the validator and the local network's miners.

Web retrieval must work with no network: the miner's search backend and the
validator's checks read the *same* documents. The built-in corpus is generated
deterministically from a seed (no files, no downloads), so two processes that
call ``builtin_corpus()`` hold identical documents; a JSONL file
(``{"url", "title", "content"}`` per line) replaces it for real deployments.

Each generated document also carries facts (question, short answer, evidence
sentence) that the question-answering dataset draws on.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from shared.settings import mask_credentials
from shared.urls import normalise_url, url_key

CORPUS_SEED = "sn1-corpus-v1"
DEFAULT_DOCUMENTS = 150
BASE_URL = "https://corpus.sn1.local"
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were what when "
    "where which who whom why how with about into than then there their they them his her he she do does did "
    "not no yes".split()
)


_SEPARATORS = str.maketrans({c: " " for c in string.punctuation.replace("_", "") + "\u201c\u201d\u2018\u2019"
                                                   "\u2014\u2013\u2026\u00ab\u00bb\u00bf\u00a1"
                                                   # CJK punctuation: 、。「」『』！，：；？（）
                                                   "\u3001\u3002\u300c\u300d\u300e\u300f"
                                                   "\uff01\uff0c\uff1a\uff1b\uff1f\uff08\uff09"})
# Chinese and Japanese write words without spaces: each character is a token (as ROUGE's CJK variants
# count them), or a whole sentence was one token and two answers one character apart shared none.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens: the one tokenizer every reward and the search use.

    Punctuation becomes a separator and the text is split on whitespace:
    several times faster than a ``\\w+`` regex on long answers (the scoring hot path).
    Chinese and Japanese characters are a token each.
    """
    lowered = text.lower().translate(_SEPARATORS)
    if not lowered.isascii() and _CJK.search(lowered):
        lowered = _CJK.sub(r" \g<0> ", lowered)
    return lowered.split()


def is_cjk_char(token: str) -> bool:
    """A Chinese or Japanese character (each is a token of its own: see ``tokens``)."""
    return len(token) == 1 and _CJK.match(token) is not None


def stem(token: str) -> str:
    """A crude suffix stripper ("flows" ~ "flow", "worked" ~ "work"): enough for matching queries."""
    for suffix in ("ing", "ed", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


def content_terms(text: str) -> list[str]:
    """Stemmed tokens without stop words (what a query is *about*)."""
    return [stem(t) for t in tokens(text) if t not in STOPWORDS]


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str  # short answer, e.g. "Tarsund"
    evidence: str  # the sentence of the document that states it


@dataclass(frozen=True)
class Document:
    url: str
    title: str
    content: str
    facts: tuple[Fact, ...] = ()

    def sentences(self) -> list[str]:
        return split_sentences(self.content)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


@dataclass
class Corpus:
    """Documents by URL, with an inverted index for the miner's search."""

    documents: list[Document]
    by_url: dict[str, Document] = field(init=False)
    _index: dict[str, set[int]] = field(init=False, repr=False)
    _titles: list[frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_url = {url_key(d.url): d for d in self.documents}
        self._index = {}
        self._titles = [frozenset(tokens(d.title)) for d in self.documents]
        for i, doc in enumerate(self.documents):
            for term in set(content_terms(doc.title + " " + doc.content)):
                self._index.setdefault(term, set()).add(i)

    def __len__(self) -> int:
        return len(self.documents)

    def get(self, url: str) -> Document | None:
        """The page at ``url`` in any spelling of it (``HTTPS://Host/page/`` is ``https://host/page``):
        a miner that cites a page it really read, in a form the web writes it, is not a fake."""
        return self.by_url.get(url_key(url))

    def search(self, query: str, k: int = 5) -> list[Document]:
        """Rank documents by query-term matches (title matches count double)."""
        terms = set(content_terms(query))
        scores: dict[int, float] = {}
        for term in terms:
            for i in self._index.get(term, ()):
                bonus = 2.0 if term in self._titles[i] else 1.0
                scores[i] = scores.get(i, 0.0) + bonus
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        return [self.documents[i] for i in ranked[:k]]


# --- the built-in generator -----------------------------------------------------------
_SYLLABLES = "ar bel cor dan el fen gal hir is jor kel lun mar nor or pel quin ros sel tar ul ven wyn zor".split()
_REGIONS = "Tarsund Oskevale Brennmark Caldry Ivenholt Morrow Quessa Drummarch".split()
_KNOWN_FOR = (
    "glass bridges", "spice markets", "clock towers", "river festivals", "paper mills", "stone gardens",
    "night markets", "copper domes", "salt mines", "music schools", "lantern parades", "silk weaving",
)
_FIELDS = ("astronomy", "chemistry", "botany", "geology", "mathematics", "medicine", "optics", "acoustics")
_INVENTIONS = (
    "a tide clock", "a prism lamp", "a seed drill", "a wind compass", "a rain gauge", "a signal mirror",
    "a steam loom", "a glass lens", "a calculating frame", "a water filter",
)


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _city(rng: random.Random, name: str) -> Document:
    region, known = rng.choice(_REGIONS), rng.choice(_KNOWN_FOR)
    founded, population = rng.randint(900, 1900), rng.randint(8, 950) * 1000
    river = _name(rng)
    facts = (
        Fact(f"In which region is the city of {name}?", region, f"{name} is a city in the region of {region}."),
        Fact(f"When was {name} founded?", str(founded), f"{name} was founded in {founded}."),
        Fact(f"What is the population of {name}?", f"{population:,}",
             f"The population of {name} is about {population:,} people."),
        Fact(f"What is {name} known for?", known, f"{name} is known for its {known}."),
        Fact(f"Which river runs through {name}?", river, f"The {river} river runs through {name}."),
    )
    extra = f"Visitors to {name} often mention the {rng.choice(_KNOWN_FOR)} and the old harbour."
    return _document(f"{name} (city)", facts, extra)


def _person(rng: random.Random, name: str) -> Document:
    first = _name(rng, 1) + rng.choice(("a", "o", "en", "is"))
    full = f"{first.capitalize()} {name}"
    field_, invention = rng.choice(_FIELDS), rng.choice(_INVENTIONS)
    born, city = rng.randint(1500, 1950), _name(rng)
    facts = (
        Fact(f"In which field did {full} work as a scientist?", field_, f"{full} was a scientist who worked in {field_}."),
        Fact(f"When was {full} born?", str(born), f"{full} was born in {born}."),
        Fact(f"What is {full} credited with inventing?", invention, f"{full} is credited with inventing {invention}."),
        Fact(f"In which city did {full} spend many years?", city, f"{full} taught for many years in the city of {city}."),
    )
    extra = f"Letters written by {full} are kept in a small museum."
    return _document(f"{full} ({field_})", facts, extra)


def _river(rng: random.Random, name: str) -> Document:
    length, source, mouth = rng.randint(40, 3200), _name(rng), rng.choice(("Grey Sea", "Amber Bay", "Cold Gulf"))
    fish = rng.choice(("trout", "salmon", "pike", "carp", "eel"))
    facts = (
        Fact(f"How long is the {name} river?", f"{length} km", f"The {name} river is {length} km long."),
        Fact(f"Near which hills does the {name} river rise?", source, f"The {name} river rises near the hills of {source}."),
        Fact(f"Into which water does the {name} river flow?", mouth, f"The {name} river flows into the {mouth}."),
        Fact(f"Which fish is common in the {name} river?", fish, f"The most common fish in the {name} river is {fish}."),
    )
    extra = f"Boats on the {name} carry grain and timber in the summer months."
    return _document(f"{name} (river)", facts, extra)


def _document(title: str, facts: tuple[Fact, ...], extra: str) -> Document:
    content = " ".join([f.evidence for f in facts] + [extra])
    return Document(url=f"{BASE_URL}/wiki/{_slug(title)}", title=title, content=content, facts=facts)


def generate_documents(n: int = DEFAULT_DOCUMENTS, seed: str = CORPUS_SEED) -> list[Document]:
    """``n`` documents, a pure function of ``seed`` (unique titles and URLs)."""
    rng = random.Random(seed)
    makers = (_city, _person, _river)
    docs: list[Document] = []
    seen: set[str] = set()
    while len(docs) < n:
        name = _name(rng, rng.choice((2, 3)))
        doc = makers[len(docs) % len(makers)](rng, name)
        if doc.url in seen:
            continue
        seen.add(doc.url)
        docs.append(doc)
    return docs


@functools.cache
def builtin_corpus(n: int = DEFAULT_DOCUMENTS, seed: str = CORPUS_SEED) -> Corpus:
    """The built-in corpus, built once per process and shared (read-only: nothing changes a ``Corpus``).

    A pure function of its arguments, it was rebuilt and re-indexed (~14 ms of CPU) by every
    ``DeterministicBackend()``: a validator's reference, its QA dataset and a miner each paid for it at start."""
    return Corpus(generate_documents(n, seed))


# Why a corpus record is skipped at load: its page could be no search's result.
DROPPED_URL = ("a url the API drops from search results (a space, a character that does not print, <, > or \", a "
               "user name or password, not http(s))")


# --- JSONL files ------------------------------------------------------------------------
def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Each non-blank line as a JSON object; a bad line stops with its line number."""
    for _, obj in iter_jsonl_numbered(path):
        yield obj


def iter_jsonl_numbered(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``iter_jsonl`` with each object's line number (for errors about a record's content)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def document_from_record(r: dict) -> Document | None:
    """A record with ``url`` and ``content`` (``title`` optional) as a document; None for any other record."""
    url, content = r.get("url"), r.get("content")
    if isinstance(url, str) and isinstance(content, str) and url and content:
        return Document(url=url, title=str(r.get("title") or url), content=content)
    return None


def load_corpus(path: str | Path | None) -> Corpus:
    """The JSONL corpus at ``path``, or the built-in one when ``path`` is empty.

    A record whose ``url`` the API drops from a search (``normalise_url``: a space, a character that does not
    print, a user name or password, not http(s)) is skipped, with one WARNING for them all: loaded, the miner
    returned it and the API dropped it, so a search found fewer pages than the corpus holds and nothing said
    why; and the validator drew web tasks on a page no answer could cite."""
    if not path:
        return builtin_corpus()
    docs: list[Document] = []
    dropped: list[tuple[int, str]] = []  # (line, url) of records whose url the API drops
    for lineno, record in iter_jsonl_numbered(path):
        doc = document_from_record(record)
        if doc is not None and normalise_url(doc.url) is None:
            dropped.append((lineno, doc.url))
        elif doc is not None:
            docs.append(doc)
    if dropped:
        skipped = (f"{len(dropped)} record(s) with {DROPPED_URL}, skipped; the first, line {dropped[0][0]}: "
                   f"{mask_credentials(dropped[0][1])[:200]!r}")  # repr: escapes what does not print
        if not docs:
            raise ValueError(f"{path}: no record with 'url' and 'content' left: {skipped}")
        logger.warning("corpus {}: {}", path, skipped)
    if not docs:
        raise ValueError(f"{path}: no record with 'url' and 'content'")
    return Corpus(docs)
