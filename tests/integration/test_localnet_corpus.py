"""``sn1 localnet --corpus``: miners and validator share a real JSONL corpus for web retrieval."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

from neurons.localnet import LocalNet, LocalNetConfig
from tests.ports import free_ports, pool


def test_custom_corpus_reaches_the_miners(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"url": f"https://docs.example.org/page-{i}", "title": f"Zanzibar turbine note {i}",
             "content": f"The Zanzibar turbine model {i} spins at {1000 + i} rpm. It was built in a harbour."}
            for i in range(6)]
    corpus.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path / "net", miners=1, api_port=api_port, validator_port=validator_port,
                            admin_key="corpus-admin-key-0123456789", corpus=str(corpus))
    with LocalNet(config, ports=pool()) as net:
        info = net.start(timeout=120)
        def search(n_results: int) -> list[dict]:
            query = urllib.parse.urlencode({"search_query": "Zanzibar turbine rpm", "n_results": n_results})
            req = urllib.request.Request(f"{info['api_url']}/web_retrieval?{query}",
                                         headers={"api-key": info["api_key"]})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["results"]

        five, two = search(5), search(2)
    assert all(x["url"].startswith("https://docs.example.org/") for x in five + two)
    assert len(five) == 5, "the miner honours n_results (target_results), not its own default of 3"
    assert len(two) == 2


def test_records_whose_url_the_api_drops_are_skipped_at_load_with_one_warning(tmp_path: Path) -> None:
    """An operator's corpus with pages at URLs the API drops from a search (a space, a user and password):
    the miner loaded them and, being the best matches, returned them, and the API dropped them, so a search
    for 5 pages answered 2 and no line said why. They are skipped when the corpus is read, with one WARNING
    naming how many and the first, so the search finds 5 pages of those it can show."""
    corpus = tmp_path / "corpus.jsonl"
    good = [{"url": f"https://docs.example.org/page-{i}", "title": f"Quillon gearbox note {i}",
             "content": f"The Quillon gearbox model {i} turns at {200 + i} rpm."} for i in range(6)]
    bad = [{"url": url, "title": "Quillon gearbox Quillon gearbox rpm rpm",
            "content": "The Quillon gearbox rpm table: every Quillon gearbox, its rpm, and the Quillon gearbox rpm."}
           for url in ("https://docs.example.org/quillon gearbox", "https://editor:s3cret@docs.example.org/rpm",
                       "https://docs.example.org/<gearbox>")]
    corpus.write_text("\n".join(json.dumps(d) for d in [good[0], bad[0], *good[1:3], bad[1], bad[2], *good[3:]])
                      + "\n")
    api_port, validator_port = free_ports(2)
    config = LocalNetConfig(directory=tmp_path / "net", miners=1, api_port=api_port, validator_port=validator_port,
                            admin_key="corpus-admin-key-0123456789", corpus=str(corpus))
    with LocalNet(config, ports=pool()) as net:
        info = net.start(timeout=120)
        query = urllib.parse.urlencode({"search_query": "Quillon gearbox rpm", "n_results": 5})
        req = urllib.request.Request(f"{info['api_url']}/web_retrieval?{query}", headers={"api-key": info["api_key"]})
        with urllib.request.urlopen(req, timeout=30) as r:
            results = json.loads(r.read())["results"]
    assert len(results) == 5 and {x["url"] for x in results} <= {d["url"] for d in good}, results
    for name in ("miner1", "validator"):
        log = (tmp_path / "net" / "logs" / f"{name}.log").read_text()
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
