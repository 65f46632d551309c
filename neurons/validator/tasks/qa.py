"""QuestionAnsweringTask: a context document, a question about it, a reference answer."""

from __future__ import annotations

import random
from typing import Any

from neurons.validator.rewards.text import normalize, qa_reward, token_f1
from neurons.validator.tasks.base import Challenge, RewardContext
from shared import tasks


def qa_prompt(context: str, question: str) -> str:
    return (f"Answer the question using only the context. Reply with one sentence.\n\n"
            f"{tasks.CONTEXT_MARKER}\n{context}\n\n{tasks.QUESTION_MARKER} {question}")


class QuestionAnsweringTask:
    name = tasks.QUESTION_ANSWERING
    reward_pipeline = ("dataset answer: contains the answer (0.6) + token F1 with the evidence (0.4), containment "
                       "alone without evidence; latency")
    seed_dependent = False

    def build(self, rng: random.Random, datasets: dict[str, Any]) -> Challenge:
        r = datasets["qa"].sample(rng)
        return Challenge(self.name, [{"role": "user", "content": qa_prompt(r["context"], r["question"])}],
                         expected={"answer": r["answer"], "evidence": r.get("evidence") or ""},
                         max_tokens=128)

    async def reward(self, body: dict[str, Any], answer: str, expected: dict[str, Any] | None,
                     ctx: RewardContext) -> float | None:
        if expected:
            return qa_reward(answer, expected["answer"], expected["evidence"])
        # Organic: no dataset answer, so relevance to the reference model's answer.
        reference = await ctx.reference.answer(body)
        return token_f1(normalize(answer), normalize(reference))
