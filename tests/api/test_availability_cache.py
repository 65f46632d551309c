"""The API's availability cache: refresh from the validator, keep the last good data, warn once a minute."""

from __future__ import annotations

import math

from aiohttp import web
from loguru import logger

from api.availability import AvailabilityCache
from api.ops import availability_age
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.helpers import keypair, log_lines, serve_app
from tests.ports import free_port

VALIDATOR = keypair("//Validator")
ENTRY = {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"m1": True}}


def validator_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"1": ENTRY, "2": None})

    app = web.Application()
    app.router.add_post("/miner_availabilities/miner_availabilities", handler)
    return app


async def test_validator_outage_keeps_last_good_cache_and_warns_once() -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    port = free_port()
    try:
        async with make_session() as session:
            cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), f"http://127.0.0.1:{port}",
                                      VALIDATOR.ss58_address, stale_seconds=60)
            assert availability_age(cache) == math.inf, "no answer yet: as old as can be, not 0 s"
            async with serve_app(validator_app(), port=port):
                assert await cache.refresh()
            assert 0 <= availability_age(cache) < 5
            assert cache.serves(1, "InferenceTask", "m1") is True and cache.serves(2, None, None) is False
            for _ in range(5):  # validator gone: every refresh fails
                assert not await cache.refresh()
            assert cache.fresh() and cache.serves(1, None, "m1") is True, "last good data is kept"
            assert len([w for w in warnings if "unreachable" in w]) == 1, "one warning a minute, not per refresh"
            cache.refreshed_at -= 120  # the data is now stale: selection must fall back
            assert cache.serves(1, None, "m1") is None
    finally:
        logger.remove(sink)


async def test_the_validator_answering_again_is_one_line() -> None:
    """The outage was a WARNING a minute, and its end nothing: an operator could not tell from the log whether
    the validator was still down."""
    lines, sink = log_lines("INFO")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        async with make_session() as session:
            cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address)
            async with serve_app(validator_app(), port=port):
                assert await cache.refresh()
            for _ in range(3):
                assert not await cache.refresh()
            async with serve_app(validator_app(), port=port):
                assert await cache.refresh()
                assert await cache.refresh()
    finally:
        logger.remove(sink)
    assert [x.split(":")[0] for x in lines] == ["WARNING validator unreachable at http", "INFO recovered"]
    assert lines[1].startswith(f"INFO recovered: validator at {url} answers availabilities again after ") and \
        lines[1].endswith("(3 failed refresh(es))"), lines


async def test_a_malformed_entry_from_the_validator_is_an_unavailable_miner_not_a_500(tmp_path) -> None:
    """One entry whose task_availabilities was null (or whose models came as a list) made every chat,
    /v1/models, session open and availability query a 500 until the validator sent better."""
    import aiohttp

    from tests.helpers import Script, api_with_miners, chunk, sse

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"1": {"task_availabilities": None, "llm_model_availabilities": ["m1"]},
                                  "2": ENTRY, "3": "up", "x": ENTRY})

    app = web.Application()
    app.router.add_post("/miner_availabilities/miner_availabilities", handler)
    scripts = {uid: Script([(0, d) for d in sse(chunk(f"from {uid}"), chunk(finish="stop"))]) for uid in (1, 2, 3)}
    async with serve_app(app) as validator_url, api_with_miners(tmp_path, scripts) as api:
        cache = AvailabilityCache(api.ctx.client, validator_url, VALIDATOR.ss58_address)
        assert await cache.refresh()
        api.ctx.availability = cache
        async with aiohttp.ClientSession(headers={"api-key": api.key}) as s:
            async with s.post(api.url + "/v1/chat/completions",
                              json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200 and r.headers["x-sn1-miner-uid"] == "2"
            async with s.get(api.url + "/v1/models") as r:
                assert r.status == 200 and [m["miners"] for m in (await r.json())["data"]] == [1]
            async with s.post(api.url + "/v1/sessions", json={"model": "m1"}) as r:
                assert r.status == 200 and (await r.json())["uid"] == 2
            async with s.post(api.url + "/miner_availabilities/miner_availabilities", json=None) as r:
                assert r.status == 200 and await r.json() == {"1": None, "2": ENTRY, "3": None}


async def test_a_restarted_validators_empty_answer_keeps_the_last_good_data() -> None:
    """A validator that has just started answers {} until its first poll ends: the cache took that as its
    data, and for a refresh interval /v1/models listed nothing and selection raced every registered
    miner, down ones included, as if the validator were gone."""
    answers = [{"1": ENTRY, "2": None}, {}]

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answers.pop(0))

    app = web.Application()
    app.router.add_post("/miner_availabilities/miner_availabilities", handler)
    async with make_session() as session, serve_app(app) as url:
        cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address)
        assert await cache.refresh()
        assert not await cache.refresh()  # the restarted validator's empty book
        assert cache.fresh() and cache.serves(1, "InferenceTask", "m1") is True and cache.serves(2, None, None) is False



async def test_an_ntp_step_of_the_wall_clock_neither_ages_nor_freshens_the_cache(wall_step) -> None:
    """Its age was a wall-clock difference: NTP stepping the host's clock 5 minutes forward made every worker's
    availability stale at once (selection raced every registered miner, down ones included, and ``/v1/models``
    listed nothing) until the next refresh."""
    async with make_session() as session, serve_app(validator_app()) as url:
        cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address)
        assert await cache.refresh()
        wall_step(+300)
        assert cache.fresh() and cache.serves(1, "InferenceTask", "m1") is True, "5 min forward: still fresh"
        wall_step(-900)
        assert cache.fresh() and cache.serves(2, None, None) is False, "10 min back: the same answer"


async def test_a_gone_validators_answer_goes_stale_on_time_though_the_wall_clock_steps_back(wall_step) -> None:
    """Stepped back, the wall clock kept a gone validator's answer minutes longer than ``stale_seconds``, and
    held the next WARNING back as long: ages run on the monotonic clock (injected here)."""
    warnings, sink = log_lines("WARNING")
    port = free_port()
    now = [1000.0]
    try:
        async with make_session() as session:
            cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), f"http://127.0.0.1:{port}",
                                      VALIDATOR.ss58_address, clock=lambda: now[0])
            async with serve_app(validator_app(), port=port):
                assert await cache.refresh()
            assert not await cache.refresh()  # the validator is gone: a WARNING
            wall_step(-600)
            now[0] += 61
            assert not await cache.refresh()  # a minute later: the next one
            assert len([w for w in warnings if "unreachable" in w]) == 2, warnings
            now[0] += 60
            assert cache.serves(1, None, "m1") is None, "stale 120 s after its answer: selection falls back"
    finally:
        logger.remove(sink)


async def test_an_address_that_answers_but_is_no_validator_names_the_settings_to_check() -> None:
    """VALIDATOR_API at the wrong port (another API's, a miner's) was "validator answered HTTP 404 for
    availabilities": neither the address nor the setting was named, where an unreachable one said both."""
    lines, sink = log_lines("WARNING")
    try:
        async with serve_app(web.Application()) as url, make_session() as session:  # answers 404 to everything
            cache = AvailabilityCache(MinerClient(session, Signer(VALIDATOR)), url, VALIDATOR.ss58_address)
            assert not await cache.refresh()
    finally:
        logger.remove(sink)
    assert lines == [f"WARNING validator at {url} answered HTTP 404 for availabilities (is VALIDATOR_API the "
                     "validator's SCORING_API_PORT, and VALIDATOR_HOTKEY its hotkey?); falling back to all serving "
                     "miners"], lines
