"""The issue's "done when": with --fast, honest miners hold > 90 % of the weight, ranked by quality.

A real local subnet (child processes, real wallets, signed HTTP): two honest
miners and one each of lazy, slow, copy and down. Bounded: it gives up after
150 s (it normally passes in about a minute).
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from neurons.localnet import LocalNet, LocalNetConfig
from tests.ports import free_ports, pool

PROFILES = ["honest", "honest", "lazy", "slow", "copy", "down"]
LIMIT_S = 150.0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def ranked_honest_first(scores: dict, honest: set[int]) -> bool:
    by_uid = {m["uid"]: m["score"] for m in scores["miners"]}
    others = [s for u, s in by_uid.items() if u not in honest]
    return bool(others) and all(by_uid.get(u, 0.0) > max(others) for u in honest)


def honest_share(scores: dict, honest: set[int]) -> float:
    total = sum(m["weight"] for m in scores["miners"])
    return sum(m["weight"] for m in scores["miners"] if m["uid"] in honest) / total if total else 0.0


def test_weights_follow_quality_with_fast_intervals(tmp_path: Path) -> None:
    api_port, validator_port = free_ports(2)
    net = LocalNet(LocalNetConfig(directory=tmp_path, miners=len(PROFILES), api_port=api_port,
                                  validator_port=validator_port, admin_key="quality-admin-key-0123456789",
                                  miner_profiles=PROFILES, fast=True), ports=pool())
    try:
        info = net.start(timeout=120)
        started = time.monotonic()
        listed = {m["uid"]: m["profile"] for m in json.loads((tmp_path / "localnet.json").read_text())["miners"]}
        assert listed == {i + 1: p for i, p in enumerate(PROFILES)}
        honest = {uid for uid, p in listed.items() if p == "honest"}
        scores: dict = {}
        while time.monotonic() - started < LIMIT_S:
            scores = get_json(info["validator_url"] + "/scores")
            if (scores["last_weights_set_at"] and honest_share(scores, honest) > 0.9
                    and ranked_honest_first(scores, honest)):
                break
            time.sleep(2)
        elapsed = time.monotonic() - started
        by_uid = {m["uid"]: m for m in scores["miners"]}
        assert honest_share(scores, honest) > 0.9, f"after {elapsed:.0f}s: {scores}"
        assert ranked_honest_first(scores, honest), scores
        down = next(u for u, p in listed.items() if p == "down")
        lazy = next(u for u, p in listed.items() if p == "lazy")
        assert by_uid[down]["weight"] == 0.0
        assert by_uid[lazy]["score"] < min(by_uid[u]["score"] for u in honest) / 3
        slow = next(u for u, p in listed.items() if p == "slow")  # answers at 80 % of the tasks' deadline: late
        assert 0 < by_uid[slow]["score"] < min(by_uid[u]["score"] for u in honest) / 2, by_uid[slow]
        # the ledger moved incentives in the metagraph file, so API traffic follows quality
        metagraph = json.loads((tmp_path / "metagraph.json").read_text())
        incentive = {n["uid"]: n["incentive"] for n in metagraph["neurons"]}
        assert sum(incentive[u] for u in honest) > 0.85
        assert json.loads((tmp_path / "weights.json").read_text())["validator_hotkey"] == info["validator_hotkey"]
        assert (tmp_path / "state" / "validator" / "scores.json").exists()
    finally:
        net.stop()
