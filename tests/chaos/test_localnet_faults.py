"""Fault profiles as real processes: ``sn1 localnet --miner-profiles honest,refuse,...``."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig, free_port

PROFILES = ["honest", "refuse", "stall-headers", "http500", "disconnect", "bad-sse"]


@pytest.fixture(scope="module")
def faulty_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    directory: Path = tmp_path_factory.mktemp("faultnet")
    net = LocalNet(LocalNetConfig(directory=directory, miners=len(PROFILES), api_port=free_port(),
                                  validator_port=free_port(), miner_profiles=PROFILES,
                                  admin_key="chaos-admin-key-0123456789"))
    try:
        info = net.start(timeout=120)
        info["dir"] = str(directory)
        yield info
    finally:
        net.stop()


def post_chat(info: dict, body: dict, timeout: float = 15) -> tuple[int, dict, str]:
    req = urllib.request.Request(info["api_url"] + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {info['api_key']}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read().decode()


def test_localnet_starts_with_fault_profiles_and_refuse_does_not_block_it(faulty_net: dict) -> None:
    assert [m["profile"] for m in faulty_net["miners"]] == PROFILES


@pytest.mark.parametrize("stream", [False, True])
def test_every_request_is_answered_by_the_honest_miner(faulty_net: dict, stream: bool) -> None:
    for seed in range(4):
        status, headers, text = post_chat(faulty_net, {"model": "default", "seed": seed, "stream": stream,
                                                      "timeout": 5,
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        assert status == 200, text
        assert headers["x-sn1-miner-uid"] == "1", "only the honest miner can produce a valid answer"
        if stream:
            assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        else:
            assert json.loads(text)["choices"][0]["message"]["content"]
