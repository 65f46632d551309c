"""Following one request across processes at the default LOG_LEVEL: the request id of the API's access line is
on the INFO line of every miner process it asked (a real local subnet, its logs read from their files)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from pathlib import Path


def chat(info: dict, rid: str, uids: list[int]) -> int:
    body = {"model": "sn1/deterministic", "messages": [{"role": "user", "content": "Where does this go?"}],
            "uids": uids}
    req = urllib.request.Request(info["api_url"] + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {info['api_key']}", "x-request-id": rid,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the local subnet's API
        return resp.status


def logged(log: Path, pattern: str, timeout: float = 15.0) -> list[str]:
    """The lines of ``log`` matching ``pattern`` once there are any (the logs are batched: up to 0.1 s late)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in log.read_text(errors="replace").splitlines() if re.search(pattern, line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_the_api_access_lines_request_id_is_on_each_asked_miners_info_line(localnet: dict) -> None:
    """The miner logged each request at DEBUG only: an on-call engineer holding the API's ``rid=`` found nothing
    in a miner's log at INFO, and turning DEBUG on meant a restart and a line per poll."""
    rid = f"follow-{uuid.uuid4().hex[:12]}"
    uids = [m["uid"] for m in localnet["miners"]]
    assert chat(localnet, rid, uids) == 200
    logs = Path(localnet["dir"]) / "logs"
    (api_line,) = logged(logs / "api.log", rf"\| INFO +\| api\S* \| chat rid={rid} ")
    winner = int(re.search(r" winner=(\d+) ", api_line).group(1))  # type: ignore[union-attr]
    assert f" uids={str(uids).replace(' ', '')} " in api_line, api_line
    caller = localnet["validator_hotkey"][:10]  # the API signs with the validator's hotkey here
    for uid in uids:
        lines = logged(logs / f"miner{uid}.log", rf"\| INFO +\| miner \| chat rid={rid} ")
        assert len(lines) == 1, (uid, lines)  # one line per request
        assert f"chat rid={rid} caller={caller} stream=False status=" in lines[0], lines[0]
        assert re.search(r" latency_ms=\d+\.\d$", lines[0]), lines[0]
        if uid == winner:
            assert " status=200 " in lines[0], lines[0]
