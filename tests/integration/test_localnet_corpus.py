"""``sn1 localnet --corpus``: miners and validator share a real JSONL corpus for web retrieval."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurons.localnet import LocalNet, LocalNetConfig
from tests.ports import free_ports, pool

# Records at URLs the API drops from a search (a space, a user and password): the miner loaded them and, being
# the best matches, returned them, and the API dropped them, so a search for 5 pages answered 2.
QUILLON = [{"url": f"https://docs.example.org/page-{i}", "title": f"Quillon gearbox note {i}",
            "content": f"The Quillon gearbox model {i} turns at {200 + i} rpm."} for i in range(6)]
DROPPED = [{"url": url, "title": "Quillon gearbox Quillon gearbox rpm rpm",
            "content": "The Quillon gearbox rpm table: every Quillon gearbox, its rpm, and the Quillon gearbox rpm."}
           for url in ("https://docs.example.org/quillon gearbox", "https://editor:s3cret@docs.example.org/rpm",
                       "https://docs.example.org/<gearbox>")]
ZANZIBAR = [{"url": f"https://docs.example.org/turbine-{i}", "title": f"Zanzibar turbine note {i}",
             "content": f"The Zanzibar turbine model {i} spins at {1000 + i} rpm. It was built in a harbour."}
            for i in range(6)]


@pytest.fixture(scope="module")
def corpus_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, Path, Path]]:
    """One network (a miner, the validator, the API) on one corpus for the tests that only search it: the
    Quillon pages with the dropped ones among them (the first on line 2), then the Zanzibar pages. A network
    each cost a start of three processes (~8 s)."""
    tmp_path = tmp_path_factory.mktemp("corpus")
    corpus = tmp_path / "corpus.jsonl"
    records = [QUILLON[0], DROPPED[0], *QUILLON[1:3], DROPPED[1], DROPPED[2], *QUILLON[3:], *ZANZIBAR]
    corpus.write_text("\n".join(json.dumps(d) for d in records) + "\n")
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path / "net", miners=1, api_port=api_port, validator_port=validator_port,
                            admin_key="corpus-admin-key-0123456789", corpus=str(corpus))
    with LocalNet(config, ports=pool()) as net:
        yield net.start(timeout=120), tmp_path / "net", corpus


def search(info: dict, query: str, n_results: int) -> list[dict]:
    """The API's ``/web_retrieval`` results for ``query``."""
    params = urllib.parse.urlencode({"search_query": query, "n_results": n_results})
    req = urllib.request.Request(f"{info['api_url']}/web_retrieval?{params}", headers={"api-key": info["api_key"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["results"]


def test_custom_corpus_reaches_the_miners(corpus_net: tuple[dict, Path, Path]) -> None:
    info, _, _ = corpus_net
    five, two = search(info, "Zanzibar turbine rpm", 5), search(info, "Zanzibar turbine rpm", 2)
    assert all(x["url"].startswith("https://docs.example.org/turbine-") for x in five + two), five + two
    assert len(five) == 5, "the miner honours n_results (target_results), not its own default of 3"
    assert len(two) == 2


def test_records_whose_url_the_api_drops_are_skipped_at_load_with_one_warning(
        corpus_net: tuple[dict, Path, Path]) -> None:
    """An operator's corpus with pages at URLs the API drops from a search: they are skipped when the corpus is
    read, with one WARNING naming how many and the first, so the search finds 5 pages of those it can show."""
    info, directory, corpus = corpus_net
    results = search(info, "Quillon gearbox rpm", 5)
    assert len(results) == 5 and {x["url"] for x in results} <= {d["url"] for d in QUILLON}, results
    for name in ("miner1", "validator"):
        log = (directory / "logs" / f"{name}.log").read_text()
        told = [line for line in log.splitlines() if "record(s) with a url the API drops" in line]
        assert len(told) == 1 and "WARNING" in told[0], (name, told)
        assert f"corpus {corpus}: 3 record(s)" in told[0], told[0]
        assert "the first, line 2: 'https://docs.example.org/quillon gearbox'" in told[0], told[0]
        assert "s3cret" not in log


def test_rerun_with_the_same_dir_reuses_wallets_and_keys(tmp_path: Path) -> None:
    def run_once() -> dict:
        api_port, validator_port = free_ports(2)
        config = LocalNetConfig(directory=tmp_path, miners=1, api_port=api_port, validator_port=validator_port)
        with LocalNet(config, ports=pool()) as net:
            return net.start(timeout=120)

    first, second = run_once(), run_once()
    assert second["admin_key"] == first["admin_key"]
    assert second["api_key"] == first["api_key"], "the saved API key still works, so it is reused"
    assert second["validator_hotkey"] == first["validator_hotkey"]
    assert [m["hotkey"] for m in second["miners"]] == [m["hotkey"] for m in first["miners"]]
