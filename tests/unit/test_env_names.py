"""A mistyped setting name stops the start with one line naming it and the setting it was meant to be: it
was ignored, and the process started on the default (``API_PROT=8080`` served on 42170)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.env_names import environment_problems, one_edit_apart
from shared.settings import (
    SETTING_NAMES,
    ApiSettings,
    MinerSettings,
    SettingsError,
    ValidatorSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]


def start(role: str, env_file: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES} | (environ or {})
    return subprocess.run([sys.executable, "-m", "shared.cli", role, "--env-file", str(env_file)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


@pytest.mark.parametrize(("role", "line", "expected"), [
    ("api", "API_PROT=8080", "API_PROT ({env}:2): not a setting; did you mean API_PORT?"),
    ("api", "ADMN_KEY=0123456789abcdef0123", "ADMN_KEY ({env}:2): not a setting; did you mean ADMIN_KEY?"),
    ("api", "SN1_ADMIN_KEY=0123456789abcdef0123",
     "SN1_ADMIN_KEY ({env}:2): settings take no SN1_ prefix; did you mean ADMIN_KEY?"),
    ("api", "STORE_URL: redis://10.0.0.3:6379/0", "STORE_URL ({env}:2): not a NAME=value line: write STORE_URL=value"),
    ("validator", "SCORING_API_PROT=9000", "SCORING_API_PROT ({env}:2): not a setting; did you mean SCORING_API_PORT?"),
    ("validator", "NEURON_DISABLE_SET_WEIGHT=true",
     "NEURON_DISABLE_SET_WEIGHT ({env}:2): not a setting; did you mean NEURON_DISABLE_SET_WEIGHTS?"),
    ("miner", "UPSTREAM_MODEL=llama3", "UPSTREAM_MODEL ({env}:2): not a setting; did you mean UPSTREAM_MODELS?"),
    ("miner", "UPSTREAM_KEY=sk-123", "UPSTREAM_KEY ({env}:2): not a setting; did you mean UPSTREAM_API_KEY?"),
    ("miner", "MINER_PORT", "MINER_PORT ({env}:2): no '=': write MINER_PORT=value (MINER_PORT= for empty)"),
], ids=["api-port", "admin-key", "client-prefix", "yaml-colon", "scoring-port", "disable-weights", "models", "key",
        "no-equals"])
def test_a_mistyped_name_in_the_env_file_is_one_line(tmp_path: Path, role: str, line: str, expected: str) -> None:
    env = tmp_path / "typo.env"
    env.write_text(f"# {role}\n{line}\n")
    out = start(role, env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.splitlines() == [f"sn1 {role}: " + expected.format(env=env)]


@pytest.mark.parametrize(("role", "name", "expected"), [
    ("api", "ADMIN_KY", "ADMIN_KEY"), ("validator", "WALLET_HOTKY", "WALLET_HOTKEY"), ("miner", "MINER_PROT", "MINER_PORT"),
    ("api", "LOGLEVEL", "LOG_LEVEL"),
])
def test_a_mistyped_environment_variable_is_a_warning_line(tmp_path: Path, role: str, name: str, expected: str) -> None:
    """Told, not refused: the environment is every program's (``LOGLEVEL`` is another tool's, one edit from
    ``LOG_LEVEL``), so a start it stopped would be ours broken by theirs. The start goes on (here to the
    bad port it is given, so that it ends)."""
    env = tmp_path / "bad-port.env"
    env.write_text({"api": "API_PORT", "validator": "SCORING_API_PORT", "miner": "MINER_PORT"}[role] + "=70000\n")
    out = start(role, env, {name: "x" * 20})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert lines[0] == f"sn1 {role}: warning: {name} (environment) is not a setting; did you mean {expected}? ignored"
    assert "70000" in lines[1], "the start went on past the warning"


def test_every_problem_is_told_at_once(tmp_path: Path) -> None:
    env = tmp_path / "a.env"
    env.write_text("API_PROT=8080\nREQUEST_TIMEOUT=-1\n")
    with pytest.raises(SettingsError) as err:
        load_settings(ApiSettings, env)
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == ["API_PROT (" + str(env), "REQUEST_TIMEOUT"]


def test_a_secret_on_a_line_that_is_not_name_value_is_not_shown(tmp_path: Path) -> None:
    env = tmp_path / "a.env"
    env.write_text("ADMIN_KEY: correct-horse-battery-staple\n")
    with pytest.raises(SettingsError) as err:
        load_settings(ApiSettings, env)
    assert "correct-horse" not in str(err.value) and "ADMIN_KEY (" in str(err.value)


def test_an_unknown_name_unlike_any_setting_is_a_warning_only(tmp_path: Path) -> None:
    env = tmp_path / "a.env"
    env.write_text("PROMETHEUS_MULTIPROC_DIR=/tmp/metrics\nAPI_PORT=8080\n")
    warnings: list[str] = []
    assert load_settings(ApiSettings, env, warn=warnings.append).api_port == 8080
    assert warnings == [f"PROMETHEUS_MULTIPROC_DIR ({env}:1) is not a setting of any sn1 process; ignored"]


def test_a_setting_of_another_process_is_no_typo(tmp_path: Path) -> None:
    """``sn1 localnet`` writes CORPUS_FILE into the API's env file, and one file may serve several processes."""
    env = tmp_path / "shared.env"
    env.write_text("MINER_PORT=8091\nSCORING_API_PORT=8094\nCORPUS_FILE=/tmp/c.jsonl\nAPI_PORT=8080\n")
    warnings: list[str] = []
    assert load_settings(ApiSettings, env, warn=warnings.append).api_port == 8080
    assert warnings == []


@pytest.mark.parametrize(("role", "cls"), [("api", ApiSettings), ("validator", ValidatorSettings),
                                           ("miner", MinerSettings)])
def test_the_example_env_files_name_only_settings(role: str, cls: type) -> None:
    warnings: list[str] = []
    load_settings(cls, ROOT / f".env.{role}.example", warn=warnings.append)
    assert warnings == []


# Variables other programs put in a node's environment: shells, systemd, pm2 (it exports its app fields,
# lower case), containers, CI, Python and the README's own client variables.
OTHERS = """PATH HOME USER LOGNAME SHELL PWD OLDPWD TERM LANG LANGUAGE LC_ALL TZ HOSTNAME DISPLAY MAIL EDITOR PAGER
INVOCATION_ID JOURNAL_STREAM NOTIFY_SOCKET MAINPID LISTEN_FDS LISTEN_PID RUNTIME_DIRECTORY STATE_DIRECTORY
CREDENTIALS_DIRECTORY SYSTEMD_EXEC_PID XDG_RUNTIME_DIR XDG_SESSION_ID SSH_CONNECTION SSH_CLIENT SSH_TTY
PM2_HOME PM2_USAGE PM2_JSON_PROCESSING NODE_APP_INSTANCE pm_id name namespace instances exec_mode interpreter
kill_timeout restart_delay min_uptime max_restarts autorestart merge_logs unique_id pm_uptime status username
exp_backoff_restart_delay prev_restart_delay pm_exec_path pm_cwd pm_out_log_path pm_err_log_path pm_pid_path
created_at restart_time unstable_restarts exit_code windowsHide filter_env treekill automation instance_var
VIRTUAL_ENV PYTHONPATH PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE PYTHONHASHSEED PROMETHEUS_MULTIPROC_DIR
REDIS_URL REDIS_HOST REDIS_PORT REDIS_PASSWORD DATABASE_URL OPENAI_API_KEY OPENAI_BASE_URL HF_HOME HF_TOKEN
CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES BT_WALLET_NAME BT_WALLET_HOTKEY BT_WALLET_PATH BT_SUBTENSOR_NETWORK
BT_NETUID CI GITHUB_ACTIONS GITHUB_WORKSPACE RUNNER_TEMP HOSTTYPE MACHTYPE SN1_API SN1_BASE_URL SN1_API_KEY
SN1_ADMIN_KEY SN1_API_URL HTTP_PROXY HTTPS_PROXY NO_PROXY SSL_CERT_FILE REQUESTS_CA_BUNDLE""".split()


def test_other_programs_variables_are_not_taken_for_typos() -> None:
    assert environment_problems(dict.fromkeys(OTHERS, "x"), SETTING_NAMES) == []


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn ``a`` into ``b``: the definition
    ``one_edit_apart`` answers in linear time for a distance of at most 1."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


@pytest.mark.parametrize(("a", "b", "d"), [("API_PORT", "API_PROT", 1), ("NETUID", "NETUID", 0),
                                           ("ADMIN_KEY", "ADMINKEY", 1), ("WORKERS", "WORKER", 1), ("ab", "ba", 1),
                                           ("REDIS_URL", "STORE_URL", 5)])
def test_edit_distance(a: str, b: str, d: int) -> None:
    assert edit_distance(a, b) == d
    assert one_edit_apart(a, b) == one_edit_apart(b, a) == (d <= 1)


NAMEISH = st.text(alphabet="ABP_", max_size=7)  # few letters: near and equal names are common


@given(NAMEISH, NAMEISH)
def test_one_edit_apart_is_an_edit_distance_of_at_most_1(a: str, b: str) -> None:
    assert one_edit_apart(a, b) == (edit_distance(a, b) <= 1)


@given(NAMEISH, st.integers(0, 7), st.sampled_from("ABP_"))
def test_one_edit_is_found_wherever_it_is(a: str, at: int, c: str) -> None:
    at = min(at, len(a))
    for b in (a[:at] + c + a[at:], a[:at] + a[at + 1:], a[:at] + c + a[at + 1:], a[:at] + a[at + 1:at + 2] + a[at:at + 1] + a[at + 2:]):
        assert one_edit_apart(a, b) and one_edit_apart(b, a), (a, b)
