"""The validator's recheck made visible (``neurons.validator.recheck``): a failing required check that no traffic
tries is tried again every 30 s, and an operator of a validator stuck "not ready" sees that it is, when it last
was, by what and why it failed, in ``/ready``, the log (a WARNING at a slowing pace) and ``/metrics``. The
recheck's failure was DEBUG only, and ``/ready`` said nothing of when the check was last tried."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from neurons.validator.app import create_validator_app
from neurons.validator.recheck import recheck_cycle
from neurons.validator.reference import CachedReference, DeterministicReference, OpenAIReference
from neurons.validator.reference_status import ReferenceStatus
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.metrics import ValidatorMetrics
from tests.compat.support import sample
from tests.helpers import log_lines, serve_app
from tests.validator.test_app import make_ctx
from tests.validator.test_inbox import validator
from tests.validator.test_readiness import assert_failing, assert_ready, get, organic, refused_by_a_full_disk

SECRET = "sk-live-do-not-log-4242"


async def ready_check(url: str, name: str) -> dict[str, Any]:
    status, body = await get(url, "/ready")
    assert status == 503, body
    return body["checks"][name]


def recheck_lines(lines: list[str], what: str) -> list[str]:
    return [line for line in lines if line.startswith(f"WARNING {what}") and "tried again, still failing" in line]


async def test_a_full_inbox_tried_again_says_when_by_what_and_why_in_ready_and_one_warning(tmp_path: Path) -> None:
    """Refused by a ``/scoring`` write, the check says it was tried by traffic; the recheck's write refused
    after it makes the check's latest try the recheck's, with its error, and one WARNING (the next recheck,
    30 s on, says nothing more yet: not a line every 30 s forever)."""
    lines, handler = log_lines("WARNING")
    try:
        async with validator(tmp_path / "scoring_inbox.db", scoring=False) as (url, ctx):
            db = await refused_by_a_full_disk(url, ctx)
            check = await ready_check(url, "scoring_inbox")
            assert check["last_tried_by"] == "traffic" and abs(check["last_tried_at"] - time.time()) < 5, check
            assert check["detail"].endswith("(last tried 0s ago, by traffic)"), check
            first = check["last_tried_at"]
            inbox, reference = ctx.inbox, CachedReference(DeterministicReference(), status=ctx.reference)
            for _ in range(2):
                await recheck_cycle(inbox, reference, quiet=0.0)
            check = await ready_check(url, "scoring_inbox")
            assert check["last_tried_by"] == "recheck" and check["last_tried_at"] > first, check
            assert "a test write of " in check["detail"] and "database or disk is full" in check["detail"], check
            assert check["detail"].endswith("(last tried 0s ago, by the recheck, every 30s while no traffic "
                                            "tries)"), check
            await assert_failing(url, "scoring_inbox", "by the recheck")
            db.execute("PRAGMA max_page_count = 1073741823")  # the disk is freed
            await recheck_cycle(inbox, reference, quiet=0.0)
            ready = await assert_ready(url)
    finally:
        logger.remove(handler)
    assert set(ready["checks"]["scoring_inbox"]) == {"ok", "required", "detail"}, "said while it fails only"
    told = recheck_lines(lines, "scoring inbox: payloads not stored")
    assert len(told) == 1, lines
    assert " s into the run (1 tr(ies) since the last such line; the next such line in 60 s): a test write of " \
           in told[0] and told[0].endswith("database or disk is full"), told


def refusing_reference_model(state: dict[str, Any]) -> web.Application:
    """A reference model server that refuses the key, quoting it, while ``state["down"]``; then answers."""

    async def chat(request: web.Request) -> web.Response:
        if state["down"]:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"{state['body']}: {key}", "type":
                                                 "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        return web.json_response({"choices": [{"message": {"content": "the answer"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_a_reference_model_tried_again_says_its_latest_error_without_the_key(tmp_path: Path) -> None:
    """After jobs skipped for it, the recheck's question that fails is the check's latest try (its error, not the
    jobs'), a WARNING naming how long the outage lasted, and neither holds the key the server quoted."""
    state: dict[str, Any] = {"down": True, "body": "Rate limited for key"}
    ctx = make_ctx()
    metrics = ValidatorMetrics()
    lines, handler = log_lines("WARNING")
    try:
        async with serve_app(refusing_reference_model(state)) as llm, aiohttp.ClientSession() as session, \
                serve_app(create_validator_app(ctx, metrics=metrics)) as url:
            reference = CachedReference(OpenAIReference(llm + "/v1", session=session, model="m", api_key=SECRET),
                                        status=ReferenceStatus(kind="llm"))
            ctx.reference = reference.status
            scorer = Scorer(default_registry(), RewardContext(reference, builtin_corpus()),
                            ScoreBook(default_registry().probabilities), reference=reference.status)
            assert await scorer.score(organic("InferenceTask", "Say hello.", "hi")) == {}, "skipped"
            check = await ready_check(url, "reference")
            assert check["last_tried_by"] == "traffic", check
            state["body"] = "Incorrect API key"  # what the server says now: the recheck's error is the one shown
            await recheck_cycle(None, reference, quiet=0.0, observe=metrics.observe_recheck)
            check = await ready_check(url, "reference")
            assert check["last_tried_by"] == "recheck", check
            assert "HTTP 401" in check["detail"] and "Incorrect API key: ***" in check["detail"], check
            assert "Rate limited" not in check["detail"] and SECRET not in json.dumps(check), check
            _, prom = await get(url, "/metrics")
            assert sample(prom, "sn1_validator_rechecks_total", check="reference", outcome="failed") == 1
            state["down"] = False
            await recheck_cycle(None, reference, quiet=0.0, observe=metrics.observe_recheck)
            await assert_ready(url)
            _, prom = await get(url, "/metrics")
    finally:
        logger.remove(handler)
    assert sample(prom, "sn1_validator_rechecks_total", check="reference", outcome="ok") == 1
    assert sample(prom, "sn1_validator_rechecks_total", check="reference", outcome="failed") == 1
    told = recheck_lines(lines, "reference model failing, jobs skipped")
    assert len(told) == 1 and "Incorrect API key: ***" in told[0], lines
    assert not [line for line in lines if SECRET in line], "the key the server quoted is never logged"


async def test_scores_saved_again_by_the_recheck_say_so_and_count_in_metrics(tmp_path: Path) -> None:
    """The recheck's save the disk refuses is its latest try (not one more of the run's failures), counted in
    ``sn1_validator_rechecks_total{check="scores"}``; the save that works is counted ``ok``."""
    path = tmp_path / "scores.json"
    ctx = make_ctx()
    ctx.scores = ScoreBook({"InferenceTask": 1.0}, path=path)
    metrics = ValidatorMetrics()
    reference = CachedReference(DeterministicReference())
    async with serve_app(create_validator_app(ctx, metrics=metrics)) as url:
        path.mkdir()
        (path / "in-the-way").write_text("")  # a file cannot replace a directory: a real OSError
        ctx.scores.update(1, "hk1", "InferenceTask", 1.0)
        await ctx.scores.save_off_loop()
        for _ in range(3):
            await recheck_cycle(None, reference, ctx.scores, quiet=0.0, observe=metrics.observe_recheck)
        check = await ready_check(url, "scores")
        assert check["last_tried_by"] == "recheck" and "IsADirectoryError" in check["detail"], check
        assert ctx.scores.save_outage.failures == 1, "the recheck's saves are no scored job's"
        _, prom = await get(url, "/metrics")
        assert sample(prom, "sn1_validator_rechecks_total", check="scores", outcome="failed") == 3
        async with ctx.scores._saving:  # a scored job's save running as the recheck comes: not tried, not counted
            await recheck_cycle(None, reference, ctx.scores, quiet=0.0, observe=metrics.observe_recheck)
        _, prom = await get(url, "/metrics")
        assert sample(prom, "sn1_validator_rechecks_total", check="scores", outcome="failed") == 3
        (path / "in-the-way").unlink()
        path.rmdir()
        await recheck_cycle(None, reference, ctx.scores, quiet=0.0, observe=metrics.observe_recheck)
        await assert_ready(url)
        _, prom = await get(url, "/metrics")
    assert sample(prom, "sn1_validator_rechecks_total", check="scores", outcome="ok") == 1

