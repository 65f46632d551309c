"""``sn1 api|validator|miner`` refuse to start on bad settings with one clear line each, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import SETTING_NAMES
from shared.wallet import ensure_wallet
from tests.ports import free_port, free_ports

Sn1 = Callable[..., subprocess.CompletedProcess]


def start(role: str, env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", role, "--env-file", str(env_file)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def sn1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Sn1:
    """``sn1 <args>`` run in this process (``shared.cli.main``), from ``tmp_path`` with no setting in the environment
    but ``environ``: its status and output as a shell gets them (the text of a ``SystemExit`` is printed to stderr,
    with status 1, as Python does). For what the command line and settings validation say: a process start each
    (0.25-0.5 s of CPU) made this file one of the suite's slowest. ``REAL_STARTS`` and tests/unit/test_import_footprint.py
    start real processes for the same lines. A command that gets past its settings fails the test here: it would
    have started a server in the test process."""
    from shared.cli import main

    def started(role: str, settings: object) -> None:
        raise AssertionError(f"sn1 {role} got past its settings, and would have started")

    def run(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        monkeypatch.chdir(tmp_path)
        for name in [k for k in os.environ if k.upper() in SETTING_NAMES]:
            monkeypatch.delenv(name)
        for name, value in (environ or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr("shared.cli._run_role", started)
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main(list(args))
        out, code = capsys.readouterr(), stopped.value.code
        said = f"{code}\n" if isinstance(code, str) else ""
        return subprocess.CompletedProcess(["sn1", *args], 1 if said else code or 0, out.out, out.err + said)

    return run


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_bad_values_are_listed(tmp_path: Path, role: str, sn1: Sn1) -> None:
    env = tmp_path / "bad.env"
    env.write_text("NETUID=-3\nLOG_LEVEL=LOUD\nAPI_PORT=abc\nSCORING_API_PORT=0\nMINER_PORT=99999\n")
    out = sn1(role, "--env-file", str(env))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "NETUID" in out.stderr and "LOG_LEVEL" in out.stderr


BAD_VALUES = [
    ("api", "REQUEST_TIMEOUT=-1\n", "sn1 api: REQUEST_TIMEOUT: Input should be greater than 0 (got '-1')"),
    ("api", "API_PORT=70000\n", "sn1 api: API_PORT: Input should be less than or equal to 65535 (got '70000')"),
    ("api", "DEFAULT_K=five\n", "sn1 api: DEFAULT_K: Input should be a valid integer, unable to parse string as an "
                             "integer (got 'five')"),
    ("api", "STORE_URL=postgres://db/sn1\n", "sn1 api: STORE_URL: must be sqlite:///path (one host), "
                                            "redis://host:port/db or rediss://... (a fleet) (got 'postgres://db/sn1')"),
    ("api", "STORE_URL=sqlite://state/api.db\n", "sn1 api: STORE_URL: must be sqlite:///path (one host), "
                                              "redis://host:port/db or rediss://... (a fleet): write "
                                              "sqlite:///state/api.db (from the working directory) or "
                                              "sqlite:////state/api.db (from /) (got 'sqlite://state/api.db')"),
    ("api", "STORE_URL=/var/lib/sn1/api.db\n", "sn1 api: STORE_URL: must be sqlite:///path (one host), "
                                               "redis://host:port/db or rediss://... (a fleet): write "
                                               "sqlite:////var/lib/sn1/api.db (four slashes for a path from /) "
                                               "(got '/var/lib/sn1/api.db')"),
    ("api", "STORE_URL=redis://127.0.0.1:6379/sn1\n",
     "sn1 api: STORE_URL: 'redis://127.0.0.1:6379/sn1': the database 'sn1' is not a number (redis://host:6379/0: "
     "Redis databases are numbered)"),
    ("api", "STORE_URL=redis://:hunter2@127.0.0.1:63790x/11\n",
     "sn1 api: STORE_URL: 'redis://***@127.0.0.1:63790x/11': the port is not a number (redis://host:6379/0)"),
    ("api", "VALIDATOR_API=ops:hunter2@10.0.0.2:8094\n",
     "sn1 api: VALIDATOR_API: '***@10.0.0.2:8094' is not an http(s) URL (http://host:port/...)"),
    ("validator", "LOG_LEVEL=verbose\n", "sn1 validator: LOG_LEVEL: Input should be 'TRACE', 'DEBUG', 'INFO', "
                                         "'SUCCESS', 'WARNING' or 'ERROR' (got 'VERBOSE')"),
    ("validator", "TASK_PROBABILITIES={InferenceTask: 1}\n",
     "sn1 validator: TASK_PROBABILITIES: must be a JSON object ({\"name\": value, ...}) (got '{InferenceTask: 1}')"),
    ("validator", "AVAILABILITY_TIMEOUT=-3\n",
     "sn1 validator: AVAILABILITY_TIMEOUT: Input should be greater than 0 (got '-3')"),
    ("validator", "SCORING_API_PORT=80940\n",
     "sn1 validator: SCORING_API_PORT: Input should be less than or equal to 65535 (got '80940')"),
    ("validator", "SCORE_ALPHA=0,1\n", "sn1 validator: SCORE_ALPHA: Input should be a valid number, unable to parse "
                                       "string as a number (got '0,1')"),
    ("validator", "REFERENCE_LLM_URL=localhost:8000/v1\n",
     "sn1 validator: REFERENCE_LLM_URL: 'localhost:8000/v1' is not an http(s) URL (http://host:port/...): write "
     "http://localhost:8000/v1"),
    ("miner", "UPSTREAM_TIMEOUT=0\n", "sn1 miner: UPSTREAM_TIMEOUT: Input should be greater than 0 (got '0')"),
    ("miner", "MINER_BACKEND=openai\nUPSTREAM_URL=127.0.0.1:8000/v1\n",
     "sn1 miner: UPSTREAM_URL: '127.0.0.1:8000/v1' is not an http(s) URL (http://host:port/...): write "
     "http://127.0.0.1:8000/v1"),
    # the original subnet API's .env.api.example line, as written there
    ("api", 'VALIDATOR_API = "0.0.0.0:8094"\n',
     "sn1 api: VALIDATOR_API: '0.0.0.0:8094' is not an http(s) URL (http://host:port/...): write http://0.0.0.0:8094"),
    ("miner", "LOG_LEVEL=warn\n", "sn1 miner: LOG_LEVEL: Input should be 'TRACE', 'DEBUG', 'INFO', 'SUCCESS', "
                                  "'WARNING' or 'ERROR' (got 'WARN')"),
    ("miner", "MINER_PORT=8o91\n", "sn1 miner: MINER_PORT: Input should be a valid integer, unable to parse string as "
                                   "an integer (got '8o91')"),
]
BAD_VALUE_IDS = ["negative-timeout", "port-range", "not-a-number", "store-scheme", "sqlite-two-slashes", "sqlite-bare-path",
        "redis-db-name", "redis-port", "url-scheme", "log-level", "json",
        "v-negative-timeout", "v-port-range", "v-not-a-number", "v-url-scheme",
        "zero-timeout", "m-url-scheme", "original-env-api", "m-log-level", "port-typo"]
REAL_STARTS = ["redis-port", "v-url-scheme", "port-typo"]  # a role each, run as real processes too


@pytest.mark.parametrize(("role", "content", "expected"), BAD_VALUES, ids=BAD_VALUE_IDS)
def test_a_bad_value_is_one_line_naming_the_command_the_setting_and_the_value(
        tmp_path: Path, role: str, content: str, expected: str, sn1: Sn1) -> None:
    """What an operator reads in ``journalctl`` or ``pm2 logs``: the whole problem on one line that says which
    process and which variable, and the value it was given (a URL's credentials masked). It was a
    ``sn1 api: invalid settings:`` line, then the variable indented on the next, with pydantic's
    ``Value error,`` and never the value."""
    env = tmp_path / "bad.env"
    env.write_text(content)
    out = sn1(role, "--env-file", str(env))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [expected]
    assert "hunter2" not in out.stderr


@pytest.mark.parametrize(("role", "content", "expected"),
                         [case for case, name in zip(BAD_VALUES, BAD_VALUE_IDS, strict=True) if name in REAL_STARTS],
                         ids=REAL_STARTS)
def test_a_real_start_says_a_bad_value_in_the_same_one_line(
        tmp_path: Path, role: str, content: str, expected: str) -> None:
    """The in-process runs above, end to end: a process of its own prints that line alone and exits 1."""
    env = tmp_path / "bad.env"
    env.write_text(content)
    out = start(role, env)
    assert (out.returncode, out.stderr.splitlines()) == (1, [expected])
    assert "hunter2" not in out.stderr


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_missing_wallet_is_one_clear_line(tmp_path: Path, role: str) -> None:
    env = tmp_path / "nowallet.env"
    api, scoring, miner = free_ports(3)
    env.write_text(f"WALLET_NAME=ghost\nWALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"API_PORT={api}\nSCORING_API_PORT={scoring}\nMINER_PORT={miner}\n")
    out = start(role, env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot load hotkey 'default' of wallet 'ghost'" in out.stderr and "btcli wallet create" in out.stderr


def test_a_hotkey_missing_from_a_wallet_that_exists_is_added_not_the_wallet_created_again(tmp_path: Path) -> None:
    """The line said ``btcli wallet create -w miner -H hk2`` for it, which asks to overwrite the wallet's coldkey
    (a yes loses it) and fails with a traceback on a no; and it named none of the wallet's hotkeys (a misspelt
    WALLET_HOTKEY)."""
    from shared.settings import SettingsError
    from shared.wallet import load_hotkey

    wallets = tmp_path / "wallets"
    ensure_wallet("miner", "default", wallets)
    with pytest.raises(SettingsError) as e:
        load_hotkey("miner", "hk2", wallets)
    assert str(e.value).endswith(f". Add it to the wallet with: btcli wallet new-hotkey -w miner -H hk2 --wallet-path "
                                 f"{wallets} (its hotkeys: default)"), e.value
    with pytest.raises(SettingsError) as e:
        load_hotkey("ghost", "default", wallets)
    assert str(e.value).endswith(f". Create it with: btcli wallet create -w ghost -H default --wallet-path {wallets}")


def test_a_wallet_this_user_cannot_enter_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A service's user (the units' ``User=sn1``) and a wallet under root's own directory: the hotkey cannot be
    read (Permission denied), and looking for the ``btcli`` line to suggest (does the wallet exist, which hotkeys
    does it hold) raised that PermissionError again, out of the error being made: a traceback, not the one line.
    A hotkey name too long for the file system took the same path."""
    from shared.settings import SettingsError
    from shared.wallet import load_hotkey
    from tests.helpers import without_access

    wallets = tmp_path / "wallets"
    ensure_wallet("miner", "default", wallets)
    with pytest.raises(SettingsError, match="File name too long"):
        load_hotkey("miner", "h" * 300, wallets)
    said = without_access(wallets, lambda: load_hotkey("miner", "default", wallets))
    assert said.startswith(f"{SettingsError.__name__}: WALLET_NAME/WALLET_HOTKEY/WALLET_PATH: cannot load hotkey "
                           "'default' of wallet 'miner'") and "Permission denied" in said, said
    assert "btcli wallet create" not in said, said  # the wallet exists: it is not this user's to read


def test_unreadable_metagraph_is_one_clear_line(tmp_path: Path) -> None:
    ensure_wallet("validator", "default", tmp_path / "wallets")
    env = tmp_path / "nometa.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'missing.json'}\n"
                   f"SCORING_API_PORT={free_port()}\n")
    out = start("validator", env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot read the metagraph from file" in out.stderr and "missing.json" in out.stderr


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_missing_env_file_is_named(tmp_path: Path, role: str, sn1: Sn1) -> None:
    """An env file asked for and missing stops the start, settings in the environment or not."""
    out = sn1(role, "--env-file", str(tmp_path / "nope.env"), environ={"NETUID": "5"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [f"sn1 {role}: env file {tmp_path / 'nope.env'} not found"]


@pytest.mark.parametrize(("setting", "content", "expected"), [
    ("DATASET_FILE", '{"messages": [{"role": "user"}]}\n', "data.jsonl:1: messages.0.content: a user message needs content"),
    ("DATASET_FILE", '{"prompt": "ok"}\n{oops\n', "data.jsonl:2: not JSON"),
    ("CORPUS_FILE", '{"title": "no url"}\n', "no record with 'url' and 'content'"),
    ("CORPUS_FILE", '{"url": "https://a.example/a page", "content": "x"}\n',
     "no record with 'url' and 'content' left: 1 record(s) with a url the API drops from search results"),
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


def _validator_env(tmp_path: Path, extra: str) -> Path:
    from shared.metagraph import write_metagraph_file
    from tests.helpers import snapshot

    hotkey = ensure_wallet("validator", "default", tmp_path / "wallets")
    write_metagraph_file(tmp_path / "mg.json", snapshot(hotkey.ss58_address, {}))
    env = tmp_path / "v.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"SCORING_API_PORT={free_port()}\nSTATE_DIR={tmp_path / 'state'}\n{extra}")
    return env


@pytest.mark.parametrize(("extra", "expected"), [
    ("STATE_DIR=/proc/nope\n", "STATE_DIR: /proc/nope is not a writable directory"),
    ("WEIGHTS_LEDGER_FILE=/proc/nope/weights.json\n",
     "sn1 validator: WEIGHTS_LEDGER_FILE: /proc/nope/weights.json cannot be written, as the weights ledger does at "
     "every weights cycle: /proc/nope is not a writable directory"),
    ('TASK_PROBABILITIES={"Inference": 1}\n', "unknown task(s) Inference; the tasks are InferenceTask"),
    ('TASK_PROBABILITIES={"InferenceTask": -1}\n', "probabilities must be non-negative"),
], ids=["state-dir", "weights-ledger", "task-names", "negative"])
def test_a_validator_setting_it_cannot_work_with_is_one_clear_line(tmp_path: Path, extra: str, expected: str) -> None:
    """A real start: the directories are checked as the validator starts (``run_validator``), past its settings."""
    out = start("validator", _validator_env(tmp_path, extra))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert expected in out.stderr


@pytest.mark.parametrize(("given", "warned"), [
    ('{"InferenceTask": 1.5, "ArithmeticTask": 0.5}', 'TASK_PROBABILITIES {"InferenceTask": 1.5, "ArithmeticTask": '
     '0.5} sum to 2, not 1: normalised to {"InferenceTask": 0.75, "ArithmeticTask": 0.25} (each task\'s share of '
     'synthetic jobs and of the combined score)'),
    ('{"InferenceTask": 0.75, "ArithmeticTask": 0.25}', None),
], ids=["normalised", "sums-to-1"])
def test_task_probabilities_that_do_not_sum_to_1_are_a_warning_naming_those_used(
        tmp_path: Path, given: str, warned: str | None) -> None:
    """``TASK_PROBABILITIES={"InferenceTask": 1.5, ...}`` was normalised in silence: the operator could not tell what
    share each task got. The validator starts all the same, and says once, in a WARNING, what it uses."""
    import signal
    import threading

    env = _validator_env(tmp_path, f"TASK_PROBABILITIES={given}\n")
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "validator", "--env-file", str(env)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Timer(60, proc.kill)  # a start that never serves fails the test, never hangs it
    stop.start()
    lines: list[str] = []
    try:
        while (line := proc.stdout.readline()) and "serving on" not in line:
            lines.append(line.rstrip("\n"))
    finally:
        stop.cancel()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert line, "\n".join(lines[-20:])  # it served
    said = [x for x in lines if "TASK_PROBABILITIES" in x]
    if warned is None:
        assert said == [], said
    else:
        assert len(said) == 1 and "WARNING" in said[0] and said[0].endswith(warned), said


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _validator_env(tmp_path, f"SCORING_API_HOST=127.0.0.1\nSCORING_API_PORT={port}\n")
        out = start("validator", env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"sn1 validator: SCORING_API_HOST/SCORING_API_PORT: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in out.stderr.splitlines()
    assert "Unclosed" not in out.stderr, "it stops before it builds anything"


def test_an_unknown_miner_profile_and_an_unopenable_store_are_one_clear_line(tmp_path: Path) -> None:
    from shared.metagraph import write_metagraph_file
    from tests.helpers import snapshot

    hotkey = ensure_wallet("miner", "default", tmp_path / "wallets")
    ensure_wallet("validator", "default", tmp_path / "wallets")
    write_metagraph_file(tmp_path / "mg.json", snapshot(hotkey.ss58_address, {}))
    common = f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
    (tmp_path / "m.env").write_text(common + f"MINER_PORT={free_port()}\nMINER_PROFILE=bogus\n")
    out = start("miner", tmp_path / "m.env")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "MINER_PROFILE: unknown profile 'bogus'; the profiles are" in out.stderr and "honest" in out.stderr
    (tmp_path / "a.env").write_text(common + f"WALLET_NAME=validator\nAPI_PORT={free_port()}\n"
                                             "STORE_URL=sqlite:////proc/nope/api.db\nVALIDATOR_API=http://127.0.0.1:9\n")
    out = start("api", tmp_path / "a.env")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "STORE_URL: cannot open sqlite:////proc/nope/api.db" in out.stderr


def test_log_levels_are_read_in_any_case(tmp_path: Path) -> None:
    from shared.settings import ApiSettings, load_settings

    (tmp_path / "l.env").write_text("LOG_LEVEL=debug\n")
    assert load_settings(ApiSettings, tmp_path / "l.env").log_level == "DEBUG"


@pytest.mark.parametrize(("args", "expected"), [
    (["--api-port", "70000"], "70000 is not a port"), (["--log-level", "loud"], "'loud' is not a log level"),
    (["--miners", "1", "--miner-port", "20001", "--miner-port", "20002"], "--miner-port is given more times than"),
    (["--miner-port", "42170"], "each miner needs a port of its own, not the API's nor the validator's"),
])
def test_localnet_refuses_a_bad_option_before_starting_anything(tmp_path: Path, args: list[str], expected: str) -> None:
    out = subprocess.run([sys.executable, "-m", "shared.cli", "localnet", "--dir", str(tmp_path / "ln"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ln").exists()


def test_localnet_children_take_their_settings_from_their_env_files_only() -> None:
    from neurons.localnet import child_environment

    shell = {"PATH": "/usr/bin", "HOME": "/root", "WALLET_NAME": "validator", "wallet_path": "/x",
             "MINER_PORT": "1", "STORE_URL": "redis://elsewhere", "ADMIN_KEY": "k", "REDIS_URL": "redis://x"}
    assert child_environment(shell) == {"PATH": "/usr/bin", "HOME": "/root", "REDIS_URL": "redis://x"}


@pytest.mark.parametrize(("cls_name", "content", "expected"), [
    ("ApiSettings", "ADMIN_KEY=adminadmin\n", "ADMIN_KEY: must be at least 16 characters"),
    ("ApiSettings", "VALIDATOR_API=127.0.0.1:8094\n", "VALIDATOR_API: '127.0.0.1:8094' is not an http(s) URL"),
    ("ApiSettings", "REQUEST_TIMEOUT=200\n", "REQUEST_TIMEOUT: 200 s is above MAX_REQUEST_TIMEOUT (120 s)"),
    ("MinerSettings", "MINER_BACKEND=openai\nUPSTREAM_URL=localhost:8000\n", "UPSTREAM_URL: 'localhost:8000' is not an http(s) URL"),
    ("ValidatorSettings", "REFERENCE_LLM_URL=localhost:8000/v1\n", "REFERENCE_LLM_URL: 'localhost:8000/v1' is not an http(s) URL"),
], ids=["weak-admin-key", "validator-url", "timeouts", "upstream-url", "reference-url"])
def test_settings_that_would_fail_later_are_refused_at_start(tmp_path: Path, cls_name: str, content: str,
                                                             expected: str) -> None:
    """A URL without its scheme started, then failed every call; a default deadline above the maximum was
    silently capped; a 10-character admin key guards every API key."""
    import shared.settings as settings

    (tmp_path / "s.env").write_text(content)
    with pytest.raises(settings.SettingsError) as err:
        settings.load_settings(getattr(settings, cls_name), tmp_path / "s.env")
    assert expected in str(err.value)


def api_env(tmp_path: Path, store_url: str, workers: int = 1) -> tuple[Path, int, str]:
    """An env file for a real ``sn1 api`` on a free port, whose validator is nowhere; its port and admin key."""
    from shared.metagraph import write_metagraph_file
    from tests.helpers import snapshot

    hotkey = ensure_wallet("validator", "default", tmp_path / "wallets")
    write_metagraph_file(tmp_path / "mg.json", snapshot(hotkey.ss58_address, {}))
    api, down = free_ports(2)
    admin_key = "admin-key-that-must-never-be-printed"
    env = tmp_path / "a.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\nAPI_HOST=127.0.0.1\n"
                   f"API_PORT={api}\nVALIDATOR_API=http://127.0.0.1:{down}\nWORKERS={workers}\nLOG_LEVEL=TRACE\n"
                   f"ADMIN_KEY={admin_key}\nSTORE_URL={store_url}\n")
    return env, api, admin_key


@pytest.mark.parametrize("workers", [1, 2])
def test_a_redis_store_that_does_not_answer_yet_is_a_warning_and_the_api_serves_503_until_it_does(
        tmp_path: Path, workers: int) -> None:
    """Redis down at start (not up yet after a reboot): stopping made pm2 give up after max_restarts and
    left the API down once Redis was back. The API starts, says so in a WARNING (no password, no admin key
    in anything it prints, even at TRACE), and /ready says the store is why it is not ready."""
    import json
    import signal
    import time
    import urllib.error
    import urllib.request

    down = free_port()
    env, port, admin_key = api_env(tmp_path, f"redis://:hunter2@127.0.0.1:{down}/0", workers)
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, ready = time.monotonic() + 60, None  # a start of 2 workers on a loaded host
        while ready is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    ready = (r.status, json.loads(r.read()))
            except urllib.error.HTTPError as e:
                ready = (e.code, json.loads(e.read()))
            except OSError:
                time.sleep(0.1)
        assert ready is not None and ready[0] == 503, ready
        assert "store" in " ".join(ready[1]["reasons"]), ready
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    warned = [line for line in output.splitlines() if "STORE_URL: cannot reach" in line]
    assert warned and f"redis://***@127.0.0.1:{down}/0" in warned[0] and "503 until it answers" in warned[0], output
    assert "Traceback" not in output and "hunter2" not in output and admin_key not in output


def test_a_redis_down_at_a_fleets_start_is_told_by_one_worker_not_once_per_worker(tmp_path: Path) -> None:
    """Redis (and the validator) down as a WORKERS=2 API starts: every worker's outbox pass, session sweep and
    availability refresh meet it, and each worker told its own run, two WARNINGs each a minute that read as two
    outages. The first worker tells each for both, saying so; the other tells it at DEBUG (here, at TRACE, seen)."""
    import signal
    import time

    down = free_port()
    env, _, _ = api_env(tmp_path, f"redis://127.0.0.1:{down}/0", workers=2)
    with env.open("a") as f:
        f.write("AVAILABILITY_REFRESH_SECONDS=1\n")  # the session sweep's pace too
    out = tmp_path / "api.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env)],
                                stdout=sink, stderr=subprocess.STDOUT, text=True)
    runs = ("scoring outbox unreachable: ", "session sweep skipped: ", "validator unreachable at ")

    def told(level: str, what: str) -> list[str]:
        return [line for line in out.read_text().splitlines() if f"| {level}" in line and what in line]

    try:
        deadline = time.monotonic() + 90  # a start of 2 workers on a loaded host
        while not all(len(told("DEBUG", what)) and told("WARNING", what) for what in runs):
            assert time.monotonic() < deadline and proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # more sweeps and refreshes in both workers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    for what in runs:
        warned = told("WARNING", what)
        assert len(warned) == 1, warned
        assert warned[0].endswith("(said once for all 2 workers: the others log it at debug level)"), warned
        # the other worker met it too, and said it at DEBUG alone
        assert {line.split(" | ")[2] for line in told("DEBUG", what)} - {warned[0].split(" | ")[2]}, told("DEBUG", what)


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL for a real Redis to refuse a setting "
                                                           "(CI sets it: .ci/run)")
def test_a_redis_that_refuses_the_store_url_stops_the_api_with_one_line(tmp_path: Path) -> None:
    """A database index the Redis does not have is a setting to fix, not an outage to wait out."""
    from yarl import URL

    real = URL(os.environ["REDIS_URL"])
    env, _, _ = api_env(tmp_path, f"redis://{real.host}:{real.port or 6379}/99999", workers=2)
    out = start("api", env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("sn1 api:")]
    assert said == [f"sn1 api: STORE_URL: redis://{real.host}:{real.port or 6379}/99999 refused us: redis: "
                    "ResponseError: DB index is out of range"], out.stderr[-2000:]



@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL for a real Redis without TLS "
                                                           "(CI sets it: .ci/run)")
def test_rediss_at_a_redis_without_tls_stops_the_api_with_one_line(tmp_path: Path) -> None:
    """``rediss://`` at a Redis that takes no TLS: the handshake hung until the connect timeout, taken for an outage
    ("cannot reach ...: Timeout connecting to server; starting anyway"), and every request was a 503 for good."""
    from yarl import URL

    real = URL(os.environ["REDIS_URL"])
    env, _, _ = api_env(tmp_path, f"rediss://:hunter2@{real.host}:{real.port or 6379}/0")
    out = start("api", env)
    assert out.returncode == 1 and "Traceback" not in out.stderr and "hunter2" not in out.stderr, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("sn1 api:")]
    assert said == [f"sn1 api: STORE_URL: rediss://***@{real.host}:{real.port or 6379}/0 asks for TLS, and the Redis "
                    "there answers without it: write redis://, or turn TLS on in that Redis"], out.stderr[-2000:]


def test_a_store_url_at_a_server_that_is_no_redis_stops_the_api_with_one_line(tmp_path: Path) -> None:
    """``STORE_URL=redis://127.0.0.1:8094/0`` (the validator's port): its HTTP answer was taken for an outage, "cannot
    reach ...: Protocol error, got "H" as reply type byte; starting anyway", and every request was a 503 for good."""
    import http.server
    import threading

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    try:
        port = http_server.server_address[1]
        env, _, _ = api_env(tmp_path, f"redis://:hunter2@127.0.0.1:{port}/0")
        out = start("api", env)
    finally:
        http_server.shutdown()
        http_server.server_close()
    assert out.returncode == 1 and "Traceback" not in out.stderr and "hunter2" not in out.stderr, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("sn1 api:")]
    assert len(said) == 1 and said[0].startswith(
        f"sn1 api: STORE_URL: redis://***@127.0.0.1:{port}/0 answers, but not as a Redis server does (redis: "
        "InvalidResponse: "), said
    assert said[0].endswith("is that the Redis's host and port (6379 by default), not another server's (the "
                            "validator's 8094, an HTTP proxy)? rediss:// for a Redis that takes TLS only"), said

def run_cli(*args: str, cwd: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    from shared.settings import SETTING_NAMES

    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES} | {"PYTHONPATH": root}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env | (environ or {}))


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_help_says_where_settings_come_from(role: str, sn1: Sn1) -> None:
    """``sn1 <role> --help`` said only "settings file (default .env.<role>)": not that the environment
    overrides it, that the default is looked for in the current directory, nor where settings are listed."""
    out = sn1(role, "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0
    assert "the environment wins" in text and "'Configuration reference'" in text
    assert f"default: .env.{role} in the current directory" in text


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_a_missing_default_env_file_is_said_when_nothing_else_configures_the_process(
        tmp_path: Path, role: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Started from another directory with no setting exported, every setting fell to its default
    (finney, netuid 1) without a word. (In-process: with every setting at its default the process
    would start, not stop.)"""
    from shared.cli import _settings
    from shared.settings import SETTING_NAMES

    for name in [k for k in os.environ if k.upper() in SETTING_NAMES]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = _settings(role, None)
    assert settings.netuid == 1
    assert capsys.readouterr().err.splitlines() == [
        f"sn1 {role}: warning: .env.{role} not found in {tmp_path} and no setting in the environment: "
        "running on defaults only"]


@pytest.mark.parametrize("role", ["api", "validator", "miner"])
def test_a_process_configured_by_its_environment_alone_is_not_warned_about_an_env_file(role: str, sn1: Sn1) -> None:
    """Docker and systemd ``Environment=`` deployments asked for no env file, and got a warning that
    there was none at every start."""
    out = sn1(role, environ={"NETUID": "-1"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [f"sn1 {role}: NETUID: Input should be greater than or equal to 0 (got '-1')"]


def test_an_env_file_that_is_a_directory_or_not_text_is_one_line(tmp_path: Path, sn1: Sn1) -> None:
    """A directory was skipped as if it were an empty file; bytes that are not UTF-8 were a traceback."""
    out = sn1("api", "--env-file", str(tmp_path))
    assert out.returncode == 1 and out.stderr.splitlines() == [f"sn1 api: env file {tmp_path} is a directory"]
    binary = tmp_path / "bin.env"
    binary.write_bytes(b"API_PORT=\xff\xfe\n")
    out = sn1("api", "--env-file", str(binary))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [f"sn1 api: env file {binary}: cannot read it ('utf-8' codec can't decode "
                                       "byte 0xff in position 9: invalid start byte)"]


def test_localnet_help_gives_every_option_its_default(sn1: Sn1) -> None:
    """--api-port, --validator-port and --backend were listed with no word on what they do or default to."""
    text = " ".join(sn1("localnet", "--help").stdout.split())
    assert "API port (default 42170)" in text and "validator API port (default 8094)" in text
    assert "miner backend: the built-in test model (default)" in text


@pytest.mark.parametrize(("line", "environ", "expected"), [
    ("ADMIN_KEY=short-key\n", None, "must be at least 16 characters"),
    ('ADMIN_KEY="0123456789abcdef-ends-in-a-space "\n', None, "starts or ends with whitespace"),
    ("", {"ADMIN_KEY": "\t0123456789abcdef-tab-first"}, "starts or ends with whitespace"),
    ("ADMIN_KEY=my-long-random-admin-key\n", None, "is the README's example value, which anyone can read"),
    ("ADMIN_KEY=passwordpassword\n", None, "is a word or character repeated, the first a guesser tries"),
    ("", {"ADMIN_KEY": "a" * 32}, "is a word or character repeated"),
], ids=["short", "trailing-space", "tab", "readme-example", "repeated-word", "one-character"])
def test_an_admin_key_that_guards_nothing_is_refused_without_showing_it(
        tmp_path: Path, line: str, environ: dict[str, str] | None, expected: str, sn1: Sn1) -> None:
    """A key ending in a space passed, and every admin call was then refused (HTTP trims header values);
    the README's own example key passed, so a copied example left every API key open to its readers."""
    env = tmp_path / "a.env"
    env.write_text(line)
    out = sn1("api", "--env-file", str(env), environ=environ)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(f"sn1 api: ADMIN_KEY: {expected}")
    secret = (environ or {}).get("ADMIN_KEY") or line.partition("=")[2].strip().strip('"')
    assert secret.strip() not in out.stderr


def test_a_random_admin_key_is_taken_however_few_characters_it_repeats() -> None:
    """``openssl rand -hex 8`` (16 hex digits, 64 random bits) holds fewer than 8 different digits about once in 90
    keys, and such a key stopped the start as "a repeated word or character": the check refuses a word or character
    repeated, not a random key that happens to repeat a few digits. 20,000 random keys of 16 hex digits, and of 16
    decimal digits, are each taken; a key repeated, whatever its length, is not."""
    import random

    from pydantic import ValidationError

    from shared.settings import ApiSettings, repeats_itself

    draw = random.Random(7)
    keys = ["".join(draw.choice(alphabet) for _ in range(16))
            for alphabet in ("0123456789abcdef", "0123456789") for _ in range(10_000)]
    assert sum(len(set(k)) < 8 for k in keys) > 1000, "the sample holds keys with few different characters"
    assert [k for k in keys if repeats_itself(k)] == []  # the check the settings make (a whole settings load each
    for key in sorted(keys, key=lambda k: len(set(k)))[:50]:  # is slow): and the least varied 50 through them
        assert ApiSettings(_env_file=None, admin_key=key).admin_key is not None
    for key in ("passwordpassword", "adminadminadmin1", "a" * 32, "abababababababab!", "0123456701234567",
                "aaaaaaaabbbbbbbb"):
        with pytest.raises(ValidationError, match="a word or character repeated"):
            ApiSettings(_env_file=None, admin_key=key)


def test_the_readme_shows_no_usable_admin_key() -> None:
    """Every admin key the README writes out is one the API refuses (the rest are variables)."""
    import re

    from shared.settings import PUBLISHED_ADMIN_KEYS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    literals = {v for v in re.findall(r"\bADMIN(?:_KEY)?=([^\s;`$\"'][^\s;`]*)", readme)}
    assert literals <= PUBLISHED_ADMIN_KEYS, literals - PUBLISHED_ADMIN_KEYS


@pytest.mark.parametrize(("role", "content", "names"), [
    ("miner", "MINER_BACKEND=openai\nUPSTREAM_URL=http://ops:tok3n@127.0.0.1:9/v1\nUPSTREAM_API_KEY=sk-k3y\n",
     "UPSTREAM_URL/UPSTREAM_API_KEY: UPSTREAM_URL carries credentials (user:token@) and UPSTREAM_API_KEY is set"),
    ("validator", "REFERENCE_LLM_URL=http://ops:tok3n@127.0.0.1:9/v1\nREFERENCE_LLM_API_KEY=sk-k3y\n",
     "REFERENCE_LLM_URL/REFERENCE_LLM_API_KEY: REFERENCE_LLM_URL carries credentials (user:token@) and "
     "REFERENCE_LLM_API_KEY is set"),
], ids=["miner", "validator"])
def test_credentials_in_the_url_and_a_key_are_one_line(tmp_path: Path, role: str, content: str, names: str,
                                                        sn1: Sn1) -> None:
    """Both make the Authorization header, and aiohttp refused every upstream request given both: the miner
    started, served no model, and said so only in a WARNING about listing them."""
    env = tmp_path / "c.env"
    env.write_text(content)
    out = sn1(role, "--env-file", str(env))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [f"sn1 {role}: {names}; the server gets one Authorization header: keep only "
                                       "one of them"]
    assert "tok3n" not in out.stderr and "sk-k3y" not in out.stderr


@pytest.mark.parametrize(("role", "host", "names"), [
    ("api", "API_HOST=0.0.0.O", "API_HOST/API_PORT"), ("validator", "SCORING_API_HOST=localhost:8094",
                                                         "SCORING_API_HOST/SCORING_API_PORT"),
    ("miner", "MINER_HOST=no-such-host.invalid", "MINER_HOST/MINER_PORT"),
])
def test_an_address_it_cannot_listen_on_names_its_settings(tmp_path: Path, role: str, host: str, names: str) -> None:
    """"cannot listen on localhost:8094:8094" did not say which setting held the bad address."""
    from shared.metagraph import write_metagraph_file
    from tests.helpers import snapshot

    hotkey = ensure_wallet(role if role == "miner" else "validator", "default", tmp_path / "wallets")
    write_metagraph_file(tmp_path / "mg.json", snapshot(hotkey.ss58_address, {}))
    port = free_port()
    env = tmp_path / "h.env"
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"STATE_DIR={tmp_path / 'state'}\n{host}\n{names.split('/')[1]}={port}\n"
                   + ("WALLET_NAME=miner\n" if role == "miner" else ""))
    out = run_cli(role, "--env-file", str(env), cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.splitlines()[-1]
    assert line.startswith(f"sn1 {role}: {names}: cannot listen on {host.split('=')[1]}:{port}: "), line


def test_no_secret_in_what_a_started_api_prints_even_at_trace(tmp_path: Path) -> None:
    """The whole life of a real ``sn1 api`` (WORKERS=2: settings handed to spawned workers, the supervisor),
    at TRACE, with admin calls right and wrong: neither ADMIN_KEY nor a wrong guess at it is ever printed,
    and the start line says only whether admin is enabled (there is no settings dump)."""
    import signal
    import urllib.error
    import urllib.request

    from tests.keys.procs import ADMIN, prepare, start_api, wait_ready

    env = prepare(tmp_path) | {"LOG_LEVEL": "TRACE"}
    api = start_api(tmp_path, env, store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    try:
        wait_ready([api], workers=2)
        for key in (ADMIN, ADMIN + "-wrong-guess"):
            req = urllib.request.Request(api.url + "/api_management/api-keys", headers={"admin-key": key})
            try:
                urllib.request.urlopen(req, timeout=10).close()
            except urllib.error.HTTPError as e:
                assert e.code == 401 and key != ADMIN
    finally:
        api.kill(signal.SIGTERM)
    log = api.log.read_text()
    assert log.count("admin=enabled") == 2 and "admin auth failed remote=127.0.0.1" in log, log[-3000:]
    assert ADMIN not in log and "wrong-guess" not in log


def test_keys_help_steers_the_admin_key_off_the_command_line(sn1: Sn1) -> None:
    text = " ".join(sn1("keys", "--help").stdout.split())
    assert "admin key (env ADMIN_KEY, better: a command line is visible to every user in ps)" in text


def test_a_sqlite_file_that_cannot_grow_is_not_ready_and_recovers_by_itself(tmp_path: Path) -> None:
    """A full disk fails a commit, not a lock: /ready's ping took the write lock and let it go (nothing
    written), and said ready while every request's rate-limit charge failed "database or disk is full". The
    disk is made full for the API alone: its RLIMIT_FSIZE lowered to the size its -wal file has now."""
    import json
    import resource
    import signal
    import time
    import urllib.error
    import urllib.request

    env, port, admin_key = api_env(tmp_path, f"sqlite:///{tmp_path / 'api.db'}")
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "api", "--env-file", str(env)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def call(path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, created = call("/api_management/create-api-key?rate_limit=100", {"admin-key": admin_key},
                                       "POST")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the API did not start"
                time.sleep(0.1)
        key = {"Authorization": f"Bearer {created['api_key']}"}
        assert call("/ready", {})[1]["checks"]["store"]["ok"] and call("/v1/usage", key)[0] == 200
        wal = (tmp_path / "api.db-wal").stat().st_size
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (wal, resource.RLIM_INFINITY))
        try:
            store = call("/ready", {})[1]["checks"]["store"]
            assert not store["ok"] and store["detail"].startswith("the key store is unavailable: "), store
            for who in ({"Authorization": "Bearer sn1-forged"}, key):  # a forged key's lookup reads, its charge fails
                status, body = call("/v1/usage", who)
                assert (status, body["error"]["code"]) == (503, "store_unavailable"), body
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert call("/ready", {})[1]["checks"]["store"]["ok"] and call("/v1/usage", key)[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]
    # one run of two failures: the forged key's lookup (a read) is no sign that the store takes writes again
    told = [line for line in output.splitlines() if "store unavailable, answering 503" in line]
    assert len(told) == 2 and "the store answers again" in told[1] and "(2 failure(s))" in told[1], told


def test_more_workers_than_cores_is_a_warning_at_start(tmp_path: Path) -> None:
    """WORKERS above the cores the API may run on (here its affinity, one core) is said once at start, as a
    WARNING naming both numbers, and the API serves on; it was started in silence."""
    import signal

    from tests.keys.procs import prepare, start_api, wait_ready

    env = prepare(tmp_path)
    was = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(was)})  # the API's processes inherit it
    try:
        api = start_api(tmp_path, env, store_url=f"sqlite:///{tmp_path / 'api.db'}", workers=2)
    finally:
        os.sched_setaffinity(0, was)
    try:
        wait_ready([api], workers=2)
    finally:
        api.kill(signal.SIGTERM)
    lines = [line for line in api.log.read_text().splitlines() if "WORKERS=" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], lines
    assert lines[0].endswith("WORKERS=2 is above the 1 CPU core(s) this API may run on: the workers take turns on "
                             "them and serve nothing faster (each costs memory and connections); set WORKERS=1 at "
                             "most")


@pytest.mark.parametrize("role", ["validator", "miner"])
def test_an_admin_key_in_another_process_env_file_is_said_to_be_the_apis(tmp_path: Path, role: str, sn1: Sn1) -> None:
    """The original subnet API's doc put ``admin-key`` in ``.env.validator``: set there, it was ignored in
    silence and the API's admin routes stayed off. The warning names the file and the API's, never the value."""
    env = tmp_path / f".env.{role}"
    env.write_text("ADMIN_KEY=moved-from-the-original-api-0123\nNETUID=-1\n")
    out = sn1(role, "--env-file", str(env))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[0] == (
        f"sn1 {role}: warning: ADMIN_KEY ({env}) is the API's setting (.env.api), not this process's: ignored here "
        "(the original subnet API read it from .env.validator)")
    assert "moved-from" not in out.stderr


def test_an_empty_environment_variable_over_an_env_file_value_is_a_warning(tmp_path: Path, sn1: Sn1) -> None:
    """``export ADMIN_KEY="$SN1_ADMIN_KEY"`` with that variable unset left ``ADMIN_KEY`` empty in the shell, and
    an API started from it ran with its admin routes off although ``.env.api`` sets the key, in silence. The
    warning names the setting and the file, never the file's value."""
    env = tmp_path / ".env.api"
    env.write_text("ADMIN_KEY=file-admin-key-0123456789\nAPI_PORT=abc\n")
    out = sn1("api", "--env-file", str(env), environ={"ADMIN_KEY": ""})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[0] == (
        f"sn1 api: warning: ADMIN_KEY is empty in the environment, which overrides its value in {env} (the "
        "environment wins): `unset ADMIN_KEY` to use the file's")
    assert "file-admin-key" not in out.stderr


@pytest.mark.parametrize("url", [
    "redis://:p@ss-SECRET@127.0.0.1:{port}/0",  # an '@' in the password: redis-py reads it whole, as it must
    "redis://127.0.0.1:{port}/0?password=SECRET",  # the password as a query parameter, which redis-py takes too
    "redis://ops:p@ss-SECRET@127.0.0.1:{port}/0?socket_timeout=1&password=SECRET",
])
def test_a_redis_password_is_never_printed_however_the_url_carries_it(tmp_path: Path, url: str) -> None:
    """The WARNING every start writes while the Redis does not answer (into ``journalctl``, a log shipper) showed
    the password's part after an '@' in it (``redis://***@ss-SECRET@host``), and a ``?password=`` whole."""
    api, down = free_ports(2)
    ensure_wallet("validator", "default", tmp_path / "wallets")
    env = tmp_path / "a.env"
    env.write_text(f"STORE_URL={url.format(port=down)}\nAPI_HOST=127.0.0.1\nAPI_PORT={api}\n"
                   f"WALLET_PATH={tmp_path / 'wallets'}\nMETAGRAPH_FILE={tmp_path / 'missing.json'}\n")
    out = start("api", env)  # stops at the missing metagraph file, after the store check
    printed = out.stdout + out.stderr
    assert "STORE_URL: cannot reach redis://" in printed and f"127.0.0.1:{down}/0" in printed, printed
    assert "SECRET" not in printed and "p@ss" not in printed, printed


@pytest.mark.parametrize("url", ["redis://:pa/ss-SECRET@127.0.0.1:6379/0", "redis://:pa#ss-SECRET@127.0.0.1:6379/0"])
def test_a_redis_password_a_url_cannot_carry_as_it_is_is_named_not_shown(tmp_path: Path, url: str, sn1: Sn1) -> None:
    """A '/', '#' or '?' in the password ends the URL's address there: redis-py read '//:pa' as the host, and the
    refusal ("the port is not a number") showed the password whole, or named a port that was fine."""
    env = tmp_path / "a.env"
    env.write_text(f"STORE_URL={url}\n")
    out = sn1("api", "--env-file", str(env))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "SECRET" not in out.stderr and "pa/ss" not in out.stderr and "pa#ss" not in out.stderr, out.stderr
    assert "sn1 api: STORE_URL: 'redis://***@127.0.0.1:6379/0': the password holds '/', '#' or '?'" in out.stderr, \
        out.stderr


# A Ctrl-C as ``pydantic`` begins to load (sitecustomize runs before the command): the process signals itself.
CTRL_C_AT_PYDANTIC = """
import os, signal, sys

# a terminal's Ctrl-C reaches a foreground command, whose SIGINT is Python's: a command started in the background
# (a CI step or a shell's ``&``) inherits SIGINT ignored, and is right to ignore it
signal.signal(signal.SIGINT, signal.default_int_handler)


class _CtrlC:
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == "pydantic" and not _CtrlC.fired:
            _CtrlC.fired = True
            print("ctrl-c sent", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlC())
"""


@pytest.mark.parametrize("command", ["api", "validator", "miner", "keys"])
def test_ctrl_c_while_a_command_starts_exits_quietly(tmp_path: Path, command: str) -> None:
    """Ctrl-C in the first second of ``sn1 <command>``, as its imports load and before it takes stop signals
    itself, printed a KeyboardInterrupt traceback of whatever module was loading (pydantic's, aiohttp's), and
    the process died of the signal. It exits quietly now, with the status a shell gives an interrupted command
    (130). The process sends itself the signal as the command's own imports begin (pydantic's first import, which
    every command makes): a signal sent from here when its ``-X importtime`` line was read came late on a busy host,
    the command already past its imports and into its start."""
    ensure_wallet("miner", "default", tmp_path / "wallets")
    env = tmp_path / "start.env"
    api, scoring, miner = free_ports(3)
    env.write_text(f"WALLET_PATH={tmp_path / 'wallets'}\nWALLET_NAME=miner\nMETAGRAPH_FILE={tmp_path / 'mg.json'}\n"
                   f"API_PORT={api}\nSCORING_API_PORT={scoring}\nMINER_PORT={miner}\nWORKERS=1\n")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CTRL_C_AT_PYDANTIC)
    args = ["keys", "list"] if command == "keys" else [command, "--env-file", str(env)]
    # an admin key: without one, `sn1 keys` stops before its imports (before pydantic's)
    keys = {"ADMIN_KEY": "ctrl-c-admin-key-0123456789"} if command == "keys" else {}
    out = subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(hook), **keys})
    said = out.stderr.splitlines()
    assert "ctrl-c sent" in said, said[-20:]  # the hook ran: the signal came as pydantic began to load
    assert out.returncode == 130, (out.returncode, said[-20:])
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in said), said[-20:]


def test_a_flag_is_said_to_be_no_option_with_the_setting_it_meant(sn1: Sn1) -> None:
    """``sn1 miner --port 8091`` (or the bittensor template's ``--axon.port``) was ``sn1: error: unrecognized
    arguments`` under the top command's usage, not a word on where settings go; a value is never repeated."""
    out = sn1("miner", "--port", "8091", "--axon.port=8092", "--wallet.name", "miner",
              "--upstream-api-key=sk-SECRET", "--blacklist.force_validator_permit")
    assert out.returncode == 2 and "SECRET" not in out.stderr
    assert out.stderr.splitlines() == [
        "sn1 miner: --port is not an option: set MINER_PORT=... instead",
        "sn1 miner: --axon.port is not an option: set MINER_PORT=... instead",
        "sn1 miner: --wallet.name is not an option: set WALLET_NAME=... instead",
        "sn1 miner: --upstream-api-key is not an option: set UPSTREAM_API_KEY=... instead",
        "sn1 miner: --blacklist.force_validator_permit is not an option",
        "sn1 miner: takes no argument but --env-file: settings are environment variables or NAME=value lines of "
        ".env.miner (or --env-file's file); every setting: README.md, 'Configuration reference'"]
    out = sn1("validator", "--port", "1")
    assert out.returncode == 2 and out.stderr.splitlines()[0] == (
        "sn1 validator: --port is not an option: set SCORING_API_PORT=... instead")
    # a value that begins with '-' (a token_urlsafe key does one time in 32) is a value still, never shown
    out = sn1("api", "--admin-key", "-Xk9SECRET_0123456789abcdefghij", "--port", "1")
    assert out.returncode == 2 and "SECRET" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[:3] == [
        "sn1 api: --admin-key is not an option: set ADMIN_KEY=... instead",
        "sn1 api: an argument that begins with '-' is not an option (not shown: it may be a value)",
        "sn1 api: --port is not an option: set API_PORT=... instead"]
