"""Which miners answer a request.

Explicit ``uids`` are validated against the metagraph; otherwise up to ``k``
serving miners that serve the task and model are sampled, leaning towards high
incentive while still exploring (weighted sampling without replacement,
Efraimidis-Spirakis, with a floor so a zero-incentive miner still gets picked).
"""

from __future__ import annotations

import math
import random

from api.availability import AvailabilityCache
from api.miner_health import MinerHealth, set_aside_message
from shared.errors import ApiError, model_not_found
from shared.metagraph import MetagraphSnapshot, Neuron
from shared.tasks import ALL_TASKS

NO_MINERS = "no_miners_available"  # the error code when no miner serves what was asked
EXPLORATION_FLOOR = 0.05


def weighted_sample(neurons: list[Neuron], k: int, rng: random.Random) -> list[Neuron]:
    if len(neurons) <= k:
        picked = list(neurons)
        rng.shuffle(picked)
        return picked
    top = max((n.incentive for n in neurons), default=0.0)
    floor = max(top, 1e-9) * EXPLORATION_FLOOR
    keyed = [(sampling_key(rng, n.incentive + floor), n) for n in neurons]
    keyed.sort(key=lambda kn: kn[0], reverse=True)
    return [n for _, n in keyed[:k]]


def sampling_key(rng: random.Random, weight: float) -> float:
    """Efraimidis-Spirakis' key ``u ** (1 / weight)`` in log space: ``log(u) / weight``, same order.

    The power underflows to 0.0 for small weights (every incentive 0 on a new subnet, or a top incentive
    of 1e-4), and ties among zeros fell to metagraph order: every request and every session went to
    the lowest uids. ``1 - random()`` is in (0, 1], so the log is finite."""
    return math.log(1.0 - rng.random()) / weight


def select_miners(
    snapshot: MetagraphSnapshot,
    cache: AvailabilityCache | None,
    *,
    uids: list[int] | None,
    task: str | None,
    model: str | None,
    k: int,
    rng: random.Random,
    self_hotkey: str | None = None,
    health: MinerHealth | None = None,
) -> list[Neuron]:
    """``health``: the miners it says are set aside (failing this API's requests) are skipped; when every
    candidate is, a 503 at once says so (a race of miners known to fail would only make the caller wait). Named
    ``uids`` are the caller's choice, raced as asked."""
    if uids:
        return explicit_miners(snapshot, uids, cache=cache, task=task, model=model)
    registered = snapshot.serving(exclude_hotkey=self_hotkey)
    candidates = fitting(registered, cache, task=task, model=model)
    if not candidates:
        raise none_fits(registered, cache, task=task, model=model)
    if health is not None:
        answering = health.answering(candidates)
        if not answering:
            raise not_answering(health, candidates)
        candidates = answering
    return weighted_sample(candidates, k, rng)


def none_fits(registered: list[Neuron], cache: AvailabilityCache | None, *, task: str | None,
              model: str | None) -> ApiError:
    """Why no miner of ``registered`` (serving, in the metagraph) fits ``task`` and ``model``: what a chat is told,
    and ``GET /v1/models/{model}`` too, so the two never disagree on whether a model exists."""
    if cache is None or not cache.fresh():  # no availability data rules anyone out: none is registered
        return ApiError(503, "No serving miners in the metagraph.", code=NO_MINERS)
    if not any(cache.entries.get(n.uid) for n in registered):
        # Every miner down at the validator's last poll: an outage, not the caller's model or task. It was a
        # 404 model_not_found (400 unknown_task for a task only they had advertised): the caller fixed its
        # request, and the operator's log showed 404s.
        return ApiError(503, f"No miner is available: none of the {len(registered)} serving miner(s) answered "
                             "the validator's last availability poll.", code=NO_MINERS)
    if task and task not in known_tasks(cache):
        return ApiError(400, f"Unknown task '{task}'. Known tasks: {', '.join(sorted(known_tasks(cache)))}.",
                        param="task", code="unknown_task")
    if model and not any(cache.matches(n.uid, None, model) for n in registered):
        return model_not_found(model)
    return ApiError(503, f"No miner is available for task '{task}' and model '{model or 'any'}'.", code=NO_MINERS)


def not_answering(health: MinerHealth, aside: list[Neuron], why: str = "") -> ApiError:
    """The 503 of a request whose miners that could answer, ``aside``, are all set aside: their failures named,
    and ``Retry-After`` the seconds to the next probe. ``why``: what the caller is told first (the miners a race
    asked, when it was they who could not answer)."""
    return ApiError(503, f"No miner is answering: {why}{set_aside_message(health, aside, 'other' if why else 'available')}.",
                    code=NO_MINERS, headers={"Retry-After": str(max(1, math.ceil(health.next_probe_in(aside))))})


def passed_over(snapshot: MetagraphSnapshot, cache: AvailabilityCache | None, health: MinerHealth | None, *,
                task: str | None, model: str | None, self_hotkey: str | None = None) -> list[Neuron]:
    """The miners selection would race for ``task`` and ``model`` but passes over, set aside: those that may serve
    the model (fresh availability lists it for them; without fresh data nothing rules a serving miner out) and
    fail. A race whose every miner says it does not serve the model is then no proof that none does."""
    if health is None or not health.aside:
        return []
    return [n for n in candidate_miners(snapshot, cache, task=task, model=model, self_hotkey=self_hotkey)
            if health.is_aside(n)]


def candidate_miners(snapshot: MetagraphSnapshot, cache: AvailabilityCache | None, *, task: str | None,
                     model: str | None, self_hotkey: str | None = None) -> list[Neuron]:
    """The miners selection samples from: serving in the metagraph now (not ourselves) and, while the
    availability is fresh, serving ``task`` and ``model``; without fresh data, every serving miner.

    One definition for selection and ``get_available_miners``, so the uids the route lists are the
    ones a chat request for the same task and model would race."""
    return fitting(snapshot.serving(exclude_hotkey=self_hotkey), cache, task=task, model=model)


def fitting(serving: list[Neuron], cache: AvailabilityCache | None, *, task: str | None,
            model: str | None) -> list[Neuron]:
    """Those of ``serving`` that fresh availability says serve ``task`` and ``model``; without fresh
    data, ``serving`` itself (the same list: nothing is known to rule a miner out)."""
    if cache is None or not cache.fresh():
        return serving
    return [n for n in serving if cache.matches(n.uid, task, model)]


def known_tasks(cache: AvailabilityCache | None) -> set[str]:
    """The subnet's task names plus any task a miner currently advertises."""
    known = set(ALL_TASKS)
    for entry in (cache.entries.values() if cache is not None else ()):
        known.update(t for t, ok in (entry or {}).get("task_availabilities", {}).items() if ok)
    return known


def top_miner(candidates: list[Neuron]) -> Neuron:
    """The highest-incentive miner (ties: the lowest uid), e.g. for a mixture's final answer."""
    return max(candidates, key=lambda n: (n.incentive, -n.uid))


def explicit_miners(
    snapshot: MetagraphSnapshot,
    uids: list[int],
    *,
    cache: AvailabilityCache | None = None,
    task: str | None = None,
    model: str | None = None,
) -> list[Neuron]:
    out: list[Neuron] = []
    seen: set[int] = set()
    for uid in uids:
        if uid in seen:
            continue
        seen.add(uid)
        neuron = snapshot.by_uid(uid)
        if neuron is None:
            raise ApiError(400, f"Unknown uid {uid}: not in the metagraph.", param="uids", code="unknown_uid")
        if not neuron.axon:
            raise ApiError(400, f"uid {uid} does not serve an axon.", param="uids", code="uid_not_serving")
        if cache is not None and cache.serves(uid, task, model) is False:
            raise ApiError(400, f"uid {uid} is not available for task '{task}' and model '{model or 'any'}'.",
                           param="uids", code="uid_not_serving")
        out.append(neuron)
    return out
