"""Penalties shared by every task: slow first chunk and copied answers.

Empty, malformed and timed-out answers never reach a task's reward: they score
0 in the scorer. What is left is time and honesty:

- ``latency_factor``: full credit when the first content chunk arrives within
  ``grace`` of the deadline (a fraction), then a linear fall to 0 at the
  deadline. A correct answer that only just makes the deadline is worth little
  to a user waiting on it.
- ``copied_uids``: when miners were given different seeds, honest answers
  differ; a group of miners returning the same text copied it (or share one
  cached answer) and all of them score 0.
"""

from __future__ import annotations

from collections import defaultdict

from neurons.validator.rewards.text import normalize

DEFAULT_GRACE = 0.25


def latency_factor(first_chunk_s: float | None, deadline_s: float, grace: float = DEFAULT_GRACE) -> float:
    if first_chunk_s is None or deadline_s <= 0:
        return 0.0
    start = grace * deadline_s
    if first_chunk_s <= start:
        return 1.0
    return max(0.0, 1.0 - (first_chunk_s - start) / (deadline_s - start))


def copied_uids(answers: dict[int, str], seeds: dict[int, int | None], *, min_tokens: int = 3) -> set[int]:
    """uids whose (non-trivial) answer is identical to another uid's that was asked with another seed."""
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for uid, text in answers.items():
        toks = tuple(normalize(text))
        if len(toks) >= min_tokens:
            groups[toks].append(uid)
    copied: set[int] = set()
    for uids in groups.values():
        if len(uids) > 1 and len({seeds.get(u) for u in uids}) > 1:
            copied.update(uids)
    return copied
