"""What an API on SQLite loads: the Redis client (with the tracing and crypto packages it pulls in, 9 MB of
every worker's memory) only when the store is Redis. A top-level import in api/main.py once loaded it for
every API, and the bench's 1,000 open streams went from 136 to 144 MB of its 150 MB target.

What an ``sn1`` command loads before it answers: ``sn1 --help``, ``sn1 keys ...`` and ``sn1 localnet --help``
built their parser from modules that loaded pydantic, loguru and aiohttp (~0.2 s of CPU, more on a busy host) to
print a page of text; a settings error is said without the SDK, aiohttp or loguru, which only a process that
gets past its settings uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_an_api_on_sqlite_does_not_load_the_redis_client() -> None:
    code = ("import sys, api.main, api.app, shared.cli, shared.store; "
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_start_that_stops_on_its_settings_loads_neither_the_sdk_nor_aiohttp(tmp_path: Path) -> None:
    """``sn1 api|validator|miner`` with a bad setting, and ``sn1 keys --help``, say their line without loading
    bittensor (~0.8 s of CPU: its ``__init__`` imports the EVM and Ethereum packages), aiohttp (~0.3 s) or loguru:
    the empty hotkey lists' check imported the SDK, building the parser loaded the admin client's aiohttp, and
    then ``sn1 localnet``'s loguru (``shared.listen``)."""
    env = tmp_path / "bad.env"
    env.write_text("NETUID=-3\n")
    code = ("import sys, shared.cli\n"
            "for argv in (['api', '--env-file', sys.argv[1]], ['validator', '--env-file', sys.argv[1]],\n"
            "             ['miner', '--env-file', sys.argv[1]], ['keys', '--help']):\n"
            "    try:\n"
            "        shared.cli.main(argv)\n"
            "    except SystemExit as e:\n"
            "        print('exit', e.code, file=sys.stderr)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'bittensor', 'aiohttp', 'loguru'}))")
    out = subprocess.run([sys.executable, "-c", code, str(env)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]
    assert [line.split(":")[0] for line in out.stderr.splitlines() if line.startswith("exit ")] == [
        "exit sn1 api", "exit sn1 validator", "exit sn1 miner", "exit 0"], out.stderr[-2000:]
    assert out.stderr.count("NETUID: Input should be greater than or equal to 0") == 3, out.stderr[-2000:]


def test_hotkeys_are_checked_without_loading_the_sdk(tmp_path: Path) -> None:
    """A validator's ``API_HOTKEYS``, a miner's ``ALLOWED_HOTKEYS`` and ``sn1 localnet --external-miner`` are SS58
    addresses, checked on their checksum: the check imported ``bittensor.sp_core``, and so the whole SDK (its
    ``__init__`` loads the EVM and Ethereum packages, ~0.4 s of CPU), for a start that then stopped on a setting.
    A mistyped hotkey is still named on its line."""
    good, typo = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ"
    env = tmp_path / "bad.env"
    env.write_text(f"NETUID=-3\nAPI_HOTKEYS={good}\nALLOWED_HOTKEYS={good},{typo}\n")
    code = ("import sys, shared.cli\n"
            "for argv in (['validator', '--env-file', sys.argv[1]], ['miner', '--env-file', sys.argv[1]],\n"
            "             ['localnet', '--external-miner', sys.argv[2] + '@127.0.0.1:8095', '--help']):\n"
            "    try:\n"
            "        shared.cli.main(argv)\n"
            "    except SystemExit as e:\n"
            "        print('exit', e.code, file=sys.stderr)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'bittensor', 'aiohttp'}))")
    out = subprocess.run([sys.executable, "-c", code, str(env), good], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]
    assert "NETUID" in out.stderr and "API_HOTKEYS" not in out.stderr, out.stderr[-2000:]
    assert (f"sn1 miner: ALLOWED_HOTKEYS: {typo!r} is not a hotkey's SS58 address (5...): invalid ss58 address: "
            "Invalid checksum") in out.stderr, out.stderr[-2000:]


PARSER_ONLY = frozenset({"bittensor", "aiohttp", "loguru", "pydantic", "pydantic_settings"})  # argparse's text alone
STORE_FILE_ONLY = PARSER_ONLY - {"loguru"}  # the SQLite store's modules log with loguru


def imported(args: list[str], cwd: Path) -> tuple[set[str], list[str]]:
    """The top-level packages ``sn1 <args>`` imported (``-X importtime``'s report of a real process, with no
    setting in its environment), and its stderr lines but that report's."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "shared.cli", *args], capture_output=True,
                         text=True, timeout=60, cwd=cwd, env=env)
    report = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert report, out.stderr[-2000:]  # -X importtime ran
    return {line.rpartition("|")[2].strip().split(".")[0] for line in report}, said


@pytest.mark.parametrize("args", [["--help"], ["keys", "--help"], ["api", "--help"], ["localnet", "--help"],
                                  ["keys", "list"], ["localnet", "--api-port", "70000"]],
                         ids=["help", "keys-help", "api-help", "localnet-help", "keys-no-admin-key", "localnet-port"])
def test_help_and_usage_errors_load_nothing_but_the_parser(tmp_path: Path, args: list[str]) -> None:
    """A help page, a bad option and ``sn1 keys`` without an admin key are said with argparse alone."""
    modules, said = imported(args, tmp_path)
    assert not modules & PARSER_ONLY, (sorted(modules & PARSER_ONLY), said[-5:])


@pytest.mark.parametrize("command", ["backup", "vacuum"])
def test_a_store_file_command_loads_neither_the_settings_nor_the_sdk(tmp_path: Path, command: str) -> None:
    """``sn1 backup`` and ``sn1 vacuum`` read a SQLite file: a ``STORE_URL`` they cannot take is said without
    pydantic (its credentials masked all the same), and neither ever loads the SDK or aiohttp."""
    args = [command, "redis://:SECRET@127.0.0.1:6379/0", *(["copy.db"] if command == "backup" else [])]
    modules, said = imported(args, tmp_path)
    assert len(said) == 1 and said[0].startswith(f"sn1 {command}: redis://***@127.0.0.1:6379/0: not a SQLite store"), \
        said
    assert not modules & STORE_FILE_ONLY, sorted(modules & STORE_FILE_ONLY)


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_a_wallet_that_names_no_key_is_said_before_the_sdk_loads(tmp_path: Path, role: str) -> None:
    """A misspelt ``WALLET_NAME`` is a setting to fix as a bad value is: said before the role's modules load the
    SDK (each role's signing imports it), which cost the line ~0.7 s of CPU more."""
    env = tmp_path / "w.env"
    env.write_text(f"WALLET_NAME=ghost\nWALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n")
    modules, said = imported([role, "--env-file", str(env)], tmp_path)
    assert len(said) == 1 and said[0].startswith(f"sn1 {role}: WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: cannot load "
                                                 "hotkey 'default' of wallet 'ghost'"), said[-5:]
    assert not modules & {"bittensor", "aiohttp"}, sorted(modules & {"bittensor", "aiohttp"})
