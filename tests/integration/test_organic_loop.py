"""The loop closes: organic API traffic reaches the validator through the outbox and moves scores."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import openai

from neurons.localnet import LocalNet, LocalNetConfig, free_ports


def scores(validator_url: str) -> dict[int, float]:
    with urllib.request.urlopen(validator_url + "/scores", timeout=5) as r:
        data = json.loads(r.read())
    return {m["uid"]: m["score"] for m in data["miners"]}


def test_organic_traffic_changes_the_validators_scores(tmp_path: Path) -> None:
    # synthetic tasks off: only organic answers can move the scores; both miners asked each time (DEFAULT_K: the
    # API chooses them; miners a caller names are not scored)
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path, miners=2, api_port=api_port, validator_port=validator_port,
                            admin_key="organic-admin-key-0123456789", miner_profiles=["honest", "lazy"],
                            extra_env={"SYNTHETIC_ENABLED": "false", "DEFAULT_K": "2"})
    with LocalNet(config) as net:
        info = net.start(timeout=120)
        before = scores(info["validator_url"])
        assert before.get(1, 0.0) == 0.0 and before.get(2, 0.0) == 0.0
        client = openai.OpenAI(base_url=info["api_url"] + "/v1", api_key=info["api_key"], max_retries=0, timeout=30)
        for i in range(6):
            client.chat.completions.create(model="default", seed=i,
                                           messages=[{"role": "user", "content": f"organic question {i}"}])
        deadline = time.monotonic() + 30
        after = before
        while time.monotonic() < deadline:
            after = scores(info["validator_url"])
            if after.get(1, 0.0) > 0 and after.get(1, 0.0) > after.get(2, 0.0):
                break
            time.sleep(0.3)
    assert after[1] > 0, "the honest miner's organic answers must raise its score"
    assert after[1] > after.get(2, 0.0), "the lazy miner's organic answers must score below the honest one's"
