"""The loop closes: organic API traffic reaches the validator through the outbox and moves scores."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from tests.ports import free_ports, pool


def scores(validator_url: str) -> dict[int, float]:
    with urllib.request.urlopen(validator_url + "/scores", timeout=5) as r:
        data = json.loads(r.read())
    return {m["uid"]: m["score"] for m in data["miners"]}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "send_email", "description": "Send an email",
                                           "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}]


@pytest.mark.parametrize("agent", [False, True], ids=["chat", "agent-with-tools"])
def test_organic_traffic_changes_the_validators_scores(tmp_path: Path, agent: bool) -> None:
    """An agent's requests (tools offered, calls answered) move the scores too: a call was once never scored,
    so any call of any offered tool was a free pass."""
    # synthetic tasks off: only organic answers can move the scores; both miners asked each time (DEFAULT_K: the
    # API chooses them; miners a caller names are not scored)
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path, miners=2, api_port=api_port, validator_port=validator_port,
                            admin_key="organic-admin-key-0123456789", miner_profiles=["honest", "lazy"],
                            extra_env={"SYNTHETIC_ENABLED": "false", "DEFAULT_K": "2"})
    with LocalNet(config, ports=pool()) as net:
        info = net.start(timeout=120)
        before = scores(info["validator_url"])
        assert before.get(1, 0.0) == 0.0 and before.get(2, 0.0) == 0.0
        client = openai.OpenAI(base_url=info["api_url"] + "/v1", api_key=info["api_key"], max_retries=0, timeout=30)
        for i in range(6):
            extra = {"tools": TOOLS} if agent else {}
            answer = client.chat.completions.create(
                model="default", seed=i, messages=[{"role": "user", "content": f"organic question {i}"}], **extra)
            assert bool(answer.choices[0].message.tool_calls) is agent
        deadline = time.monotonic() + 30
        after = before
        while time.monotonic() < deadline:
            after = scores(info["validator_url"])
            if after.get(1, 0.0) > 0 and after.get(1, 0.0) > after.get(2, 0.0):
                break
            time.sleep(0.3)
    assert after[1] > 0, "the honest miner's organic answers must raise its score"
    assert after[1] > after.get(2, 0.0), "the lazy miner's organic answers must score below the honest one's"
