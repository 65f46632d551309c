"""Exactly verifiable answers (ArithmeticTask): right or wrong, no model needed.

A lazy or random miner is caught here without any reference model. The answer
must be short and its last number must equal the expected value; listing many
numbers to hit the right one by chance earns nothing.
"""

from __future__ import annotations

from shared.arithmetic import numbers_in

MAX_NUMBERS = 3
MAX_CHARS = 200


def number_reward(answer: str, expected: str) -> float:
    text = answer.strip()
    if not text or len(text) > MAX_CHARS:
        return 0.0
    numbers = numbers_in(text)
    if not numbers or len(numbers) > MAX_NUMBERS:
        return 0.0
    try:
        return 1.0 if float(numbers[-1]) == float(expected.replace(",", "")) else 0.0
    except ValueError:
        return 0.0
