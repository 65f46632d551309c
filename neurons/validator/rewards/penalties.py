"""Penalties shared by every task: slow first chunk and copied answers.

Empty, malformed and timed-out answers never reach a task's reward: they score
0 in the scorer. What is left is time and honesty:

- ``latency_factor``: full credit when the first content chunk arrives within
  ``grace`` of the deadline (a fraction), then a linear fall to 0 at the
  deadline. A correct answer that only just makes the deadline is worth little
  to a user waiting on it.
- ``copied_uids``: when miners were given different seeds, honest answers
  differ; miners returning the same or nearly the same text copied it (or
  share one cached answer) and all of them score 0.

The copy rule. Only seed-dependent tasks are checked (``InferenceTask``: every
miner gets its own random seed, temperature 0.7, top_p 0.95, 64 tokens), and
only pairs of miners asked with different seeds. Each answer is normalised
(``text.normalize``: lower case, no punctuation, no articles) and the words it
quotes from the prompt are set aside (every token inside a word 3-gram that
also occurs in the request's messages): honest answers to "correct this
paragraph" or "repeat after me" share the prompt's words, not each other's.
What is left is the miner's own words. Two answers are copies when

- each has at least ``MIN_COPY_WORDS`` own words (a Chinese or Japanese
  character counts half a word), and
- their longest common subsequence of own words is at least
  ``NEAR_COPY_SIMILARITY`` of the longer one (identical answers are 1.0;
  a copy with a word changed, dropped or added every ten words still
  counts; the first ``MAX_COMPARED_WORDS`` own words are compared).

Why so conservative: a false copy zeroes honest miners, a missed one costs a
copier nothing it could not have earned honestly. A sampled answer is only
unlikely to coincide with another seed's when it is long; a short factual
answer ("The capital of France is Paris.") is often the very same text for
every seed at temperature 0.7, and a confident model can open two answers
with the same memorised sentence. 24 words is about half of what a 64-token
answer says, and two honest answers that share a memorised opening of 70 %
of their words and then diverge stay below 0.9. The cost is O(n^2) pairs of
a handful of miners, each a Counter intersection and, only for pairs that
pass it, a bit-parallel LCS of at most 2,000 words.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from neurons.validator.rewards.text import lcs_length, normalize
from shared.corpus import is_cjk_char

DEFAULT_GRACE = 0.25
MIN_COPY_WORDS = 24
NEAR_COPY_SIMILARITY = 0.9
MAX_COMPARED_WORDS = 2_000
QUOTE_NGRAM = 3


def latency_factor(first_chunk_s: float | None, deadline_s: float, grace: float = DEFAULT_GRACE) -> float:
    if first_chunk_s is None or deadline_s <= 0:
        return 0.0
    start = grace * deadline_s
    if first_chunk_s <= start:
        return 1.0
    return max(0.0, 1.0 - (first_chunk_s - start) / (deadline_s - start))


def _ngrams(toks: list[str], n: int = QUOTE_NGRAM) -> set[tuple[str, ...]]:
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def own_words(toks: list[str], quoted: set[tuple[str, ...]], n: int = QUOTE_NGRAM) -> list[str]:
    """``toks`` without those inside an n-gram of ``quoted`` (the prompt's): what the answer says itself."""
    if not quoted or len(toks) < n:
        return toks
    keep = [True] * len(toks)
    for i in range(len(toks) - n + 1):
        if tuple(toks[i : i + n]) in quoted:
            keep[i : i + n] = [False] * n
    return [t for t, k in zip(toks, keep, strict=True) if k]


def word_count(toks: list[str]) -> float:
    """Words, with a Chinese or Japanese character (a token each) as half a word."""
    if all(t.isascii() for t in toks):
        return len(toks)
    return sum(0.5 if is_cjk_char(t) else 1.0 for t in toks)


def near_copy(a: list[str], b: list[str], counts_a: Counter[str], counts_b: Counter[str],
              threshold: float = NEAR_COPY_SIMILARITY) -> bool:
    """LCS(a, b) >= threshold x the longer; the length and word-count bounds of the LCS are checked first."""
    if a == b:
        return True
    longer = max(len(a), len(b))
    need = threshold * longer
    if min(len(a), len(b)) < need or sum((counts_a & counts_b).values()) < need:
        return False
    return lcs_length(a, b) >= need


def copied_uids(answers: dict[int, str], seeds: dict[int, int | None], *, prompt: str = "",
                min_words: float = MIN_COPY_WORDS, threshold: float = NEAR_COPY_SIMILARITY) -> set[int]:
    """uids whose long enough answer is the same or nearly the same as another uid's that was asked with
    another seed (the rule is in the module docstring); ``prompt``: the request's messages, whose words an
    answer may quote."""
    quoted = _ngrams(normalize(prompt)) if prompt else set()
    words: dict[int, list[str]] = {}
    for uid, text in answers.items():
        own = own_words(normalize(text), quoted)
        if word_count(own) >= min_words:
            words[uid] = own[:MAX_COMPARED_WORDS]
    counts = {uid: Counter(w) for uid, w in words.items()}
    copied: set[int] = set()
    for u, v in combinations(sorted(words), 2):
        if seeds.get(u) == seeds.get(v) or (u in copied and v in copied):
            continue
        if near_copy(words[u], words[v], counts[u], counts[v], threshold):
            copied.update((u, v))
    return copied
