"""``sn1 api|validator|miner`` refuse to start on bad settings with one clear line each, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neurons.localnet import free_port
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
    env.write_text(f"WALLET_NAME=ghost\nWALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"API_PORT={free_port()}\nSCORING_API_PORT={free_port()}\nMINER_PORT={free_port()}\n")
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
