"""InferenceTask: chat completion judged against the reference model with the same seed."""

from __future__ import annotations

import random
from typing import Any

from neurons.validator.rewards.text import reference_reward
from neurons.validator.tasks.base import Challenge, RewardContext
from shared import tasks


class InferenceTask:
    name = tasks.INFERENCE
    reward_pipeline = ("reference model, same seed: exact match (reproducible) or ROUGE-L/token-F1, or the same tool "
                       "calls when tools are offered; latency; copy")
    seed_dependent = True

    def __init__(self, max_tokens: int = 64) -> None:
        self.max_tokens = max_tokens

    def build(self, rng: random.Random, datasets: dict[str, Any]) -> Challenge:
        record = datasets["inference"].sample(rng)
        # a built-in agent's prompt asks for one call (its name and arguments): text is no answer to it
        # (``Scorer._by_calls``)
        expected = {"call": record["call"]} if record.get("call") else {}
        return Challenge(self.name, list(record["messages"]), expected=expected, max_tokens=self.max_tokens,
                         tools=record.get("tools"), tool_choice=record.get("tool_choice"))

    async def reward(self, body: dict[str, Any], answer: str, expected: dict[str, Any] | None,
                     ctx: RewardContext) -> float | None:
        reference = await ctx.reference.answer(body)
        return reference_reward(answer, reference, reproducible=ctx.reference.reproducible)
