"""Validator benchmarks (not collected by pytest; ``make bench`` calls ``main()``).

- weight computation (scores -> constrained, normalised weights -> u16) for 256
  and 4096 uids; target < 5 ms for 4096;
- text-reward throughput on 500-word answers (InferenceTask similarity:
  ROUGE-L + token F1, and the QA reward); target >= 2,000 answers/s.
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np

from neurons.miner.backends.deterministic import VOCABULARY
from neurons.validator.rewards.text import qa_reward, reference_reward
from neurons.validator.weights import WeightRules, compute_weights, to_u16


def bench_weights(n: int, repeats: int = 200) -> float:
    """Median milliseconds for one weight computation over ``n`` uids."""
    rng = np.random.default_rng(n)
    uids = np.arange(n)
    scores = rng.random(n)
    rules = WeightRules(max_weight=0.05, min_allowed=8)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        to_u16(uids, compute_weights(uids, scores, rules, power=3.0))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(n))


def bench_text_rewards(n_answers: int = 2000, n_words: int = 500) -> tuple[float, float]:
    """Answers per second for the inference similarity and the QA reward on ``n_words``-word answers."""
    rng = random.Random(1)
    reference = words(rng, n_words)
    answers = [words(rng, n_words) for _ in range(n_answers)]
    t = time.perf_counter()
    for a in answers:
        reference_reward(a, reference, reproducible=False)
    inference = n_answers / (time.perf_counter() - t)
    t = time.perf_counter()
    for a in answers:
        qa_reward(a, "river stone", reference)
    qa = n_answers / (time.perf_counter() - t)
    return inference, qa


def main() -> None:
    for n in (256, 4096):
        print(f"validator weights {n:>5} uids: {bench_weights(n):.3f} ms (median; target < 5 ms for 4096)")
    inference, qa = bench_text_rewards()
    print(f"validator text reward (inference, 500 words): {inference:,.0f} answers/s (target >= 2,000)")
    print(f"validator text reward (qa, 500 words):        {qa:,.0f} answers/s")


if __name__ == "__main__":
    main()
