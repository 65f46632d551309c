"""One scoring pipeline for synthetic and organic results.

A ``ScoringJob`` holds, per uid, the body that miner was sent and every chunk it
streamed back with its arrival time. The ``Scorer`` rebuilds each answer (with
the same chunk folding the API uses, ``api.race.MinerRun``), applies the
generic penalties (error/timeout/empty/malformed -> 0, slow first chunk, copied
answers) around the task's own reward, and folds the result into the
``ScoreBook``. A pool of workers drains the bounded queue of ``scoring_queue.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from loguru import logger

from api.answer_checks import must_call
from api.race import MinerRun
from neurons.validator.reference import ReferenceError, UnscorableRequest
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.rewards.penalties import DEFAULT_GRACE, copied_uids, latency_factor
from neurons.validator.rewards.tools import Call, calls_of, offers_tools, tool_reward
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue, Settle, settle_none
from neurons.validator.tasks.base import RewardContext, Task, TaskRegistry
from shared.ids import loggable_id
from shared.metagraph import MetagraphSnapshot, MetagraphView, Neuron
from shared.protocol import content_text
from shared.store.outage import OUTAGE_LOG_EVERY_S, OutageLog


@dataclass
class ScoringJob:
    source: Literal["synthetic", "organic"]
    task: str
    bodies: dict[int, dict[str, Any]]
    hotkeys: dict[int, str]
    chunks: dict[int, list[str]] = field(default_factory=dict)
    timings: dict[int, list[float]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    deadline_s: float = 30.0
    expected: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    size: int = 0  # an estimate of the bytes it holds (``job_bytes``): what the organic lane bounds
    inbox_id: int | None = None  # an organic job's row in the validator's inbox, removed once it is done with
    # An organic job's request id (the API's ``x-request-id``): its "scored" line names it, so a caller's request
    # can be followed from the API's access log to its scores.
    request_id: str | None = None


@dataclass
class Answer:
    text: str = ""
    first_content_s: float | None = None
    error: str | None = None
    calls: tuple[Call, ...] = ()  # the tools the answer calls (with or without text)
    finish_reason: str | None = None  # how the model ended (an empty answer that ended cleanly may be the caller's)


    @property
    def tool_calls(self) -> bool:
        return bool(self.calls)


EMPTY = "empty answer"
UNAVAILABLE, DARK = "unavailable for this task", "serves no axon"  # a synthetic job's uids it never called
REFUSAL_PREFIXES = ("HTTP 401", "HTTP 403")  # the miner did not take the caller's signature
# What of an answer is compared with the reference: far more than any task asks for (a 64-token prompt,
# an organic max_tokens of 20k), and a bound on the similarity's cost for a miner that sends megabytes.
MAX_SCORED_CHARS = 100_000
CUTTING_FIELDS = ("stop", "max_tokens", "max_completion_tokens")  # a caller's ways to leave an answer empty


def caller_emptied(body: dict[str, Any], answer: Answer) -> bool:
    """An organic answer the caller's own ``stop`` or token limit may have cut to nothing, the model ending
    cleanly (the README's valid ``""``): no fault of the miner's when the reference is empty too
    (``Scorer._empty_is_right``), and scored it would be a zero that any key could hand any miner."""
    return answer.error == EMPTY and answer.finish_reason is not None and any(body.get(f) for f in CUTTING_FIELDS)


def prompt_text(bodies: Iterable[dict[str, Any]]) -> str:
    """The text of every message the miners were sent (each distinct one once): what an answer may quote."""
    texts = (content_text(m.get("content")) for body in bodies for m in body.get("messages") or ()
             if isinstance(m, dict))
    return "\n".join(dict.fromkeys(t for t in texts if t))


def named_call(run: MinerRun) -> bool:
    """The answer has begun a call of some function: a tool-call delta with only an index or an id names
    nothing, and timed from it a call sent at the deadline had full latency credit."""
    return any(slot["function"]["name"] for slot in run.tool_calls.values())


def rebuild_answer(chunks: list[str], timings: list[float], error: str | None) -> Answer:
    """The answer text and the arrival time of its first content chunk; garbage is an error.

    The first content is the first letter or digit of the text (or a tool call's name): what is scored. A refusal
    claims a streamed race, but timed from it, a miner that sent ``{"refusal": " "}`` at once and its answer
    at the deadline had full latency credit; so had one that sent ``"."`` or a zero-width space first. Text
    with no letter or digit at all is timed from its first character that is not whitespace."""
    if error:
        return Answer(error=error)
    run = MinerRun(Neuron(uid=-1, hotkey=""))
    first: float | None = None
    printed: float | None = None  # the first text that is not whitespace, for an answer without a word
    seen = 0  # pieces of content looked at
    try:
        for i, data in enumerate(chunks):
            run.absorb(data)
            at = timings[i] if i < len(timings) else None
            fresh = run.content[seen:]
            seen = len(run.content)
            if first is not None:
                continue
            if named_call(run) or any(c.isalnum() for piece in fresh for c in piece):
                first = at
            elif printed is None and any(not piece.isspace() for piece in fresh):
                printed = at
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        return Answer(error=f"malformed chunk: {type(e).__name__}")
    first = printed if first is None else first
    if run.tool_calls:
        return Answer(text=run.text, first_content_s=first, calls=calls_of(run.merged_tool_calls()))
    if not run.text.strip():
        return Answer(error=EMPTY, finish_reason=run.finish_reason)
    return Answer(text=run.text, first_content_s=first)


def refused_by_all(job: ScoringJob) -> bool:
    """Every miner the job called refused its signature: the caller's fault (a validator that lost its
    permit or its registration), not theirs. Scored, every miner fell to 0 within a minute and the weights
    held nothing of what the validator had learnt."""
    called = [job.errors.get(u) for u in job.bodies if job.errors.get(u) not in (UNAVAILABLE, DARK)]
    return bool(called) and all(e is not None and e.startswith(REFUSAL_PREFIXES) for e in called)


def holds_permit(snapshot: MetagraphSnapshot, hotkey: str) -> bool:
    """Whether ``hotkey`` is registered with a validator permit on ``snapshot``: miners refuse it otherwise."""
    own = snapshot.by_hotkey(hotkey)
    return own is not None and own.validator_permit


def refused(job: ScoringJob) -> list[int]:
    """The uids that refused the job's signed request (HTTP 401/403)."""
    return [u for u, e in job.errors.items() if e.startswith(REFUSAL_PREFIXES)]


def leave_out(job: ScoringJob, uids: Iterable[int]) -> None:
    """Take ``uids`` out of ``job``: neither scored nor named in its "scored" line."""
    for uid in uids:
        for part in (job.bodies, job.hotkeys, job.chunks, job.timings, job.errors):
            part.pop(uid, None)


def excuse_refusals(job: ScoringJob, snapshot: MetagraphSnapshot, signer: str) -> None:
    """Leave out the miners that refused ``job``'s requests when the hotkey that signed them (``signer``: this
    validator's, or an API's) holds no validator permit on ``snapshot``: they did as miners are to. Scored 0,
    they fell to nothing within minutes while a miner that allow-listed the hotkey kept its score. Every miner
    refusing is left to the scorer, which skips the whole job and says why (``refused_by_all``)."""
    if not holds_permit(snapshot, signer) and not refused_by_all(job):
        leave_out(job, refused(job))


class Scorer:
    def __init__(self, registry: TaskRegistry, ctx: RewardContext, scores: ScoreBook, *,
                 grace: float = DEFAULT_GRACE, owner: Callable[[int], str | None] | None = None,
                 settle: Settle = settle_none, reference: ReferenceStatus | None = None) -> None:
        self.registry = registry
        self.settle = settle
        self.ctx = ctx
        self.scores = scores
        self.grace = grace
        # uid -> its hotkey on the metagraph now: a job's rewards (a reference model can take a minute)
        # are credited only to the hotkeys that still own their uids, never to a previous owner.
        self.owner = owner
        self.jobs_scored = 0
        # the reference model's record (its ``CachedReference``'s): a run of jobs skipped for it is told there,
        # a line a minute (a WARNING per job was thousands of lines a minute under organic traffic)
        self.reference = reference or ReferenceStatus()

    async def rewards(self, job: ScoringJob) -> dict[int, float]:
        """Reward per uid for one job (uids that cannot be scored are left out)."""
        task = self.registry.get(job.task)
        if task is None:
            logger.debug("no reward pipeline for task {}; job skipped", job.task)
            return {}
        # megabytes of chunks must not stall the loop (the HTTP API, other races' chunk timings)
        answers, copied = await asyncio.to_thread(self._answers, job, task.seed_dependent)
        out: dict[int, float] = {}
        for uid, answer in answers.items():
            if not self.owns(job, uid):
                continue  # compared for copies above, judged for nobody (a reference call each)
            reward = await self._judge(job, task, uid, answer, copied=uid in copied)
            if reward is not None:
                out[uid] = reward
        return out

    async def _judge(self, job: ScoringJob, task: Task, uid: int, answer: Answer, *, copied: bool) -> float | None:
        """One answer's reward (None: not scored), in the order the rules take precedence: by its calls when the
        request offered tools, then an empty organic answer the caller's own limits may explain, then the
        penalties (an error, a copy, tools called that were never offered or `tool_choice: none`), then the task's
        own reward; the latency factor on whatever is earned."""
        body = job.bodies[uid]
        if offers_tools(body) and answer.error in (None, EMPTY):
            judged, reward = await self._by_calls(body, answer, job.expected)
            if judged:
                return None if reward is None else reward * self._latency(answer, job)
        if job.source == "organic" and caller_emptied(body, answer):
            # the reference says something: the caller's limits did not empty it
            return None if await self._empty_is_right(body) else 0.0
        if answer.error is not None or copied or answer.tool_calls or not answer.text.strip():
            return 0.0
        reward = await task.reward(body, answer.text[:MAX_SCORED_CHARS], job.expected, self.ctx)
        return None if reward is None else reward * self._latency(answer, job)

    def _latency(self, answer: Answer, job: ScoringJob) -> float:
        return latency_factor(answer.first_content_s, job.deadline_s, self.grace)

    def owns(self, job: ScoringJob, uid: int) -> bool:
        """``uid`` is still held by the hotkey that answered in ``job``: only such a uid is judged and credited."""
        hotkey = job.hotkeys.get(uid)
        return bool(hotkey) and (self.owner is None or self.owner(uid) == hotkey)

    async def _by_calls(self, body: dict[str, Any], answer: Answer,
                        expected: dict[str, Any] | None = None) -> tuple[bool, float | None]:
        """An answer to a request that offered tools, judged by its calls when it or the reference model
        called one (``rewards/tools.py``): (True, its reward or None for not scored); (False, None) when
        both answered in text, for the task's own reward."""
        if not answer.calls and (must_call(body) or bool(expected and expected.get("call"))):
            # A call was demanded, or a synthetic agent's prompt asked for one by name ("Search the web for
            # ..."): text (or nothing) is wrong whatever the reference says. Left to a sampled reference, text
            # where it called was not scored, so a miner could sit out every agent's prompt it could not do.
            return True, 0.0
        if not answer.calls and answer.error == EMPTY:
            # Nothing is no choice of text over a call: judged as an empty answer (a 0, unless the caller's
            # limits cut it and the reference says nothing either). Judged by calls, a sampled reference's
            # call left it unscored, and a miner could answer every agent with nothing and never be scored.
            return False, None
        reply = await self.ctx.reference.reply(body)
        if not answer.calls and not reply.calls:
            return False, None
        return True, tool_reward(answer.calls, reply, body, reproducible=self.ctx.reference.reproducible)

    async def _empty_is_right(self, body: dict[str, Any]) -> bool:
        """Whether the reference model, asked the same, says nothing either (the caller's ``stop`` matched at
        once): only then is an empty organic answer the caller's. Taken on the miner's word, any ``max_tokens``
        let a miner answer every caller ``""`` and be left out of organic scoring for good. A reference that
        does not reproduce a miner's sampling cannot tell under a ``stop`` (its own sample may not stop at
        once where an honest miner's did): the miner's word is taken there."""
        if not self.ctx.reference.reproducible and body.get("stop"):
            return True
        reply = await self.ctx.reference.reply(body)
        return not reply.calls and not reply.text.strip()  # a call says something: no limit empties one

    @staticmethod
    def _answers(job: ScoringJob, seed_dependent: bool) -> tuple[dict[int, Answer], set[int]]:
        """Every uid's answer rebuilt from its chunks, and the copies among them (pure CPU, run in a
        thread: a job of 8 answers of 7 MB each held the event loop for seconds)."""
        answers = {uid: rebuild_answer(job.chunks.get(uid, []), job.timings.get(uid, []), job.errors.get(uid))
                   for uid in job.bodies}
        copied: set[int] = set()
        seeds = {u: b.get("seed") for u, b in job.bodies.items()}
        # Synthetic jobs only: they sample (temperature 0.7). An organic job sends one seed to all, but for a mixture's
        # first stage, whose caller's temperature 0 makes honest answers of one model the same whatever the seed.
        if seed_dependent and job.source == "synthetic" and len(set(seeds.values())) > 1:
            copied = copied_uids({u: a.text[:MAX_SCORED_CHARS] for u, a in answers.items()
                                  if a.error is None and not a.tool_calls},
                                 seeds, prompt=prompt_text(job.bodies.values()))
        return answers, copied

    async def score(self, job: ScoringJob) -> dict[int, float]:
        """Reward the job, update and persist the scores; a failing reference model skips the job, and so
        does one that every miner it called refused (``refused_by_all``)."""
        if refused_by_all(job):
            logger.warning("{} {} job not scored: every miner called refused the signature (HTTP 401/403); "
                           "does this validator's hotkey hold a validator permit?", job.source, job.task)
            self.settle([job])
            return {}
        try:
            rewards = await self.rewards(job)
        except ReferenceError as e:
            self.reference.outage.failed(f"{job.source} {job.task} job skipped: {e}")
            self.settle([job])
            return {}
        except UnscorableRequest as e:  # the caller's request, not the reference model: no outage
            logger.info("{} {} job not scored: {}", job.source, job.task, e)
            self.settle([job])
            return {}
        # a uid may change hands while its job waits on the reference model (a minute): credited to nobody
        rewards = {uid: reward for uid, reward in rewards.items() if self.owns(job, uid)}
        for uid, reward in rewards.items():
            self.scores.update(uid, job.hotkeys[uid], job.task, reward, organic=job.source == "organic")
        # With the updates, before any await: a shutdown cancelling the save below flushes them, and the job
        # is neither lost nor scored again after the restart.
        self.settle([job])
        if rewards:
            await self.scores.save_off_loop()
        self.jobs_scored += 1
        changed = [uid for uid in sorted(job.bodies) if not self.owns(job, uid)]
        logger.info("scored {} {}{}: {}{}", job.source, job.task,
                    rid_note(job),
                    " ".join(f"{u}={r:.2f}" for u, r in sorted(rewards.items())) or "nothing",
                    f" (uid(s) {','.join(map(str, changed))} changed hands: not credited)" if changed else "")
        return rewards


def rid_note(job: ScoringJob) -> str:
    """`` rid=...`` for an organic job (the caller's request, to find in the API's log), "" for a synthetic one."""
    return f" rid={loggable_id(job.request_id)}" if job.source == "organic" else ""


CHUNK_OVERHEAD = 64  # bytes a Python str and its list slot cost beyond its characters (and a timing's float)


def job_bytes(chunks: dict[int, list[str]], body: dict[str, Any]) -> int:
    """About what an organic job holds in memory: its chunks (each with its object's overhead and its
    timing) and its one body (measured by its messages' text)."""
    streamed = sum(len(c) + 2 * CHUNK_OVERHEAD for cs in chunks.values() for c in cs)
    return streamed + len(prompt_text([body])) + 1024


def job_failures(clock: Callable[[], float] = time.monotonic) -> OutageLog:
    """The run of scoring jobs that raise (a bug some payloads trigger), shared by the scoring workers: its first
    failure is an ERROR with the traceback, then a line a minute counting the jobs that failed since, and an INFO
    line once jobs have been scored for a minute with none failing. A traceback per job (each organic payload of
    one shape failing alike) was hundreds of lines a second under traffic, burying everything else."""
    return OutageLog("scoring jobs fail, each dropped unscored", back="jobs are scored again",
                     settle=OUTAGE_LOG_EVERY_S, clock=clock,
                     needs_operator=lambda _: "a validator bug: report it with this traceback")


async def scoring_worker(queue: ScoringQueue, scorer: Scorer, metagraph: MetagraphView,
                         failures: OutageLog | None = None,
                         observe: Callable[[str, float, bool], None] | None = None) -> None:
    """Drain the queue forever; a job whose uid changed hotkey since it was queued is not credited. A job that
    raises is dropped and told in ``failures`` (``job_failures``: one for all the workers). ``observe("scoring",
    seconds, ok)`` is told about every job, as a loop's cycles are (``/metrics``: a job that raised counts in
    ``loop_failures_total{loop="scoring"}``, which the loop alert reads; it was in the log alone)."""
    failures = failures or job_failures()
    loop = asyncio.get_running_loop()
    while True:
        job = await queue.get()
        started, ok = loop.time(), False
        try:
            snapshot = metagraph.snapshot
            job.hotkeys = {u: hk for u, hk in job.hotkeys.items()
                           if (n := snapshot.by_uid(u)) is not None and n.hotkey == hk}
            await scorer.score(job)
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
            failures.failed(f"{job.source} {job.task} job{rid_note(job)}: {type(e).__name__}: {e}", exception=e)
            queue.settle([job])  # scored again after a restart, it would fail again
        else:
            ok = True
            failures.ok()
        if observe is not None:
            observe("scoring", loop.time() - started, ok)
