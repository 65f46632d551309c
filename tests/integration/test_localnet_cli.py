"""``sn1 localnet`` as a user runs it: it refuses a busy port up front, and no process it started
outlives it, however it is stopped."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig, first_model, port_is_free
from tests.fake_upstream import create_fake_upstream
from tests.helpers import hangup_as, serve_app, until_empty
from tests.ports import free_port, free_ports, pool


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = LocalNetConfig(directory=tmp_path, miners=1, api_port=port, validator_port=free_port())
        net = LocalNet(config, ports=pool())
        try:
            with pytest.raises(RuntimeError, match=f"the API port {port} is in use"):
                net.start(timeout=30)
            assert net.children == [], "nothing was spawned"
        finally:
            net.stop()


def ours(directory: Path) -> list[str]:
    """Processes started for this directory (their env files live in it)."""
    out = subprocess.run(["pgrep", "-f", "--", f"--env-file {directory}/"], capture_output=True, text=True)
    return out.stdout.split()


def start_localnet(directory: Path, api_port: int, validator_port: int, *, nohup: bool = False) -> subprocess.Popen:
    """``sn1 localnet`` with one miner, returned once it says it is up (its output is then left unread). The miner's
    port is the test's (``--miner-port``), as the API's and the validator's are: one the kernel picked could be
    taken by another test's connection before the miner bound it."""
    miner_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "localnet", "--miners", "1", "--dir", str(directory),
                             "--api-port", str(api_port), "--validator-port", str(validator_port),
                             "--miner-port", str(miner_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=hangup_as(nohup=nohup))
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:  # bounded: localnet gives up after its own start-up timeout
            seen.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("Local subnet is up" in line for line in seen), "".join(seen)
        assert len(ours(directory)) == 3  # a miner, the validator, the API
        assert json.loads((directory / "localnet.json").read_text())["miners"][0]["url"].endswith(f":{miner_port}")
    except BaseException:
        kill_all(proc, directory)
        raise
    return proc


def kill_all(proc: subprocess.Popen, directory: Path) -> None:
    """Whatever a failed test left running: localnet and every process started for ``directory``."""
    proc.kill()
    for pid in ours(directory):
        subprocess.run(["kill", "-9", pid], check=False)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_no_child_outlives_localnet_when_nobody_reads_its_output(tmp_path: Path, sig: signal.Signals) -> None:
    """A closed terminal (SIGHUP), or SIGTERM once stdout is gone (``sn1 localnet | head``): before, the
    first killed localnet at once and the second made its farewell print fail before the stop."""
    api_port, validator_port = free_ports(2)
    proc = start_localnet(tmp_path, api_port, validator_port)
    try:
        assert proc.stdout is not None
        proc.stdout.close()  # nobody reads any more
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert until_empty(lambda: ours(tmp_path), 15) == [], "children outlived localnet"
        assert port_is_free(api_port) and port_is_free(validator_port)
    finally:
        kill_all(proc, tmp_path)


def test_under_nohup_a_closed_terminal_does_not_stop_it(tmp_path: Path) -> None:
    proc = start_localnet(tmp_path, *free_ports(2), nohup=True)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None and len(ours(tmp_path)) == 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert until_empty(lambda: ours(tmp_path), 15) == []
    finally:
        kill_all(proc, tmp_path)


def test_with_a_model_server_the_validator_judges_against_that_model(tmp_path: Path) -> None:
    """``--backend openai --upstream URL``: the validator's reference is that server, so honest miners
    score; judged against the deterministic model, as before, every answer scored 0."""
    import json
    import urllib.request

    port, api_port, validator_port = free_ports(3)
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).parents[2] / "scripts" / "bench_upstream.py"),
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = LocalNetConfig(directory=tmp_path, miners=1, api_port=api_port, validator_port=validator_port,
                            backend="openai", upstream=f"http://127.0.0.1:{port}/v1", fast=True)
    try:
        deadline = time.monotonic() + 15
        while port_is_free(port) and time.monotonic() < deadline:  # the upstream is starting
            time.sleep(0.1)
        with LocalNet(config, ports=pool()) as net:
            info = net.start(timeout=60)
            assert "REFERENCE_LLM_URL=" in (tmp_path / "validator.env").read_text()
            assert "REFERENCE_LLM_MODEL=bench\n" in (tmp_path / "validator.env").read_text()
            score = 0.0
            deadline = time.monotonic() + 30
            while score == 0.0 and time.monotonic() < deadline:
                time.sleep(0.25)  # a cheap read, until the first scored job
                with urllib.request.urlopen(info["validator_url"] + "/scores", timeout=5) as r:
                    miners = json.loads(r.read())["miners"]
                score = miners[0]["tasks"].get("InferenceTask", 0.0) if miners else 0.0
            assert score > 0.0, "an honest miner in front of the reference's own model scores"
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


def test_its_processes_stop_even_when_localnet_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives localnet no chance to stop anything: the kernel sends each
    child SIGTERM when its parent dies, and each stops gracefully."""
    proc = start_localnet(tmp_path, *free_ports(2))
    try:
        proc.kill()
        proc.wait(timeout=10)
        assert until_empty(lambda: ours(tmp_path), 20) == [], "children outlived a killed localnet"
        assert "shutting down" in (tmp_path / "logs" / "api.log").read_text()
    finally:
        kill_all(proc, tmp_path)


def test_an_upstream_that_does_not_answer_lists_no_model() -> None:
    """What makes ``sn1 localnet --backend openai`` warn that the miners will fail every request."""
    from neurons.localnet import first_model

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
        assert first_model(f"http://127.0.0.1:{port}/v1") is None


async def test_the_reference_model_is_the_first_chat_model_the_upstream_lists() -> None:
    """Ollama lists nothing as ``"data": null`` (a TypeError out of ``sn1 localnet``), and lists an
    embedding model beside its chat models: the reference must be the chat model the miners serve."""
    listed: list[str] = []
    async with serve_app(create_fake_upstream([], models=listed)) as url:
        assert await asyncio.to_thread(first_model, url + "/v1") is None
        listed += ["nomic-embed-text:latest", "llama3.1:8b"]
        assert await asyncio.to_thread(first_model, url + "/v1") == "llama3.1:8b"


def test_store_puts_the_apis_keys_and_traffic_in_redis(tmp_path: Path) -> None:
    """``--store redis://...``: a local network on a fleet's store (it could only use its SQLite file, so a
    Redis setup could not be tried without editing env files by hand)."""
    import secrets

    import openai
    import redis

    from tests.store.conftest import redis_url

    url, namespace = redis_url(), f"test-localnet-{secrets.token_hex(4)}"
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path, miners=1, api_port=api_port, validator_port=validator_port,
                            store_url=url, extra_env={"STORE_NAMESPACE": namespace})
    r = redis.Redis.from_url(url)
    try:
        with LocalNet(config, ports=pool()) as net:
            info = net.start(timeout=60)
            assert f"STORE_URL={url}\n" in (tmp_path / "api.env").read_text()
            client = openai.OpenAI(base_url=info["api_url"] + "/v1", api_key=info["api_key"], max_retries=0)
            assert client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
            assert list(r.scan_iter(match=f"{namespace}:key:*")), "the API key lives in Redis"
        assert not (tmp_path / "state" / "api.db").exists(), "no SQLite store beside it"
    finally:
        for name in r.scan_iter(match=f"{namespace}:*"):
            r.delete(name)
        r.close()


def localnet_command(directory: Path, *extra: str) -> list[str]:
    api_port, validator_port, miner_port = free_ports(3)
    return [sys.executable, "-m", "shared.cli", "localnet", "--miners", "1", "--dir", str(directory), "--api-port",
            str(api_port), "--validator-port", str(validator_port), "--miner-port", str(miner_port), *extra]


def test_a_second_localnet_in_the_same_folder_is_refused_and_the_first_keeps_its_network(tmp_path: Path) -> None:
    """On other ports, a second network in the same ``--dir`` rewrote the first's metagraph with its own miners:
    once stopped, the first answered every request 503 for good. Now it is one line, and nothing starts."""
    first = start_localnet(tmp_path, *free_ports(2))
    second = None
    try:
        metagraph = (tmp_path / "metagraph.json").read_text()
        second = subprocess.Popen(localnet_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = second.communicate(timeout=30)
        assert second.returncode == 1, out + err
        assert err.strip() == (f"sn1 localnet: another sn1 localnet is running in {tmp_path} (pid {first.pid}): "
                               "stop it, or pick another --dir")
        assert (tmp_path / "metagraph.json").read_text() == metagraph
        assert len(ours(tmp_path)) == 3, "the first network's processes, no more"
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 0
        assert until_empty(lambda: ours(tmp_path), 15) == []
        again = start_localnet(tmp_path, *free_ports(2))  # the folder is free once the first has stopped
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0
    finally:
        if second is not None:
            second.kill()
        kill_all(first, tmp_path)


def test_ctrl_c_while_it_starts_stops_it_without_saying_it_is_up(tmp_path: Path) -> None:
    """Ctrl-C was taken only once the start had finished (up to minutes with a child that never answers): the
    network then said "Local subnet is up ... Press Ctrl-C to stop" to someone who had, and only then stopped."""
    proc = subprocess.Popen(localnet_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Starting a local subnet")
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, rest
        assert "Local subnet is up" not in rest and "Press Ctrl-C" not in rest, rest
        assert rest.endswith("Stopping the local subnet ...\nStopped.\n"), rest
        assert until_empty(lambda: ours(tmp_path), 15) == [], "children outlived the cancelled start"
    finally:
        kill_all(proc, tmp_path)


def test_a_store_that_does_not_answer_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """``--store`` on a Redis that is not running: the network said it was up and every request, the printed curl
    line's too, answered 503 store_unavailable (on a new folder: "HTTP Error 503: Service Unavailable")."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = subprocess.run(localnet_command(tmp_path, "--store", url), capture_output=True, text=True, timeout=60)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"sn1 localnet: --store {url} does not answer ("), proc.stderr
        assert proc.stderr.rstrip().endswith("start it, or leave --store out (a SQLite file in --dir)"), proc.stderr
        assert "Local subnet is up" not in proc.stdout
        assert not (tmp_path / "logs" / "api.log").exists(), "nothing was started"
    finally:
        for pid in ours(tmp_path):
            subprocess.run(["kill", "-9", pid], check=False)


def test_a_child_killed_outright_is_named_and_the_network_stops(tmp_path: Path) -> None:
    """``kill -9`` of a miner: localnet names it and how it ended (it read "exited with code -9"), and stops the
    rest, exiting 1."""
    proc = start_localnet(tmp_path, *free_ports(2))
    try:
        miner = subprocess.run(["pgrep", "-f", "--", f"--env-file {tmp_path}/miner1.env"], capture_output=True,
                               text=True).stdout.split()
        assert len(miner) == 1
        subprocess.run(["kill", "-9", miner[0]], check=True)
        assert proc.stdout is not None
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 1
        assert f"sn1 localnet: miner1 was killed by SIGKILL; see {tmp_path}/logs/miner1.log" in rest, rest
        assert until_empty(lambda: ours(tmp_path), 15) == []
    finally:
        kill_all(proc, tmp_path)
