"""What the README tells an operator to monitor is what the processes answer: the validator's `/ready` table (every
check, in order, and whether it is required), the fields its `/health` lists, and the API's `/ready` checks as
"Health and readiness" and the `check_ok{check}` metric name them. A check added, renamed or made a warning without
its line there would leave a monitor, or a reader of a 503, looking for a name that is not there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from neurons.validator.readiness import CHECKS
from tests.helpers import api_with_miners, serve_app
from tests.validator.test_app import make_ctx

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(head: str) -> str:
    text = README[README.index(head):]
    return text[:text.index("\n#", len(head))]


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


def validator_table() -> dict[str, str]:
    """``{check: its "required" cell}``, in the order of the table in "Is the validator doing its job?"."""
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section("### Is the validator doing its job?"), re.M))


async def validator_answers() -> tuple[dict, dict]:
    from neurons.validator.app import create_validator_app
    from shared.metrics import ValidatorMetrics

    async with serve_app(create_validator_app(make_ctx(), metrics=ValidatorMetrics())) as url:
        return await get_json(url + "/ready"), await get_json(url + "/health")


async def test_the_validators_ready_table_is_its_checks_in_order_each_required_as_it_says() -> None:
    table = validator_table()
    assert list(table) == list(CHECKS), "the README's /ready table and neurons/validator/readiness.py CHECKS"
    ready, health = await validator_answers()
    assert list(ready["checks"]) == list(CHECKS)
    for name, cell in table.items():
        if cell in ("yes", "no"):  # the others depend on the sink ("with the chain sink", "unless weights are ...")
            assert ready["checks"][name]["required"] is (cell == "yes"), (name, cell)
    http_api = section("### HTTP API (port `SCORING_API_PORT`")
    row = next(line for line in http_api.splitlines() if line.startswith("| `GET /health`"))
    listed = re.findall(r'"(\w+)"', re.search(r"`\{([^}]*)\}`", row).group(1))
    assert listed == list(health), "the README's /health fields, in the order the validator answers them"


async def test_the_apis_ready_checks_are_the_ones_the_readme_names(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}) as api, aiohttp.ClientSession() as s, \
            s.get(api.url + "/ready") as r:
        checks = (await r.json())["checks"]
    metrics = section("### Metrics (`GET /metrics`")
    named = re.search(r"`check_ok\{check\}` \(1 while that `/ready` check passes, warnings included: ([^;)]*)",
                      metrics).group(1)
    assert sorted(re.findall(r"`(\w+)`", named)) == sorted(checks), "the API's check_ok{check} values in Metrics"
    # "...`outbox` (...), `miners` (...). `validator` (...) is a `warnings` entry, not a reason: ... So is `permit`: ..."
    reasons, warnings = " ".join(section("### Health and readiness").split()).split(" is a `warnings` entry", 1)
    for name, check in checks.items():
        if check["required"]:
            assert f"`{name}` (" in reasons, f"{name}: a reason of a 503 Health and readiness does not describe"
        else:
            assert re.search(rf"`{name}` \([^()]*\)$", reasons) or \
                f"So is `{name}`:" in warnings, f"{name}: a warning Health and readiness does not call one"
