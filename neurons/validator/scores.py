"""Per-uid moving averages of rewards, per task, persisted atomically.

A validator runs for weeks and restarts: every update is written to
``<STATE_DIR>/scores.json`` (temp file + fsync + rename) and read back at start,
so a SIGKILL loses at most the update in flight. A uid whose hotkey changed is a
new miner: its history is dropped, never inherited.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from shared.metagraph import MetagraphSnapshot, atomic_write_json, remove_temp_files
from shared.store.outage import OutageLog

FORMAT_VERSION = 1
# A moving average below this is 0. In floating point one never reaches 0 by itself: 0.9 x the smallest double
# rounds back to it (2.5e-323 stays 2.5e-323), so a miner that went down held a "positive" score for good, and
# was sampled in synthetic jobs (``holding``) forever. 1e-12 is about 260 failures in a row after a perfect score.
SCORE_FLOOR = 1e-12


@dataclass
class MinerScore:
    hotkey: str
    tasks: dict[str, float] = field(default_factory=dict)  # synthetic jobs' rewards, per task
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: float = 0.0
    organic: dict[str, float] = field(default_factory=dict)  # organic (callers') answers' rewards, per task
    organic_counts: dict[str, int] = field(default_factory=dict)


class ScoreBook:
    """Two averages per uid and task: synthetic jobs' and organic answers'. A task's score is the synthetic
    one with the organic one given ``organic_share`` of it: organic traffic is what any key holder sends
    (a miner's owner too), so however much of it there is, it moves a score by that share at most: one
    key sending its own miner 20,000 honest answers a minute, which it sandbagged for everyone else, took
    the top weight while the average was one."""

    def __init__(self, probabilities: dict[str, float], *, alpha: float = 0.1, path: str | Path | None = None,
                 organic_share: float = 0.25) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 <= organic_share <= 1:
            raise ValueError("organic_share must be in [0, 1]")
        self.alpha = alpha
        self.organic_share = organic_share
        self.probabilities = dict(probabilities)
        self.path = Path(path) if path else None
        self.miners: dict[int, MinerScore] = {}
        self.weights: dict[int, float] = {}
        # the hotkey that held each weighted uid when the weights were set (``record_weights``): a uid weighted only to
        # make up the subnet's minimum count holds no score to tell its owner by
        self.weight_hotkeys: dict[int, str] = {}
        self.updated_at = 0.0
        self.last_weights_set_at: float | None = None  # Unix seconds (saved, shown)
        # ``time.monotonic()`` at the last set of this run (not saved): the readiness check's age, which an NTP
        # step of the wall clock moved
        self.weights_set_clock: float | None = None
        self.weights_not_set: str | None = None  # why the last weights cycle set nothing (not saved: this run's)
        self._unsaved = False  # changed since the last save began
        self._saving: asyncio.Lock | None = None  # made on first use (it belongs to the running loop)
        self._writing: asyncio.Future[None] | None = None  # the write running in its thread, if any
        self.save_error: str | None = None  # why the last save failed, while saves fail (``/health``)
        self.save_outage = OutageLog(f"scores not saved to {self.path} (kept in memory, saved again with the next "
                                      "scored job; is STATE_DIR full or read-only?)", back="saved again")

    # --- updates -----------------------------------------------------------------------
    def update(self, uid: int, hotkey: str, task: str, reward: float, *, organic: bool = False) -> float:
        """Fold one reward into the uid's synthetic (or ``organic``) average for ``task``; returns it."""
        reward = min(1.0, max(0.0, float(reward)))
        entry = self.miners.get(uid)
        if entry is None or entry.hotkey != hotkey:
            if entry is not None:
                logger.info("uid {} changed hotkey: score reset", uid)
            entry = self.miners[uid] = MinerScore(hotkey=hotkey)
        averages, counts = (entry.organic, entry.organic_counts) if organic else (entry.tasks, entry.counts)
        average = (1 - self.alpha) * averages.get(task, 0.0) + self.alpha * reward
        averages[task] = average if average >= SCORE_FLOOR else 0.0
        counts[task] = counts.get(task, 0) + 1
        entry.updated_at = self.updated_at = time.time()
        return averages[task]

    def task_score(self, entry: MinerScore, task: str) -> float:
        """The synthetic average, with the organic one given up to ``organic_share`` of the score as its
        answers add up: ``share x (1 - (1 - alpha)^n)`` after n of them, against the organic average
        corrected for its start at 0 (divided by the same factor). Uncorrected, a miner's first perfect
        organic answer read as 0.1 and cut its score by a fifth: four requests any key could send a rival
        through a session were a cheap sink. A task with organic answers and no synthetic job yet scores at
        most the share."""
        synthetic = entry.tasks.get(task, 0.0)
        n = entry.organic_counts.get(task, 0)
        if task not in entry.organic or n <= 0:
            return synthetic
        seen = 1 - (1 - self.alpha) ** min(n, 10_000)  # how much of the average its n answers make up
        # (1 - share x seen) x synthetic + share x seen x (organic / seen):
        return (1 - self.organic_share * seen) * synthetic + self.organic_share * entry.organic[task]

    def record_weights(self, weights: dict[int, float], snapshot: MetagraphSnapshot) -> None:
        """The weights just set over ``snapshot``, each with the hotkey holding its uid then (``sync``)."""
        self.weights = dict(weights)
        self.weight_hotkeys = {uid: n.hotkey for uid in self.weights if (n := snapshot.by_uid(uid)) is not None}

    def sync(self, snapshot: MetagraphSnapshot) -> list[int]:
        """Drop uids that left the metagraph or whose hotkey changed; returns the uids reset.

        The last weights set lose those uids too, a uid weighted only to meet the subnet's minimum count
        (it holds no score) included: ``/scores`` showed such a uid with a weight and no hotkey after the
        subnet shrank, and with its weight under a new owner's hotkey after it changed hands. A weight saved
        without its hotkey (a scores file from before they were kept) is taken as the uid's holder's now.

        A metagraph with no neurons drops nothing: a subnet never loses every uid, so it is a bad read (the
        start's first one: ``MetagraphView.refresh`` refuses later ones), and dropping every score on it saved
        an empty book over weeks of scores."""
        if not snapshot.neurons:
            if self.miners:
                logger.warning("scores: the metagraph read has no neurons (block {}): scores for {} uids kept",
                               snapshot.block, len(self.miners))
            return []
        dropped: set[int] = set()
        for uid in list(self.miners):
            neuron = snapshot.by_uid(uid)
            if neuron is None or neuron.hotkey != self.miners[uid].hotkey:
                del self.miners[uid]
                dropped.add(uid)
        for uid in list(self.weights):
            neuron = snapshot.by_uid(uid)
            if uid in dropped or neuron is None or neuron.hotkey != self.weight_hotkeys.setdefault(uid, neuron.hotkey):
                del self.weights[uid]
                self.weight_hotkeys.pop(uid, None)
                dropped.add(uid)
        reset = sorted(dropped)
        if reset:
            _say_dropped(reset, snapshot)
        return reset

    # --- reads -------------------------------------------------------------------------
    def combined(self, uid: int) -> float:
        """The task averages weighted by task probability (a task never tried counts 0)."""
        entry = self.miners.get(uid)
        if entry is None:
            return 0.0
        return sum(p * self.task_score(entry, task) for task, p in self.probabilities.items())

    def holding(self) -> set[int]:
        """The uids with a positive combined score: what a miner that went down or dark still has to lose
        (one at 0 has nothing: failing it again changes nothing but the size of every job)."""
        return {uid for uid in self.miners if self.combined(uid) > 0}

    def combined_for(self, snapshot: MetagraphSnapshot) -> dict[int, float]:
        """Every uid of ``snapshot`` (the metagraph's n now) with its combined score: 0 for a uid never
        scored, and for one whose hotkey is not the one its score was earned under.

        Weights are a vector over the uids that exist now: the chain refuses a uid beyond n, a uid that
        changed hands since the last sync must not be paid its previous owner's score, and meeting the
        subnet's minimum count of weights or its max share can take uids no score names yet."""
        out: dict[int, float] = {}
        for neuron in snapshot.neurons:
            entry = self.miners.get(neuron.uid)
            out[neuron.uid] = self.combined(neuron.uid) if entry is not None and entry.hotkey == neuron.hotkey else 0.0
        return out

    def per_uid(self, snapshot: MetagraphSnapshot) -> dict[int, tuple[float, float]]:
        """``uid -> (score, weight)`` for the uids of ``snapshot`` that hold a score or a weight or serve: what
        ``/metrics`` exports per uid. Only the metagraph's uids, so the series stay as many as the subnet's
        uids; the score is the one weights are computed from (``combined_for``)."""
        scores = self.combined_for(snapshot)
        listed = set(self.miners) | set(self.weights) | {n.uid for n in snapshot.serving()}
        return {uid: (scores[uid], self.weights.get(uid, 0.0)) for uid in sorted(listed) if uid in scores}

    def report(self, snapshot: MetagraphSnapshot | None = None) -> dict[str, Any]:
        """The ``GET /scores`` body."""
        uids = set(self.miners) | set(self.weights)
        if snapshot is not None:
            uids |= {n.uid for n in snapshot.serving()}
        miners = []
        for uid in sorted(uids):
            entry = self.miners.get(uid)
            neuron = snapshot.by_uid(uid) if snapshot is not None else None
            hotkey = entry.hotkey if entry else (neuron.hotkey if neuron else None)
            miners.append({
                "uid": uid,
                "hotkey": hotkey,
                "score": round(self.combined(uid), 6),
                "weight": round(self.weights.get(uid, 0.0), 6),
                "tasks": {t: round(v, 6) for t, v in sorted((entry.tasks if entry else {}).items())},
                "organic": {t: round(v, 6) for t, v in sorted((entry.organic if entry else {}).items())},
            })
        return {"updated_at": self.updated_at or None, "last_weights_set_at": self.last_weights_set_at,
                "miners": miners}

    # --- persistence -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "updated_at": self.updated_at,
            "last_weights_set_at": self.last_weights_set_at,
            "alpha": self.alpha,
            "organic_share": self.organic_share,
            "weights": {str(u): w for u, w in self.weights.items()},
            "weight_hotkeys": {str(u): k for u, k in self.weight_hotkeys.items()},
            "miners": {
                str(uid): {"hotkey": m.hotkey, "tasks": dict(m.tasks), "counts": dict(m.counts),
                           "updated_at": m.updated_at, "organic": dict(m.organic),
                           "organic_counts": dict(m.organic_counts)}
                for uid, m in self.miners.items()
            },
        }

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.to_json())

    @property
    def saving(self) -> bool:
        """A save is running (``save_off_loop``): a call now returns at once, the running one saves its changes."""
        return self._saving is not None and self._saving.locked()

    async def save_off_loop(self, *, retry: bool = False) -> None:
        """``save`` with the file write in a thread, one save at a time, each of the latest scores; ``retry``:
        the recheck's save (``neurons.validator.recheck``), whose failure is the run's latest try, not one more
        of its failures (``OutageLog.retry_failed``).

        The copy is taken here, on the event loop that changes the scores: a thread reading the live
        dicts while a job updates them can fail ("dictionary changed size during iteration"). Two
        saves at once could land out of order (an older copy over a newer one), and a save per job
        capped scoring at the disk's pace: a call made while a save runs returns at once, and the
        running save writes once more after it, with every change made meanwhile."""
        if self.path is None:
            return
        self._unsaved = True
        if self._saving is None:
            self._saving = asyncio.Lock()
        if self.saving:
            return
        async with self._saving:
            while self._unsaved:
                self._unsaved = False
                self._writing = asyncio.ensure_future(asyncio.to_thread(atomic_write_json, self.path, self.to_json()))
                # shielded: a cancelled caller (shutdown) must not mark the write done while its thread runs
                try:
                    await asyncio.shield(self._writing)
                except OSError as e:
                    self._save_failed(e, retry=retry)
                    return
                self._save_worked()

    def _save_failed(self, error: OSError, *, retry: bool = False) -> None:
        """A save the disk refused (full, read-only, the file replaced by a directory): the scores stay in memory
        and the next scored job saves again. It raised into the scoring worker, which logged a traceback per job
        and called each one "failed, dropped" although it had been scored."""
        self.save_error = f"{type(error).__name__}: {error}"
        if retry:
            self.save_outage.retry_failed(self.save_error)
        else:
            self.save_outage.failed(self.save_error)

    def _save_worked(self) -> None:
        self.save_error = None
        self.save_outage.ok()

    async def flush(self) -> None:
        """The last save, at shutdown once the loops have stopped: the scores as they are now.

        A job scored while a save ran left its change to that save's next round, and cancelling the
        loops (SIGTERM) ended the round: the change was lost. The write still running in its thread is
        waited for first: landing after this one, its older copy would win."""
        if self.path is None:
            return
        if self._writing is not None:
            await asyncio.wait({self._writing})
        self._unsaved = False
        await asyncio.to_thread(atomic_write_json, self.path, self.to_json())

    def load(self) -> bool:
        """Restore from ``path``; a missing file is a fresh start, a corrupt one is logged and ignored. The temp
        files of saves a kill interrupted are removed: the file they were to replace is the last one saved whole."""
        if self.path is None:
            return False
        remove_temp_files(self.path)
        if not self.path.exists():
            logger.warning("no scores file {}: every miner starts from no score, as at a first start. If this validator "
                           "ran before, its scores are elsewhere: STATE_DIR names another directory (a relative one "
                           "is taken from the working directory, {}); stop it and point STATE_DIR at them",
                           self.path.resolve(), Path.cwd())
            return False
        try:
            data = json.loads(self.path.read_text())
            miners = {
                int(uid): MinerScore(hotkey=str(m["hotkey"]),
                                     tasks={str(t): float(v) for t, v in m.get("tasks", {}).items()},
                                     counts={str(t): int(v) for t, v in m.get("counts", {}).items()},
                                     updated_at=float(m.get("updated_at", 0.0)),
                                     # a file from before the organic average: its organic rewards are in tasks
                                     organic={str(t): float(v) for t, v in m.get("organic", {}).items()},
                                     organic_counts={str(t): int(v) for t, v in m.get("organic_counts", {}).items()})
                for uid, m in data.get("miners", {}).items()
            }
            weights = {int(u): float(w) for u, w in data.get("weights", {}).items() if math.isfinite(float(w))}
            weight_hotkeys = {int(u): str(k) for u, k in data.get("weight_hotkeys", {}).items() if int(u) in weights}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self._set_aside(e)
            return False
        repaired = sum(_repair(m.tasks) + _repair(m.organic) for m in miners.values())
        if repaired:
            logger.warning("scores file {}: {} task scores were not numbers in [0, 1] (a damaged or hand-edited "
                           "file); a non-finite one is dropped, the others clamped", self.path, repaired)
        self.miners, self.weights, self.weight_hotkeys = miners, weights, weight_hotkeys
        self.updated_at = float(data.get("updated_at") or 0.0)
        self.last_weights_set_at = _unix_seconds(data.get("last_weights_set_at"))
        logger.info("restored scores for {} uids from {}", len(miners), self.path)
        return True

    def _set_aside(self, error: Exception) -> None:
        """A scores file that cannot be read is renamed, not overwritten: the first save after a fresh start
        replaced it, and weeks of scores a hand could still repair were gone with one WARNING."""
        assert self.path is not None
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError as e:
            raise OSError(f"scores file {self.path} is unreadable ({error}) and cannot be set aside ({e}): "
                          f"move it away or repair it, then start again") from None
        logger.warning("scores file {} unreadable ({}); kept as {}, starting from no scores", self.path, error, aside)



def _unix_seconds(value: object) -> float | None:
    """A saved time, or None when the file holds none or no finite number there (a hand-edited file: shown as is,
    a string reached ``/health`` and the weights loop's first wait)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)

def _repair(tasks: dict[str, float]) -> int:
    """Make every task average a number in [0, 1], as ``update`` keeps them; returns how many were not.

    An average of inf (json reads ``Infinity``) stayed inf through every later update, and NaN stayed
    NaN: the miner was never paid again. One above 1 (``1e300``) held the weights for thousands of jobs."""
    bad = 0
    for task, value in list(tasks.items()):
        if not math.isfinite(value):
            del tasks[task]
            bad += 1
        elif not 0.0 <= value <= 1.0:
            tasks[task] = min(1.0, max(0.0, value))
            bad += 1
    return bad


def _say_dropped(uids: list[int], snapshot: MetagraphSnapshot) -> None:
    """One line saying in words whose scores ``sync`` dropped, why, and that nothing is to be done (it said
    ``scores reset for uids [2]``, and the metagraph's line ``reset [2]``, which read as a fault)."""
    changed = [uid for uid in uids if snapshot.by_uid(uid) is not None]
    gone = [uid for uid in uids if snapshot.by_uid(uid) is None]
    why = []
    if changed:
        why.append(f"{_uid_words(changed)} ({'its' if len(changed) == 1 else 'their'} hotkey changed: another miner "
                   "registered there)")
    if gone:
        why.append(f"{_uid_words(gone)} (no longer in the metagraph)")
    logger.info("scores: dropped the score and last weight of {}, as the chain's registrations change: a new miner "
                "at a uid is scored from 0 by the next jobs; nothing to do", " and ".join(why))


def _uid_words(uids: list[int]) -> str:
    return f"uid {uids[0]}" if len(uids) == 1 else f"uids {', '.join(map(str, uids))}"

