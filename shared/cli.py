"""The ``sn1`` command: ``api``, ``validator``, ``miner``, ``localnet``, ``keys``, ``vacuum`` and ``backup``."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from pydantic_settings import BaseSettings

DEFAULT_ENV = {"api": ".env.api", "validator": ".env.validator", "miner": ".env.miner"}
ROLES = {"api": "the API gateway (OpenAI-compatible; WORKERS processes)",
         "validator": "the validator (scores miners, sets weights, serves SCORING_API_PORT)",
         "miner": "the reference miner (MINER_BACKEND: deterministic or an OpenAI-compatible UPSTREAM_URL)"}


def configured_by_environment(cls: type[BaseSettings], environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets any of ``cls``'s settings: a deployment configured by its environment alone
    (docker, systemd ``Environment=``) asked for no env file, and was warned at every start that it had
    none. Settings names are case-insensitive, as pydantic-settings reads them."""
    names = {name.upper() for name in cls.model_fields}
    return any(key.upper() in names for key in environ)


def _settings(role: str, env_file: str | None):
    from shared.settings import (
        ApiSettings,
        MinerSettings,
        SettingsError,
        ValidatorSettings,
        load_settings,
        problem_lines,
    )

    cls = {"api": ApiSettings, "validator": ValidatorSettings, "miner": MinerSettings}[role]
    path = env_file or DEFAULT_ENV[role]
    if env_file and not Path(env_file).is_file():  # a directory was skipped as if the file were empty
        sys.exit(f"sn1 {role}: env file {env_file} " + ("is a directory" if Path(env_file).is_dir() else "not found"))

    def warn(line: str) -> None:
        print(f"sn1 {role}: warning: {line}", file=sys.stderr)

    if not env_file and not Path(path).is_file() and not configured_by_environment(cls, os.environ):
        # Started from another directory (a unit's WorkingDirectory, a shell elsewhere), every setting
        # fell to its default (netuid 1 on finney, say) without a word.
        warn(f"{path} not found in {Path.cwd()} and no setting in the environment: running on defaults only")
    try:
        return load_settings(cls, path, warn=warn)
    except SettingsError as e:
        sys.exit(problem_lines(role, e))


def _run_role(role: str, settings: object) -> None:
    from shared.process import run
    from shared.wallet import check_hotkey

    # The hotkey first, without the SDK: a WALLET_NAME, WALLET_HOTKEY or WALLET_PATH that names no usable key is
    # a setting to fix like the others, said before the role's modules load the bittensor SDK (~0.7 s of CPU).
    # The keypair read here is handed in: the role does not read the file again.
    hotkey = check_hotkey(settings.wallet_name, settings.wallet_hotkey, settings.wallet_path)  # type: ignore[attr-defined]
    if role == "api":
        from api.main import run_api

        run_api(settings, hotkey)  # type: ignore[arg-type]
    elif role == "validator":
        from neurons.validator.main import run_validator

        run(lambda: run_validator(settings, hotkey))  # type: ignore[arg-type]
    else:
        from neurons.miner.main import run_miner

        run(lambda: run_miner(settings, hotkey))  # type: ignore[arg-type]


# The flags of bittensor's miner template (``--axon.port``, ``--logging.debug``), which operators bring along
BITTENSOR_FLAGS = {"AXON_PORT": "MINER_PORT", "AXON_IP": "MINER_HOST", "LOGGING_DEBUG": "LOG_LEVEL",
                   "LOGGING_TRACE": "LOG_LEVEL", "LOGGING_INFO": "LOG_LEVEL", "SUBTENSOR_CHAIN_ENDPOINT": "SUBTENSOR_NETWORK"}

# What ``not_options`` shows of an argument: a long flag (``--port``, ``--axon.port``) or a short one (``-p``); any
# other argument beginning with '-' may be a value (``--admin-key -Xk9...``: a token_urlsafe key may begin so)
_FLAG = re.compile(r"--[A-Za-z][A-Za-z0-9._-]{0,39}|-[A-Za-z]")

INTERRUPTED = 130  # a shell's status for a command that Ctrl-C stopped (128 + SIGINT)


def main(argv: list[str] | None = None) -> None:
    """``sn1``. Ctrl-C before the command takes stop signals itself (its first second or so, as its modules load;
    a server stops gracefully on one from then on) ends it quietly, with status 130: it printed a traceback of
    whatever module was loading, pydantic's or aiohttp's, as if the command had failed."""
    try:
        _main(argv)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _main(argv: list[str] | None) -> None:
    """Every command's own modules are imported where it runs: the parser's modules (argparse and the two below)
    load nothing else, so ``sn1 --help``, ``sn1 keys ...`` and ``sn1 backup`` never wait for pydantic, aiohttp
    or the bittensor SDK, and a settings error is said before ``sn1 api|validator|miner`` loads any but
    pydantic (tests/unit/test_import_footprint.py)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in DEFAULT_ENV:  # `sn1 miner --port 8091`: said to be no option, and what to set
        sys.exit(not_options(args.command, extra))
    if extra:
        args = parser.parse_args(argv)  # argparse's own usage error

    if args.command in DEFAULT_ENV:
        from shared.settings import SettingsError, problem_lines

        settings = _settings(args.command, args.env_file)
        try:
            _run_role(args.command, settings)
        except SettingsError as e:  # wallet or metagraph unreadable at start: one clear line, no traceback
            sys.exit(problem_lines(args.command, e))
    elif args.command == "localnet":
        from neurons.localnet import run_localnet

        sys.exit(run_localnet(args))
    elif args.command == "keys":
        from shared.keys_cli import run_keys

        sys.exit(run_keys(args))
    elif args.command == "vacuum":
        sys.exit(_vacuum(args.path))
    elif args.command == "backup":
        sys.exit(_backup(args.source, Path(args.dest)))


def _parser() -> argparse.ArgumentParser:
    """``sn1``'s commands and their arguments (each role's, ``localnet``'s, ``keys``', ``vacuum``'s, ``backup``'s)."""
    # here, not at the top: a Ctrl-C as they load is ``main``'s quiet exit too
    import argparse

    from neurons.localnet_args import add_localnet_arguments
    from shared.keys_cli import add_keys_arguments

    parser = argparse.ArgumentParser(prog="sn1", description="Subnet node: API gateway, validator, miner.")
    sub = parser.add_subparsers(dest="command", required=True)
    for role, what in ROLES.items():
        p = sub.add_parser(role, help=f"run {what}", description=(
            f"Run {what}. Settings are environment variables and the NAME=value lines of an env file; the "
            "environment wins. Every setting, its default and meaning: README.md, 'Configuration reference'."))
        p.add_argument("--env-file", default=None, help=(
            f"settings file (default: {DEFAULT_ENV[role]} in the current directory, if there is one; "
            "else environment variables and defaults only)"))
    add_localnet_arguments(sub.add_parser("localnet", help="start a whole local subnet on 127.0.0.1"))
    add_keys_arguments(sub.add_parser("keys", help="manage API keys on a running API (admin key)"))
    vacuum = sub.add_parser("vacuum", help="shrink a SQLite store file, with the API stopped", description=(
        "Rewrite a SQLite store file (STORE_URL's) to its smallest, and convert one made before 2026-12-06 so "
        "that it gives back the space of expired and deleted rows by itself from then on. Stop the API first: "
        "the rewrite holds the file's write lock until it is done (seconds per GB) and needs as much free disk "
        "again."))
    vacuum.add_argument("path", help="the store file, e.g. ./state/api.db, or the STORE_URL naming it "
                                     "(sqlite:///./state/api.db)")
    saved = sub.add_parser("backup", help="copy a SQLite store file safely, while the API runs", description=(
        "Copy a SQLite file the node writes (the API's STORE_URL, the validator's SCORING_INBOX_FILE) to a new file, "
        "as one consistent snapshot, while the process runs. `cp` is not a backup of it: what was written since "
        "the last checkpoint is in the -wal file beside it. The copy is one file, readable by its owner alone; to "
        "restore it, stop the API, remove the store file and its -wal and -shm files, and put the copy in its place."))
    saved.add_argument("source", help="the store file, e.g. ./state/api.db, or the STORE_URL naming it")
    saved.add_argument("dest", help="a new file, or a directory to write it into under the source's name")
    return parser


def not_options(role: str, extra: list[str]) -> int:
    """Print what ``sn1 <role>`` was given that is not ``--env-file``, a line a flag with the setting it probably
    meant (``--port``, ``--axon.port``: ``MINER_PORT``), then where settings go; return argparse's status for a
    usage error (2). argparse said only ``sn1: error: unrecognized arguments: --port 8091``, under ``sn1``'s usage,
    not that a process's settings are environment variables and env file lines. A value is never repeated
    (``--upstream-api-key sk-...``)."""
    from shared.env_names import closest
    from shared.settings import ApiSettings, MinerSettings, ValidatorSettings

    cls = {"api": ApiSettings, "validator": ValidatorSettings, "miner": MinerSettings}[role]
    names = frozenset(name.upper() for name in cls.model_fields)
    for flag in (token.partition("=")[0] for token in extra if token.startswith("-")):  # values never echoed
        if not _FLAG.fullmatch(flag):  # "-Xk9...": a value beginning with '-' (a secret, maybe) is no flag's shape
            print(f"sn1 {role}: an argument that begins with '-' is not an option (not shown: it may be a value)",
                  file=sys.stderr)
            continue
        name = re.sub(r"[-.]", "_", flag.lstrip("-")).upper()
        name = BITTENSOR_FLAGS.get(name, name)
        ending = sorted(n for n in names if n.endswith(f"_{name}"))  # --port: MINER_PORT; --host: MINER_HOST
        guess = name if name in names else ending[0] if len(ending) == 1 else closest(name, names, strict=False)
        print(f"sn1 {role}: {flag} is not an option" + (f": set {guess}=... instead" if guess else ""),
              file=sys.stderr)
    print(f"sn1 {role}: takes no argument but --env-file: settings are environment variables or NAME=value lines of "
          f"{DEFAULT_ENV[role]} (or --env-file's file); every setting: README.md, 'Configuration reference'",
          file=sys.stderr)
    return 2


def _store_file(command: str, target: str, redis_note: str) -> Path | str:
    """The SQLite file a command is named, as a path or as the ``STORE_URL`` an operator has at hand
    (``sqlite:///./state/api.db`` was read as the path ``sqlite:/state/api.db``: "no such file"); else the
    error's line (a Redis URL, its password masked, told ``redis_note``; a file that is not there)."""
    from shared.store.sqlite import sqlite_path
    from shared.url_text import mask_credentials, sqlite_url_meant

    if target.startswith("sqlite:///"):
        path = sqlite_path(target)
    elif target.startswith("sqlite:"):  # two slashes: it was "not a SQLite store ...; a Redis store ..."
        return f"sn1 {command}: {target}: not a SQLite URL{sqlite_url_meant(target)}"
    elif re.match(r"^[a-z][a-z0-9+.-]*://", target, re.IGNORECASE):
        return f"sn1 {command}: {mask_credentials(target)}: not a SQLite store (sqlite:///path); {redis_note}"
    else:
        path = Path(target)
    try:
        return path if path.is_file() else f"sn1 {command}: {path}: no such file"
    except OSError as e:  # a directory on the way this user cannot enter (the service's own, root's)
        return f"sn1 {command}: {path}: {e.strerror or e}"


def _vacuum(target: str) -> str | None:
    """``sn1 vacuum``: its sizes before and after on one line; an error's line (exit status 1) otherwise."""
    import sqlite3

    from shared.store.sqlite_tables import FileInUse, compact

    path = _store_file("vacuum", target, "a Redis store frees its memory by itself")
    if isinstance(path, str):
        return path
    try:
        before, after = compact(path)
    except FileInUse as e:
        return (f"sn1 vacuum: {e} (an API worker, a validator, a backup): stop the API first; the rewrite would hold "
                "the write lock of every worker until it is done (seconds per GB, each request a 503 meanwhile)")
    except sqlite3.Error as e:
        # "database is locked" is an API still writing to it; anything else is the file's own (not a database)
        hint = " (stop the API first)" if "locked" in str(e) or "busy" in str(e) else ""
        return f"sn1 vacuum: {path}: {e}{hint}"
    print(f"{path}: {before / (1 << 20):.1f} MiB -> {after / (1 << 20):.1f} MiB; it gives back freed space from now on")
    return None


def _backup(target: str, dest: Path) -> str | None:
    """``sn1 backup``: what it wrote on one line (its size, and the API keys it holds, so that a copy of an empty
    or wrong file shows at once); an error's line (exit status 1) otherwise."""
    import sqlite3

    from shared.store.sqlite_backup import backup

    path = _store_file("backup", target, "back up Redis itself: its RDB snapshot (BGSAVE, then copy dump.rdb) "
                                         "or its appendonly files")
    if isinstance(path, str):
        return path
    try:
        dest = dest / path.name if dest.is_dir() else dest
        made = backup(path, dest)
    except OSError as e:  # the destination's directory or disk (its path and why), or backup's own line
        return f"sn1 backup: {f'{e.filename}: {e.strerror}' if e.strerror else e}"
    except sqlite3.Error as e:  # the source's own: "file is not a database"
        return f"sn1 backup: {path}: {e}"
    keys = "" if made.api_keys is None else f", {made.api_keys} API key(s)"
    size = f"{made.bytes / (1 << 20):.1f} MiB" if made.bytes >= 1 << 20 else f"{made.bytes >> 10} KiB"
    print(f"{path} -> {dest}: {size}{keys}")
    return None

if __name__ == "__main__":
    main()
