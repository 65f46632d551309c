"""The validator's tasks and the default registry."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType

from loguru import logger

from neurons.validator.tasks.arithmetic import ArithmeticTask
from neurons.validator.tasks.base import Challenge, RewardContext, Task, TaskRegistry
from neurons.validator.tasks.inference import InferenceTask
from neurons.validator.tasks.qa import QuestionAnsweringTask
from neurons.validator.tasks.web import WebRetrievalTask

# Inference is most of the subnet's traffic, so most of the score; the others keep a
# miner honest on tasks a cheap model cannot fake.
DEFAULT_PROBABILITIES: Mapping[str, float] = MappingProxyType({
    InferenceTask.name: 0.5,
    QuestionAnsweringTask.name: 0.2,
    ArithmeticTask.name: 0.15,
    WebRetrievalTask.name: 0.15,
})


def default_registry(probabilities: Mapping[str, float] | None = None) -> TaskRegistry:
    probs = probabilities or DEFAULT_PROBABILITIES
    known: list[Task] = [InferenceTask(), QuestionAnsweringTask(), ArithmeticTask(), WebRetrievalTask()]
    unknown = set(probs) - {t.name for t in known}
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}")
    return TaskRegistry([(t, probs[t.name]) for t in known if probs.get(t.name, 0) > 0])


def warn_if_normalised(given: dict[str, float] | None, registry: TaskRegistry) -> None:
    """A WARNING naming the probabilities used when ``TASK_PROBABILITIES`` does not sum to 1: they are normalised
    (``{"InferenceTask": 1.5}`` is 1, beside a task given 0.5 it is 0.75), and that went unsaid, so an operator who
    meant 1.5 of something could not tell what each task's share of jobs and of the score came to."""
    total = sum(given.values()) if given else 1.0
    if math.isclose(total, 1.0, abs_tol=1e-6):
        return
    used = {name: round(p, 4) for name, p in registry.probabilities.items()}
    logger.warning("TASK_PROBABILITIES {} sum to {:g}, not 1: normalised to {} (each task's share of synthetic jobs "
                   "and of the combined score)", json.dumps(given), total, json.dumps(used))


__all__ = ["Challenge", "RewardContext", "Task", "TaskRegistry", "default_registry", "DEFAULT_PROBABILITIES",
           "warn_if_normalised"]
