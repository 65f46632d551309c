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

from shared.corpus import tokens

ARTICLES = frozenset(("a", "an", "the"))


def normalize(text: str) -> list[str]:
    """SQuAD-style normalisation: lower case, punctuation dropped, articles removed."""
    return [t for t in tokens(text) if t not in ARTICLES]


def token_f1(answer: list[str], reference: list[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap)."""
    if not answer or not reference:
        return 0.0
    common = Counter(answer) & Counter(reference)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(answer), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a
    n = len(a)
    if n == 0 or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << n) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


def rouge_l(answer: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 over tokens."""
    if not answer or not reference:
        return 0.0
    lcs = lcs_length(answer, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(answer), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def similarity(answer: str, reference: str) -> float:
    """The inference similarity: the mean of ROUGE-L and token F1 on normalised text."""
    a, r = normalize(answer), normalize(reference)
    return 0.5 * rouge_l(a, r) + 0.5 * token_f1(a, r)


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


def qa_reward(answer: str, short_answer: str, evidence: str) -> float:
    """QuestionAnsweringTask relevance: does the answer state the fact, and how close is it to the evidence.

    0.6 for containing the short answer (as a token sequence), 0.4 x token F1 with the
    evidence sentence. Padding (answers far longer than the evidence, e.g. the whole
    context pasted back) divides the reward by four.
    """
    a = normalize(answer)
    if not a:
        return 0.0
    short, ev = normalize(short_answer), normalize(evidence) or normalize(short_answer)
    contains = 1.0 if short and _contains(a, short) else 0.0
    reward = 0.6 * contains + 0.4 * token_f1(a, ev)
    if len(a) > 3 * len(ev) + 20:
        reward *= 0.25
    return reward


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))
