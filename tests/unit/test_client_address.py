"""The client address behind trusted proxies (``shared.client_address``)."""

from __future__ import annotations

import pytest

from shared.client_address import forwarded_client, parse_networks
from shared.settings import ApiSettings, SettingsError, load_settings

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(("peer", "header", "client"), [
    ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # one trusted proxy
    ("127.0.0.1", ["203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # two trusted hops
    ("127.0.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the client's own entry is not believed
    ("127.0.0.1", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # the header sent twice: one list
    ("127.0.0.1", [], "127.0.0.1"),  # nothing forwarded: the proxy itself
    ("127.0.0.1", ["10.0.0.1, 127.0.0.1"], "10.0.0.1"),  # all trusted: the farthest one
    ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # a dual-stack socket's mapped address
    ("192.0.2.5", ["203.0.113.7"], "192.0.2.5"),  # an untrusted peer's header is ignored
    (None, ["203.0.113.7"], "unknown"),
])
def test_forwarded_client(peer: str | None, header: list[str], client: str) -> None:
    assert forwarded_client(peer, header, PROXIES) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert forwarded_client("127.0.0.1", ["203.0.113.7"], ()) == "127.0.0.1"


def test_a_bad_trusted_proxies_entry_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, nginx.internal")
    with pytest.raises(SettingsError, match="nginx.internal"):
        load_settings(ApiSettings, None)


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "2001:db8::1/32"])
def test_a_network_with_host_bits_stops_the_start(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    """``10.0.0.1/8`` was read as ``10.0.0.0/8`` without a word: every address of the /8 trusted to name the
    client (a lockout dodged by any of them), where one proxy may have been meant."""
    monkeypatch.setenv("TRUSTED_PROXIES", entry)
    with pytest.raises(SettingsError, match="has host bits set: write the network"):
        load_settings(ApiSettings, None)
    assert parse_networks(["10.0.0.0/8", "10.0.0.5", "10.0.0.5/32", "::1", "fe80::/10"])  # the well-formed pass
