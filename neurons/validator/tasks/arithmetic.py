"""ArithmeticTask: an exactly verifiable answer, so random text is caught without any model."""

from __future__ import annotations

import random
from typing import Any

from neurons.miner.backends.deterministic import last_user_text
from neurons.validator.rewards.exact import number_reward
from neurons.validator.tasks.base import Challenge, RewardContext
from shared import tasks
from shared.arithmetic import evaluate, sole_expression


class ArithmeticTask:
    name = tasks.ARITHMETIC
    reward_pipeline = "exact: the last number of a short answer equals the value; latency"
    seed_dependent = False

    def build(self, rng: random.Random, datasets: dict[str, Any]) -> Challenge:
        r = datasets["arithmetic"].sample(rng)
        prompt = f"What is {r['expression']}? Answer with the number only."
        return Challenge(self.name, [{"role": "user", "content": prompt}], expected={"answer": r["answer"]},
                         max_tokens=16)

    async def reward(self, body: dict[str, Any], answer: str, expected: dict[str, Any] | None,
                     ctx: RewardContext) -> float | None:
        if expected:
            return number_reward(answer, expected["answer"])
        expression = sole_expression(last_user_text(body))  # a caller's prompt: scored only if read for sure
        if expression is None:
            return None
        try:
            return number_reward(answer, str(evaluate(expression)))
        except ValueError:
            return None
