"""WebRetrievalTask: search results checked against the corpus the validator can verify."""

from __future__ import annotations

import random
from typing import Any

from neurons.miner.backends.deterministic import last_user_text
from neurons.validator.rewards.web import web_reward
from neurons.validator.tasks.base import Challenge, RewardContext
from shared import tasks


class WebRetrievalTask:
    name = tasks.WEB_RETRIEVAL
    reward_pipeline = "well-formed, de-duplicated, content belongs to url in the corpus, relevance; latency"
    seed_dependent = False

    def build(self, rng: random.Random, datasets: dict[str, Any]) -> Challenge:
        r = datasets["web"].sample(rng)
        return Challenge(self.name, [{"role": "user", "content": r["query"]}],
                         expected={"query": r["query"], "target_url": r.get("target_url")})

    async def reward(self, body: dict[str, Any], answer: str, expected: dict[str, Any] | None,
                     ctx: RewardContext) -> float | None:
        if expected:
            return web_reward(answer, expected["query"], ctx.corpus, expected.get("target_url"))
        query = last_user_text(body).strip()
        return web_reward(answer, query, ctx.corpus, verifiable_only=True) if query else None
