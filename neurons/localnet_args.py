"""``sn1 localnet``'s options and their checks. Apart from ``neurons.localnet`` because every ``sn1`` command
builds the whole parser, its ``--help`` included: that module loads pydantic, loguru and aiohttp (~0.2 s of
CPU) to start a network, which ``sn1 keys ...`` or a settings error must not wait for."""

from __future__ import annotations

import argparse

from shared.log_levels import LOG_LEVELS


def port(text: str) -> int:
    """A TCP port for argparse (70000 was a traceback from bind)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return level


def external_miner(text: str) -> str:
    """``HOTKEY@HOST:PORT``: a miner the local network registers but does not run (a third party's own)."""
    hotkey, at, address = text.strip().partition("@")
    host, colon, port_text = address.rpartition(":")
    if not at or not colon or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOTKEY@HOST:PORT (e.g. 5F...@127.0.0.1:8095)")
    from shared.ss58 import is_ss58

    if not is_ss58(hotkey):
        raise argparse.ArgumentTypeError(f"{hotkey[:64]!r} is not an SS58 address")
    return f"{hotkey}@{host}:{port(port_text)}"


def add_localnet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--miners", type=int, default=3, help="number of miners (default 3)")
    p.add_argument("--api-port", type=port, default=42170, help="API port (default 42170)")
    p.add_argument("--validator-port", type=port, default=8094, help="validator API port (default 8094)")
    p.add_argument("--dir", default="./localnet", help="state folder (wallets, metagraph, logs)")
    p.add_argument("--admin-key", default=None, help="admin key (default: generated once, kept in --dir)")
    p.add_argument("--backend", choices=["deterministic", "openai"], default="deterministic",
                   help="miner backend: the built-in test model (default) or --upstream's server")
    p.add_argument("--upstream", default=None, help="OpenAI-compatible base URL for --backend openai")
    p.add_argument("--model", default="sn1/deterministic", help="model name of the deterministic backend")
    p.add_argument("--miner-profiles", default=None,
                   help="comma-separated profile per miner, e.g. honest,lazy,slow,copy,down (default all honest)")
    p.add_argument("--fast", action="store_true",
                   help="shorten every validator interval (demos, tests): weights follow quality within minutes")
    p.add_argument("--dataset", default=None, help="JSONL of prompts / QA items for the validator's synthetic tasks")
    p.add_argument("--corpus", default=None,
                   help="JSONL {url,title,content} web corpus shared by miners and validator (default: built-in)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the API's STORE_URL, e.g. redis://127.0.0.1:6379/0 (default: a SQLite file in --dir/state)")
    p.add_argument("--log-level", type=log_level, default="INFO", help="TRACE, DEBUG, INFO (default), WARNING, ...")
    p.add_argument("--miner-port", type=port, action="append", default=[], metavar="P",
                   help="a miner's port, in uid order (repeatable; the other miners: ports the system picks)")
    p.add_argument("--external-miner", type=external_miner, action="append", default=[], metavar="HOTKEY@HOST:PORT",
                   help="register a miner you run yourself (your own code: docs/miner-protocol.md) under this SS58 "
                        "hotkey at this address; not started or stopped here (repeatable)")
