"""Synthetic tasks: build a challenge, send it to a sample of miners, queue the answers for scoring.

Every miner in a sample gets the same messages; for seed-dependent tasks each
gets its own random seed, so honest answers differ and a shared (copied) answer
shows. The seeds are independent: with consecutive ones, a miner knew its peers'
(its own +- 1), answered with a peer's honest text and had the peer zeroed with it
as a copier. A miner that keeps a score but serves no axon any more (it went dark
after earning weight) is recorded with an error in each job, so its score decays
like any miner's that stopped answering.
Calls are signed, streamed and timed per chunk exactly as the API does it (one
``api.race.Race`` per miner). A sampled miner that does not serve the task, or
is down, is recorded with an error and scores 0: it is never dropped silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from api.race import Race
from api.web_retrieval import DEFAULT_RESPONSE_TIME, retrieval_body
from api.web_search import RESULTS_FOR
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scoring import DARK, UNAVAILABLE, ScoringJob, excuse_refusals, holds_permit
from neurons.validator.tasks.base import Challenge, TaskRegistry
from shared import tasks
from shared.availability_query import offered
from shared.ids import random_hex
from shared.jsonutil import dumpb
from shared.metagraph import MetagraphSnapshot, MetagraphView, Neuron
from shared.miner_client import MinerClient
from shared.protocol import ChatCompletionRequest, asks_stream, content_text

RESULTS = tuple(sorted(set(RESULTS_FOR.values())))  # how many results a synthetic query asks for: as callers' do


@dataclass
class SyntheticConfig:
    sample_size: int = 8
    timeout: float = 10.0


@dataclass(frozen=True)
class Wording:
    """How a synthetic chat request is worded, varied as callers' are: a fixed one (no ``model``, always
    streamed, temperature 0.7 and top_p 0.95) told every synthetic request apart by one rule. The sampling
    stays above 0: seed-dependent tasks rely on each miner's seed giving another answer."""

    model: str | None = None  # "default", a model the miner serves, or none (the subnet's own clients)
    stream: bool = True
    temperature: float = 0.7
    top_p: float | None = 0.95


def wording(rng: random.Random) -> Wording:
    """A random ``Wording`` for a job: whether it names a model ("default" here; each miner's is chosen by
    ``_model_for``), whether it streams, and its sampling (one for the job: its answers are compared)."""
    return Wording(model="default" if rng.random() < 0.85 else None, stream=rng.random() < 0.6,
                   temperature=rng.choice((0.6, 0.7, 0.7, 0.8, 1.0)), top_p=rng.choice((0.95, 0.9, 1.0, None)))


def challenge_body(challenge: Challenge, seed: int, *, results: int = RESULTS[1],
                   timeout: float = DEFAULT_RESPONSE_TIME, words: Wording = Wording()) -> dict[str, Any]:
    """The request a miner receives, made as the API makes a caller's, field for field: a retrieval query as
    ``retrieval_body`` (``results`` wanted, ``timeout``), a chat request through ``miner_body`` (its sampling
    at the top level, where the API puts a caller's), worded as ``words`` says. Anything only one side sent
    told synthetic traffic apart (a ``timeout`` on a chat request; sampling only in ``sampling_parameters``;
    never a ``model``), so a miner could answer it honestly and cut corners on callers."""
    if challenge.task == tasks.WEB_RETRIEVAL:
        return retrieval_body(content_text(challenge.messages[-1].get("content")), n_results=results,
                              timeout=timeout, seed=seed)
    sent: dict[str, Any] = {"messages": challenge.messages}
    if words.model is not None:
        sent["model"] = words.model
    sent |= {"stream": words.stream, "temperature": words.temperature}
    if words.top_p is not None:
        sent["top_p"] = words.top_p
    if challenge.max_tokens:
        sent["max_tokens"] = challenge.max_tokens
    if challenge.tools:
        sent["tools"] = challenge.tools
        if challenge.tool_choice is not None:
            sent["tool_choice"] = challenge.tool_choice
    sent["task"] = challenge.task
    return ChatCompletionRequest.model_validate(sent).miner_body(seed=seed, sent=sent)


def sample_miners(neurons: list[Neuron], k: int, rng: random.Random) -> list[Neuron]:
    return neurons if len(neurons) <= k else rng.sample(neurons, k)


def _model_for(rng: random.Random, book: AvailabilityBook, uid: int, model: str | None) -> str | None:
    """The job's ``model`` field for ``uid``: none, "default", or a model its availability says it serves."""
    if model is None:
        return None
    served = offered(book.entries.get(uid) or {}, "llm_model_availabilities")
    return rng.choice(["default", *served]) if served else "default"


async def query_one(client: MinerClient, neuron: Neuron, body: dict[str, Any], deadline: float) -> Race:
    # A random request id, as the API's: "synthetic-<seed>" named synthetic traffic in every miner's log.
    race = Race(client, [neuron], dumpb(body), deadline, stream=True, asks_stream=asks_stream(body),
                request_id=random_hex())
    race.start()
    await race.finish()
    return race


def sampled_pool(snapshot: MetagraphSnapshot, book: AvailabilityBook, scored: Collection[int],
                 own_hotkey: str) -> list[Neuron]:
    """The serving miners a job may sample: those whose availability is known for their current hotkey, and of
    those the poll found down only the ones that still hold a score (see ``run_cycle``)."""
    excused = set() if holds_permit(snapshot, own_hotkey) else book.refused
    return [n for n in snapshot.serving(exclude_hotkey=own_hotkey) if book.hotkeys.get(n.uid) == n.hotkey
            and (book.entries.get(n.uid) is not None or (n.uid in scored and n.uid not in excused))]


def dark_miners(snapshot: MetagraphSnapshot, scored: Collection[int], own_hotkey: str) -> list[Neuron]:
    """Miners that hold a score but serve no axon any more: they join every job as failed, so the score decays."""
    return [n for n in snapshot.neurons if n.uid in scored and not n.axon and n.hotkey != own_hotkey]


def job_bodies(challenge: Challenge, seed_dependent: bool, asked: list[Neuron], book: AvailabilityBook,
               config: SyntheticConfig, rng: random.Random) -> dict[int, dict[str, Any]]:
    """Each asked miner's request: one wording for the job, each miner's own seed for a seed-dependent task (one
    shared seed otherwise), and a ``model`` it serves. The draws from ``rng`` keep their order: a seeded cycle
    replays."""
    shared_seed = rng.randrange(2**31)
    results, timeout = rng.choice(RESULTS), min(config.timeout, DEFAULT_RESPONSE_TIME)  # as a caller's search
    words = wording(rng)
    return {n.uid: challenge_body(challenge, rng.randrange(2**31) if seed_dependent else shared_seed,
                                  results=results, timeout=timeout,
                                  words=dataclasses.replace(words, model=_model_for(rng, book, n.uid, words.model)))
            for n in asked}


async def ask_miners(client: MinerClient, job: ScoringJob, neurons: list[Neuron], book: AvailabilityBook,
                     timeout: float) -> None:
    """Send each sampled miner its body at once, all within one deadline, and record what each streamed back in
    ``job``; a miner that does not serve the task is recorded as unavailable, not called."""
    deadline = asyncio.get_running_loop().time() + timeout
    calls: dict[int, asyncio.Task[Race]] = {}
    for n in neurons:
        if book.serves(n.uid, job.task):
            calls[n.uid] = asyncio.create_task(query_one(client, n, job.bodies[n.uid], deadline))
        else:
            job.errors[n.uid] = UNAVAILABLE
    try:
        for uid, call in calls.items():
            run = (await call).runs[0]
            job.chunks[uid], job.timings[uid] = run.event_texts(), list(run.timings)
            if run.error:
                job.errors[uid] = run.error
    finally:  # the cycle stopped (a shutdown): the calls not awaited yet stop with it, not at their deadline
        for call in calls.values():
            call.cancel()


async def run_cycle(
    client: MinerClient,
    metagraph: MetagraphView,
    book: AvailabilityBook,
    registry: TaskRegistry,
    datasets: dict[str, Any],
    config: SyntheticConfig,
    rng: random.Random,
    scored: Collection[int] = (),
) -> ScoringJob | None:
    """One challenge to one sample; returns the job to score (None when no miner serves).

    Only miners whose availability is known for their current hotkey are sampled: before the first
    poll ends (every start) or after a uid changed hands, "not in the book" is unknown, not a 0.
    ``scored``: uids that hold a score; those of them registered with no axon join the job as failed.
    A miner down at the last poll is sampled only while it holds a score (so the score decays): a 0 for
    one that holds none changes nothing, and on a subnet of 256 uids, most of them down, the samples
    were mostly such miners and the live ones got a sixteenth of the jobs.

    While this validator holds no validator permit (or no registration), a miner that refuses its signature
    (at the poll or in the job) does as miners are to: it is left out, not scored 0. Scored, the miners that
    refused it fell to 0 within minutes while one that allow-listed it kept its score, and the first weights
    set once the permit came back paid that one alone."""
    snapshot, own = metagraph.snapshot, client.signer.hotkey
    neurons = sample_miners(sampled_pool(snapshot, book, scored, own), config.sample_size, rng)
    if not neurons:
        return None
    task = registry.choose(rng)
    challenge = task.build(rng, datasets)
    dark = dark_miners(snapshot, scored, own)
    asked = [*neurons, *dark]
    job = ScoringJob(source="synthetic", task=task.name,
                     bodies=job_bodies(challenge, task.seed_dependent, asked, book, config, rng),
                     hotkeys={n.uid: n.hotkey for n in asked}, deadline_s=config.timeout, expected=challenge.expected)
    for n in dark:
        job.errors[n.uid] = DARK
    await ask_miners(client, job, neurons, book, config.timeout)
    excuse_refusals(job, metagraph.snapshot, own)
    return job
