"""deploy/: the pm2 ecosystem and systemd units start commands that exist, with env files that have examples."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.http import SHUTDOWN_LIMIT_S

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("api", "validator", "miner")


def check_command(script: str, args: list[str]) -> None:
    """``run_api.sh``, or ``sn1 <role>`` with a known role, which reads ``.env.<role>`` (it has an example) when
    it is there: no ``--env-file``, so a unit's ``Environment=`` lines alone can configure it too (a missing
    ``--env-file`` stops the start)."""
    if script.endswith("run_api.sh"):
        assert (ROOT / "run_api.sh").exists() and not args
        return
    assert script.endswith(".venv/bin/sn1"), script
    (role,) = args
    assert role in ROLES and (ROOT / f".env.{role}.example").exists()
    assert f".env.{role}" in cli_help(role)  # its default env file


@functools.cache
def cli_help(role: str) -> str:
    """``sn1 <role> --help``: the subcommand exists and takes --env-file."""
    return subprocess.run([sys.executable, "-m", "shared.cli", role, "--help"], capture_output=True, text=True,
                          check=True, timeout=60, cwd=ROOT).stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (needed to load the pm2 file)")
def test_pm2_ecosystem_runs_the_three_processes() -> None:
    out = subprocess.run(["node", "-e", "console.log(JSON.stringify(require(process.argv[1])))",
                          str(ROOT / "deploy" / "ecosystem.config.js")], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    apps = json.loads(out)["apps"]
    assert [a["name"] for a in apps] == ["sn1-api", "sn1-validator", "sn1-miner"]
    for a in apps:
        assert Path(a["cwd"]) == ROOT and a["instances"] == 1 and a["autorestart"]
        check_command(a["script"], a["args"].split())
        # The process's own shutdown limit (30 s, then an ERROR naming what is stuck) comes before pm2's SIGKILL,
        # which says nothing.
        assert a["kill_timeout"] > SHUTDOWN_LIMIT_S * 1000
        # pm2's `time` prefixed a second timestamp to every line, each of which starts with the node's own.
        assert not a.get("time")


@pytest.mark.parametrize("role", ROLES)
def test_systemd_unit_restarts_and_runs_a_real_command(role: str) -> None:
    text = (ROOT / "deploy" / "systemd" / f"sn1-{role}.service").read_text()
    fields = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert fields["Restart"] == "always" and fields["KillSignal"] == "SIGTERM"
    assert float(fields["TimeoutStopSec"]) > SHUTDOWN_LIMIT_S  # the process's own limit first, with its ERROR
    # ExecStart is relative to WorkingDirectory (through env), so editing WorkingDirectory is enough: an
    # absolute /opt/sn1-node/... in ExecStart failed wherever else the repository was.
    command = fields["ExecStart"].split()
    assert command[0] == "/usr/bin/env" and "/opt/" not in fields["ExecStart"]
    if command[1] == "bash":
        command = command[1:]
    check_command(command[1], command[2:])
    if shutil.which("systemd-analyze"):  # where systemd is installed, the unit must verify
        out = subprocess.run(["systemd-analyze", "verify", str(ROOT / "deploy" / "systemd" / f"sn1-{role}.service")],
                             capture_output=True, text=True, timeout=60)
        assert "not executable" not in out.stderr and "Invalid" not in out.stderr, out.stderr


@pytest.mark.parametrize(("env_file", "where"), [("conf/api.env", ROOT / "conf/api.env"),
                                                 ("/nonexistent/api.env", Path("/nonexistent/api.env"))])
def test_run_api_names_the_env_file_it_looked_for(tmp_path: Path, env_file: str, where: Path) -> None:
    """run_api.sh changes to the repository root first, so a relative ENV_FILE is read from there: it said
    only "conf/api.env not found" to an operator who ran it from another directory."""
    out = subprocess.run(["bash", str(ROOT / "run_api.sh")], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "ENV_FILE": env_file})
    assert out.returncode == 1
    assert out.stderr == f"run_api.sh: ENV_FILE {where} not found\n"


def test_run_api_without_an_env_file_takes_the_environment_alone(tmp_path: Path) -> None:
    """The README's promise for a unit's ``Environment=`` lines: run_api.sh stopped for want of .env.api. Now it
    says where it looked and starts from the environment (here a bad port: the API's own one-line refusal
    shows the environment was read)."""
    if (ROOT / ".env.api").exists():
        pytest.skip("this checkout has a .env.api (CI's clean clone has none)")
    out = subprocess.run(["bash", str(ROOT / "run_api.sh")], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "API_PORT": "70000"})
    assert out.returncode == 1, out
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"run_api.sh: no {ROOT}/.env.api: settings from the environment alone"), lines
    assert any(line.startswith("sn1 api: ") and "API_PORT" in line for line in lines), lines


def test_the_readme_says_what_the_supervisor_files_run_and_how_long_a_stop_may_take() -> None:
    """"Process supervision" named `sn1 validator --env-file .env.validator` for files that run `sn1 validator` (the
    env file read where it is there, so the environment alone can configure it), and the grace before SIGKILL is the
    one both the units and the pm2 apps give."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Process supervision"):]
    lead = section[:section.index("\n\n", section.index("\n\n") + 2)]
    assert "--env-file" not in lead and "`sn1 validator`" in lead and "`sn1 miner`" in lead
    stops = {float(re.search(r"^TimeoutStopSec=(\S+)$", (ROOT / "deploy" / "systemd" / f"sn1-{role}.service")
                             .read_text(), re.M).group(1)) for role in ROLES}
    pm2 = re.search(r"kill_timeout: (\d+)", (ROOT / "deploy" / "ecosystem.config.js").read_text())
    stops.add(int(pm2.group(1)) / 1000)
    (stop,) = stops
    assert f"{stop:g} s before SIGKILL, past its own {SHUTDOWN_LIMIT_S:g} s limit" in " ".join(lead.split())
    # "Upgrading" said `pip install -e .` "in your virtualenv": the files run .venv/bin/sn1 (run_api.sh too), so an
    # upgrade installed into another virtualenv was not the one they started.
    assert "exec .venv/bin/sn1 " in (ROOT / "run_api.sh").read_text()
    upgrading = readme[readme.index("### Upgrading\n\n") + len("### Upgrading\n\n"):]
    assert "`.venv/bin/pip install -e .`" in upgrading[:upgrading.index("\n\n")]
