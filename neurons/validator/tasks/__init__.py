"""The validator's tasks and the default registry."""

from __future__ import annotations

from neurons.validator.tasks.arithmetic import ArithmeticTask
from neurons.validator.tasks.base import Challenge, RewardContext, Task, TaskRegistry
from neurons.validator.tasks.inference import InferenceTask
from neurons.validator.tasks.qa import QuestionAnsweringTask
from neurons.validator.tasks.web import WebRetrievalTask

# Inference is most of the subnet's traffic, so most of the score; the others keep a
# miner honest on tasks a cheap model cannot fake.
DEFAULT_PROBABILITIES = {
    InferenceTask.name: 0.5,
    QuestionAnsweringTask.name: 0.2,
    ArithmeticTask.name: 0.15,
    WebRetrievalTask.name: 0.15,
}


def default_registry(probabilities: dict[str, float] | None = None) -> TaskRegistry:
    probs = probabilities or DEFAULT_PROBABILITIES
    known: list[Task] = [InferenceTask(), QuestionAnsweringTask(), ArithmeticTask(), WebRetrievalTask()]
    unknown = set(probs) - {t.name for t in known}
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}")
    return TaskRegistry([(t, probs[t.name]) for t in known if probs.get(t.name, 0) > 0])


__all__ = ["Challenge", "RewardContext", "Task", "TaskRegistry", "default_registry", "DEFAULT_PROBABILITIES"]
