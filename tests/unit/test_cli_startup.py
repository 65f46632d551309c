"""``sn1 api|validator|miner`` refuse to start on bad settings with one clear line each, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neurons.localnet import free_port, free_ports
from shared.wallet import ensure_wallet


def start(role: str, env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", role, "--env-file", str(env_file)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_bad_values_are_listed(tmp_path: Path, role: str) -> None:
    env = tmp_path / "bad.env"
    env.write_text("NETUID=-3\nLOG_LEVEL=LOUD\nAPI_PORT=abc\nSCORING_API_PORT=0\nMINER_PORT=99999\n")
    out = start(role, env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "NETUID" in out.stderr and "LOG_LEVEL" in out.stderr


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_missing_wallet_is_one_clear_line(tmp_path: Path, role: str) -> None:
    env = tmp_path / "nowallet.env"
    api, scoring, miner = free_ports(3)
    env.write_text(f"WALLET_NAME=ghost\nWALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"API_PORT={api}\nSCORING_API_PORT={scoring}\nMINER_PORT={miner}\n")
    out = start(role, env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot load hotkey 'default' of wallet 'ghost'" in out.stderr and "btcli wallet create" in out.stderr


def test_unreadable_metagraph_is_one_clear_line(tmp_path: Path) -> None:
    ensure_wallet("validator", "default", tmp_path / "wallets")
    env = tmp_path / "nometa.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'missing.json'}\n"
                   f"SCORING_API_PORT={free_port()}\n")
    out = start("validator", env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot read the metagraph from file" in out.stderr and "missing.json" in out.stderr


def test_missing_env_file_is_named(tmp_path: Path) -> None:
    out = start("miner", tmp_path / "nope.env")
    assert out.returncode != 0 and "nope.env not found" in out.stderr


@pytest.mark.parametrize(("setting", "content", "expected"), [
    ("DATASET_FILE", '{"messages": [{"role": "user"}]}\n', "data.jsonl:1: messages.0.content: a user message needs content"),
    ("DATASET_FILE", '{"prompt": "ok"}\n{oops\n', "data.jsonl:2: not JSON"),
    ("CORPUS_FILE", '{"title": "no url"}\n', "no record with 'url' and 'content'"),
])
def test_an_unusable_data_file_is_one_clear_line(tmp_path: Path, setting: str, content: str, expected: str) -> None:
    """A dataset whose tasks every miner would refuse (or a corpus with nothing in it) stops the validator
    at start with the setting, the file and the line, not a traceback."""
    from shared.metagraph import write_metagraph_file
    from tests.helpers import snapshot

    hotkey = ensure_wallet("validator", "default", tmp_path / "wallets")
    write_metagraph_file(tmp_path / "mg.json", snapshot(hotkey.ss58_address, {}))
    (tmp_path / "data.jsonl").write_text(content)
    env = tmp_path / "data.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"SCORING_API_PORT={free_port()}\nSTATE_DIR={tmp_path / 'state'}\n"
                   f"{setting}={tmp_path / 'data.jsonl'}\n")
    out = start("validator", env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"sn1 validator: {setting}: " in out.stderr and expected in out.stderr
