"""Exactly verifiable answers (ArithmeticTask): right or wrong, no model needed.

A lazy or random miner is caught here without any reference model. The answer
must be short and its last number must equal the expected value; listing many
numbers to hit the right one by chance earns nothing.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

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
    try:  # exact: as floats, 121932631234567900000000000 "equals" every integer within ~10^10 of it
        return 1.0 if Decimal(numbers[-1]) == Decimal(expected.replace(",", "")) else 0.0
    except (InvalidOperation, ValueError):
        return 0.0
