"""Text similarity for free-form answers: token F1 and ROUGE-L, fast enough for the hot path.

Why these two: token F1 (SQuAD's metric) rewards saying the right words and is
what question answering uses; ROUGE-L (longest common subsequence) also rewards
their order, so a bag of the reference's words in random order cannot score
high. LCS is computed bit-parallel (Allison-Dix / Hyyro) on Python integers:
O(len(answer)) big-integer operations instead of an O(n*m) table, which keeps a
500-word answer well under a millisecond.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from shared.corpus import tokens

ARTICLES = frozenset(("a", "an", "the"))


def normalize(text: str) -> list[str]:
    """SQuAD-style normalisation: lower case, punctuation dropped, articles removed."""
    return [t for t in tokens(text) if t not in ARTICLES]


def token_f1(answer: list[str], reference: list[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap)."""
    if not answer or not reference:
        return 0.0
    return _f1(_overlap(Counter(answer), Counter(reference)), len(answer), len(reference))


def _overlap(a: Counter[str], b: Counter[str]) -> int:
    if len(a) > len(b):
        a, b = b, a
    return sum(min(c, b[t]) for t, c in a.items() if t in b)


def _f1(hits: int, n_answer: int, n_reference: int) -> float:
    if hits == 0:
        return 0.0
    precision, recall = hits / n_answer, hits / n_reference
    return 2 * precision * recall / (precision + recall)


def _masks(tokens_: list[str]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens_):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[str, int], n: int, other: list[str]) -> int:
    """Bit-parallel LCS: ``masks`` index one sequence (length ``n``), ``other`` is scanned.

    Carries only move upwards, so bits above ``n`` never disturb the low ``n``
    bits: the mask is applied once, at the end.
    """
    if n == 0:
        return 0
    v = (1 << n) - 1
    get = masks.get
    for tok in other:
        m = get(tok)
        if m is not None:
            u = v & m
            v = (v + u) | (v - u)
    return n - (v & ((1 << n) - 1)).bit_count()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel)."""
    if not a or not b:
        return 0
    return _lcs(_masks(a), len(a), b)


def rouge_l(answer: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 over tokens."""
    if not answer or not reference:
        return 0.0
    return _f1(lcs_length(answer, reference), len(answer), len(reference))


class PreparedReference:
    """A reference text tokenised once, with its counts and LCS masks, for scoring many answers."""

    __slots__ = ("tokens", "counts", "masks")

    def __init__(self, text: str) -> None:
        self.tokens = normalize(text)
        self.counts = Counter(self.tokens)
        self.masks = _masks(self.tokens)

    def similarity(self, answer: str) -> float:
        """The mean of ROUGE-L and token F1 against this reference."""
        a, n = normalize(answer), len(self.tokens)
        if not a or not n:
            return 0.0
        f1 = _f1(_overlap(Counter(a), self.counts), len(a), n)
        if f1 == 0.0:
            return 0.0
        return 0.5 * _f1(_lcs(self.masks, n, a), len(a), n) + 0.5 * f1


@lru_cache(maxsize=256)
def prepared(reference: str) -> PreparedReference:
    """References repeat across the miners of one job: prepare each once."""
    return PreparedReference(reference)


def similarity(answer: str, reference: str) -> float:
    """The inference similarity: the mean of ROUGE-L and token F1 on normalised text."""
    return prepared(reference).similarity(answer)


def same_text(a: str, b: str) -> bool:
    """Equal up to whitespace (what "exact match" and "identical answers" mean here)."""
    return " ".join(a.split()) == " ".join(b.split())


NEAR_MISS_CREDIT = 0.5


def reference_reward(answer: str, reference: str, *, reproducible: bool) -> float:
    """InferenceTask: exact match when the reference is reproducible, similarity otherwise.

    With a reproducible reference (same deterministic model, same seed) an honest
    miner reproduces it exactly; anything else earns at most half the similarity,
    so plausible-looking text cannot pass for the model's answer. With a
    non-reproducible reference the similarity itself is the reward.
    """
    if not answer.strip():
        return 0.0
    if reproducible:
        return 1.0 if same_text(answer, reference) else NEAR_MISS_CREDIT * similarity(answer, reference)
    return similarity(answer, reference)


# A dataset row without an evidence sentence is measured for padding as if its evidence were a sentence of
# this many tokens (a typical one): far more than a one-sentence answer says, far less than a context.
NO_EVIDENCE_TOKENS = 15


def qa_reward(answer: str, short_answer: str, evidence: str = "") -> float:
    """QuestionAnsweringTask relevance: does the answer state the fact, and how close is it to the evidence.

    0.6 for containing the short answer (as a token sequence), 0.4 x token F1 with the
    evidence sentence. Padding (answers far longer than the evidence, e.g. the whole
    context pasted back) divides the reward by four.

    A row with no evidence (none given, or one that says no more than the short answer) has
    nothing to compare a sentence with: F1 against the bare answer paid the honest one-sentence
    answer the prompt asks for about 0.7 where the bare answer got 1, and quartered a sentence of
    more than 26 tokens as padding (about 0.16). There, containing the answer is the whole
    reward, and padding is measured against a ``NO_EVIDENCE_TOKENS`` sentence (65 tokens: no
    honest sentence, but a pasted-back paragraph).
    """
    a = normalize(answer)
    if not a:
        return 0.0
    short, ev = normalize(short_answer), normalize(evidence)
    contains = 1.0 if short and _contains(a, short) else 0.0
    if ev and ev != short:
        reward = 0.6 * contains + 0.4 * token_f1(a, ev)
        measure = len(ev)
    else:
        reward = contains
        measure = max(len(short), NO_EVIDENCE_TOKENS)
    if len(a) > 3 * measure + 20:
        reward *= 0.25
    return reward


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))
