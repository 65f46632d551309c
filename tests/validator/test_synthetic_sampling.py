"""Synthetic tasks go only to miners whose availability the validator knows for their current
hotkey: a miner the first poll has not reached yet (every start) or a uid that changed hands is
unknown, not a miner to score 0."""

from __future__ import annotations

import random

from neurons.validator.availability import AvailabilityBook
from neurons.validator.datasets import build_datasets
from neurons.validator.synthetic import SyntheticConfig, run_cycle
from neurons.validator.tasks import default_registry
from shared.corpus import builtin_corpus
from shared.metagraph import MetagraphView
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.helpers import VALIDATOR_KP, StaticSource, keypair, snapshot

NOTHING = {"task_availabilities": {}, "llm_model_availabilities": {}}


async def _cycle(book: AvailabilityBook):
    miners = {uid: (keypair(f"//Miner{uid}").ss58_address, "127.0.0.1:9") for uid in (1, 2)}
    view = MetagraphView(StaticSource(snapshot(VALIDATOR_KP.ss58_address, miners)))
    await view.refresh()
    client = MinerClient(make_session(), Signer(VALIDATOR_KP))
    try:
        return await run_cycle(client, view, book, default_registry(), build_datasets(builtin_corpus()),
                               SyntheticConfig(sample_size=8, timeout=1.0), random.Random(1))
    finally:
        await client.session.close()


async def test_before_the_first_availability_poll_no_miner_is_sampled() -> None:
    assert await _cycle(AvailabilityBook()) is None, "no job: nobody scored 0 for being unknown"


async def test_a_uid_known_only_under_its_previous_hotkey_is_left_out() -> None:
    book = AvailabilityBook(entries={1: NOTHING, 2: NOTHING},
                            hotkeys={1: keypair("//Miner1").ss58_address, 2: keypair("//Someone").ss58_address})
    job = await _cycle(book)
    assert job is not None and set(job.bodies) == {1}, "uid 2's new owner was never polled"
    assert job.errors == {1: "unavailable for this task"}, "uid 1 was polled and serves nothing: that is a 0"
