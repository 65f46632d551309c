"""What a task is: how to build a synthetic challenge and how to reward an answer to it.

A ``TaskRegistry`` maps each task name to its implementation and its sampling
probability; the synthetic loop draws from it and the combined score weighs
each task's moving average by the same probability.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from neurons.validator.reference import ReferenceModel
from shared.corpus import Corpus


@dataclass(frozen=True)
class Challenge:
    """One synthetic task instance: the messages to send and what its reward needs."""

    task: str
    messages: list[dict[str, Any]]
    expected: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None  # an agent's request: the functions the model may call
    tool_choice: str | dict[str, Any] | None = None  # and, sometimes, whether or which it must call


@dataclass
class RewardContext:
    reference: ReferenceModel
    corpus: Corpus


class Task(Protocol):
    name: str
    reward_pipeline: str  # one line for /scores and the docs
    seed_dependent: bool  # honest answers differ with the seed: per-miner seeds, copy check

    def build(self, rng: random.Random, datasets: dict[str, Any]) -> Challenge: ...

    async def reward(self, body: dict[str, Any], answer: str, expected: dict[str, Any] | None,
                     ctx: RewardContext) -> float | None:
        """A reward in [0, 1]; None when this answer cannot be scored (e.g. an organic prompt with no check)."""
        ...


class TaskRegistry:
    """Task name -> (task, probability); probabilities are normalised over the registered tasks."""

    def __init__(self, entries: list[tuple[Task, float]]) -> None:
        total = sum(p for _, p in entries)
        if not entries or total <= 0 or any(p < 0 for _, p in entries):
            raise ValueError("task probabilities must be non-negative with a positive sum")
        self.tasks = {t.name: t for t, _ in entries}
        self.probabilities = {t.name: p / total for t, p in entries}

    def get(self, name: str) -> Task | None:
        return self.tasks.get(name)

    def choose(self, rng: random.Random) -> Task:
        names = list(self.probabilities)
        return self.tasks[rng.choices(names, weights=[self.probabilities[n] for n in names])[0]]
