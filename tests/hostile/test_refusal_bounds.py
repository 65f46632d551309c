"""What a process keeps of the fields model servers refused (``shared.field_refusals``): an entry per model, which
a caller naming endless models must not grow for good. A miner's is bounded by what it advertises (a request for any
other model is its 404, before its model server is asked); the validator's reference model is asked under each
organic job's model, which a miner advertising endless names and a caller asking for them choose: its entries are
capped at ``MAX_MODELS``, the least recently learnt forgotten first."""

from __future__ import annotations

import json

import aiohttp

from neurons.miner.app import create_miner_app
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from shared.field_refusals import MAX_MODELS, FieldRefusals
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.fake_upstream import MODEL, create_fake_upstream
from tests.helpers import keypair, serve_app

VALIDATOR, MINER = keypair("//Validator"), keypair("//RefusingMiner")
NAMES = 300
SEED_REFUSED = "Unrecognized request argument supplied: seed"


async def test_a_miner_keeps_refusals_only_for_the_models_it_advertises() -> None:
    received: list = []
    async with serve_app(create_fake_upstream(received, refuses=frozenset({"seed"}))) as up:
        backend = OpenAICompatibleBackend(up + "/v1")
        await backend.start()
        try:
            verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
            async with serve_app(create_miner_app(backend, verifier)) as miner, aiohttp.ClientSession() as s:
                url = miner + "/v1/chat/completions"

                async def chat(model: str) -> tuple[int, dict]:
                    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                       "seed": 1}).encode()
                    headers = Signer(VALIDATOR).headers("POST", url, body, MINER.ss58_address)
                    async with s.post(url, data=body, headers=headers) as r:
                        return r.status, await r.json()

                for i in range(NAMES):  # a caller naming endless models: each the miner's 404, its server unasked
                    status, answer = await chat(f"hostile/model-{i}")
                    assert (status, answer["error"]["code"]) == (404, "model_not_found"), answer
                assert received == []
                status, answer = await chat(MODEL)  # the model it serves: seed refused, learnt, asked again
                assert status == 200, answer
        finally:
            await backend.close()
    assert [("seed" in b) for b in received] == [True, False]
    assert len(backend._refusals) == 1  # its one model's, whatever the names asked before


def test_the_refusals_kept_are_bounded_whatever_models_are_named() -> None:
    refusals = FieldRefusals()
    names = [f"hostile/model-{i}" for i in range(MAX_MODELS * 20)]
    for name in names:
        assert refusals.learn({"model": name, "seed": 1}, SEED_REFUSED)
    assert len(refusals) == MAX_MODELS
    # the latest learnt still apply; the first are forgotten (asked again, their server refuses again)
    assert refusals.apply({"model": names[-1], "seed": 1}) == {"model": names[-1]}
    assert refusals.apply({"model": names[0], "seed": 1}) == {"model": names[0], "seed": 1}
    assert refusals.learn({"model": names[0], "seed": 1}, SEED_REFUSED)
    assert refusals.apply({"model": names[0], "seed": 1}) == {"model": names[0]}
    assert len(refusals) == MAX_MODELS
