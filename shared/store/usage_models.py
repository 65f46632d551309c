"""Usage by model: a key's answered requests and tokens on a day, broken down by the model that answered.

The model is the one the answer names (its ``model`` field): the request's, or, for a request that named none,
the miner's. Callers choose that string, so one key's day holds at most ``MODELS_PER_DAY`` names, for the fleet
(the store checks it as it adds a batch; each worker's buffer keeps to it too): the counts of any further name
are filed under ``OTHER``, and so are a name no model may have (``shared.protocol.is_name``) and ``OTHER``
itself. The rows are kept, pruned and deleted with the key's days (a row of day counts each); a report's totals
have no breakdown (they are kept for good, the days for ``USAGE_DAYS_KEPT``).
"""

from __future__ import annotations

from dataclasses import dataclass

MODELS_PER_DAY = 32  # distinct model names one key's day may hold; past them, ``OTHER``
OTHER = "other"
UNKNOWN = "unknown"  # an answer that names no model (its ``model`` field says "unknown" too)
MODEL_FIELDS = ("requests", "prompt_tokens", "completion_tokens")


@dataclass(slots=True)  # three counters added to per request: slots make that the cheapest it can be
class ModelCounts:
    """One model's part of a key's day: the requests answered with it (a request refused before any miner
    answered names no model, so the day's ``requests`` may be more than its models' sum) and their tokens (the
    day's, to the token: every token charged is charged with its model)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: ModelCounts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def filed_under(models: dict[str, ModelCounts], name: str) -> str:
    """The name ``name``'s counts go under in a day's ``models``: its own while the day has room for it (or has
    it already), else ``OTHER``."""
    if name in models or name == OTHER:
        return name
    return name if len(models) - (OTHER in models) < MODELS_PER_DAY else OTHER


def model_row(models: dict[str, ModelCounts], name: str) -> ModelCounts:
    """The row of a day's ``models`` that counts ``name`` (made if new; ``OTHER``'s past the cap)."""
    row = models.get(name)
    if row is None:
        name = filed_under(models, name)
        row = models.get(name)
        if row is None:
            row = models[name] = ModelCounts()
    return row


def add_models(into: dict[str, ModelCounts], other: dict[str, ModelCounts]) -> None:
    """Add a day's rows to another's of the same key and day, within the cap (a worker's unflushed names on top
    of those stored fold into ``OTHER`` as the store will fold them)."""
    for name, counts in other.items():
        model_row(into, name).add(counts)


def listed(models: dict[str, ModelCounts]) -> list[tuple[str, ModelCounts]]:
    """A day's rows as a report lists them: by name, ``OTHER`` last."""
    return sorted(models.items(), key=lambda item: (item[0] == OTHER, item[0]))
